//! The model life cycle against a real server with the tiny models: replacing a model while clients search it
//! (no failed request, every answer from one version, the switch once), rolling back without re-encoding,
//! adding a model, retiring one (refused while an experiment uses it or it is the default), a restart in the
//! middle of a back-fill resuming it, the model-root and probe checks, and config edits applied on SIGHUP.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{metric, repo, tiny_model, TestServer};
use duet::config::{Config, LifecycleSettings};
use serde_json::{json, Value};

/// tiny-two-tower (the default) and tiny-encoder, with the repository's models/ as the model root.
fn config(store: &Path, lifecycle: LifecycleSettings) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: store.into(),
        models: vec![tiny_model("tiny-two-tower"), tiny_model("tiny-encoder")],
        models_dir: repo().join("models"),
        lifecycle,
        ..Config::default()
    }
}

fn docs(prefix: &str, range: std::ops::Range<usize>) -> Value {
    let documents: Vec<Value> = range
        .map(|i| json!({"id": format!("{prefix}{i}"), "text": format!("document {i} about sort a list and topic {}", i % 9)}))
        .collect();
    json!({ "documents": documents })
}

async fn upsert(server: &TestServer, prefix: &str, range: std::ops::Range<usize>) {
    for start in range.clone().step_by(200) {
        let end = (start + 200).min(range.end);
        let (status, body) = server.post("/v1/documents", &docs(prefix, start..end)).await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn put(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    common::read(server.client.put(server.url(path)).json(body).send().await.unwrap()).await
}

async fn detail(server: &TestServer, name: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/models/{name}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls a model's detail until `done` holds (30 s at most).
async fn until(server: &TestServer, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = detail(server, name).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}: {body:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn serving_version(detail: &Value) -> Option<String> {
    detail["serving"]["version"].as_str().map(str::to_string)
}

fn backfilled(metrics: &str, model: &str) -> f64 {
    metric(metrics, &format!("duet_model_backfill_documents_total{{model=\"{model}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_replaced_under_load_answers_every_search_then_rolls_back_without_re_encoding() {
    let dir = tempfile::tempdir().unwrap();
    // Paced slowly enough (5% duty) that the writes below land while the back-fill runs.
    let lifecycle = LifecycleSettings { backfill_batch: 16, backfill_duty: 0.05, ..LifecycleSettings::default() };
    let server = Arc::new(TestServer::start(config(&dir.path().join("duet.db"), lifecycle)).await);
    upsert(&server, "d", 0..400).await;
    let v1 = serving_version(&detail(&server, "tiny-encoder").await).unwrap();

    // 8 clients search tiny-encoder the whole time, each recording (status, version) in order.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (server, stop) = (server.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"model": "tiny-encoder", "query": format!("sort a list {c}"), "k": 5});
                    let (status, answer) = server.post("/v1/search", &body).await;
                    seen.push((status, answer["model_version"].as_str().unwrap_or_default().to_string()));
                }
                seen
            })
        })
        .collect();

    let (status, started) = put(&server, "/v1/models/tiny-encoder", &json!({"path": "tiny-encoder-v2"})).await;
    assert_eq!(status, 202, "{started}");
    let v2 = started["candidate"]["version"].as_str().unwrap().to_string();
    assert_ne!(v1, v2, "a re-seeded model is a new version");
    assert_eq!(serving_version(&started).as_deref(), Some(v1.as_str()), "the old version serves meanwhile");
    // Writes during the back-fill are encoded by both versions.
    upsert(&server, "w", 0..50).await;
    let during = detail(&server, "tiny-encoder").await;
    assert_eq!(during["candidate"]["state"], "backfilling", "the writes landed during the back-fill: {during:#}");
    let swapped = until(&server, "tiny-encoder", "v2 serves", |d| {
        serving_version(d).as_deref() == Some(v2.as_str()) && d["candidate"].is_null()
    })
    .await;
    assert_eq!(swapped["previous"]["version"].as_str(), Some(v1.as_str()), "{swapped:#}");
    // Let every client see the new version a few times before stopping them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut versions_seen = BTreeSet::new();
    for client in clients {
        let seen = client.await.unwrap();
        assert!(seen.iter().all(|(status, _)| *status == 200), "every search succeeds: {seen:?}");
        let versions: Vec<&str> = seen.iter().map(|(_, v)| v.as_str()).collect();
        let switch = versions.iter().position(|v| *v == v2).unwrap_or(versions.len());
        assert!(versions[..switch].iter().all(|v| *v == v1), "only v1 before the switch");
        assert!(versions[switch..].iter().all(|v| *v == v2), "only v2 after it, never back: {versions:?}");
        versions_seen.extend(versions.iter().map(|v| v.to_string()));
    }
    assert_eq!(versions_seen, BTreeSet::from([v1.clone(), v2.clone()]));

    let (_, models) = server.get("/v1/models").await;
    let encoder = models["models"].as_array().unwrap().iter().find(|m| m["name"] == "tiny-encoder").unwrap();
    assert_eq!((encoder["version"].as_str(), encoder["documents"].as_u64()), (Some(v2.as_str()), Some(450)));
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "duet_model_swaps_total{model=\"tiny-encoder\"}"), 1.0);
    let ready = format!("duet_model_state{{model=\"tiny-encoder\",state=\"ready\",version=\"{v2}\"}}");
    assert_eq!(metric(&metrics, &ready), 1.0, "{metrics}");
    let encoded_before = backfilled(&metrics, "tiny-encoder");
    assert!(encoded_before >= 400.0, "the back-fill encoded the stored documents: {encoded_before}");

    // Roll back: v1's embeddings are still stored, so nothing is encoded.
    let retired = until(&server, "tiny-encoder", "v1 is retired", |d| d["previous"]["state"] == "retired").await;
    assert_eq!(retired["previous"]["version"].as_str(), Some(v1.as_str()));
    let (status, body) = server.post("/v1/models/tiny-encoder/rollback", &json!({})).await;
    assert_eq!(status, 202, "{body}");
    until(&server, "tiny-encoder", "v1 serves again", |d| serving_version(d).as_deref() == Some(v1.as_str())).await;
    let metrics = server.metrics().await;
    assert_eq!(backfilled(&metrics, "tiny-encoder"), encoded_before, "the rollback encoded nothing");
    assert_eq!(metric(&metrics, "duet_model_rollbacks_total{model=\"tiny-encoder\"}"), 1.0);
    let (status, found) = server.post("/v1/search", &json!({"model": "tiny-encoder", "query": "topic", "k": 3})).await;
    assert_eq!((status, found["model_version"].as_str()), (200, Some(v1.as_str())));
    let (_, documents) = server.get("/v1/models").await;
    let encoder = documents["models"].as_array().unwrap().iter().find(|m| m["name"] == "tiny-encoder").unwrap();
    assert_eq!(encoder["documents"].as_u64(), Some(450), "v1 has the documents written while v2 served");
    let history = detail(&server, "tiny-encoder").await["history"].clone();
    let states: Vec<&str> = history.as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    for state in ["loading", "backfilling", "ready", "draining", "retired"] {
        assert!(states.contains(&state), "history records {state}: {states:?}");
    }
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_model_serves_once_backfilled_and_a_restart_keeps_it_without_re_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("duet.db");
    let server = TestServer::start(config(&store, LifecycleSettings::default())).await;
    upsert(&server, "d", 0..120).await;
    let (status, added) = server.post("/v1/models", &json!({"name": "encoder-b", "path": "tiny-encoder-v2"})).await;
    assert_eq!(status, 202, "{added}");
    assert_eq!(added["serving"], Value::Null, "not served before its back-fill: {added:#}");
    // A second add of the same name while the first back-fills, or after it: refused either way.
    let (status, again) = server.post("/v1/models", &json!({"name": "encoder-b", "path": "tiny-encoder-v2"})).await;
    let kind = again["type"].as_str().unwrap_or_default();
    assert!(status == 409 && ["/problems/change-in-progress", "/problems/model-exists"].contains(&kind), "{again}");
    // Nothing to roll back to while it is being added, or once added (it was never replaced): a 409, not a 503.
    let (status, body) = server.post("/v1/models/encoder-b/rollback", &json!({})).await;
    assert_eq!((status, body["type"].as_str()), (409, Some("/problems/no-previous-version")), "{body}");
    until(&server, "encoder-b", "encoder-b serves", |d| d["state"] == "ready").await;
    let (status, found) = server.post("/v1/search", &json!({"model": "encoder-b", "query": "topic 3", "k": 3})).await;
    assert_eq!((status, found["results"].as_array().map(Vec::len)), (200, Some(3)), "{found}");
    let (status, body) = server.post("/v1/models", &json!({"name": "encoder-b", "path": "tiny-encoder"})).await;
    assert_eq!((status, body["type"].as_str()), (409, Some("/problems/model-exists")));
    server.stop().await;

    let server = TestServer::start(config(&store, LifecycleSettings::default())).await;
    let (_, models) = server.get("/v1/models").await;
    let names: Vec<&str> = models["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["encoder-b", "tiny-encoder", "tiny-two-tower"], "the added model is served after a restart");
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "duet_model_backfill_documents_total{model=\"encoder-b\"}"), 0.0);
    assert_eq!(metric(&metrics, "duet_documents{model=\"encoder-b\"}"), 120.0, "read from the store");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_is_refused_for_a_model_a_running_experiment_uses_and_for_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(&dir.path().join("duet.db"), LifecycleSettings::default())).await;
    upsert(&server, "d", 0..20).await;
    let experiment = json!({"name": "tower-vs-encoder", "mode": "interleave",
        "arms": [{"model": "tiny-two-tower"}, {"model": "tiny-encoder"}]});
    let (status, created) = server.post("/v1/experiments", &experiment).await;
    assert_eq!(status, 201, "{created}");
    let patch = |status: &str| {
        let url = server.url("/v1/experiments/tower-vs-encoder");
        server.client.patch(url).json(&json!({ "status": status })).send()
    };
    assert_eq!(patch("running").await.unwrap().status(), 200);

    let response = server.client.delete(server.url("/v1/models/tiny-encoder")).send().await.unwrap();
    let (status, body) = common::read(response).await;
    assert_eq!((status, body["type"].as_str()), (409, Some("/problems/model-in-use")), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("tower-vs-encoder"), "{body}");

    assert_eq!(patch("stopped").await.unwrap().status(), 200);
    let response = server.client.delete(server.url("/v1/models/tiny-two-tower")).send().await.unwrap();
    let (status, body) = common::read(response).await;
    assert_eq!((status, body["type"].as_str()), (409, Some("/problems/model-is-default")), "{body}");
    assert_eq!(server.delete("/v1/models/tiny-encoder").await, 200);
    let (status, body) = server.post("/v1/search", &json!({"model": "tiny-encoder", "query": "x"})).await;
    assert_eq!((status, body["type"].as_str()), (404, Some("/problems/unknown-model")));
    until(&server, "tiny-encoder", "it is retired", |d| d["state"] == "retired").await;
    assert_eq!(server.delete("/v1/models/no-such-model").await, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_backfill_resumes_it_without_re_encoding_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("duet.db");
    // Slow on purpose: batches of 8, encoding 1% of the time.
    let slow = LifecycleSettings { backfill_batch: 8, backfill_duty: 0.01, ..LifecycleSettings::default() };
    let server = TestServer::start(config(&store, slow)).await;
    upsert(&server, "d", 0..300).await;
    let (status, body) = put(&server, "/v1/models/tiny-encoder", &json!({"path": "tiny-encoder-v2"})).await;
    assert_eq!(status, 202, "{body}");
    let v2 = body["candidate"]["version"].as_str().unwrap().to_string();
    let partial = until(&server, "tiny-encoder", "some batches are done", |d| {
        d["candidate"]["backfill"]["done"].as_u64().unwrap_or(0) >= 16
    })
    .await;
    let first_run = backfilled(&server.metrics().await, "tiny-encoder");
    server.stop().await;
    assert!(first_run < 300.0, "stopped mid-way: {partial:#}");

    let server = TestServer::start(config(&store, LifecycleSettings::default())).await;
    let resumed = until(&server, "tiny-encoder", "the back-fill resumed or finished", |d| {
        d["candidate"]["version"].as_str() == Some(v2.as_str()) || serving_version(d).as_deref() == Some(v2.as_str())
    })
    .await;
    assert!(resumed["history"].to_string().contains("resuming after a restart"), "{resumed:#}");
    until(&server, "tiny-encoder", "v2 serves", |d| serving_version(d).as_deref() == Some(v2.as_str())).await;
    let second_run = backfilled(&server.metrics().await, "tiny-encoder");
    assert!(first_run >= 16.0 && second_run <= 300.0 - first_run, "first {first_run}, then {second_run}");
    assert_eq!(first_run + second_run, 300.0, "every document encoded once");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_model_root_and_models_that_fail_their_probe_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("models");
    let copy = |from: &str, name: &str| {
        let to = root.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for file in ["model.onnx", "model.toml", "tokenizer.json"] {
            std::fs::copy(repo().join("models").join(from).join(file), to.join(file)).unwrap();
        }
        to
    };
    copy("tiny-encoder-v2", "good");
    copy("tiny-encoder", "same");
    let bad = copy("tiny-encoder-v2", "bad");
    let manifest = std::fs::read_to_string(bad.join("model.toml")).unwrap();
    std::fs::write(bad.join("model.toml"), manifest.replace("dimension = 32", "dimension = 16")).unwrap();
    std::os::unix::fs::symlink(repo().join("models/tiny-llm"), root.join("escape")).unwrap();
    let mut config = config(&dir.path().join("duet.db"), LifecycleSettings::default());
    config.models_dir = root.clone();
    let server = TestServer::start(config).await;

    let refused = [
        (json!({"path": "/etc"}), 403, "outside-model-root"),
        (json!({"path": "../models/../.."}), 403, "outside-model-root"),
        (json!({"path": "escape"}), 403, "outside-model-root"),
        (json!({"path": "missing"}), 422, "bad-model-path"),
        (json!({"path": "good", "name": "no spaces"}), 422, "invalid-request"),
        (json!({"path": "bad", "name": "bad-one"}), 422, "bad-model"),
    ];
    for (body, status, kind) in refused {
        let (got, answer) = server.post("/v1/models", &body).await;
        assert_eq!((got, answer["type"].as_str()), (status, Some(format!("/problems/{kind}").as_str())), "{body}");
        if kind == "bad-model" {
            assert!(answer["detail"].as_str().unwrap().contains("dimension"), "{answer}");
        }
    }
    let same = put(&server, "/v1/models/tiny-encoder", &json!({"path": repo().join("models/tiny-encoder")})).await;
    assert_eq!(same.0, 403, "the config's own folder is outside this root too: {}", same.1);
    let (status, body) = server.post("/v1/models/tiny-encoder/rollback", &json!({})).await;
    assert_eq!((status, body["type"].as_str()), (409, Some("/problems/no-previous-version")), "{body}");
    let (status, body) = put(&server, "/v1/models/unknown", &json!({"path": "good"})).await;
    assert_eq!((status, body["type"].as_str()), (404, Some("/problems/unknown-model")), "{body}");
    let (status, body) = put(&server, "/v1/models/tiny-encoder", &json!({"path": "same"})).await;
    assert_eq!((status, body["type"].as_str()), (409, Some("/problems/same-version")), "{body}");
    // Named by its manifest: tiny-encoder, which is served.
    let (status, body) = server.post("/v1/models", &json!({"path": "good"})).await;
    assert_eq!((status, body["type"].as_str()), (409, Some("/problems/model-exists")), "{body}");
    let (status, body) = server.post("/v1/models", &json!({"path": "good", "name": "encoder-c"})).await;
    assert_eq!(status, 202, "{body}");
    until(&server, "encoder-c", "the copy serves", |d| d["state"] == "ready").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_config_file_and_sending_sighup_replaces_and_retires_models() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("duet.toml");
    let write_config = |models: &[&str]| {
        let mut text =
            format!("listen = '127.0.0.1:0'\nstore = 'duet.db'\nmodels_dir = '{}'\n", repo().join("models").display());
        for model in models {
            text += &format!("[[models]]\npath = '{}'\n", repo().join("models").join(model).display());
        }
        std::fs::write(&file, text).unwrap();
    };
    write_config(&["tiny-two-tower", "tiny-encoder", "tiny-llm"]);
    let server = TestServer::start(Config::from_file(&file).unwrap()).await;
    upsert(&server, "d", 0..30).await;
    let v1 = serving_version(&detail(&server, "tiny-encoder").await).unwrap();

    write_config(&["tiny-two-tower", "tiny-encoder-v2", "tiny-llm"]);
    let status = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status();
    assert!(status.unwrap().success());
    let replaced = until(&server, "tiny-encoder", "the config's new folder serves", |d| {
        serving_version(d).is_some_and(|v| v != v1)
    })
    .await;
    assert!(replaced["serving"]["path"].as_str().unwrap().ends_with("tiny-encoder-v2"), "{replaced:#}");

    write_config(&["tiny-two-tower", "tiny-encoder-v2"]);
    let applied = server.server.reload().await.unwrap();
    assert_eq!(applied.retired, ["tiny-llm"]);
    let (status, _) = server.post("/v1/search", &json!({"model": "tiny-llm", "query": "x"})).await;
    assert_eq!(status, 404);
    // Unchanged entries leave the models as they are.
    let again = server.server.reload().await.unwrap();
    assert!(again.changed.is_empty() && again.retired.is_empty() && again.refused.is_empty(), "{again:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retention_a_replaced_version_cannot_be_rolled_back_to() {
    let dir = tempfile::tempdir().unwrap();
    let lifecycle = LifecycleSettings { retention_secs: 0, ..LifecycleSettings::default() };
    let server = TestServer::start(config(&dir.path().join("duet.db"), lifecycle)).await;
    upsert(&server, "d", 0..40).await;
    let v1 = serving_version(&detail(&server, "tiny-encoder").await).unwrap();
    let (status, body) = put(&server, "/v1/models/tiny-encoder", &json!({"path": "tiny-encoder-v2"})).await;
    assert_eq!(status, 202, "{body}");
    let retired = until(&server, "tiny-encoder", "v1 is retired and purged", |d| {
        d["history"].as_array().unwrap().iter().any(|e| e["version"] == v1.as_str() && e["state"] == "retired")
            && d["previous"].is_null()
    })
    .await;
    assert!(serving_version(&retired).is_some_and(|v| v != v1), "{retired:#}");
    let (status, body) = server.post("/v1/models/tiny-encoder/rollback", &json!({})).await;
    assert_eq!((status, body["type"].as_str()), (409, Some("/problems/no-previous-version")), "{body}");
    server.stop().await;
}
