//! Shared helpers of the integration tests: start a real server on an ephemeral port with a temporary SQLite
//! file, and talk HTTP to it; [`postgres`] gives tests PostgreSQL databases and clusters of their own.
#![allow(dead_code)]

pub mod browser;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use duet::config::{Config, ModelEntry};
use duet::index::IndexParams;
use duet::server::RunningServer;
use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tiny_model(name: &str) -> ModelEntry {
    ModelEntry { path: repo().join("models").join(name), index: IndexParams::default(), encoder: None, task: None }
}

/// A config serving the three tiny models from `store`, on an ephemeral port.
pub fn tiny_config(store: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: store.into(),
        models: vec![tiny_model("tiny-two-tower"), tiny_model("tiny-llm"), tiny_model("tiny-encoder")],
        ..Config::default()
    }
}

pub struct TestServer {
    pub server: RunningServer,
    pub base: String,
    pub client: reqwest::Client,
}

impl TestServer {
    /// Starts a server and waits until `/readyz` says every index is ready.
    pub async fn start(config: Config) -> Self {
        let server = duet::server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.addr);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client.get(format!("{base}/readyz")).send().await.map(|r| r.status().is_success());
            if matches!(ready, Ok(true)) {
                break;
            }
            assert!(Instant::now() < deadline, "server not ready within 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { server, base, client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.client.post(self.url(path)).json(body).send().await.expect("request sent");
        read(response).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.expect("request sent");
        read(response).await
    }

    pub async fn delete(&self, path: &str) -> u16 {
        self.client.delete(self.url(path)).send().await.expect("request sent").status().as_u16()
    }

    pub async fn metrics(&self) -> String {
        self.client.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    pub async fn stop(self) {
        self.server.shutdown().await.expect("clean shutdown");
    }
}

/// Status and JSON body (Null when the body is empty or not JSON).
pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The sample corpus shipped in examples/, as `{"id","text","metadata"}` values.
pub fn sample_corpus() -> Vec<Value> {
    std::fs::read_to_string(repo().join("examples/corpus.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Value of a metric series in Prometheus text (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// Creates an experiment (201 expected); its JSON.
pub async fn create(server: &TestServer, body: Value) -> Value {
    let (status, created) = server.post("/v1/experiments", &body).await;
    assert_eq!(status, 201, "{created}");
    created
}

/// `PATCH /v1/experiments/{id}`: status and body.
pub async fn patch(server: &TestServer, id: &str, body: Value) -> (u16, Value) {
    let response = server.client.patch(server.url(&format!("/v1/experiments/{id}"))).json(&body).send().await.unwrap();
    read(response).await
}

/// A search that must succeed; its JSON.
pub async fn search(server: &TestServer, body: Value) -> Value {
    let (status, found) = server.post("/v1/search", &body).await;
    assert_eq!(status, 200, "{found}");
    found
}
