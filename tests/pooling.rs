//! Pooling variants, truncation and padding, through `/v1/embed`, against vectors computed independently with
//! numpy by scripts/make_tiny_models.py (tests/fixtures/expected_vectors.json).
//!
//! Each variant is a manifest written to a temporary folder that points at the committed tiny ONNX files; the
//! shipped tokenizers bake in `Fixed(16)` padding and truncation at 8 tokens, which Duet must override.

mod common;

use std::path::Path;

use common::{repo, TestServer};
use duet::config::{Config, ModelEntry};
use serde_json::{json, Value};

struct Variant {
    name: &'static str,
    /// Key of the reference vectors: (model, pooling) in expected_vectors.json.
    reference: (&'static str, &'static str),
    side: &'static str,
    max_tokens: Option<usize>,
    manifest: String,
}

fn variants() -> Vec<Variant> {
    let models = repo().join("models");
    let enc = models.join("tiny-encoder");
    let llm = models.join("tiny-llm");
    let tt = models.join("tiny-two-tower");
    let encoder = |pooling: &str, max: usize| {
        format!(
            "name='x'\nkind='encoder'\ndimension=32\npooling='{pooling}'\nnormalize=false\nmax_tokens={max}\nonnx='{}'\ntokenizer='{}'\n",
            enc.join("model.onnx").display(),
            enc.join("tokenizer.json").display()
        )
    };
    let decoder = |pooling: &str, max: usize, side: &str| {
        format!(
            "name='x'\nkind='llm'\ndimension=32\npooling='{pooling}'\nnormalize=false\nmax_tokens={max}\npadding_side='{side}'\nonnx='{}'\ntokenizer='{}'\n",
            llm.join("model.onnx").display(),
            llm.join("tokenizer.json").display()
        )
    };
    let two_tower = |max: usize| {
        format!(
            "name='x'\nkind='two-tower'\ndimension=32\npooling='output'\noutput='sentence_embedding'\nnormalize=false\nmax_tokens={max}\nquery_onnx='{}'\ndocument_onnx='{}'\ntokenizer='{}'\n",
            tt.join("query.onnx").display(),
            tt.join("document.onnx").display(),
            tt.join("tokenizer.json").display()
        )
    };
    let mut out = Vec::new();
    for (max, suffix) in [(None, ""), (Some(6), "-6")] {
        let limit = max.unwrap_or(512);
        let name = |base: &str| -> &'static str { Box::leak(format!("{base}{suffix}").into_boxed_str()) };
        out.push(Variant {
            name: name("enc-mean"),
            reference: ("encoder", "mean"),
            side: "query",
            max_tokens: max,
            manifest: encoder("mean", limit),
        });
        out.push(Variant {
            name: name("enc-cls"),
            reference: ("encoder", "cls"),
            side: "query",
            max_tokens: max,
            manifest: encoder("cls", limit),
        });
        out.push(Variant {
            name: name("llm-last"),
            reference: ("llm", "last-token"),
            side: "document",
            max_tokens: max,
            manifest: decoder("last-token", limit, "right"),
        });
        out.push(Variant {
            name: name("llm-last-left"),
            reference: ("llm", "last-token"),
            side: "document",
            max_tokens: max,
            manifest: decoder("last-token", limit, "left"),
        });
        out.push(Variant {
            name: name("llm-mean"),
            reference: ("llm", "mean"),
            side: "document",
            max_tokens: max,
            manifest: decoder("mean", limit, "right"),
        });
        out.push(Variant {
            name: name("llm-mean-left"),
            reference: ("llm", "mean"),
            side: "document",
            max_tokens: max,
            manifest: decoder("mean", limit, "left"),
        });
        out.push(Variant {
            name: name("tt-query"),
            reference: ("two-tower-query", "output"),
            side: "query",
            max_tokens: max,
            manifest: two_tower(limit),
        });
        out.push(Variant {
            name: name("tt-document"),
            reference: ("two-tower-document", "output"),
            side: "document",
            max_tokens: max,
            manifest: two_tower(limit),
        });
    }
    out
}

fn write_variant(root: &Path, v: &Variant) -> ModelEntry {
    let dir = root.join(v.name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.toml"), v.manifest.replace("name='x'", &format!("name='{}'", v.name))).unwrap();
    ModelEntry { path: dir, index: Default::default(), encoder: None, task: None }
}

fn close(a: &[Value], b: &[Value]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs()).fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pooling_matches_the_numpy_reference_batched_and_single() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/fixtures/expected_vectors.json")).unwrap())
            .unwrap();
    let cases = expected["cases"].as_array().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let variants = variants();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: dir.path().join("duet.db").into(),
        models: variants.iter().map(|v| write_variant(dir.path(), v)).collect(),
        ..Config::default()
    };
    let server = TestServer::start(config).await;

    for v in &variants {
        let refs: Vec<&Value> = cases
            .iter()
            .filter(|c| c["model"] == v.reference.0 && c["pooling"] == v.reference.1)
            .filter(|c| c["max_tokens"].as_u64().map(|m| m as usize) == v.max_tokens)
            .collect();
        assert_eq!(refs.len(), 5, "{}", v.name);
        let texts: Vec<&str> = refs.iter().map(|c| c["text"].as_str().unwrap()).collect();

        // All texts in one batch: different lengths, so padding is exercised on the chosen side.
        let (status, batch) = server.post("/v1/embed", &json!({"texts": texts, "model": v.name, "side": v.side})).await;
        assert_eq!(status, 200, "{}: {batch}", v.name);
        assert_eq!(batch["normalized"], false);
        let expected_truncated: Vec<usize> =
            refs.iter().enumerate().filter(|(_, c)| c["truncated"] == true).map(|(i, _)| i).collect();
        assert_eq!(batch["truncated_indices"], json!(expected_truncated), "{}", v.name);
        if v.max_tokens.is_some() {
            assert!(!expected_truncated.is_empty(), "the 6-token variants must cut the long texts");
        }
        for (i, case) in refs.iter().enumerate() {
            let got = batch["embeddings"][i].as_array().unwrap();
            let diff = close(got, case["vector"].as_array().unwrap());
            assert!(diff < 1e-4, "{} text {:?}: max abs diff {diff}", v.name, case["text"]);

            // One at a time: the same vector as in the batch.
            let (_, single) =
                server.post("/v1/embed", &json!({"texts": [case["text"]], "model": v.name, "side": v.side})).await;
            let diff = close(single["embeddings"][0].as_array().unwrap(), got);
            assert!(diff < 1e-5, "{} text {:?}: batched vs single differ by {diff}", v.name, case["text"]);
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalised_models_return_unit_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::tiny_config(&dir.path().join("duet.db"))).await;
    for model in ["tiny-two-tower", "tiny-llm", "tiny-encoder"] {
        let (status, body) = server
            .post(
                "/v1/embed",
                &json!({"texts": ["hello world", "café naïve", "x"], "model": model, "side": "document"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["normalized"], true);
        for v in body["embeddings"].as_array().unwrap() {
            let norm: f64 = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap().powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{model}: norm {norm}");
        }
    }
    server.stop().await;
}
