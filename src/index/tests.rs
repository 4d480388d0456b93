//! Tests of the vector index: exact and HNSW answers, dead entries, slot compaction, rebuilds racing writes.

use super::*;

fn small() -> IndexParams {
    IndexParams { exact_below: 50, ..IndexParams::default() }
}

fn unit(angle: f32) -> Vec<f32> {
    vec![angle.cos(), angle.sin(), 0.0]
}

#[test]
fn exact_search_ranks_by_cosine_and_sees_upserts_and_deletes() {
    let index = VectorIndex::new(3, small());
    index.upsert(vec![("a".into(), unit(0.0)), ("b".into(), unit(0.5)), ("c".into(), vec![0.0, 0.0, 5.0])]).unwrap();
    let out = index.search(&[2.0, 0.0, 0.0], 2, None, false);
    assert_eq!(out.method, SearchMethod::Exact);
    let ids: Vec<&str> = out.hits.iter().map(|h| &*h.id).collect();
    assert_eq!(ids, ["a", "b"]);
    assert!((out.hits[0].score - 1.0).abs() < 1e-6);
    assert!((out.hits[1].score - 0.5f32.cos()).abs() < 1e-6);

    index.upsert(vec![("a".into(), vec![0.0, 0.0, 1.0])]).unwrap();
    assert_eq!(&*index.search(&[1.0, 0.0, 0.0], 1, None, false).hits[0].id, "b", "replaced vector is gone");
    assert!(index.delete("b"));
    assert!(!index.delete("b"));
    assert_eq!(index.len(), 2);
    let ids: Vec<String> =
        index.search(&[1.0, 0.0, 0.0], 10, None, false).hits.iter().map(|h| h.id.to_string()).collect();
    assert_eq!(ids, ["a", "c"], "ties break by id; deleted ids never come back");
}

#[test]
fn dimension_mismatch_is_refused() {
    let index = VectorIndex::new(3, small());
    assert!(matches!(index.upsert(vec![("x".into(), vec![1.0])]), Err(IndexError::Dimension { .. })));
}

#[test]
fn graph_is_built_past_the_threshold_and_filters_dead_entries() {
    let index = VectorIndex::new(3, small());
    let items: Vec<(String, Vec<f32>)> = (0..200).map(|i| (format!("d{i}"), unit(i as f32 * 0.01))).collect();
    index.upsert(items).unwrap();
    assert!(index.needs_rebuild());
    assert!(index.rebuild_graph());
    assert!(index.has_graph());
    let out = index.search(&unit(0.0), 5, Some(32), false);
    assert_eq!(out.method, SearchMethod::Hnsw);
    assert_eq!(&*out.hits[0].id, "d0");

    // Delete the best match and replace the second: both must vanish from HNSW results at once.
    index.delete("d0");
    index.upsert(vec![("d1".into(), vec![0.0, 0.0, 1.0])]).unwrap();
    assert_eq!(index.dead_in_graph(), 2);
    let out = index.search(&unit(0.0), 3, None, false);
    let ids: Vec<&str> = out.hits.iter().map(|h| &*h.id).collect();
    assert_eq!(ids, ["d2", "d3", "d4"]);
    let exact = index.search(&unit(0.0), 3, None, true);
    assert_eq!(exact.method, SearchMethod::Exact);
    assert_eq!(recall(&out.hits, &exact.hits), 1.0);

    // Many deletions trigger a rebuild that drops the dead entries.
    for i in 100..200 {
        index.delete(&format!("d{i}"));
    }
    assert!(index.needs_rebuild());
    index.rebuild_graph();
    assert_eq!(index.dead_in_graph(), 0);
    assert_eq!((index.slots(), index.len()), (99, 99), "the rebuild dropped every dead slot");
    assert_eq!(index.search(&unit(1.5), 1, None, false).hits[0].id.as_ref(), "d99");
}

fn vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut rng = crate::util::rng::Rng::new(seed);
    (0..dim).map(|_| rng.uniform() as f32 - 0.5).collect()
}

