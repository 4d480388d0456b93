//! Data checked at load, and bounded work per request: unusable stored embeddings (NaN, wrong length) are
//! re-encoded at start-up without stopping any model, empty or foreign store files are refused, `/readyz` says
//! per model where it stands (and a model that fails to prepare leaves the start-up import running for the
//! others), heavy searches beyond the limit get 503, and a huge text is cut before tokenising.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{metric, tiny_config, TestServer};
use serde_json::{json, Value};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::SqlitePool;

async fn open(store: &Path) -> SqlitePool {
    SqlitePoolOptions::new().connect(&format!("sqlite://{}", store.display())).await.unwrap()
}

fn blob(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

async fn stored_vector(pool: &SqlitePool, model: &str, id: &str) -> Vec<f32> {
    let blob: Vec<u8> = sqlx::query_scalar("SELECT vector FROM embeddings WHERE model = ? AND document_id = ?")
        .bind(model)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    blob.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

async fn ranking(server: &TestServer, model: &str, query: &str) -> Vec<(String, f64)> {
    let (status, body) = server.post("/v1/search", &json!({"model": model, "query": query, "k": 5})).await;
    assert_eq!(status, 200, "{body}");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r["score"].as_f64().expect("a finite, numeric score")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_and_wrong_length_stored_embeddings_are_re_encoded_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("duet.db");
    let server = TestServer::start(tiny_config(&store)).await;
    let corpus = common::sample_corpus();
    assert_eq!(server.post("/v1/documents", &json!({ "documents": corpus })).await.0, 200);
    let (nan_doc, short_doc) = (corpus[3]["id"].as_str().unwrap(), corpus[5]["id"].as_str().unwrap());
    let queries = [corpus[3]["text"].as_str().unwrap(), corpus[5]["text"].as_str().unwrap(), "read a file"];
    let mut before = Vec::new();
    for model in ["tiny-two-tower", "tiny-encoder"] {
        for q in queries {
            before.push(ranking(&server, model, q).await);
        }
    }
    server.stop().await;

    // A NaN vector for the default model, and one of the wrong length for the first model in name order (which
    // used to stop it and every model after it).
    let pool = open(&store).await;
    for (model, id, vector) in
        [("tiny-two-tower", nan_doc, blob(&[f32::NAN; 32])), ("tiny-encoder", short_doc, blob(&[0.5; 3]))]
    {
        let changed = sqlx::query("UPDATE embeddings SET vector = ? WHERE model = ? AND document_id = ?")
            .bind(vector)
            .bind(model)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(changed, 1);
    }
    pool.close().await;

    let server = TestServer::start(tiny_config(&store)).await;
    let (status, ready) = server.get("/readyz").await;
    assert_eq!(status, 200, "every model is ready: {ready}");
    for model in ["tiny-encoder", "tiny-llm", "tiny-two-tower"] {
        assert_eq!(ready["models"][model]["state"], "ready", "{ready}");
        assert_eq!(ready["models"][model]["documents"], corpus.len());
    }
    let mut after = Vec::new();
    for model in ["tiny-two-tower", "tiny-encoder"] {
        for q in queries {
            after.push(ranking(&server, model, q).await);
        }
    }
    for (b, a) in before.iter().zip(&after) {
        let ids = |r: &[(String, f64)]| r.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(b), ids(a), "the re-encoded documents rank as they did before the damage");
    }
    let metrics = server.metrics().await;
    let corrupt = |model: &str, problem: &str| {
        metric(&metrics, &format!("duet_corrupt_embeddings_total{{model=\"{model}\",problem=\"{problem}\"}}"))
    };
    assert_eq!((corrupt("tiny-two-tower", "non-finite"), corrupt("tiny-encoder", "wrong-length")), (1.0, 1.0));
    server.stop().await;

    let pool = open(&store).await;
    let nan = stored_vector(&pool, "tiny-two-tower", nan_doc).await;
    assert!(nan.len() == 32 && nan.iter().all(|x| x.is_finite()), "the stored vector was replaced: {nan:?}");
    assert_eq!(stored_vector(&pool, "tiny-encoder", short_doc).await.len(), 32);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_foreign_store_files_are_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content, says) in [
        ("empty.db", &b""[..], "empty (0 bytes)"),
        ("notes.db", &b"these are my notes, not a database\n"[..], "not an SQLite database"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let err = match duet::server::start(tiny_config(&path)).await {
            Ok(_) => panic!("{name} was opened as a store"),
            Err(err) => format!("{err:#}"),
        };
        assert!(err.contains(says), "{name}: {err}");
        assert_eq!(std::fs::read(&path).unwrap(), content, "{name} is left as it was");
    }
    // A path that does not exist yet is a new store.
    let server = TestServer::start(tiny_config(&dir.path().join("new.db"))).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_each_model_state_with_a_reason_until_ready() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("duet.db");
    let server = TestServer::start(tiny_config(&store)).await;
    assert_eq!(server.post("/v1/documents", &json!({ "documents": common::sample_corpus() })).await.0, 200);
    server.stop().await;

    // Right after start-up, a model is loading, encoding or ready; unless ready it says why.
    let running = duet::server::start(tiny_config(&store)).await.unwrap();
    let response = reqwest::get(format!("http://{}/readyz", running.addr)).await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status == 200, body["ready"] == true, "{body}");
    for (name, model) in body["models"].as_object().unwrap() {
        let state = model["state"].as_str().unwrap();
        assert!(["loading", "backfilling", "ready"].contains(&state), "{name}: {model}");
        assert_eq!(model["ready"] == true, state == "ready", "{name}: {model}");
        assert_eq!(model.get("reason").is_some(), state != "ready", "{name}: {model}");
    }
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_searches_beyond_the_limit_get_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.models.truncate(1);
    config.models[0].index.exact_below = 10;
    config.limits.max_heavy_searches = 0;
    let server = TestServer::start(config).await;
    assert_eq!(server.post("/v1/documents", &json!({ "documents": common::sample_corpus() })).await.0, 200);
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while server.get("/v1/models").await.1["models"][0]["index"]["has_graph"] != true {
        assert!(Instant::now() < deadline, "no graph built");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for heavy in [json!({"query": "read a file", "exact": true}), json!({"query": "read a file", "ef": 1024})] {
        let response = server.client.post(server.url("/v1/search")).json(&heavy).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        assert_eq!(response.headers()["retry-after"], "1");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "/problems/too-many-heavy-searches", "{body}");
    }
    assert_eq!(server.post("/v1/search", &json!({"query": "read a file", "ef": 512})).await.0, 200);
    let refused = metric(&server.metrics().await, "duet_heavy_searches_refused_total{model=\"tiny-two-tower\"}");
    assert_eq!(refused, 2.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_text_is_cut_before_tokenising_and_reported_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.limits.max_document_chars = 8_000_000;
    config.limits.max_body_bytes = 16 * 1024 * 1024;
    let server = TestServer::start(config).await;
    let huge = "read the json file and parse it ".repeat(250_000); // 8 MB
    let started = Instant::now();
    let (status, body) = server
        .post("/v1/embed", &json!({"model": "tiny-encoder", "texts": [huge, "read a file"], "side": "document"}))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated_indices"], json!([0]), "the huge text is reported cut, the short one not");
    eprintln!("embedding an 8 MB text took {seconds:.3} s");
    assert!(seconds < 5.0, "embedding an 8 MB text took {seconds:.1} s");
    // The huge text's vector is that of its first max_tokens tokens, as it was before the character cut.
    let (_, head) = server
        .post("/v1/embed", &json!({"model": "tiny-encoder", "texts": ["read the json file and parse it ".repeat(20)], "side": "document"}))
        .await;
    assert_eq!(body["embeddings"][0], head["embeddings"][0]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_import_runs_for_the_served_models_when_one_fails_to_prepare() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("duet.db");
    let server = TestServer::start(tiny_config(&store)).await;
    let corpus = common::sample_corpus();
    assert_eq!(server.post("/v1/documents", &json!({ "documents": corpus })).await.0, 200);
    server.stop().await;

    // tiny-llm must encode a document whose metadata is unreadable: preparing that one model fails.
    let broken = corpus[0]["id"].as_str().unwrap();
    let pool = open(&store).await;
    sqlx::query("DELETE FROM embeddings WHERE model = 'tiny-llm' AND document_id = ?")
        .bind(broken)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE documents SET metadata = 'not json' WHERE id = ?").bind(broken).execute(&pool).await.unwrap();
    pool.close().await;
    let import = dir.path().join("start-up.jsonl");
    let line = json!({"id": "imported", "text": "kill the process listening on a port"});
    std::fs::write(&import, format!("{line}\n")).unwrap();
    let mut config = tiny_config(&store);
    config.import = Some(import);

    let running = duet::server::start(config).await.unwrap();
    let (base, client) = (format!("http://{}", running.addr), reqwest::Client::new());
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    // The import is done once both served models count the imported document in their index (a stored
    // document is readable a moment before the indexes have added it).
    let ready = loop {
        let response = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        let ready: Value = response.json().await.unwrap();
        let counted = ["tiny-encoder", "tiny-two-tower"]
            .iter()
            .all(|model| ready["models"][model]["documents"] == corpus.len() + 1);
        if counted {
            break ready;
        }
        assert!(Instant::now() < deadline, "the start-up import did not reach both served models: {ready}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(client.get(format!("{base}/v1/documents/imported")).send().await.unwrap().status(), 200);
    assert_eq!(ready["models"]["tiny-llm"]["state"], "failed", "{ready}");
    assert!(ready["models"]["tiny-llm"]["reason"].as_str().unwrap().contains("not JSON"), "{ready}");
    for model in ["tiny-encoder", "tiny-two-tower"] {
        assert_eq!(ready["models"][model]["state"], "ready", "{ready}");
        assert_eq!(ready["models"][model]["documents"], corpus.len() + 1, "{model} indexed the import: {ready}");
    }
    running.shutdown().await.unwrap();
}
