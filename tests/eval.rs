//! `duet eval` end to end on a small synthetic pair set: the tiny models and BM25 through the engine, every section
//! of the report and its files; then a learning curve that trains two-tower models with `duet train`'s code.

use std::path::Path;

use duet::eval::curve::{learning_curve, CurveOptions};
use duet::eval::run::{evaluate, write_report, RunOptions};
use duet::eval::stats::Resampling;
use duet::eval::EvalOptions;
use duet::train::TrainConfig;

/// Documents are snake_case/camelCase "functions" named after two words; queries name the words in English.
/// 200 documents: pairs of the first 160 are for training, of the last 40 for testing.
fn write_set(dir: &Path) {
    let syllables = ["ka", "lo", "mi", "nu", "pe", "ri", "so", "tu"];
    let words: Vec<String> = (0..40)
        .map(|i| format!("{}{}{}", syllables[i % 8], syllables[(i / 8) % 8], syllables[(i * 3 + 1) % 8]))
        .collect();
    let (mut corpus, mut train, mut test) = (String::new(), String::new(), String::new());
    for i in 0..200 {
        let (w1, w2) = (&words[i % 40], &words[(i / 40 + 1 + i % 40) % 40]);
        let mut cap = w2.clone();
        cap[..1].make_ascii_uppercase();
        let doc = format!("def get_{w1}{cap}(self, value):\n    return self.data[value]");
        corpus += &format!("{}\n", serde_json::json!({"id": format!("d{i}"), "text": doc}));
        let pair =
            serde_json::json!({"query": format!("return the {w1} of a {w2} from the data"), "doc_id": format!("d{i}")});
        if i < 160 {
            train += &format!("{pair}\n");
        } else {
            test += &format!("{pair}\n");
        }
    }
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(dir.join("train.jsonl"), train).unwrap();
    std::fs::write(dir.join("test.jsonl"), test).unwrap();
}

fn run_options(dir: &Path, models: &[&str]) -> RunOptions {
    let data = EvalOptions {
        data: dir.to_path_buf(),
        max_docs: Some(120),
        max_queries: None,
        ks: vec![1, 10, 50],
        seed: 3,
        qrels: None,
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = models.iter().map(|m| repo.join("models").join(m)).collect();
    let mut options = RunOptions::new(data, models, dir.join("cache/eval.db"));
    options.resampling = Resampling { bootstrap_resamples: 200, permutations: 500, ..Default::default() };
    options.cost_documents = 8;
    options.quality_queries = 20;
    options.document_pairs = 200;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_has_every_system_section_and_file() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path());
    let options = run_options(dir.path(), &["tiny-encoder", "tiny-two-tower"]);
    let report = evaluate(&options).await.expect("evaluation runs");
    assert_eq!((report.corpus_documents, report.corpus_total, report.queries), (120, 200, 40));
    let rows: Vec<(String, String)> = report.scores.iter().map(|s| (s.system.clone(), s.method.clone())).collect();
    assert_eq!(rows.len(), 5, "two models × (exact, hnsw) + bm25: {rows:?}");
    assert_eq!(rows[4], ("bm25".to_string(), "lexical".to_string()));
    // 3 systems (models by exact search, bm25): 3 pairs × 2 metrics.
    assert_eq!(report.comparisons.len(), 6);
    for c in &report.comparisons {
        assert_eq!(c.wins + c.ties + c.losses, 40);
        assert!((0.0..=1.0).contains(&c.p_value) && c.p_holm >= c.p_value);
    }
    for s in &report.scores {
        assert!(s.mrr_at_10.low <= s.mrr_at_10.mean && s.mrr_at_10.mean <= s.mrr_at_10.high);
        assert_eq!(s.recall_curve.len(), 50);
        assert!(s.recall_curve.windows(2).all(|w| w[0] <= w[1] + 1e-12), "recall grows with k");
    }
    // The words are shared tokens, so BM25 finds most documents at once.
    let bm25 = &report.scores[4];
    assert!(bm25.mrr_at_10.mean > 0.5, "{bm25:?}");
    assert_eq!(report.quality.len(), 2);
    // (The tiny models know few of these made-up words: their document vectors nearly coincide, anisotropy ≈ 1.)
    assert!(report.quality.iter().all(|q| q.queries == 20 && q.uniformity <= 1e-6 && q.anisotropy <= 1.0 + 1e-6));
    assert_eq!(report.cost.len(), 3);
    assert!(report.cost.iter().take(2).all(|c| c.model_bytes > 0 && c.index_bytes > 0 && c.encode_sample == 8));
    let out = dir.path().join("report");
    write_report(&report, &out).unwrap();
    for file in ["report.json", "report.md", "recall_at_k.svg", "scores.svg"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["scores"][0]["system"], "tiny-encoder");
    let again = evaluate(&options).await.unwrap();
    // A second run reads the embeddings from the cache; the same sample gives the same BM25 numbers.
    assert_eq!(again.scores.len(), 5);
    assert_eq!(again.scores[4].mrr_at_10, report.scores[4].mrr_at_10);
    assert_eq!(again.comparisons.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learning_curve_trains_each_size_and_names_the_crossovers() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path());
    let mut run = run_options(dir.path(), &["tiny-encoder"]);
    run.quality_queries = 0;
    run.cost_documents = 0;
    let train = TrainConfig {
        vocab_size: 400,
        min_frequency: 1,
        embedding_dim: 16,
        output_dim: 16,
        batch_size: 16,
        epochs: 3,
        learning_rate: 1e-2,
        validation_fraction: 0.2,
        validation_by_source: false,
        validation_candidates: 200,
        ..Default::default()
    };
    let out = dir.path().join("curve");
    let options = CurveOptions { run, sizes: vec![Some(40), None], train, out: out.clone() };
    let curve = learning_curve(&options).await.expect("learning curve runs");
    let given: Vec<usize> = curve.points.iter().map(|p| p.trained.pairs_given).collect();
    assert_eq!(given, [40, 160]);
    assert_eq!(curve.points[0].trained.name, "two-tower-40");
    assert_eq!(curve.points[1].trained.name, "two-tower-all");
    // One crossover per reference: the tiny encoder and BM25.
    let references: Vec<&str> = curve.crossovers.iter().map(|c| c.reference.as_str()).collect();
    assert_eq!(references, ["tiny-encoder", "bm25"]);
    assert!(curve.crossovers.iter().all(|c| !c.reading.is_empty()));
    for file in
        ["learning_curve.svg", "learning_curve.json", "learning_curve.md", "report.md", "pairs/two-tower-40.jsonl"]
    {
        assert!(out.join(file).is_file(), "{file}");
    }
    let subset = std::fs::read_to_string(out.join("pairs/two-tower-40.jsonl")).unwrap();
    assert_eq!(subset.lines().count(), 40);
}
