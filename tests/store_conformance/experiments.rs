//! Conformance cases of experiments: definitions through their life cycle (the default moving, the promotion kept
//! once stored), exposures and shadow comparisons logged once per request, idempotent feedback, and the sums the
//! reports read (per arm and model versions, interleaving wins, latencies).

use std::sync::Arc;

use duet::store::{
    ArmOutcome, ExposureItem, ExposureLatency, InterleaveCounts, Mode, Promotion, ShadowRecord, ShadowRow, Shown,
    Status, Store, Versions,
};
use serde_json::json;

use super::{at, experiment, exposure};

fn promotion(arm: &str) -> Promotion {
    Promotion {
        arm: arm.into(),
        model: format!("model of {arm}"),
        version: "0123456789ab".into(),
        promoted_at: at(50),
        report: json!({"arms": [{"name": arm, "ctr": 0.125, "ci": [0.1, 0.15]}], "note": "gagnant ✓"}),
    }
}

fn defaults(all: &[duet::store::Experiment]) -> Vec<(&str, bool)> {
    all.iter().map(|e| (e.id.as_str(), e.default)).collect()
}

pub async fn experiments_life_cycle(store: Arc<dyn Store>) {
    assert!(store.experiments().await.unwrap().is_empty());
    // Saved newest first: listed oldest first.
    let mut second = experiment("second", 2);
    second.mode = Mode::Interleave;
    let mut shadow = experiment("shadow", 3);
    shadow.mode = Mode::Shadow;
    let mut first = experiment("first", 1);
    first.arms[1].name = "tréatment ✓".into();
    for e in [&shadow, &second, &first] {
        store.save_experiment(e).await.unwrap();
    }
    assert_eq!(store.experiments().await.unwrap(), [first.clone(), second.clone(), shadow.clone()]);

    // Started, and made the default.
    first.status = Status::Running;
    first.started_at = Some(at(10));
    first.updated_at = at(10);
    first.default = true;
    store.save_experiment(&first).await.unwrap();
    assert_eq!(store.experiments().await.unwrap(), [first.clone(), second.clone(), shadow.clone()]);

    // Another default: the previous one is unset by the same save.
    second.default = true;
    second.updated_at = at(11);
    store.save_experiment(&second).await.unwrap();
    let all = store.experiments().await.unwrap();
    assert_eq!(defaults(&all), [("first", false), ("second", true), ("shadow", false)]);
    assert_eq!(all[1], second);

    // Stopped, then promoted: the promotion is stored once and never replaced or cleared afterwards.
    first.default = false;
    first.status = Status::Stopped;
    first.stopped_at = Some(at(20));
    first.updated_at = at(20);
    store.save_experiment(&first).await.unwrap();
    assert_eq!(store.experiments().await.unwrap()[0], first);
    first.promotion = Some(promotion("control"));
    store.save_experiment(&first).await.unwrap();
    assert_eq!(store.experiments().await.unwrap()[0].promotion, Some(promotion("control")));
    for (later, status) in [(Some(promotion("treatment")), Status::Stopped), (None, Status::Archived)] {
        first.promotion = later;
        first.status = status;
        store.save_experiment(&first).await.unwrap();
        let stored = &store.experiments().await.unwrap()[0];
        assert_eq!(stored.promotion, Some(promotion("control")), "the first promotion stays");
        assert_eq!(stored.status, status, "the rest of the save applies");
    }
    let all = store.experiments().await.unwrap();
    assert_eq!(defaults(&all), [("first", false), ("second", true), ("shadow", false)]);
    store.close().await;
}

fn item(position: u32, doc_id: &str, team: &str) -> ExposureItem {
    ExposureItem { position, doc_id: doc_id.into(), team: team.into() }
}

fn shadow_record(request: &str, jaccard: f64) -> ShadowRecord {
    ShadowRecord {
        request_id: request.into(),
        experiment_id: "ab".into(),
        experiment_name: "experiment ab".into(),
        arm: "treatment".into(),
        version: "w1".into(),
        doc_ids: vec!["d3".into(), "d1".into()],
        jaccard,
        rbo: 0.625,
        latency_ms: 3.25,
    }
}

