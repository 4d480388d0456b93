//! Everything a client can get wrong is a 4xx `application/problem+json` with a message that says what to change
//! — never a 500, never a panic — and bodies are read as the spec defines them (an object, no null for an
//! optional member, `5.0` an integer).

mod common;

use common::{tiny_config, TestServer};
use serde_json::{json, Value};

async fn problem(
    server: &TestServer,
    method: &str,
    path: &str,
    body: Option<String>,
    content_type: Option<&str>,
) -> (u16, Value) {
    let mut request = match method {
        "GET" => server.client.get(server.url(path)),
        "POST" => server.client.post(server.url(path)),
        "DELETE" => server.client.delete(server.url(path)),
        "PUT" => server.client.put(server.url(path)),
        other => panic!("method {other}"),
    };
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let ct = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    assert!(response.headers().contains_key("x-request-id"), "{method} {path}: no request id");
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
    assert_eq!(ct.as_deref(), Some("application/problem+json"), "{method} {path} → {status} {body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["type"].as_str().unwrap().starts_with("/problems/"), "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty(), "{body}");
    (status, body)
}

async fn post_json(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    problem(server, "POST", path, Some(body.to_string()), Some("application/json")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_problems() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.limits.max_body_bytes = 64 * 1024;
    config.limits.max_batch = 4;
    config.limits.max_query_chars = 100;
    let server = TestServer::start(config).await;

    // Search: empty, blank and oversize queries; k out of range; unknown model (listing the known ones).
    let (s, b) = post_json(&server, "/v1/search", json!({"query": ""})).await;
    assert_eq!(s, 422);
    assert!(b["detail"].as_str().unwrap().contains("query"), "{b}");
    assert_eq!(post_json(&server, "/v1/search", json!({"query": "   \n"})).await.0, 422);
    let (s, b) = post_json(&server, "/v1/search", json!({"query": "a".repeat(101)})).await;
    assert_eq!(s, 422);
    assert!(b["detail"].as_str().unwrap().contains("limit is 100"), "{b}");
    for k in [0, 1001] {
        let (s, b) = post_json(&server, "/v1/search", json!({"query": "x", "k": k})).await;
        assert_eq!(s, 422, "k={k}");
        assert!(b["detail"].as_str().unwrap().contains("`k`"), "{b}");
    }
    let (s, _) = post_json(&server, "/v1/search", json!({"query": "x", "k": -3})).await;
    assert_eq!(s, 422, "a negative k does not even parse as a count");
    assert_eq!(post_json(&server, "/v1/search", json!({"query": "x", "ef": 0})).await.0, 422);
    let (s, b) = post_json(&server, "/v1/search", json!({"query": "x", "model": "gpt-9"})).await;
    assert_eq!(s, 404);
    assert_eq!(b["type"], "/problems/unknown-model");
    assert_eq!(b["known_models"], json!(["tiny-encoder", "tiny-llm", "tiny-two-tower"]));
    assert!(b["detail"].as_str().unwrap().contains("gpt-9"));
    let (s, b) = post_json(&server, "/v1/search", json!({"query": "x", "top_k": 3})).await;
    assert_eq!(s, 422, "a misspelt field is not silently ignored");
    assert!(b["detail"].as_str().unwrap().contains("top_k"), "{b}");
    assert_eq!(post_json(&server, "/v1/search", json!({"k": 3})).await.0, 422, "query is required");
    assert_eq!(post_json(&server, "/v1/search", json!("just a string")).await.0, 422);
    // A body must be an object: an array is not read as the fields in order.
    for (path, array) in [
        ("/v1/search", json!(["x", 3])),
        ("/v1/documents", json!([[{"id": "a", "text": "t"}]])),
        ("/v1/embed", json!([["a"]])),
    ] {
        let (s, b) = post_json(&server, path, array).await;
        assert_eq!(s, 422, "{path}: {b}");
        assert!(b["detail"].as_str().unwrap().contains("object"), "{b}");
    }
    // An optional member that is given must hold a value: null is not read as absent.
    for member in ["model", "experiment", "unit_id", "ef"] {
        let (s, b) = post_json(&server, "/v1/search", json!({"query": "x", member: null})).await;
        assert_eq!(s, 422, "{member}: null → {b}");
        assert!(b["detail"].as_str().unwrap().contains(member), "{b}");
    }
    for (path, body) in [
        ("/v1/embed", json!({"texts": ["a"], "model": null})),
        ("/v1/eval", json!({"pairs": [{"query": "q", "doc_id": "d"}], "models": null})),
    ] {
        let (s, b) = post_json(&server, path, body).await;
        assert_eq!(s, 422, "{path}: {b}");
        assert!(b["detail"].as_str().unwrap().contains("null"), "{b}");
    }
    // An integral number is an integer, as JSON Schema reads it.
    assert_eq!(server.post("/v1/search", &json!({"query": "x", "k": 5.0, "ef": 64.0})).await.0, 200);
    assert_eq!(post_json(&server, "/v1/search", json!({"query": "x", "k": 5.5})).await.0, 422);

    // GET search: missing q, non-numeric k, unknown model.
    assert_eq!(problem(&server, "GET", "/v1/search?k=3", None, None).await.0, 400);
    assert_eq!(problem(&server, "GET", "/v1/search?q=x&k=many", None, None).await.0, 400);
    assert_eq!(problem(&server, "GET", "/v1/search?q=x&k=0", None, None).await.0, 422);
    assert_eq!(problem(&server, "GET", "/v1/search?q=x&model=nope", None, None).await.0, 404);

    // Malformed JSON, wrong content type, oversize body.
    let (s, b) = problem(&server, "POST", "/v1/search", Some("{\"query\": ".into()), Some("application/json")).await;
    assert_eq!(s, 400);
    assert_eq!(b["type"], "/problems/malformed-json");
    assert_eq!(
        problem(&server, "POST", "/v1/search", Some("{\"query\": \"x\"}".into()), Some("text/plain")).await.0,
        415
    );
    assert_eq!(problem(&server, "POST", "/v1/search", Some("{\"query\": \"x\"}".into()), None).await.0, 415);
    let huge = json!({"documents": [{"id": "a", "text": "word ".repeat(20_000)}]}).to_string();
    let (s, b) = problem(&server, "POST", "/v1/documents", Some(huge), Some("application/json")).await;
    assert_eq!(s, 413);
    assert_eq!(b["type"], "/problems/too-large");

    // Documents: empty or oversize batch, empty id or text, bad metadata, unknown document; duplicate ids.
    assert_eq!(post_json(&server, "/v1/documents", json!({"documents": []})).await.0, 422);
    let five: Vec<Value> = (0..5).map(|i| json!({"id": format!("d{i}"), "text": "t"})).collect();
    let (s, b) = post_json(&server, "/v1/documents", json!({"documents": five})).await;
    assert_eq!(s, 413);
    assert!(b["detail"].as_str().unwrap().contains("limit is 4"), "{b}");
    let (s, b) = post_json(&server, "/v1/documents", json!({"documents": [{"id": "", "text": "t"}]})).await;
    assert_eq!(s, 422);
    assert!(b["detail"].as_str().unwrap().contains("documents[0]"), "{b}");
    assert_eq!(post_json(&server, "/v1/documents", json!({"documents": [{"id": "a", "text": " "}]})).await.0, 422);
    assert_eq!(
        post_json(&server, "/v1/documents", json!({"documents": [{"id": "a", "text": "t", "metadata": [1]}]})).await.0,
        422
    );
    assert_eq!(post_json(&server, "/v1/documents", json!({"documents": [{"id": "a"}]})).await.0, 422);
    assert_eq!(problem(&server, "GET", "/v1/documents/missing", None, None).await.0, 404);
    assert_eq!(problem(&server, "DELETE", "/v1/documents/missing", None, None).await.0, 404);
    assert_eq!(server.get("/v1/documents/a").await.0, 404, "nothing from the refused batches was stored");
    // An id given twice in one batch is written once, as its last version.
    let (s, b) = server
        .post("/v1/documents", &json!({"documents": [{"id": "dup", "text": "first"}, {"id": "dup", "text": "last"}]}))
        .await;
    assert_eq!((s, b["upserted"].as_u64()), (200, Some(1)), "{b}");
    assert_eq!(server.get("/v1/documents/dup").await.1["text"], "last");

    // Embed: no texts, too many, empty text, unknown side or model.
    assert_eq!(post_json(&server, "/v1/embed", json!({"texts": []})).await.0, 422);
    assert_eq!(post_json(&server, "/v1/embed", json!({"texts": ["a", "b", "c", "d", "e"]})).await.0, 413);
    assert_eq!(post_json(&server, "/v1/embed", json!({"texts": [""]})).await.0, 422);
    assert_eq!(post_json(&server, "/v1/embed", json!({"texts": ["a"], "side": "both"})).await.0, 422);
    assert_eq!(post_json(&server, "/v1/embed", json!({"texts": ["a"], "model": "nope"})).await.0, 404);

    // Unknown routes and methods.
    assert_eq!(problem(&server, "GET", "/v2/search", None, None).await.0, 404);
    assert_eq!(problem(&server, "PUT", "/v1/search", None, None).await.0, 405);
    assert_eq!(problem(&server, "DELETE", "/v1/documents", None, None).await.0, 405);

    // After all that, the server still serves, and no 5xx was ever counted (but /readyz's 503 while warming up).
    let (s, _) = server.post("/v1/search", &json!({"query": "x"})).await;
    assert_eq!(s, 200);
    let metrics = server.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("duet_http_requests_total") && l.contains("status=\"5") && !l.contains("/readyz")),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_encoding_queue_sheds_load_with_503_and_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.encoder.queue_capacity = 1;
    config.encoder.max_batch = 4;
    let server = TestServer::start(config).await;
    let texts: Vec<String> = (0..256).map(|i| format!("read a json file from disk number {i} ").repeat(8)).collect();
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let client = server.client.clone();
        let url = server.url("/v1/embed");
        let body = json!({"texts": texts, "model": "tiny-llm"});
        tasks.push(tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() }));
    }
    let (mut ok, mut shed) = (0, 0);
    for task in tasks {
        let response = task.await.unwrap();
        match response.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["type"], "/problems/overloaded");
                shed += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1, "the queue still serves");
    assert_eq!(ok + shed, 24);
    let metrics = server.metrics().await;
    assert_eq!(common::metric(&metrics, "duet_encode_rejected_total{model=\"tiny-llm\"}"), shed as f64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integral_numbers_count_and_null_metadata_is_an_empty_object() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;
    assert_eq!(server.post("/v1/documents", &json!({"documents": common::sample_corpus()})).await.0, 200);
    // `k: 5.0` is 5, and a fraction names the member it is wrong in.
    let (s, b) = server.post("/v1/search", &json!({"query": "sort a list", "k": 5.0})).await;
    assert_eq!((s, b["results"].as_array().map(Vec::len)), (200, Some(5)), "{b}");
    let (_, b) = post_json(&server, "/v1/search", json!({"query": "sort a list", "k": 5.5})).await;
    assert!(b["detail"].as_str().unwrap().contains("k:"), "{b}");
    // Metadata is the one member the spec lets be null, meaning `{}`.
    let (s, b) =
        server.post("/v1/documents", &json!({"documents": [{"id": "n", "text": "t", "metadata": null}]})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(server.get("/v1/documents/n").await.1["metadata"], json!({}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_refused_where_they_would_be_stored_and_harmless_elsewhere() {
    // PostgreSQL's text cannot hold U+0000: a document text with one is refused up front on every store, an id
    // with one is simply unknown, and a query with one is served (and logged with U+FFFD instead).
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;
    let (s, b) =
        post_json(&server, "/v1/documents", json!({"documents": [{"id": "a", "text": "nul \u{0} here"}]})).await;
    assert_eq!(s, 422);
    assert!(b["detail"].as_str().unwrap().contains("NUL"), "{b}");
    assert_eq!(problem(&server, "GET", "/v1/documents/a%00b", None, None).await.0, 404);
    assert_eq!(problem(&server, "DELETE", "/v1/documents/a%00b", None, None).await.0, 404);
    let (s, b) =
        post_json(&server, "/v1/feedback", json!({"request_id": "r\u{0}", "doc_id": "a", "event": "click"})).await;
    assert_eq!(s, 404, "{b}");
    let (status, _) = server.post("/v1/search", &json!({"query": "sort \u{0} this"})).await;
    assert_eq!(status, 200);
    // A unit id with a control character is refused, from the body or the header.
    assert_eq!(post_json(&server, "/v1/search", json!({"query": "sort", "unit_id": "u\u{0}"})).await.0, 422);
    let response =
        server.client.post(server.url("/v1/search")).header("X-Duet-Unit", "a\tb").json(&json!({"query": "x"})).send();
    assert_eq!(response.await.unwrap().status().as_u16(), 422);
    assert_eq!(server.get("/v1/documents/a").await.0, 404, "nothing was written");
    server.stop().await;
}
