//! `POST /v1/embeddings` through the real `openai` Python client (pinned in scripts/requirements-openai.txt,
//! installed into .venv-openai by `scripts/setup --test`), against a real server with API keys on: float and
//! base64 answers give the same unit vectors, equal to `/v1/embed`'s on the same side, `dimensions` cuts and
//! re-normalises, one string works, and mistakes reach the client as its own error classes
//! (tests/python/openai_embeddings.py holds those checks). Without the venv the test fails, saying how to make it.

mod common;

use std::process::Command;

use common::{repo, tiny_config, TestServer};
use duet::auth::{keys, AuthSettings, Scope};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_embeds_through_v1_embeddings() {
    let python = repo().join(".venv-openai/bin/python");
    assert!(python.is_file(), "{} is missing: run scripts/setup --test", python.display());
    let dir = tempfile::tempdir().unwrap();
    let (key, entry) = keys::generate("client", [Scope::Search].into_iter().collect()).unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.auth = AuthSettings { keys: vec![entry], ..AuthSettings::default() };
    let server = TestServer::start(config).await;

    let (base, script, client_key) =
        (server.base.clone(), repo().join("tests/python/openai_embeddings.py"), key.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).args([base.as_str(), client_key.as_str(), "tiny-llm"]).output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the openai client's checks failed:\n{stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["width"], 32, "{summary}");

    // The same request without the client: the answer's shape, and the key is required.
    let body = json!({"input": ["sort a list", "a"], "model": "tiny-llm", "encoding_format": "float"});
    let response = server.client.post(server.url("/v1/embeddings")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = server.client.post(server.url("/v1/embeddings")).bearer_auth(&key).json(&body).send().await;
    let (status, answer) = common::read(response.unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["object"].as_str(), answer["model"].as_str()), (Some("list"), Some("tiny-llm")));
    assert_eq!(answer["data"][1]["object"], "embedding");
    assert_eq!(answer["data"][1]["index"], 1);
    // The tokenizer's counts: at least one token per word of the two texts.
    let tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens >= 4, "{answer}");
    assert_eq!(answer["usage"]["total_tokens"].as_u64(), Some(tokens));
    server.stop().await;
}