pub async fn exposures_are_logged_once_per_request(store: Arc<dyn Store>) {
    store.save_experiment(&experiment("ab", 1)).await.unwrap();
    store.save_experiment(&experiment("other", 2)).await.unwrap();
    let r1 = exposure(
        "r1",
        "ab",
        Some("control"),
        &[(2, "d2", "control"), (1, "d1", "control"), (3, "d3", "control")],
        &[("control", "v1")],
        12.5,
    );
    store.write_exposures(&[r1], &[shadow_record("r1", 0.5)]).await.unwrap();
    let shown_r1 = Shown {
        experiment_id: "ab".into(),
        arm: Some("control".into()),
        items: vec![item(1, "d1", "control"), item(2, "d2", "control"), item(3, "d3", "control")],
    };
    assert_eq!(store.shown("r1").await.unwrap(), Some(shown_r1.clone()), "items in position order");
    assert_eq!(store.shown("never").await.unwrap(), None);

    // The same request again (a retried batch) changes nothing; a new one in the same batch is logged.
    let r1_again = exposure("r1", "ab", Some("treatment"), &[(1, "d9", "treatment")], &[("treatment", "w1")], 1.0);
    let r2 = exposure(
        "r2",
        "ab",
        None,
        &[(1, "d1", "treatment"), (2, "d2", "control"), (3, "d4", "treatment")],
        &[("control", "v1"), ("treatment", "w1")],
        20.0,
    );
    store.write_exposures(&[r1_again, r2], &[shadow_record("r1", 0.9)]).await.unwrap();
    assert_eq!(store.shown("r1").await.unwrap(), Some(shown_r1));
    let shown_r2 = Shown {
        experiment_id: "ab".into(),
        arm: None,
        items: vec![item(1, "d1", "treatment"), item(2, "d2", "control"), item(3, "d4", "treatment")],
    };
    assert_eq!(store.shown("r2").await.unwrap(), Some(shown_r2));
    let expected = ShadowRow { version: Some("w1".into()), jaccard: 0.5, rbo: 0.625, latency_ms: 3.25 };
    assert_eq!(store.shadow_rows("ab").await.unwrap(), [expected]);
    assert!(store.shadow_rows("other").await.unwrap().is_empty());
    store.write_exposures(&[], &[]).await.expect("an empty batch is no error");
    store.close().await;
}

pub async fn feedback_is_recorded_once_per_request_document_and_event(store: Arc<dyn Store>) {
    store.save_experiment(&experiment("ab", 1)).await.unwrap();
    let items = [(1, "d1", "control"), (2, "d2", "control"), (3, "d3", "control")];
    let r1 = exposure("r1", "ab", Some("control"), &items, &[("control", "v1")], 1.0);
    let r2 = exposure("r2", "ab", Some("control"), &items, &[("control", "v1")], 1.0);
    store.write_exposures(&[r1, r2], &[]).await.unwrap();
    assert!(store.add_feedback("r1", "d1", "click", 1).await.unwrap(), "first click recorded");
    assert!(!store.add_feedback("r1", "d1", "click", 1).await.unwrap(), "the same click again is not");
    assert!(store.add_feedback("r1", "d1", "conversion", 1).await.unwrap(), "another event on it is");
    assert!(store.add_feedback("r1", "d3", "click", 3).await.unwrap());
    assert!(store.add_feedback("r2", "d2", "click", 2).await.unwrap(), "the same document in another request");
    let mut clicked = store.clicked("r1").await.unwrap();
    clicked.sort();
    assert_eq!(clicked, ["d1", "d3"]);
    assert_eq!(store.clicked("r2").await.unwrap(), ["d2"]);
    assert!(store.clicked("never").await.unwrap().is_empty());
    store.close().await;
}

fn versions(pairs: &[(&str, &str)]) -> Versions {
    pairs.iter().map(|&(arm, version)| (arm.to_string(), version.to_string())).collect()
}

