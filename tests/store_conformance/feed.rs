//! Conformance cases of the change feed and of the store as a shared place: every kind of write appends its rows
//! with the writer's origin in growing sequence, paging, pruning that keeps the latest change, two handles over
//! one store seeing each other's writes, and everything written surviving a close and a reopen.

use std::sync::Arc;

use duet::store::{Change, ChangeKind, Store, VersionState};
use serde_json::json;

use super::{doc, emb, experiment, exposure, version, wait_until_after, Place};

fn kinds_and_keys(changes: &[Change]) -> Vec<(ChangeKind, &str)> {
    changes.iter().map(|c| (c.kind, c.key.as_str())).collect()
}

pub async fn every_write_appends_to_the_change_feed(store: Arc<dyn Store>) {
    use ChangeKind::*;
    assert_eq!(store.last_change().await.unwrap(), 0, "a new store has no change");
    assert!(store.changes_since(0, 100).await.unwrap().is_empty());

    store.upsert(&[doc("a", "alpha", json!({})), doc("b", "beta", json!({}))], &[]).await.unwrap();
    store.upsert(&[doc("a", "alpha two", json!({}))], &[]).await.unwrap();
    assert!(store.delete("a").await.unwrap());
    assert!(!store.delete("absent").await.unwrap(), "deleting nothing changes nothing");
    store.save_experiment(&experiment("e1", 1)).await.unwrap();
    store.set_setting("default_model", "m").await.unwrap();
    let versions = [
        version("m", "v1", VersionState::Loading, 1, 1),
        version("m", "v2", VersionState::Loading, 2, 2),
        version("n", "v1", VersionState::Loading, 3, 3),
    ];
    store.set_version_states(&versions).await.unwrap();

    let changes = store.changes_since(0, 100).await.unwrap();
    assert_eq!(
        kinds_and_keys(&changes),
        [
            (Document, "a"),
            (Document, "b"),
            (Document, "a"),
            (Document, "a"),
            (Experiment, "e1"),
            (Setting, "default_model"),
            (Model, "m"),
            (Model, "n"),
        ],
        "one row per thing changed, in commit order"
    );
    assert!(!store.origin().is_empty());
    for change in &changes {
        assert_eq!(change.origin, store.origin(), "{change:?}");
        assert!(chrono::DateTime::parse_from_rfc3339(&change.at).is_ok(), "{change:?}");
    }
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq), "sequences grow: {changes:?}");
    assert!(changes[0].seq > 0);
    let last = changes.last().unwrap().seq;
    assert_eq!(store.last_change().await.unwrap(), last);

    // Paging from any sequence.
    assert_eq!(store.changes_since(changes[2].seq, 3).await.unwrap(), changes[3..6]);
    assert_eq!(store.changes_since(changes[5].seq, 100).await.unwrap(), changes[6..]);
    assert!(store.changes_since(last, 100).await.unwrap().is_empty());
    store.close().await;
}

pub async fn pruning_the_change_feed_keeps_the_latest_change(store: Arc<dyn Store>) {
    store.set_setting("k", "1").await.unwrap();
    store.set_setting("k", "2").await.unwrap();
    let old = store.changes_since(0, 100).await.unwrap();
    wait_until_after(&old[1].at).await;
    let cutoff = duet::util::now();
    wait_until_after(&cutoff).await;
    store.set_setting("k", "3").await.unwrap();
    store.set_setting("k", "4").await.unwrap();
    let all = store.changes_since(0, 100).await.unwrap();
    assert_eq!(all.len(), 4);

    assert_eq!(store.prune_changes("2000-01-01T00:00:00.000Z").await.unwrap(), 0, "nothing that old");
    assert_eq!(store.prune_changes(&cutoff).await.unwrap(), 2, "the two before the cut-off");
    assert_eq!(store.changes_since(0, 100).await.unwrap(), all[2..]);
    assert_eq!(store.prune_changes("9999-12-31T23:59:59.999Z").await.unwrap(), 1, "all but the latest");
    let latest = all.last().unwrap().clone();
    assert_eq!(store.changes_since(0, 100).await.unwrap(), [latest.clone()]);
    assert_eq!(store.last_change().await.unwrap(), latest.seq);

    // Sequences keep growing after a prune: a replica that saw `latest` does not miss the next change.
    store.set_setting("k", "5").await.unwrap();
    let next = store.changes_since(latest.seq, 100).await.unwrap();
    assert_eq!(next.len(), 1);
    assert!(next[0].seq > latest.seq);
    store.close().await;
}

