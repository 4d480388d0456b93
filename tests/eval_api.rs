//! `POST /v1/eval` over HTTP: scores equal to what `/v1/search` itself returns, graded pairs, unknown documents
//! reported, large sets as a pollable job (bounded in number, cancellable, forgotten after a TTL), and client
//! mistakes as 4xx.

mod common;

use std::time::{Duration, Instant};

use common::{sample_corpus, tiny_config, TestServer};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_scores_posted_pairs_against_the_live_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;
    let corpus = sample_corpus();
    assert_eq!(server.post("/v1/documents", &json!({"documents": corpus})).await.0, 200);

    // Queries: the first words of some documents; the relevant document is the one they come from.
    let pairs: Vec<Value> = corpus
        .iter()
        .take(12)
        .map(|d| {
            let text = d["text"].as_str().unwrap();
            let query: String = text.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
            json!({"query": query, "doc_id": d["id"]})
        })
        .collect();
    let (status, body) = server
        .post(
            "/v1/eval",
            &json!({"pairs": pairs, "models": ["tiny-encoder", "tiny-llm"], "k": [1, 5], "details": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["queries"], 12);
    for scores in body["models"].as_array().unwrap() {
        let model = scores["model"].as_str().unwrap();
        // The reference: the same queries through /v1/search.
        let (mut rr, mut hit1) = (0.0, 0.0);
        for p in &pairs {
            let (_, found) = server.post("/v1/search", &json!({"query": p["query"], "k": 10, "model": model})).await;
            let ids: Vec<&str> =
                found["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
            if let Some(pos) = ids.iter().position(|id| *id == p["doc_id"].as_str().unwrap()) {
                rr += 1.0 / (pos + 1) as f64;
                hit1 += f64::from(pos == 0);
            }
        }
        let mrr = scores["mrr_at_10"]["value"].as_f64().unwrap();
        assert!((mrr - rr / 12.0).abs() < 1e-9, "{model}: {mrr} vs {}", rr / 12.0);
        assert!((scores["recall"]["@1"]["value"].as_f64().unwrap() - hit1 / 12.0).abs() < 1e-9);
        let ci = scores["mrr_at_10"]["ci95"].as_array().unwrap();
        assert!(ci[0].as_f64().unwrap() <= mrr && mrr <= ci[1].as_f64().unwrap());
    }
    assert_eq!(body["details"].as_array().unwrap().len(), 12);

    // Graded pairs and documents the corpus does not hold.
    let (status, body) = server
        .post(
            "/v1/eval",
            &json!({"pairs": [
                {"query": "a detective story about a murder on a train in the snow", "doc_id": "book-detective", "grade": 3},
                {"query": "a detective story about a murder on a train in the snow", "doc_id": "not-in-corpus", "grade": 1}
            ], "models": ["tiny-encoder"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["unknown_documents"], json!(["not-in-corpus"]));
    assert_eq!(body["queries"], 1);
    // Found first with grade 3, and the grade-1 document is missing: nDCG = 7 / (7 + 1/log2(3)).
    let ndcg = body["models"][0]["ndcg_at_10"]["value"].as_f64().unwrap();
    assert!((ndcg - 7.0 / (7.0 + 1.0 / 3f64.log2())).abs() < 1e-9, "{body}");

    // A large set becomes a job.
    let many: Vec<Value> = (0..150).map(|i| pairs[i % 12].clone()).collect();
    let response = server
        .client
        .post(server.url("/v1/eval"))
        .json(&json!({"pairs": many, "models": ["tiny-llm"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job = poll(&server, location.trim_start_matches("/v1/eval/")).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!((job["done"].as_u64(), job["total"].as_u64()), (Some(12), Some(12)), "12 distinct queries × 1 model");
    assert_eq!(server.get("/v1/eval/no-such-job").await.0, 404);

    // Client mistakes.
    assert_eq!(server.post("/v1/eval", &json!({"pairs": []})).await.0, 422);
    assert_eq!(server.post("/v1/eval", &json!({"pairs": pairs, "models": ["nope"]})).await.0, 404);
    assert_eq!(server.post("/v1/eval", &json!({"pairs": pairs, "k": [0]})).await.0, 422);
    assert_eq!(server.post("/v1/eval", &json!({"pairs": [{"query": " ", "doc_id": "x"}]})).await.0, 422);
    server.stop().await;
}

/// Polls a job until it has finished.
async fn poll(server: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, job) = server.get(&format!("/v1/eval/{id}")).await;
        assert_eq!(status, 200, "{job}");
        if !["queued", "running"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        assert!(Instant::now() < deadline, "job not done in 60 s: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` pairs with distinct queries, over the sample corpus' ids.
fn many_pairs(n: usize) -> Vec<Value> {
    let ids: Vec<Value> = sample_corpus().iter().map(|d| d["id"].clone()).collect();
    (0..n).map(|i| json!({"query": format!("how to parse item {i}"), "doc_id": ids[i % ids.len()]})).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_jobs_are_bounded_cancellable_and_leave_live_searches_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.eval.max_jobs = 1;
    let server = TestServer::start(config).await;
    assert_eq!(server.post("/v1/documents", &json!({"documents": sample_corpus()})).await.0, 200);

    // 20,000 queries × 3 models: a job that runs far longer than this test's next few requests.
    let (status, job) = server.post("/v1/eval", &json!({"pairs": many_pairs(20_000)})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert!(["queued", "running"].contains(&job["status"].as_str().unwrap()), "{job}");

    // The limit: one job queued or running.
    let refused = server.client.post(server.url("/v1/eval")).json(&json!({"pairs": many_pairs(200)})).send().await;
    let refused = refused.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    let (_, problem) = common::read(refused).await;
    assert_eq!(problem["type"], "/problems/too-many-jobs", "{problem}");

    // Live searches are answered while the job runs (its searches wait behind them in the encoders' queues).
    let (status, found) = server.post("/v1/search", &json!({"query": "parse a date", "k": 3})).await;
    assert_eq!(status, 200, "{found}");

    // Cancelled: gone at once, its task stopped, and the slot free again.
    let background = "duet_encode_requests_total{model=\"tiny-encoder\",priority=\"background\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.get(&format!("/v1/eval/{id}")).await.1["done"].as_u64() == Some(0) {
        assert!(Instant::now() < deadline, "the job did not start searching within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.delete(&format!("/v1/eval/{id}")).await, 204);
    // No more of its searches: with the queue idle between these 20 live searches, a job still running would
    // have encoded many more of its queries meanwhile (at most the one in flight may still land).
    let before = common::metric(&server.metrics().await, background);
    assert!(before > 0.0, "the job was searching before it was cancelled");
    for _ in 0..20 {
        assert_eq!(server.post("/v1/search", &json!({"query": "parse a date", "model": "tiny-encoder"})).await.0, 200);
    }
    let after = common::metric(&server.metrics().await, background);
    assert!(after - before <= 1.0, "the cancelled job kept searching: {before} → {after}");
    assert_eq!(server.get(&format!("/v1/eval/{id}")).await.0, 404);
    assert_eq!(server.delete(&format!("/v1/eval/{id}")).await, 404);
    let metrics = server.metrics().await;
    assert_eq!(common::metric(&metrics, "duet_eval_jobs{state=\"running\"}"), 0.0, "{metrics}");
    assert_eq!(common::metric(&metrics, "duet_eval_jobs{state=\"queued\"}"), 0.0);
    assert_eq!(common::metric(&metrics, "duet_eval_jobs_total{outcome=\"cancelled\"}"), 1.0);
    assert_eq!(common::metric(&metrics, "duet_eval_jobs_total{outcome=\"refused\"}"), 1.0);

    let (status, job) = server.post("/v1/eval", &json!({"pairs": many_pairs(150)})).await;
    assert_eq!(status, 202, "{job}");
    let done = poll(&server, job["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["done"], done["total"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_forgotten_after_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.eval.job_ttl_secs = 0;
    let server = TestServer::start(config).await;
    assert_eq!(server.post("/v1/documents", &json!({"documents": sample_corpus()})).await.0, 200);
    let (status, job) = server.post("/v1/eval", &json!({"pairs": many_pairs(150), "models": ["tiny-encoder"]})).await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/v1/eval/{}", job["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    // With a TTL of 0 the job is visible while it runs and gone as soon as it has finished.
    loop {
        let (status, body) = server.get(&path).await;
        if status == 404 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(["queued", "running"].contains(&body["status"].as_str().unwrap()), "{body}");
        assert!(Instant::now() < deadline, "job not finished within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = server.metrics().await;
    assert_eq!(common::metric(&metrics, "duet_eval_jobs_total{outcome=\"done\"}"), 1.0, "{metrics}");
    assert_eq!(common::metric(&metrics, "duet_eval_jobs_total{outcome=\"expired\"}"), 1.0);
    server.stop().await;
}
