//! `duet train` on a small synthetic pair set: the model learns (validation recall far above chance), the
//! exported ONNX towers reproduce the trainer's forward pass through Duet's own serving path, and training is
//! deterministic for a seed.

use std::path::Path;

use duet::encoder::{onnx::SessionOptions, Manifest, Side};
use duet::train::tower::TowerPooling;
use duet::train::{train, TrainConfig, TrainOptions, Trained};

/// Each document is a snake_case/camelCase "function" named after two words of a small pool (each pair of words
/// once) plus filler every document shares; its query names the same two words in plain English with other
/// filler. Only the two words link a query to its document.
fn write_pairs(dir: &Path, n: usize) {
    let syllables = ["ka", "lo", "mi", "nu", "pe", "ri", "so", "tu"];
    let words: Vec<String> = (0..40)
        .map(|i| format!("{}{}{}", syllables[i % 8], syllables[(i / 8) % 8], syllables[(i * 3 + 1) % 8]))
        .collect();
    let mut corpus = String::new();
    let mut pairs = String::new();
    for i in 0..n {
        let (w1, w2) = (&words[i % 40], &words[(i / 40 + 1 + i % 40) % 40]);
        let mut cap = w2.clone();
        cap[..1].make_ascii_uppercase();
        let doc = format!("def get_{w1}{cap}(self, value):\n    return self.data[value]");
        let query = format!("return the {w1} of a {w2} from the data");
        corpus.push_str(&serde_json::json!({"id": format!("d{i}"), "text": doc}).to_string());
        corpus.push('\n');
        pairs.push_str(&serde_json::json!({"query": query, "doc_id": format!("d{i}")}).to_string());
        pairs.push('\n');
    }
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(dir.join("train.jsonl"), pairs).unwrap();
}

fn config(pooling: TowerPooling) -> TrainConfig {
    TrainConfig {
        vocab_size: 600,
        min_frequency: 1,
        embedding_dim: 32,
        hidden_dim: if pooling == TowerPooling::Attention { 24 } else { 0 },
        output_dim: 16,
        pooling,
        batch_size: 32,
        epochs: 8,
        learning_rate: 1e-2,
        validation_fraction: 0.2,
        validation_candidates: 1000,
        patience: 8,
        hard_negatives: true,
        // The plain learned towers; the lexical channel and term-frequency saturation are tested on their own.
        lexical_dim: 0,
        tf_power: 1.0,
        ..Default::default()
    }
}

fn run(dir: &Path, out: &str, config: TrainConfig) -> Trained {
    let options = TrainOptions {
        pairs: dir.join("train.jsonl"),
        corpus: dir.join("corpus.jsonl"),
        out: dir.join(out),
        name: None,
        config,
        teacher_cache: None,
        onnxruntime: None,
    };
    train(&options, &mut |_| {}).expect("training succeeds")
}