pub async fn two_handles_see_each_others_changes(place: Place) {
    let one = place.open().await;
    let two = place.open().await;
    assert_ne!(one.origin(), two.origin(), "every open has its own origin");

    one.upsert(&[doc("a", "alpha", json!({"by": "one"}))], &[emb("m", "v1", "a", "alpha", &[0.5, -0.5])])
        .await
        .unwrap();
    two.set_setting("default_model", "m").await.unwrap();
    assert_eq!(two.get("a").await.unwrap().map(|d| d.metadata), Some(json!({"by": "one"})));
    assert_eq!(two.embeddings_of("m", "v1", &["a".into()]).await.unwrap()["a"], [0.5, -0.5]);
    assert_eq!(one.setting("default_model").await.unwrap().as_deref(), Some("m"));

    let seen_by_one = one.changes_since(0, 100).await.unwrap();
    let seen_by_two = two.changes_since(0, 100).await.unwrap();
    assert_eq!(seen_by_one, seen_by_two);
    let written: Vec<_> = seen_by_one.iter().map(|c| (c.kind, c.key.as_str(), c.origin.as_str())).collect();
    assert_eq!(
        written,
        [(ChangeKind::Document, "a", one.origin()), (ChangeKind::Setting, "default_model", two.origin())]
    );
    assert_eq!(one.last_change().await.unwrap(), two.last_change().await.unwrap());
    one.close().await;
    two.close().await;
}

pub async fn data_survives_close_and_reopen(place: Place) {
    let store = place.open().await;
    store
        .upsert(&[doc("a", "alpha", json!({"kept": ["yes", 1]}))], &[emb("m", "v1", "a", "alpha", &[0.25, -1e-20])])
        .await
        .unwrap();
    store.save_experiment(&experiment("e1", 1)).await.unwrap();
    let served = exposure("r1", "e1", Some("control"), &[(1, "a", "control")], &[("control", "v1")], 2.0);
    store.write_exposures(&[served], &[]).await.unwrap();
    assert!(store.add_feedback("r1", "a", "click", 1).await.unwrap());
    store.set_setting("default_model", "m").await.unwrap();
    store.set_version_states(&[version("m", "v1", VersionState::Ready, 1, 1)]).await.unwrap();
    let document = store.get("a").await.unwrap();
    let experiments = store.experiments().await.unwrap();
    let shown = store.shown("r1").await.unwrap();
    let versions = store.model_versions().await.unwrap();
    let changes = store.changes_since(0, 100).await.unwrap();
    let origin = store.origin().to_string();
    store.close().await;
    drop(store);

    let reopened = place.open().await;
    assert_ne!(reopened.origin(), origin, "a new open, a new origin");
    assert_eq!(reopened.get("a").await.unwrap(), document);
    assert_eq!(reopened.embeddings("m", "v1").await.unwrap(), [("a".to_string(), vec![0.25, -1e-20])]);
    assert_eq!(reopened.experiments().await.unwrap(), experiments);
    assert_eq!(reopened.shown("r1").await.unwrap(), shown);
    assert_eq!(reopened.clicked("r1").await.unwrap(), ["a"]);
    assert!(!reopened.add_feedback("r1", "a", "click", 1).await.unwrap(), "the click is remembered");
    assert_eq!(reopened.setting("default_model").await.unwrap().as_deref(), Some("m"));
    assert_eq!(reopened.model_versions().await.unwrap(), versions);
    assert_eq!(reopened.changes_since(0, 100).await.unwrap(), changes);
    assert_eq!(reopened.count().await.unwrap(), 1);
    reopened.close().await;
    drop(reopened);
    // A third open finds the schema in place (migrations are not applied twice).
    let third = place.open().await;
    assert_eq!(third.count().await.unwrap(), 1);
    third.close().await;
}
