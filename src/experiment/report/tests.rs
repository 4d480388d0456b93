//! The report split by model version, over a temporary store written through the `Store` trait.

use super::*;
use crate::store::{Arm, ExposureItem, ExposureRecord, ShadowRecord, SqliteStore, Status};

fn experiment(mode: Mode) -> Experiment {
    let arm = |name: &str| Arm { name: name.into(), model: format!("model-{name}"), weight: 1.0 };
    Experiment {
        id: "e1".into(),
        name: "versions".into(),
        mode,
        status: Status::Running,
        arms: vec![arm("a"), arm("b")],
        salt: "salt".into(),
        default: false,
        created_at: crate::util::now(),
        updated_at: crate::util::now(),
        started_at: None,
        stopped_at: None,
        promotion: None,
    }
}

/// An exposure of request `id` showing doc `d1` (team `team`), served by `versions`, taking `ms`.
fn exposure(id: &str, arm: Option<&str>, team: &str, versions: &[(&str, &str)], ms: f64) -> ExposureRecord {
    ExposureRecord {
        request_id: id.into(),
        experiment_id: "e1".into(),
        experiment_name: "versions".into(),
        unit_id: "u".into(),
        arm: arm.map(str::to_string),
        query: "q".into(),
        latency_ms: ms,
        items: vec![ExposureItem { position: 1, doc_id: "d1".into(), team: team.into() }],
        versions: versions.iter().map(|(a, v)| (a.to_string(), v.to_string())).collect(),
    }
}

/// A temporary store (kept while the folder lives) holding the experiment and what it logged.
async fn store_with(
    mode: Mode,
    exposures: &[ExposureRecord],
    shadows: &[ShadowRecord],
) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("duet.db")).await.unwrap();
    store.save_experiment(&experiment(mode)).await.unwrap();
    store.write_exposures(exposures, shadows).await.unwrap();
    (dir, store)
}

fn versions(list: &[Option<&str>]) -> Vec<Option<String>> {
    list.iter().map(|v| v.map(str::to_string)).collect()
}

#[tokio::test]
async fn an_arm_whose_model_changed_is_split_by_version_and_one_that_did_not_names_its_version() {
    let mut logged = vec![exposure("old", Some("a"), "a", &[], 1.0)]; // logged before versions were recorded
    logged.extend((0..3).map(|i| exposure(&format!("a1-{i}"), Some("a"), "a", &[("a", "v1")], 10.0)));
    logged.extend((0..2).map(|i| exposure(&format!("a2-{i}"), Some("a"), "a", &[("a", "v2")], 30.0)));
    logged.extend((0..4).map(|i| exposure(&format!("b-{i}"), Some("b"), "b", &[("b", "w1")], 5.0)));
    let (_dir, store) = store_with(Mode::Ab, &logged, &[]).await;
    for clicked in ["a1-0", "a2-0", "a2-1", "b-0"] {
        assert!(store.add_feedback(clicked, "d1", "click", 1).await.unwrap());
    }
    let report = build(&store, &experiment(Mode::Ab), ReportSettings::default()).await.unwrap();
    let (a, b) = (&report.arms[0], &report.arms[1]);
    assert_eq!(a.versions, versions(&[None, Some("v1"), Some("v2")]), "first served first; null when unknown");
    assert_eq!((a.outcomes.impressions, a.outcomes.clicked_impressions), (6, 3), "the arm's totals");
    let split: Vec<_> = a
        .by_version
        .iter()
        .map(|v| (v.version.as_deref(), v.outcomes.impressions, v.outcomes.clicked_impressions))
        .collect();
    assert_eq!(split, [(None, 1, 0), (Some("v1"), 3, 1), (Some("v2"), 2, 2)]);
    assert_eq!(a.by_version[2].outcomes.latency_ms.mean, 30.0, "latency per version");
    assert_eq!(b.versions, versions(&[Some("w1")]));
    assert!(b.by_version.is_empty(), "one version: no split");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["arms"][1]["versions"], serde_json::json!(["w1"]));
    assert!(json["arms"][1].get("by_version").is_none(), "{json}");
    assert_eq!(json["arms"][0]["by_version"][1]["version"], "v1");
    assert_eq!(json["arms"][0]["by_version"][1]["impressions"], 3);
}

#[tokio::test]
async fn interleaving_is_split_by_version_pair_and_shadow_by_the_shadow_version() {
    let pair1 = [("a", "v1"), ("b", "w1")];
    let pair2 = [("a", "v1"), ("b", "w2")];
    let logged = [
        exposure("i1", None, "a", &pair1, 1.0),
        exposure("i2", None, "b", &pair1, 1.0),
        exposure("i3", None, "b", &pair2, 1.0),
    ];
    let (_dir, store) = store_with(Mode::Interleave, &logged, &[]).await;
    for clicked in ["i1", "i3"] {
        store.add_feedback(clicked, "d1", "click", 1).await.unwrap();
    }
    let report = build(&store, &experiment(Mode::Interleave), ReportSettings::default()).await.unwrap();
    let il = report.interleave.unwrap();
    let pair = |b: &str| VersionPair::from([("a".into(), Some("v1".into())), ("b".into(), Some(b.into()))]);
    assert_eq!(il.versions, [pair("w1"), pair("w2")]);
    assert_eq!((il.outcomes.impressions, il.wins["a"], il.wins["b"]), (3, 1, 1), "totals over both pairs");
    let split: Vec<_> =
        il.by_versions.iter().map(|p| (p.versions.clone(), p.outcomes.impressions, p.wins["a"], p.wins["b"])).collect();
    assert_eq!(split, [(pair("w1"), 2, 1, 0), (pair("w2"), 1, 0, 1)]);

    let shadow = |id: &str, version: &str, jaccard: f64| ShadowRecord {
        request_id: id.into(),
        experiment_id: "e1".into(),
        experiment_name: "versions".into(),
        arm: "b".into(),
        version: version.into(),
        doc_ids: vec!["d1".into()],
        jaccard,
        rbo: jaccard,
        latency_ms: 2.0,
    };
    let logged =
        [exposure("s1", Some("a"), "a", &[("a", "v1")], 1.0), exposure("s2", Some("a"), "a", &[("a", "v1")], 1.0)];
    let (_dir, store) = store_with(Mode::Shadow, &logged, &[shadow("s1", "w1", 1.0), shadow("s2", "w2", 0.5)]).await;
    let report = build(&store, &experiment(Mode::Shadow), ReportSettings::default()).await.unwrap();
    assert_eq!(report.arms[0].versions, versions(&[Some("v1")]));
    let sh = report.shadow.unwrap();
    assert_eq!(sh.versions, versions(&[Some("w1"), Some("w2")]));
    let split: Vec<_> = sh.by_version.iter().map(|v| (v.version.as_deref(), v.compared, v.jaccard.value)).collect();
    assert_eq!(split, [(Some("w1"), 1, 1.0), (Some("w2"), 1, 0.5)]);
}