/// Max |trainer - ONNX| over a batch with padding (texts of very different lengths, one empty, one cut).
fn export_difference(dir: &Path, trained: &Trained) -> f32 {
    let long = "value ".repeat(400);
    let texts = [
        "return the kaloka of a mimi",
        "x",
        "",
        long.as_str(),
        "def get_loKaRi(self): return 3",
        "the data the data the value of the data",
    ];
    let resolved = Manifest::load(dir).expect("the manifest loads");
    let env = duet::encoder::runtime::environment(None).expect("ONNX Runtime is installed (scripts/setup)");
    let encoder = duet::encoder::onnx::load(&resolved, env, SessionOptions::default()).expect("the towers load");
    let mut worst = 0f32;
    for side in [Side::Query, Side::Document] {
        let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        let served = encoder.encode(&owned, side).unwrap();
        assert_eq!(served.truncated, [false, false, false, true, false, false]);
        let expected = trained.encode(&texts, side).unwrap();
        for (a, b) in served.vectors.iter().zip(&expected) {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    worst
}

#[test]
fn a_tiny_model_learns_and_its_onnx_towers_match_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    write_pairs(dir.path(), 400);
    // BM25 hard negatives, IDF-scaled starting rows (the default); the last run adds n-gram features.
    let ngrams = TrainConfig { ngram_buckets: 256, ..config(TowerPooling::Attention) };
    // The fixed lexical channel, with square-root and binary term-frequency saturation.
    let lexical = TrainConfig { lexical_dim: 48, lexical_weight: 0.4, tf_power: 0.5, ..config(TowerPooling::Mean) };
    let lexical_attention = TrainConfig { lexical_dim: 48, tf_power: 0.0, ..config(TowerPooling::Attention) };
    for (pooling, out, config) in [
        (TowerPooling::Mean, "mean", config(TowerPooling::Mean)),
        (TowerPooling::Attention, "attention", config(TowerPooling::Attention)),
        (TowerPooling::Attention, "ngrams", ngrams),
        (TowerPooling::Mean, "lexical", lexical),
        (TowerPooling::Attention, "lexical-attention", lexical_attention),
    ] {
        let dimension = config.output_dim + config.lexical_dim;
        let trained = run(dir.path(), out, config);
        assert!(trained.report.hard_negative_pairs > 0, "{out}: no hard negatives mined");
        let r = &trained.report;
        assert_eq!(r.validation_pairs, 80);
        assert_eq!(r.validation_candidates, 400);
        // Chance is 10/400 = 0.025.
        assert!(r.validation_recall_at_10 > 0.5, "{pooling:?}: {r:?}");
        assert!(r.validation_mrr_at_10 > 0.3, "{pooling:?}: {r:?}");
        let model = dir.path().join(out);
        for file in ["query.onnx", "document.onnx", "tokenizer.json", "model.toml", "report.json"] {
            assert!(model.join(file).is_file(), "{file}");
        }
        assert_eq!(Manifest::load(&model).unwrap().manifest.dimension, dimension, "{out}");
        let diff = export_difference(&model, &trained);
        assert!(diff <= 1e-5, "{out}: ONNX differs from the trainer by {diff}");
        if out == "ngrams" {
            let tower = &trained.model.query;
            let table = &tower.ngrams.as_ref().expect("n-gram features").table;
            assert!(table.weights.iter().any(|w| *w != 0.0), "the n-gram rows were never trained");
        }
    }
}

/// Hard negatives and IDF initialisation can be switched off, and each setting changes what is trained.
#[test]
fn hard_negatives_and_idf_init_change_training_and_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    write_pairs(dir.path(), 200);
    let base = TrainConfig { epochs: 1, ..config(TowerPooling::Mean) };
    let plain = run(dir.path(), "plain", TrainConfig { hard_negatives: false, idf_init: false, ..base.clone() });
    assert_eq!(plain.report.hard_negative_pairs, 0);
    let hard = run(dir.path(), "hard", TrainConfig { idf_init: false, ..base.clone() });
    // Every training query shares its words with other documents, so each gets a hard negative, and the harder
    // batches raise the first epoch's loss.
    assert_eq!(hard.report.hard_negative_pairs, hard.report.train_pairs);
    assert!(hard.report.epochs[0].mean_loss > plain.report.epochs[0].mean_loss, "{:?}", hard.report.epochs);
    let idf = run(dir.path(), "idf", TrainConfig { hard_negatives: false, ..base });
    let read = |name: &str| std::fs::read(dir.path().join(name).join("query.onnx")).unwrap();
    assert!(read("idf") != read("plain"), "idf_init changed nothing");
    assert_eq!(idf.report.hard_negative_pairs, 0);
}

#[test]
fn training_is_deterministic_for_a_seed_and_towers_can_be_shared() {
    let dir = tempfile::tempdir().unwrap();
    write_pairs(dir.path(), 120);
    let quick = TrainConfig { epochs: 2, shared_towers: true, ..config(TowerPooling::Mean) };
    let a = run(dir.path(), "a", quick.clone());
    let b = run(dir.path(), "b", quick.clone());
    run(dir.path(), "c", TrainConfig { seed: 7, ..quick });
    let read = |name: &str, file: &str| std::fs::read(dir.path().join(name).join(file)).unwrap();
    for file in ["query.onnx", "document.onnx", "tokenizer.json"] {
        assert!(read("a", file) == read("b", file), "{file} differs between runs with the same seed");
    }
    assert!(read("a", "query.onnx") != read("c", "query.onnx"), "another seed gives the same weights");
    assert!(read("a", "query.onnx") == read("a", "document.onnx"), "shared towers differ");
    assert_eq!(a.report.epochs[1].mean_loss, b.report.epochs[1].mean_loss);
    assert!(a.model.document.is_none());
}
