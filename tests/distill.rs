//! `duet train --teacher` on a small synthetic pair set with a tiny served model as the teacher: the student's
//! loss carries the teacher's scores (a distillation term every epoch, other weights than without a teacher),
//! the teacher's hard negatives are mined, and its vectors are cached in a store so a re-run encodes nothing and
//! trains the same model byte for byte.

use std::path::{Path, PathBuf};

use duet::train::{train, NegativeSource, TrainConfig, TrainOptions, Trained};

/// Documents are "functions" named after two words of a small pool, with a docstring naming them; each query
/// names the same two words in plain English (as in tests/train.rs). The words are in the tiny teacher's
/// vocabulary, so its (random) vectors tell the texts apart.
fn write_pairs(dir: &Path, n: usize) {
    let words = [
        "about",
        "address",
        "algorithm",
        "archive",
        "backoff",
        "binary",
        "black",
        "block",
        "body",
        "book",
        "branch",
        "cache",
        "check",
        "chunks",
        "class",
        "code",
        "command",
        "commit",
        "compress",
        "concurrency",
        "cookbook",
        "country",
        "cron",
        "csv",
        "date",
        "desert",
        "detective",
        "dictionary",
        "digits",
        "directory",
        "disk",
        "divisor",
        "document",
        "duplicate",
        "email",
        "environment",
        "error",
        "expression",
        "extension",
        "garden",
    ];
    let (mut corpus, mut pairs) = (String::new(), String::new());
    for i in 0..n {
        let (w1, w2) = (words[i % 40], words[(i / 40 + 1 + i % 40) % 40]);
        let doc = format!("def get_{w1}_{w2}(value):\n    \"\"\"get the {w1} of the {w2}\"\"\"\n    return value");
        let query = format!("return the {w1} of a {w2} from the data");
        corpus += &format!("{}\n", serde_json::json!({"id": format!("d{i}"), "text": doc}));
        pairs += &format!("{}\n", serde_json::json!({"query": query, "doc_id": format!("d{i}")}));
    }
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(dir.join("train.jsonl"), pairs).unwrap();
}

fn teacher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-encoder")
}

fn config(teacher: Option<PathBuf>) -> TrainConfig {
    TrainConfig {
        vocab_size: 600,
        min_frequency: 1,
        embedding_dim: 32,
        output_dim: 16,
        batch_size: 32,
        epochs: 3,
        learning_rate: 1e-2,
        validation_fraction: 0.2,
        validation_candidates: 1000,
        patience: 8,
        lexical_dim: 0,
        teacher,
        // Half the training pairs, so some batches carry the teacher and some do not.
        teacher_pairs: 80,
        teacher_docs: 40,
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
        teacher_cache: Some(dir.join("cache/teacher.db")),
        onnxruntime: None,
    };
    train(&options, &mut |_| {}).expect("training succeeds")
}

fn read(dir: &Path, model: &str, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(model).join(file)).unwrap()
}

