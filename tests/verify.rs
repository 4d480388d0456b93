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

#[test]
fn an_int8_variant_is_held_to_its_fp32_model() {
    use duet::encoder::verify::{verify, QUANTIZED_MIN_COSINE};

    // Quantised as models/prepare quantises the real models: close to tiny-encoder on every text.
    let faithful = verify(&repo().join("models/tiny-encoder-int8"), None, None).unwrap();
    assert!(faithful.passed, "{faithful}");
    assert_eq!(faithful.min_cosine, QUANTIZED_MIN_COSINE);
    assert!(faithful.against.contains("fp32 model tiny-encoder"), "{}", faithful.against);
    assert_eq!(faithful.checks.len(), 6);
    assert!(faithful.lowest >= QUANTIZED_MIN_COSINE && faithful.mean >= faithful.lowest && faithful.mean <= 1.0 + 1e-9);
    assert!(faithful.failure().is_none());
    assert!(faithful.to_string().contains("verified"));

    // Quantised from perturbed weights: it loads and encodes, but drifts from the model it claims to come from.
    let perturbed = verify(&repo().join("tests/fixtures/tiny-encoder-int8-perturbed"), None, None).unwrap();
    assert!(!perturbed.passed, "{perturbed}");
    assert!(perturbed.lowest < QUANTIZED_MIN_COSINE);
    let failure = perturbed.failure().unwrap();
    assert!(failure.contains("tiny-encoder-int8-perturbed") && failure.contains("below the floor 0.99"), "{failure}");
}

#[test]
fn duet_verify_exits_non_zero_naming_the_floor_for_an_unfaithful_variant() {
    let run = |model: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_duet"))
            .args(["verify", "--model"])
            .arg(repo().join(model))
            .output()
            .unwrap()
    };
    let good = run("models/tiny-encoder-int8");
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{stdout}{}", String::from_utf8_lossy(&good.stderr));
    assert!(stdout.contains("lowest cosine") && stdout.contains("tiny-encoder-int8: verified"), "{stdout}");

    let bad = run("tests/fixtures/tiny-encoder-int8-perturbed");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("its fp32 model tiny-encoder") && stderr.contains("below the floor 0.99"), "{stderr}");
}