pub async fn reports_sum_outcomes_per_arm_and_versions(store: Arc<dyn Store>) {
    store.save_experiment(&experiment("ab", 1)).await.unwrap();
    let control = |request: &str, version: &str, latency: f64| {
        let items = [(1, "d1", "control"), (2, "d2", "control"), (3, "d3", "control")];
        exposure(request, "ab", Some("control"), &items, &[("control", version)], latency)
    };
    let treatment = |request: &str, latency: f64| {
        let items = [(1, "d1", "treatment"), (2, "d3", "treatment")];
        exposure(request, "ab", Some("treatment"), &items, &[("treatment", "w1")], latency)
    };
    // One batch each, in serving order.
    for e in [control("q1", "v1", 10.0), treatment("q2", 30.0), control("q3", "v1", 20.0), control("q4", "v2", 40.5)] {
        store.write_exposures(&[e], &[]).await.unwrap();
    }
    for (request, doc_id, event, position) in [
        ("q1", "d2", "click", 2),
        ("q1", "d2", "conversion", 2),
        ("q2", "d3", "click", 2),
        ("q2", "d1", "click", 1),
        ("q4", "d1", "click", 1),
    ] {
        assert!(store.add_feedback(request, doc_id, event, position).await.unwrap());
    }
    let outcome = |arm: &str, pairs: &[(&str, &str)], impressions, clicked, converted, rr_sum, rr_squares| ArmOutcome {
        arm: Some(arm.into()),
        versions: versions(pairs),
        impressions,
        clicked,
        converted,
        rr_sum,
        rr_squares,
    };
    assert_eq!(
        store.arm_outcomes("ab").await.unwrap(),
        [
            outcome("control", &[("control", "v1")], 2, 1, 1, 0.5, 0.25),
            outcome("control", &[("control", "v2")], 1, 1, 0, 1.0, 1.0),
            outcome("treatment", &[("treatment", "w1")], 1, 1, 0, 1.0, 1.0),
        ]
    );
    let mut latencies = store.latencies("ab").await.unwrap();
    latencies.sort_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms));
    let latency = |arm: &str, pairs: &[(&str, &str)], latency_ms| ExposureLatency {
        arm: Some(arm.into()),
        versions: versions(pairs),
        latency_ms,
    };
    assert_eq!(
        latencies,
        [
            latency("control", &[("control", "v1")], 10.0),
            latency("control", &[("control", "v1")], 20.0),
            latency("treatment", &[("treatment", "w1")], 30.0),
            latency("control", &[("control", "v2")], 40.5),
        ]
    );
    assert!(store.arm_outcomes("absent").await.unwrap().is_empty());
    assert!(store.latencies("absent").await.unwrap().is_empty());
    store.close().await;
}

pub async fn interleave_counts_credit_the_clicked_team(store: Arc<dyn Store>) {
    let mut e = experiment("il", 1);
    e.mode = Mode::Interleave;
    store.save_experiment(&e).await.unwrap();
    let v1 = [("control", "v1"), ("treatment", "w1")];
    let v2 = [("control", "v2"), ("treatment", "w1")];
    let mixed = [(1, "d1", "control"), (2, "d2", "treatment"), (3, "d3", "treatment"), (4, "d4", "control")];
    for (request, pairs) in [("i1", &v1), ("i2", &v1), ("i3", &v1), ("i4", &v1), ("i5", &v2)] {
        store.write_exposures(&[exposure(request, "il", None, &mixed, pairs, 5.0)], &[]).await.unwrap();
    }
    for (request, doc_id, event, position) in [
        ("i1", "d1", "click", 1),      // control wins
        ("i2", "d3", "click", 3),      // a tie: one each
        ("i2", "d4", "click", 4),      //
        ("i4", "d2", "click", 2),      // treatment wins
        ("i4", "d1", "conversion", 1), // a conversion is no click
        ("i5", "d4", "click", 4),      // control wins, under v2
    ] {
        assert!(store.add_feedback(request, doc_id, event, position).await.unwrap());
    }
    assert_eq!(
        store.interleave_counts("il", ["control", "treatment"]).await.unwrap(),
        [
            InterleaveCounts {
                versions: versions(&v1),
                impressions: 4,
                wins: [1, 1],
                ties: 1,
                no_click: 1,
                clicks: [2, 2]
            },
            InterleaveCounts {
                versions: versions(&v2),
                impressions: 1,
                wins: [1, 0],
                ties: 0,
                no_click: 0,
                clicks: [1, 0]
            },
        ]
    );
    // Interleaved impressions summed per versions under no arm: i1 (rr 1), i2 (1/3), i3 (0), i4 (1/2).
    let outcomes = store.arm_outcomes("il").await.unwrap();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert_eq!((outcomes[0].arm.as_ref(), &outcomes[0].versions), (None, &versions(&v1)));
    assert_eq!((outcomes[0].impressions, outcomes[0].clicked, outcomes[0].converted), (4, 3, 1));
    let rr = [1.0, 1.0 / 3.0, 0.0, 0.5];
    assert!((outcomes[0].rr_sum - rr.iter().sum::<f64>()).abs() < 1e-12, "{outcomes:?}");
    assert!((outcomes[0].rr_squares - rr.iter().map(|r| r * r).sum::<f64>()).abs() < 1e-12, "{outcomes:?}");
    let under_v2 = &outcomes[1];
    assert_eq!((under_v2.arm.as_ref(), &under_v2.versions), (None, &versions(&v2)));
    assert_eq!((under_v2.impressions, under_v2.clicked, under_v2.converted), (1, 1, 0));
    assert!((under_v2.rr_sum - 0.25).abs() < 1e-12 && (under_v2.rr_squares - 0.0625).abs() < 1e-12);
    store.close().await;
}
