//! Conformance cases of the model registry: versions inserted and updated with their events (newest first), one
//! ready version per model, purging a version's embeddings, the per-version embedding counts, and settings.

use std::sync::Arc;

use duet::store::{ModelEvent, ModelVersion, Store, VersionState};
use serde_json::json;

use super::{at, doc, emb, stored, version};

fn event(version: &str, state: VersionState, reason: Option<&str>, since: u32) -> ModelEvent {
    ModelEvent { version: version.into(), state, reason: reason.map(Into::into), at: at(since) }
}

fn with_reason(mut v: ModelVersion, reason: &str) -> ModelVersion {
    v.reason = Some(reason.into());
    v
}

pub async fn model_versions_and_their_events(store: Arc<dyn Store>) {
    use VersionState::*;
    assert!(store.model_versions().await.unwrap().is_empty());
    assert!(store.model_events("m", 10).await.unwrap().is_empty());

    store.set_version_states(&[version("m", "v1", Loading, 1, 1)]).await.unwrap();
    assert_eq!(store.model_versions().await.unwrap(), [version("m", "v1", Loading, 1, 1)]);
    let failure = "probe: dimension 12 ≠ 16";
    for change in [
        version("m", "v1", Backfilling, 1, 2),
        version("m", "v1", Ready, 1, 3),
        version("m", "v2", Loading, 4, 4),
        with_reason(version("m", "v2", Failed, 4, 5), failure),
        version("m", "v2", Loading, 4, 6),
        version("n", "v1", Ready, 7, 7),
    ] {
        store.set_version_states(&[change]).await.unwrap();
    }
    // A swap in one call: the old version leaves `ready` first.
    let mut retired = with_reason(version("m", "v1", Retired, 1, 8), "replaced by v2");
    retired.retired_at = Some(at(8));
    store.set_version_states(&[retired.clone(), version("m", "v2", Ready, 4, 8)]).await.unwrap();

    assert_eq!(
        store.model_versions().await.unwrap(),
        [retired, version("m", "v2", Ready, 4, 8), version("n", "v1", Ready, 7, 7)],
        "by model, then creation"
    );
    let events = [
        event("v2", Ready, None, 8),
        event("v1", Retired, Some("replaced by v2"), 8),
        event("v2", Loading, None, 6),
        event("v2", Failed, Some(failure), 5),
        event("v2", Loading, None, 4),
        event("v1", Ready, None, 3),
        event("v1", Backfilling, None, 2),
        event("v1", Loading, None, 1),
    ];
    assert_eq!(store.model_events("m", 100).await.unwrap(), events, "newest first");
    assert_eq!(store.model_events("m", 3).await.unwrap(), events[..3]);
    assert_eq!(store.model_events("n", 10).await.unwrap(), [event("v1", Ready, None, 7)]);
    assert!(store.model_events("absent", 10).await.unwrap().is_empty());
    store.close().await;
}

pub async fn a_model_has_one_ready_version(store: Arc<dyn Store>) {
    use VersionState::*;
    store.set_version_states(&[version("m", "v1", Ready, 1, 1)]).await.unwrap();
    let before = store.model_versions().await.unwrap();

    // A second ready version while the first still serves: refused, and nothing of the call is written.
    for call in [
        vec![version("m", "v2", Ready, 2, 2)],
        vec![version("m", "v2", Loading, 2, 2), version("m", "v3", Ready, 3, 3)],
    ] {
        let err = store.set_version_states(&call).await.expect_err("a second ready version is refused");
        assert!(!err.is_unavailable(), "a broken rule is no outage: {err}");
        assert_eq!(store.model_versions().await.unwrap(), before, "nothing of the refused call stays");
        assert_eq!(store.model_events("m", 10).await.unwrap().len(), 1);
    }
    // Two ready versions in the same call: refused too.
    let twice = [version("m", "v1", Draining, 1, 4), version("m", "v2", Ready, 2, 4), version("m", "v3", Ready, 3, 4)];
    assert!(store.set_version_states(&twice).await.is_err());
    assert_eq!(store.model_versions().await.unwrap(), before);

    // Other models have their own ready version.
    store.set_version_states(&[version("n", "v1", Ready, 5, 5)]).await.unwrap();
    store.set_version_states(&[version("m", "v1", Draining, 1, 6), version("m", "v2", Ready, 2, 6)]).await.unwrap();
    let states: Vec<_> =
        store.model_versions().await.unwrap().into_iter().map(|v| (v.model, v.version, v.state)).collect();
    assert_eq!(
        states,
        [("m".into(), "v1".into(), Draining), ("m".into(), "v2".into(), Ready), ("n".into(), "v1".into(), Ready)]
    );
    store.close().await;
}