#[test]
fn exact_mode_slots_stay_bounded_over_100k_re_upserts_of_the_same_ids() {
    let index = VectorIndex::new(8, IndexParams { exact_below: 1000, ..IndexParams::default() });
    let ids = 200;
    for round in 0..100_000u64 {
        let id = round % ids;
        index.upsert(vec![(format!("d{id}"), vector(round, 8))]).unwrap();
        assert!(index.slots() <= 200 + MIN_DEAD_BEFORE_COMPACTION + 1, "{} slots at round {round}", index.slots());
    }
    assert_eq!(index.len(), 200);
    assert!(!index.has_graph());
    // The last vector written for each id is the one found.
    let last = vector(99_999, 8);
    assert_eq!(&*index.search(&last, 1, None, true).hits[0].id, format!("d{}", 99_999 % ids));
}

#[test]
fn graph_mode_slots_stay_bounded_when_rebuilt_as_needed() {
    let params = IndexParams { exact_below: 100, ef_construction: 32, m: 8, ..IndexParams::default() };
    let index = VectorIndex::new(8, params);
    let batch = |round: u64| -> Vec<(String, Vec<f32>)> {
        (0..100).map(|i| (format!("d{i}"), vector(round * 1000 + i, 8))).collect()
    };
    let mut rebuilds = 0;
    for round in 0..200u64 {
        index.upsert(batch(round)).unwrap();
        if index.needs_rebuild() {
            assert!(index.rebuild_graph());
            rebuilds += 1;
        }
        assert!(index.slots() <= 100 + 20 + 100, "{} slots at round {round}", index.slots());
    }
    assert!(index.has_graph() && rebuilds > 50, "{rebuilds} rebuilds");
    assert_eq!(index.len(), 100);
    for i in [0u64, 42, 99] {
        let out = index.search(&vector(199 * 1000 + i, 8), 1, Some(64), false);
        assert_eq!(out.method, SearchMethod::Hnsw);
        assert_eq!(&*out.hits[0].id, format!("d{i}"), "the current vector is found after renumbering");
    }
}

#[test]
fn a_rebuild_replays_the_writes_made_while_it_ran() {
    let params = IndexParams { exact_below: 100, ef_construction: 64, m: 12, ..IndexParams::default() };
    let index = Arc::new(VectorIndex::new(8, params));
    index.upsert((0..3000).map(|i| (format!("d{i}"), vector(i, 8))).collect()).unwrap();
    let writer = {
        let index = index.clone();
        std::thread::spawn(move || {
            for round in 0..300u64 {
                let i = round * 7 % 3000;
                index.upsert(vec![(format!("d{i}"), vector(10_000 + round, 8))]).unwrap();
                index.upsert(vec![(format!("new{round}"), vector(20_000 + round, 8))]).unwrap();
                index.delete(&format!("d{}", (round * 13 + 1) % 3000));
            }
        })
    };
    while !writer.is_finished() {
        index.rebuild_graph();
    }
    writer.join().unwrap();
    index.rebuild_graph();
    let inner = index.inner.read();
    assert_eq!(inner.by_id.len(), index.len());
    assert_eq!(inner.alive.iter().filter(|&&a| a).count(), index.len(), "one live slot per id");
    for (id, &slot) in &inner.by_id {
        assert_eq!(&inner.ids[slot], id);
    }
    drop(inner);
    for round in [0u64, 150, 299] {
        let out = index.search(&vector(20_000 + round, 8), 1, Some(128), false);
        assert_eq!(out.method, SearchMethod::Hnsw);
        assert_eq!(&*out.hits[0].id, format!("new{round}"), "written during a rebuild, found after it");
        let deleted = format!("d{}", (round * 13 + 1) % 3000);
        let rewritten = (0..300u64).any(|r| format!("d{}", r * 7 % 3000) == deleted && r > round);
        assert!(rewritten || !index.contains(&deleted), "{deleted} was deleted");
    }
}

#[test]
fn non_finite_vectors_are_refused_and_never_ranked() {
    let index = VectorIndex::new(3, small());
    let err = index.upsert(vec![("n".into(), vec![f32::NAN, 0.0, 1.0])]).unwrap_err();
    assert!(matches!(err, IndexError::NonFinite { .. }), "{err}");
    index.upsert(vec![("a".into(), unit(0.0))]).unwrap();
    let out = index.search(&[f32::NAN, 0.0, 0.0], 5, None, false);
    assert!(out.hits.iter().all(|h| h.score.is_finite()), "{:?}", out.hits);
}