#[test]
fn a_teacher_adds_its_scores_to_the_loss_and_its_hard_negatives() {
    let dir = tempfile::tempdir().unwrap();
    write_pairs(dir.path(), 200);
    let alone = run(dir.path(), "alone", config(None));
    let taught = run(dir.path(), "taught", config(Some(teacher())));
    assert!(alone.report.teacher.is_none());
    assert!(alone.report.epochs.iter().all(|e| e.distill_loss.is_none()));
    let t = taught.report.teacher.as_ref().expect("a teacher report");
    assert_eq!((t.model.as_str(), t.pairs), ("tiny-encoder", 80));
    // 80 distinct queries; the pool is their 80 documents and 40 other training documents.
    assert_eq!((t.queries, t.documents, t.texts_encoded, t.texts_cached), (80, 120, 200, 0));
    assert!(t.hard_negative_pairs > 0 && t.hard_negative_pairs <= 80, "{t:?}");
    for epoch in &taught.report.epochs {
        let kl = epoch.distill_loss.expect("a distillation term each epoch");
        assert!(kl > 0.0 && kl.is_finite(), "{epoch:?}");
    }
    // The default hard negatives with a teacher are the teacher's: no BM25 ones.
    assert_eq!(taught.report.hard_negative_pairs, 0);
    assert!(read(dir.path(), "alone", "query.onnx") != read(dir.path(), "taught", "query.onnx"));
    assert!(read(dir.path(), "alone", "document.onnx") != read(dir.path(), "taught", "document.onnx"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("taught/report.json")).unwrap()).unwrap();
    assert_eq!(json["teacher"]["texts_encoded"], 200);
    assert!(json["epochs"][0]["distill_loss"].as_f64().unwrap() > 0.0);

    // Without the KL term and without teacher negatives the teacher changes nothing the student learns from
    // (only the batching of its pairs), so the term itself moves the weights.
    let no_kl = TrainConfig { distill_weight: 0.0, negatives: NegativeSource::None, ..config(Some(teacher())) };
    let _batched = run(dir.path(), "batched", no_kl);
    let kl_only = TrainConfig { negatives: NegativeSource::None, ..config(Some(teacher())) };
    let distilled = run(dir.path(), "kl-only", kl_only);
    assert_eq!(distilled.report.teacher.as_ref().unwrap().hard_negative_pairs, 0);
    assert!(read(dir.path(), "batched", "query.onnx") != read(dir.path(), "kl-only", "query.onnx"));
    // Both kinds of hard negatives together; a lower ceiling skips more candidates as likely positives.
    let both =
        TrainConfig { negatives: NegativeSource::Both, teacher_negative_ceiling: 0.5, ..config(Some(teacher())) };
    let both = run(dir.path(), "both", both);
    let skipped = both.report.teacher.as_ref().unwrap().skipped_false_negatives;
    assert!(both.report.hard_negative_pairs > 0, "BM25 negatives too");
    assert!(skipped > t.skipped_false_negatives, "{skipped} vs {}", t.skipped_false_negatives);
}

#[test]
fn a_second_run_reads_every_teacher_vector_from_the_cache_and_trains_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    write_pairs(dir.path(), 160);
    // The first run inside `block_on` of a multi-threaded runtime, as the command line calls the trainer (the
    // cache's own runtime must neither block nor be dropped there).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
    let first = runtime.block_on(async { run(dir.path(), "first", config(Some(teacher()))) });
    let again = run(dir.path(), "again", config(Some(teacher())));
    let (a, b) = (first.report.teacher.unwrap(), again.report.teacher.unwrap());
    assert!(a.texts_encoded > 0 && a.texts_cached == 0, "{a:?}");
    assert_eq!((b.texts_encoded, b.texts_cached), (0, a.texts_encoded), "{b:?}");
    assert_eq!(a.version, b.version);
    for file in ["query.onnx", "document.onnx", "tokenizer.json"] {
        assert!(read(dir.path(), "first", file) == read(dir.path(), "again", file), "{file} differs");
    }
    // Another version of the teacher (the same name, re-seeded weights) misses the cache and encodes again.
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-encoder-v2");
    let third = run(dir.path(), "other", config(Some(other)));
    assert_eq!(third.report.teacher.unwrap().texts_cached, 0);
}

#[test]
fn teacher_settings_are_checked() {
    let no_teacher = TrainConfig { negatives: NegativeSource::Teacher, ..Default::default() };
    assert!(no_teacher.validate().is_err(), "teacher negatives need a teacher");
    assert!(TrainConfig { teacher_temperature: 0.0, ..Default::default() }.validate().is_err());
    assert!(TrainConfig { teacher_negative_ceiling: 1.5, ..Default::default() }.validate().is_err());
    assert!(TrainConfig { distill_weight: -1.0, ..Default::default() }.validate().is_err());
    let dir = tempfile::tempdir().unwrap();
    write_pairs(dir.path(), 60);
    let options = TrainOptions {
        pairs: dir.path().join("train.jsonl"),
        corpus: dir.path().join("corpus.jsonl"),
        out: dir.path().join("m"),
        name: None,
        config: config(Some(dir.path().join("no-such-model"))),
        teacher_cache: Some(dir.path().join("cache.db")),
        onnxruntime: None,
    };
    let error = duet::util::error_chain(&train(&options, &mut |_| {}).err().expect("a missing teacher fails"));
    assert!(error.contains("no-such-model"), "{error}");
}
