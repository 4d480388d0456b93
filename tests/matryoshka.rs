//! Served widths and prompts per task, against a real server with the tiny models: a model swapped (through
//! `PUT /v1/models/{name}`) to a manifest that cuts the same network to a narrower Matryoshka width is a new
//! version whose stored documents are re-encoded at that width (unit length, the full vector's first
//! components); a `[[models]]` entry picks one of the manifest's tasks, whose prompts frame the texts, and an
//! unknown task stops the server from starting with an error naming the known ones.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{metric, repo, tiny_model, TestServer};
use duet::config::{Config, ModelEntry};
use serde_json::{json, Value};

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn floats(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

async fn embed(server: &TestServer, model: &str, text: &str, side: &str) -> (String, Vec<f32>) {
    let (status, body) = server.post("/v1/embed", &json!({"texts": [text], "model": model, "side": side})).await;
    assert_eq!(status, 200, "{body}");
    (body["model_version"].as_str().unwrap().to_string(), floats(&body["embeddings"][0]))
}

async fn model_entry(server: &TestServer, name: &str) -> Value {
    let (status, body) = server.get("/v1/models").await;
    assert_eq!(status, 200, "{body}");
    body["models"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_swapped_to_a_narrower_width_is_a_new_version_and_its_documents_are_re_encoded_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: dir.path().join("duet.db").as_path().into(),
        models: vec![tiny_model("tiny-encoder")],
        models_dir: repo().join("tests/fixtures"),
        ..Config::default()
    };
    let server = TestServer::start(config).await;
    let documents: Vec<Value> = (0..40)
        .map(|i| json!({"id": format!("d{i}"), "text": format!("document {i} about sorting lists, topic {}", i % 7)}))
        .collect();
    let (status, body) = server.post("/v1/documents", &json!({"documents": documents})).await;
    assert_eq!(status, 200, "{body}");
    let text = "document 12 about sorting lists, topic 5";
    let (v1, full) = embed(&server, "tiny-encoder", text, "document").await;
    assert_eq!(full.len(), 32);

    let response = server
        .client
        .put(server.url("/v1/models/tiny-encoder"))
        .json(&json!({"path": "tiny-encoder-16"}))
        .send()
        .await
        .unwrap();
    let (status, started) = common::read(response).await;
    assert_eq!(status, 202, "{started}");
    let v2 = started["candidate"]["version"].as_str().unwrap().to_string();
    assert_ne!(v1, v2, "another width is another version");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, detail) = server.get("/v1/models/tiny-encoder").await;
        if detail["serving"]["version"] == v2.as_str() && detail["candidate"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "the narrower version never took over: {detail:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let listed = model_entry(&server, "tiny-encoder").await;
    assert_eq!((listed["dimension"].as_u64(), listed["network_dimension"].as_u64()), (Some(16), Some(32)));
    assert_eq!(listed["matryoshka_dimensions"], json!([32, 16, 8]));
    assert_eq!(listed["documents"].as_u64(), Some(40));
    let backfilled = metric(&server.metrics().await, "duet_model_backfill_documents_total{model=\"tiny-encoder\"}");
    assert!(backfilled >= 40.0, "every stored document was encoded again: {backfilled}");

    let (version, cut) = embed(&server, "tiny-encoder", text, "document").await;
    assert_eq!((version.as_str(), cut.len()), (v2.as_str(), 16));
    assert!((norm(&cut) - 1.0).abs() < 1e-5, "re-normalised after the cut: {}", norm(&cut));
    let scale = norm(&full[..16]);
    for (c, f) in cut.iter().zip(&full[..16]) {
        assert!((c * scale - f).abs() < 1e-5, "the full vector's first components, rescaled: {cut:?} vs {full:?}");
    }
    // The tiny network's random weights give these similar texts near-equal vectors: every document is found,
    // the one searched for among the best.
    let (status, found) = server.post("/v1/search", &json!({"model": "tiny-encoder", "query": text, "k": 40})).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["model_version"].as_str(), Some(v2.as_str()));
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 40, "{found:#}");
    let score = |r: &Value| r["score"].as_f64().unwrap();
    let d12 = results.iter().find(|r| r["id"] == "d12").expect("the re-encoded document is found");
    assert!(score(d12) >= score(&results[0]) - 1e-5 && score(d12) > 0.999, "{found:#}");
    server.stop().await;
}

/// tiny-encoder's network and tokenizer under a manifest with prompts per task, in `dir`.
fn tasks_model(dir: &Path) -> ModelEntry {
    let tiny = repo().join("models/tiny-encoder");
    let manifest = format!(
        r#"name = "tiny-tasks"
kind = "encoder"
dimension = 32
max_tokens = 64
onnx = {onnx:?}
tokenizer = {tokenizer:?}
task = "search-result"
[tasks.search-result]
query_template = "task: search result | query: {{text}}"
document_template = "title: none | text: {{text}}"
[tasks.code-retrieval]
query_template = "task: code retrieval | query: {{text}}"
document_template = "title: none | text: {{text}}"
"#,
        onnx = tiny.join("model.onnx"),
        tokenizer = tiny.join("tokenizer.json"),
    );
    std::fs::write(dir.join("model.toml"), manifest).unwrap();
    ModelEntry { path: dir.to_path_buf(), index: Default::default(), encoder: None, task: None }
}

fn config(store: &Path, models: Vec<ModelEntry>) -> Config {
    Config { listen: "127.0.0.1:0".parse().unwrap(), store: store.into(), models, ..Config::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_entry_picks_the_task_whose_prompts_frame_the_texts() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny-tasks");
    std::fs::create_dir(&model_dir).unwrap();
    let entry = ModelEntry { task: Some("code-retrieval".into()), ..tasks_model(&model_dir) };
    let server = TestServer::start(config(&dir.path().join("duet.db"), vec![entry, tiny_model("tiny-encoder")])).await;
    let listed = model_entry(&server, "tiny-tasks").await;
    assert_eq!(listed["task"], "code-retrieval");
    assert_eq!(listed["tasks"], json!(["code-retrieval", "search-result"]));
    assert_eq!(listed["query_template"], "task: code retrieval | query: {text}");

    // The same network unframed (tiny-encoder) gives the framed text's vector.
    let (_, framed) = embed(&server, "tiny-tasks", "sort a list", "query").await;
    let (_, plain) = embed(&server, "tiny-encoder", "task: code retrieval | query: sort a list", "query").await;
    assert_eq!(framed, plain);
    let (_, document) = embed(&server, "tiny-tasks", "sort a list", "document").await;
    let (_, plain) = embed(&server, "tiny-encoder", "title: none | text: sort a list", "document").await;
    assert_eq!(document, plain);
    server.stop().await;

    let entry = ModelEntry { task: Some("clustering".into()), ..tasks_model(&model_dir) };
    let err = match duet::server::start(config(&dir.path().join("other.db"), vec![entry])).await {
        Ok(_) => panic!("a server with an unknown task started"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("\"clustering\"") && err.contains("code-retrieval, search-result"), "{err}");
}