pub async fn purging_a_version_removes_its_embeddings(store: Arc<dyn Store>) {
    use VersionState::*;
    store
        .upsert(
            &[doc("a", "alpha", json!({})), doc("b", "beta", json!({})), doc("c", "gamma", json!({}))],
            &[
                emb("m", "v1", "a", "alpha", &[1.0]),
                emb("m", "v1", "b", "beta", &[2.0]),
                emb("m", "v2", "a", "alpha", &[3.0]),
                emb("n", "v1", "a", "alpha", &[4.0]),
            ],
        )
        .await
        .unwrap();
    let mut old = version("m", "v1", Retired, 1, 2);
    old.retired_at = Some(at(2));
    store.set_version_states(&[old.clone(), version("m", "v2", Ready, 2, 2)]).await.unwrap();
    assert_eq!(store.embedding_counts("m", "v1").await.unwrap(), (2, 1), "(stored, missing)");
    assert_eq!(store.embedding_counts("m", "v2").await.unwrap(), (1, 2));
    assert_eq!(store.embedding_counts("m", "v9").await.unwrap(), (0, 3));
    store.upsert(&[doc("b", "beta two", json!({}))], &[]).await.unwrap();
    assert_eq!(store.embedding_counts("m", "v1").await.unwrap(), (1, 2), "a stale embedding is missing");

    assert_eq!(store.purge_version("m", "v1", &at(30)).await.unwrap(), 2, "the stale one goes too");
    assert!(stored(&store, "m", "v1").await.is_empty());
    assert_eq!(store.embedding_counts("m", "v1").await.unwrap(), (0, 3));
    assert_eq!(stored(&store, "m", "v2").await.len(), 1, "other versions keep theirs");
    assert_eq!(stored(&store, "n", "v1").await.len(), 1, "other models keep theirs");
    old.purged_at = Some(at(30));
    assert_eq!(store.model_versions().await.unwrap(), [old, version("m", "v2", Ready, 2, 2)]);
    assert_eq!(store.purge_version("m", "v1", &at(31)).await.unwrap(), 0, "nothing left to purge");
    store.close().await;
}

pub async fn settings_are_read_and_overwritten(store: Arc<dyn Store>) {
    assert_eq!(store.setting("default_model").await.unwrap(), None);
    store.set_setting("default_model", "tiny-two-tower").await.unwrap();
    assert_eq!(store.setting("default_model").await.unwrap().as_deref(), Some("tiny-two-tower"));
    store.set_setting("default_model", "tiny-llm").await.unwrap();
    store.set_setting("other", "ünïcode ✓").await.unwrap();
    store.set_setting("empty", "").await.unwrap();
    assert_eq!(store.setting("default_model").await.unwrap().as_deref(), Some("tiny-llm"), "overwritten");
    assert_eq!(store.setting("other").await.unwrap().as_deref(), Some("ünïcode ✓"));
    assert_eq!(store.setting("empty").await.unwrap().as_deref(), Some(""), "empty is not absent");
    assert_eq!(store.setting("absent").await.unwrap(), None);
    store.close().await;
}
