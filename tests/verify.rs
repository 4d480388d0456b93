//! `duet verify` passes for a model whose reference vectors it reproduces and fails for one it does not.

mod common;

use common::repo;
use serde_json::{json, Value};

fn reference_for(model: &str, pooling: &str) -> (Vec<Value>, Vec<Value>) {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/fixtures/expected_vectors.json")).unwrap())
            .unwrap();
    expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["model"] == model && c["pooling"] == pooling && c["max_tokens"].is_null())
        .map(|c| (c["text"].clone(), c["vector"].clone()))
        .unzip()
}

#[test]
fn verify_accepts_a_faithful_pipeline_and_rejects_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let (texts, vectors) = reference_for("llm", "last-token");
    let good = dir.path().join("good.json");
    std::fs::write(&good, json!({"side": "document", "texts": texts, "vectors": vectors}).to_string()).unwrap();
    let model = repo().join("models/tiny-llm");
    let report = duet::encoder::verify::verify(&model, Some(&good), None).unwrap();
    assert!(report.passed, "{report:?}");
    assert_eq!(report.checks.len(), 5);
    assert!(report.checks.iter().all(|c| c.cosine_batched > 0.9999 && c.batched_vs_single > 0.9999));

    // Mean-pooled vectors are not what this (last-token) model produces.
    let (texts, vectors) = reference_for("llm", "mean");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, json!({"side": "document", "texts": texts, "vectors": vectors}).to_string()).unwrap();
    let report = duet::encoder::verify::verify(&model, Some(&bad), None).unwrap();
    assert!(!report.passed);

    // The query side applies the model's instruction prefix, so document-side references do not match it.
    let (texts, vectors) = reference_for("llm", "last-token");
    let query = dir.path().join("query.json");
    std::fs::write(&query, json!({"side": "query", "texts": texts, "vectors": vectors}).to_string()).unwrap();
    assert!(!duet::encoder::verify::verify(&model, Some(&query), None).unwrap().passed);
}
