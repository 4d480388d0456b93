//! Conformance cases for human judgements: grades on feedback events (a later grade replaces an earlier one, an
//! event without one stays ungraded) read back with the query of their search, and the interleaved impressions
//! one by one, oldest first, with the clicks credited to each team, summing to the interleaving counts.

use std::sync::Arc;

use duet::store::{GradedFeedback, InterleaveCounts, Mode, Store};

use super::{experiment, exposure};

pub async fn feedback_grades_are_kept_and_replaced(store: Arc<dyn Store>) {
    let mut e = experiment("il", 1);
    e.mode = Mode::Interleave;
    store.save_experiment(&e).await.unwrap();
    store.save_experiment(&experiment("other", 2)).await.unwrap();
    let items = [(1, "d1", "control"), (2, "d2", "treatment")];
    let mut with_tab = exposure("r2", "il", None, &items, &[], 1.0);
    with_tab.query = "a\tquery".into();
    let logged =
        [exposure("r1", "il", None, &items, &[], 1.0), with_tab, exposure("o1", "other", None, &items, &[], 1.0)];
    store.write_exposures(&logged, &[]).await.unwrap();
    for (request, doc_id, event, position) in
        [("r1", "d1", "click", 1), ("r1", "d2", "click", 2), ("r2", "d1", "click", 1), ("o1", "d1", "click", 1)]
    {
        assert!(store.add_feedback(request, doc_id, event, position).await.unwrap());
    }
    assert!(store.graded_feedback("il").await.unwrap().is_empty(), "nothing graded yet");
    store.set_feedback_grade("r1", "d1", "click", 2.0).await.unwrap();
    store.set_feedback_grade("r2", "d1", "click", 0.5).await.unwrap();
    store.set_feedback_grade("o1", "d1", "click", 9.0).await.unwrap();
    store.set_feedback_grade("r1", "d1", "click", 3.0).await.unwrap(); // a rater corrects a judgement
    store.set_feedback_grade("r1", "d1", "conversion", 7.0).await.unwrap(); // no such event: nothing changes
    let graded =
        |query: &str, doc_id: &str, grade| GradedFeedback { query: query.into(), doc_id: doc_id.into(), grade };
    let mut rows = store.graded_feedback("il").await.unwrap();
    rows.sort_by(|a, b| (&a.query, &a.doc_id).cmp(&(&b.query, &b.doc_id)));
    assert_eq!(rows, [graded("a\tquery", "d1", 0.5), graded("query of r1", "d1", 3.0)]);
    assert_eq!(store.graded_feedback("other").await.unwrap(), [graded("query of o1", "d1", 9.0)]);
    assert!(!store.add_feedback("r1", "d1", "click", 1).await.unwrap(), "a graded event is still one event");
    store.close().await;
}

pub async fn interleaved_impressions_are_listed_oldest_first(store: Arc<dyn Store>) {
    let mut e = experiment("il", 1);
    e.mode = Mode::Interleave;
    store.save_experiment(&e).await.unwrap();
    let mixed = [(1, "d1", "control"), (2, "d2", "treatment"), (3, "d3", "treatment")];
    for request in ["i1", "i2", "i3", "i4"] {
        store.write_exposures(&[exposure(request, "il", None, &mixed, &[], 5.0)], &[]).await.unwrap();
    }
    for (request, doc_id, event, position) in [
        ("i1", "d1", "click", 1),
        ("i2", "d2", "click", 2),
        ("i2", "d3", "click", 3),
        ("i3", "d1", "conversion", 1), // a conversion is no click
        ("i4", "d1", "click", 1),
        ("i4", "d2", "click", 2),
    ] {
        assert!(store.add_feedback(request, doc_id, event, position).await.unwrap());
    }
    let teams = ["control", "treatment"];
    let impressions = store.interleave_impressions("il", teams).await.unwrap();
    let clicks: Vec<[u64; 2]> = impressions.iter().map(|i| i.clicks).collect();
    assert_eq!(clicks, [[1, 0], [0, 2], [0, 0], [1, 1]], "in logging order");
    assert!(impressions.windows(2).all(|w| w[0].at <= w[1].at), "{impressions:?}");
    for i in &impressions {
        assert!(chrono::DateTime::parse_from_rfc3339(&i.at).is_ok(), "{i:?}");
    }
    let totals = InterleaveCounts::sum(&store.interleave_counts("il", teams).await.unwrap());
    assert_eq!(totals.impressions, impressions.len() as u64);
    assert_eq!(totals.clicks, [2, 3]);
    assert!(store.interleave_impressions("absent", teams).await.unwrap().is_empty());
    store.close().await;
}
