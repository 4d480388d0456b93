//! `duet bench-search`'s library function, run briefly against a tiny model: the report has every concurrency
//! level asked for, with answered searches and consistent figures, the in-process baselines and the overload
//! phase. No timing thresholds: performance is the benchmark's to show, not a test's.

mod common;

use std::time::Duration;

use duet::server::load_bench::{self, LoadBenchSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_reports_every_level_with_sane_numbers() {
    let work = tempfile::tempdir().unwrap();
    let settings = LoadBenchSettings {
        models: vec![common::repo().join("models/tiny-encoder")],
        corpus: common::repo().join("examples/corpus.jsonl"),
        documents: 1000,
        queries: None,
        query_chars: 200,
        levels: vec![1, 8, 32, 128],
        warmup: Duration::from_millis(50),
        window: Duration::from_millis(300),
        encoder_batch: 32,
        overload_window: Duration::from_millis(300),
        overload_factor: 2.0,
        overload_queue_capacity: 4,
        k: 5,
        intra_threads: None,
        onnxruntime: None,
        work_dir: work.path().to_path_buf(),
    };
    let outcome = load_bench::run(settings, |_| {}).await.expect("the benchmark runs");
    assert!(outcome.documents > 0);
    assert_eq!(outcome.model, "tiny-encoder");
    let clients: Vec<usize> = outcome.levels.iter().map(|l| l.clients).collect();
    assert_eq!(clients, [1, 8, 32, 128]);
    for level in &outcome.levels {
        let s = &level.stats;
        assert!(s.answered > 0, "{} clients: nothing answered", level.clients);
        assert_eq!(s.errors + s.failed, 0, "{} clients: {s:?}", level.clients);
        assert!(s.qps > 0.0 && s.qps.is_finite());
        assert!(s.latency_ms.p50 > 0.0 && s.latency_ms.p50 <= s.latency_ms.p99 && s.latency_ms.p99 <= s.latency_ms.max);
    }
    assert!(outcome.in_process.answered > 0 && outcome.in_process.latency_ms.p50 > 0.0);
    assert!(outcome.encoder_qps > 0.0);
    // Every text sent was distinct: more of them than the corpus holds means the round numbers were used.
    assert!(outcome.queries_sent > outcome.levels.iter().map(|l| l.stats.answered).sum::<usize>());

    let overload = outcome.overload.as_ref().expect("the overload phase ran");
    assert!(overload.rate > overload.capacity_qps);
    assert!(overload.unloaded.answered > 0);
    let loaded = &overload.loaded;
    assert_eq!(loaded.errors, 0, "{loaded:?}");
    assert!(loaded.requests > 0 && loaded.answered + loaded.refused + loaded.failed == loaded.requests);
    assert!((0.0..=1.0).contains(&loaded.refused_fraction));

    let r = &outcome.ratios;
    assert!(r.http_p50_over_in_process > 0.0 && r.http_p50_over_in_process.is_finite());
    assert!(r.qps_32_over_encoder.is_some_and(|v| v > 0.0 && v.is_finite()));
    assert!(r.admitted_p99_over_unloaded.is_some_and(|v| v.is_finite()));

    let table = load_bench::markdown(&outcome);
    for clients in [1, 8, 32, 128] {
        assert!(table.contains(&format!("HTTP, {clients} clients")), "{table}");
    }
    assert!(table.contains("P2") && table.contains("P6"));
}
