//! Two servers over one PostgreSQL store, as replicas behind a load balancer run: a document written or deleted on
//! one is searched (or gone) on the other without encoding it again; an experiment changed on one routes on the
//! other; feedback sent to one for a search the other served is accepted and counted. And one server whose
//! PostgreSQL stops: searches still answered, writes refused with 503, exposures queued up to their bound and
//! the rest dropped and counted, no panic; once PostgreSQL is back, writes succeed again with no restart, and
//! nothing acknowledged is lost.

mod common;

use std::time::{Duration, Instant};

use common::postgres::{fresh_database, PgCluster};
use common::{create, metric, patch, sample_corpus, search, tiny_model, TestServer};
use duet::config::{Config, ReplicationSettings};
use duet::store::{PostgresSettings, StoreLocation};
use serde_json::{json, Value};

fn replica_config(url: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: StoreLocation::Postgres(url.to_string()),
        postgres: PostgresSettings { acquire_timeout_ms: 500, ..PostgresSettings::default() },
        replication: ReplicationSettings { poll_ms: 50, ..ReplicationSettings::default() },
        models: vec![tiny_model("tiny-encoder"), tiny_model("tiny-two-tower")],
        ..Config::default()
    }
}

/// The ids an exact search over every document of `model` returns on `server`.
async fn searched_ids(server: &TestServer, model: &str) -> Vec<String> {
    let body = search(server, json!({"query": "anything", "model": model, "k": 100, "exact": true})).await;
    body["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

/// Polls `check` until it holds or `within` has passed; returns how long it took.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A search under the experiment `ab` for a unit: status and body.
async fn routed(server: &TestServer, unit: &str) -> (u16, Value) {
    server.post("/v1/search", &json!({"query": "sort", "experiment": "ab", "unit_id": unit})).await
}

/// Encoding requests of `model` in every lane, and its query-cache hits and misses.
fn encode_counts(metrics: &str, model: &str) -> (f64, f64, f64) {
    let requests = ["live", "background"]
        .iter()
        .map(|lane| metric(metrics, &format!("duet_encode_requests_total{{model=\"{model}\",priority=\"{lane}\"}}")))
        .sum();
    let hits = metric(metrics, &format!("duet_query_cache_hits_total{{model=\"{model}\"}}"));
    let misses = metric(metrics, &format!("duet_query_cache_misses_total{{model=\"{model}\"}}"));
    (requests, hits, misses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_writes_deletes_experiments_and_feedback_through_postgres() {
    let url = fresh_database().await;
    let a = TestServer::start(replica_config(&url)).await;
    let b = TestServer::start(replica_config(&url)).await;

    // A write on A is searched on B, from the embeddings A stored: B encodes only its own queries.
    let corpus = sample_corpus();
    let (status, body) = a.post("/v1/documents", &json!({"documents": corpus})).await;
    assert_eq!(status, 200, "{body}");
    let before = encode_counts(&b.metrics().await, "tiny-encoder");
    let mut searches = 0.0;
    let lag = eventually(Duration::from_secs(5), "A's documents searchable on B", || {
        searches += 1.0;
        let b = &b;
        let n = corpus.len();
        async move { searched_ids(b, "tiny-encoder").await.len() == n }
    })
    .await;
    assert_eq!(searched_ids(&b, "tiny-two-tower").await.len(), corpus.len(), "every model of B has them");
    let after = encode_counts(&b.metrics().await, "tiny-encoder");
    // Its queries were encoded once and then answered by its query cache; no document reached its encoder.
    assert_eq!(
        (after.1 - before.1) + (after.2 - before.2),
        searches,
        "each of B's {searches} queries went through its cache"
    );
    assert_eq!(after.0 - before.0, after.2 - before.2, "B encoded its query-cache misses and no document");
    eprintln!("documents written on A searchable on B after {lag:?}");

    // A document changed on A gets its new text on B; a delete on A disappears on B.
    let first = corpus[0]["id"].as_str().unwrap().to_string();
    let (status, _) = a
        .post("/v1/documents", &json!({"documents": [{"id": first, "text": "a brand new text about sailing boats"}]}))
        .await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(5), "the new text on B", || {
        let (b, first) = (&b, first.clone());
        async move {
            let body = search(b, json!({"query": "x", "model": "tiny-encoder", "k": 100, "exact": true})).await;
            body["results"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == first.as_str() && r["snippet"].as_str().unwrap().contains("sailing"))
        }
    })
    .await;
    let victim = corpus[1]["id"].as_str().unwrap().to_string();
    assert_eq!(a.delete(&format!("/v1/documents/{victim}")).await, 204);
    eventually(Duration::from_secs(5), "the deleted document gone from B's searches", || {
        let (b, victim) = (&b, victim.clone());
        async move { !searched_ids(b, "tiny-encoder").await.contains(&victim) }
    })
    .await;
    assert_eq!(b.get(&format!("/v1/documents/{victim}")).await.0, 404);
    assert_eq!(searched_ids(&b, "tiny-two-tower").await.len(), corpus.len() - 1);

    // An experiment created and started on A routes on B; a weight change on A moves B's units.
    let exp = create(
        &a,
        json!({"name": "ab", "mode": "ab", "status": "running",
               "arms": [{"model": "tiny-encoder", "weight": 1000000}, {"model": "tiny-two-tower", "weight": 1}]}),
    )
    .await;
    let id = exp["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(5), "the experiment routes on B", || async { routed(&b, "user-1").await.0 == 200 })
        .await;
    let (_, body) = routed(&b, "user-1").await;
    assert_eq!(body["arm"], "tiny-encoder");
    let (status, _) = patch(&a, &id, json!({"weights": {"tiny-encoder": 1, "tiny-two-tower": 1000000}})).await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(5), "the new weights on B", || async {
        routed(&b, "user-1").await.1["arm"] == "tiny-two-tower"
    })
    .await;
    // Every unit gets the same arm on both replicas (the assignment hashes the salt and the unit).
    for u in 0..20 {
        let (_, on_a) = routed(&a, &format!("unit-{u}")).await;
        let (_, on_b) = routed(&b, &format!("unit-{u}")).await;
        assert_eq!(on_a["arm"], on_b["arm"], "unit-{u}");
    }

    // Feedback sent to B for a search A served is accepted, and A's report counts it.
    let (_, served) = routed(&a, "clicker").await;
    let request_id = served["request_id"].as_str().expect("logged search has a request id").to_string();
    let doc = served["results"][0]["id"].as_str().unwrap().to_string();
    let (status, receipt) =
        b.post("/v1/feedback", &json!({"request_id": request_id, "doc_id": doc, "event": "click"})).await;
    assert!(status == 200 || status == 201, "{status} {receipt}");
    assert_eq!(receipt["experiment"], "ab");
    let (_, report) = a.get(&format!("/v1/experiments/{id}/report")).await;
    let clicks: u64 =
        report["arms"].as_array().unwrap().iter().map(|arm| arm["clicked_impressions"].as_u64().unwrap_or(0)).sum();
    assert_eq!(clicks, 1, "{report}");
    // The same event again through A is a duplicate, not a second click.
    let (_, again) = a.post("/v1/feedback", &json!({"request_id": request_id, "doc_id": doc, "event": "click"})).await;
    assert_eq!(again["duplicate"], true, "{again}");

    let applied = metric(&b.metrics().await, "duet_replication_applied_total{kind=\"document\"}");
    assert!(applied >= corpus.len() as f64, "B counted the documents it applied: {applied}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn searches_go_on_while_postgres_is_down_and_writes_resume_when_it_is_back() {
    let cluster = PgCluster::start();
    let mut config = replica_config(cluster.url());
    // A small exposure queue, to see it fill while the store is away.
    config.experiments.exposure_queue = 4;
    let server = TestServer::start(config).await;
    let corpus = sample_corpus();
    assert_eq!(server.post("/v1/documents", &json!({"documents": corpus})).await.0, 200);
    let exp = create(
        &server,
        json!({"name": "live", "mode": "ab", "status": "running",
               "arms": [{"model": "tiny-encoder"}, {"model": "tiny-two-tower"}]}),
    )
    .await;

    cluster.stop();
    // Searches are answered from memory, under the experiment too.
    let mut queued = 0;
    for u in 0..10 {
        let body =
            search(&server, json!({"query": "sort a list", "experiment": "live", "unit_id": format!("u{u}"), "k": 3}))
                .await;
        assert_eq!(body["results"].as_array().unwrap().len(), 3);
        queued += usize::from(body["experiment"]["logged"] == true);
    }
    // The writer holds what it took, the queue fills to its bound, and the rest are dropped and counted.
    let dropped = metric(&server.metrics().await, r#"duet_experiment_exposures_dropped_total{experiment="live"}"#);
    assert!(queued >= 4 && queued < 10, "{queued} of 10 queued");
    assert_eq!(dropped as usize, 10 - queued);
    // Writes are refused with 503 and Retry-After (at once, once the store is known to be down).
    let response = server
        .client
        .post(server.url("/v1/documents"))
        .json(&json!({"documents": [{"id": "during", "text": "written while the store is down"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let (_, problem) = common::read(response).await;
    assert_eq!(problem["type"].as_str().map(|t| t.ends_with("store-unavailable")), Some(true), "{problem}");
    eventually(Duration::from_secs(10), "/readyz reports the store degraded", || {
        let server = &server;
        async move {
            let (status, body) = server.get("/readyz").await;
            status == 200 && body["store"]["status"] == "degraded"
        }
    })
    .await;
    let started = Instant::now();
    assert_eq!(server.delete("/v1/documents/anything").await, 503);
    assert!(started.elapsed() < Duration::from_millis(400), "refused without waiting for a connection");
    assert_eq!(metric(&server.metrics().await, "duet_store_up"), 0.0);

    cluster.start_again();
    eventually(Duration::from_secs(15), "/readyz reports the store ok again", || {
        let server = &server;
        async move { server.get("/readyz").await.1["store"]["status"] == "ok" }
    })
    .await;
    let (status, body) =
        server.post("/v1/documents", &json!({"documents": [{"id": "after", "text": "written once it is back"}]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get("/v1/documents/after").await.0, 200);
    assert_eq!(server.get("/v1/documents/during").await.0, 404, "the refused write was not half-done");
    // The exposures of the searches made during the outage were held and written once it was back.
    let id = exp["id"].as_str().unwrap();
    let (_, report) = server.get(&format!("/v1/experiments/{id}/report")).await;
    let impressions: u64 = report["arms"].as_array().unwrap().iter().map(|a| a["impressions"].as_u64().unwrap()).sum();
    assert_eq!(impressions as usize, queued, "every exposure queued during the outage was written: {report}");
    assert_eq!(metric(&server.metrics().await, "duet_store_up"), 1.0);
    server.stop().await;
}
