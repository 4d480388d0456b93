//! Tests of the graph backends behind the index (both answer, filter and keep one copy of each vector; f16 and
//! i8 storage) and of graph snapshots (a round trip answers alike; corrupt and stale files are refused).

use super::snapshot::{self, Expected, Header, SnapshotError};
use super::*;

fn clustered(n: usize, dim: usize, seed: u64) -> Vec<(String, Vec<f32>)> {
    let mut rng = crate::util::rng::Rng::new(seed);
    let centres: Vec<Vec<f32>> = (0..20).map(|_| (0..dim).map(|_| rng.normal() as f32).collect()).collect();
    (0..n)
        .map(|i| {
            let c = &centres[rng.below(centres.len())];
            (format!("d{i}"), c.iter().map(|x| x + 0.5 * rng.normal() as f32).collect())
        })
        .collect()
}

fn params(backend: Backend, precision: Precision) -> IndexParams {
    IndexParams { exact_below: 10, m: 12, ef_construction: 64, backend, precision, ..IndexParams::default() }
}

fn built(backend: Backend, precision: Precision, items: &[(String, Vec<f32>)], dim: usize) -> VectorIndex {
    let index = VectorIndex::new(dim, params(backend, precision));
    index.upsert(items.to_vec()).unwrap();
    assert!(index.rebuild_graph());
    assert!(index.has_graph());
    index
}

fn mean_recall(index: &VectorIndex, queries: &[(String, Vec<f32>)]) -> f64 {
    let total: f64 = queries
        .iter()
        .map(|(_, q)| {
            let approx = index.search(q, 10, Some(64), false);
            assert_eq!(approx.method, SearchMethod::Hnsw);
            recall(&approx.hits, &index.search(q, 10, None, true).hits)
        })
        .sum();
    total / queries.len() as f64
}

#[test]
fn both_backends_answer_filter_dead_entries_and_hold_vectors_once() {
    let items = clustered(1500, 16, 1);
    let queries = clustered(30, 16, 2);
    for backend in [Backend::Usearch, Backend::HnswRs] {
        let index = built(backend, Precision::F32, &items, 16);
        assert!(mean_recall(&index, &queries) > 0.9, "{backend:?}");
        assert!(index.inner.read().vectors.is_empty(), "{backend:?}: with a graph, the graph holds the vectors");
        // The best match deleted and the second replaced: neither comes back, and exact search still reads every
        // live vector back from the graph.
        let q = &queries[0].1;
        let best: Vec<String> = index.search(q, 2, None, true).hits.iter().map(|h| h.id.to_string()).collect();
        index.delete(&best[0]);
        index.upsert(vec![(best[1].clone(), vec![-1.0; 16])]).unwrap();
        let after = index.search(q, 10, Some(64), false);
        assert!(after.hits.iter().all(|h| h.id.as_ref() != best[0] && h.id.as_ref() != best[1]), "{backend:?}");
        assert_eq!(index.search(q, 2000, None, true).hits.len(), 1499, "{backend:?}");
    }
}

#[test]
fn f16_and_i8_storage_keep_recall_and_take_less_memory() {
    let items = clustered(1500, 128, 3);
    let queries = clustered(30, 128, 4);
    let f32_bytes = built(Backend::Usearch, Precision::F32, &items, 128).bytes_per_vector();
    for precision in [Precision::F16, Precision::I8] {
        let index = built(Backend::Usearch, precision, &items, 128);
        assert!(mean_recall(&index, &queries) > 0.85, "{precision:?}");
        let bytes = index.bytes_per_vector();
        assert!(bytes < f32_bytes, "{precision:?}: {bytes} bytes per vector, f32 {f32_bytes}");
    }
    assert!(params(Backend::HnswRs, Precision::F16).problem().is_some(), "hnsw_rs stores f32 only");
}

fn expected_of(index: &VectorIndex, sequence: i64) -> Expected {
    Expected {
        model: "m".into(),
        version: "v1".into(),
        dimension: index.dimension(),
        backend: index.params().backend,
        precision: index.params().precision,
        sequence,
        documents: index.len(),
    }
}

fn save(index: &VectorIndex, path: &std::path::Path, sequence: i64) {
    let exported = index.export().unwrap().expect("a graph");
    let want = expected_of(index, sequence);
    let header = Header { documents: index.len(), ..Header::from(want) };
    snapshot::write(path, header, &exported).unwrap();
}

#[test]
fn a_loaded_snapshot_answers_like_the_index_that_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = snapshot::path(dir.path(), "m", "v1");
    let items = clustered(2000, 16, 5);
    let index = built(Backend::Usearch, Precision::F32, &items, 16);
    index.delete("d7");
    index.upsert(vec![("d8".into(), vec![1.0; 16]), ("extra".into(), vec![0.5; 16])]).unwrap();
    save(&index, &path, 42);

    let (header, exported) = snapshot::read(&path, &expected_of(&index, 42)).unwrap();
    assert_eq!((header.sequence, header.documents), (42, index.len()));
    let loaded = VectorIndex::new(16, *index.params());
    loaded.restore(exported).unwrap();
    assert_eq!((loaded.len(), loaded.has_graph(), loaded.contains("d7")), (index.len(), true, false));
    for (_, q) in clustered(40, 16, 6) {
        for exact in [false, true] {
            assert_eq!(loaded.search(&q, 10, Some(32), exact).hits, index.search(&q, 10, Some(32), exact).hits);
        }
    }
    // The loaded index takes writes and rebuilds like any other.
    loaded.upsert(vec![("later".into(), vec![-0.5; 16])]).unwrap();
    assert_eq!(&*loaded.search(&[-0.5; 16], 1, None, false).hits[0].id, "later");
    assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".tmp")));
}

#[test]
fn flipped_bytes_truncation_and_stale_snapshots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = snapshot::path(dir.path(), "m", "v1");
    let index = built(Backend::Usearch, Precision::F32, &clustered(500, 8, 7), 8);
    save(&index, &path, 10);
    let good = std::fs::read(&path).unwrap();
    let want = expected_of(&index, 10);
    assert!(snapshot::read(&path, &want).is_ok());

    let mut flipped = good.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x40;
    std::fs::write(&path, &flipped).unwrap();
    assert!(matches!(snapshot::read(&path, &want), Err(SnapshotError::Corrupt(_))), "a flipped byte");
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert!(matches!(snapshot::read(&path, &want), Err(SnapshotError::Corrupt(_))), "a truncated file");
    std::fs::write(&path, &good[..10]).unwrap();
    assert!(matches!(snapshot::read(&path, &want), Err(SnapshotError::Corrupt(_))), "a torn header");

    std::fs::write(&path, &good).unwrap();
    let stale = |e: Expected| matches!(snapshot::read(&path, &e), Err(SnapshotError::Stale(_)));
    assert!(stale(Expected { sequence: 11, ..want.clone() }), "the store changed after it was written");
    assert!(stale(Expected { documents: want.documents + 1, ..want.clone() }), "another document count");
    assert!(stale(Expected { dimension: 9, ..want.clone() }), "another dimension");
    assert!(stale(Expected { version: "v2".into(), ..want.clone() }), "another version");
    assert!(stale(Expected { precision: Precision::F16, ..want.clone() }), "another precision");
    assert!(matches!(snapshot::read(&dir.path().join("none"), &want), Err(SnapshotError::Missing)));
}
