//! Writes a disconnect cannot tear: upserts whose client goes away at random points (before, during or after the
//! store commit) leave the store and every model's index in agreement, and re-upserting the same ids keeps the
//! index slots bounded.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{metric, tiny_config, TestServer};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::sqlite::SqlitePoolOptions;

/// Words of the sample corpus, which the tiny models' vocabularies know.
fn words() -> Vec<String> {
    let mut words: Vec<String> = common::sample_corpus()
        .iter()
        .flat_map(|d| d["text"].as_str().unwrap().split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    words.sort();
    words.dedup();
    words
}

/// A text of its own for each document: eight corpus words drawn from the document's seed.
fn text(round: usize, i: usize) -> String {
    let words = words();
    let mut rng = rand::rngs::StdRng::seed_from_u64((round * 1000 + i) as u64);
    (0..8).map(|_| words[rng.random_range(0..words.len())].as_str()).collect::<Vec<_>>().join(" ")
}

fn batch(round: usize, size: usize) -> Value {
    let documents: Vec<Value> =
        (0..size).map(|i| json!({"id": format!("r{round}-{i}"), "text": text(round, i)})).collect();
    json!({ "documents": documents })
}

async fn stored_ids(store: &std::path::Path) -> BTreeSet<String> {
    let pool = SqlitePoolOptions::new().connect(&format!("sqlite://{}", store.display())).await.unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM documents").fetch_all(&pool).await.unwrap();
    pool.close().await;
    ids.into_iter().collect()
}

/// Per model, the document count `/v1/models` reports.
async fn model_counts(server: &TestServer) -> Vec<(String, u64)> {
    let (_, body) = server.get("/v1/models").await;
    body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["documents"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_aborted_at_random_points_leave_store_and_indexes_in_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("duet.db");
    let server = TestServer::start(tiny_config(&store)).await;

    // How long one whole 256-document upsert takes here, to spread the abort points over it.
    let started = Instant::now();
    assert_eq!(server.post("/v1/documents", &batch(0, 256)).await.0, 200);
    let full = started.elapsed();

    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let rounds = 32;
    let mut aborted = Vec::new();
    for wave in 0..(rounds / 8) {
        let mut tasks = Vec::new();
        for j in 0..8 {
            let round = 1 + wave * 8 + j;
            let (client, url, body) = (reqwest::Client::new(), server.url("/v1/documents"), batch(round, 256));
            let delay = full.mul_f64(rng.random_range(0.0..1.5) * (1 + j) as f64 / 2.0);
            let task = tokio::spawn(async move { client.post(url).json(&body).send().await });
            tasks.push((task, delay));
        }
        let wave_start = Instant::now();
        for (task, delay) in tasks {
            tokio::time::sleep(delay.saturating_sub(wave_start.elapsed())).await;
            // Dropping the request future closes the connection, whatever point the server had reached.
            task.abort();
            aborted.push(task.await.is_err());
        }
    }
    let cut = aborted.iter().filter(|&&a| a).count();
    assert!(cut > 0, "none of {rounds} upserts was cut off");

    // Whatever reached the store reaches every index (the commit tasks finish on their own; a torn write never
    // heals, so waiting cannot hide one).
    let engine = server.server.engine.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids = loop {
        // Once no commit task is left, nothing can land between the reads below.
        let settled = engine.commits_in_flight() == 0;
        let ids = stored_ids(&store).await;
        let counts = model_counts(&server).await;
        if settled && counts.iter().all(|(_, n)| *n as usize == ids.len()) {
            break ids;
        }
        assert!(Instant::now() < deadline, "store holds {} documents, indexes {counts:?}", ids.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(engine.store().count().await.unwrap() as usize, ids.len());
    // Since the encoding queue tokenises on the caller's side, the tiny networks' encoding is a sliver of an
    // upsert and the cut-off requests reach their commit (which a disconnect cannot cancel, by design) before the
    // server sees the disconnect: every one may be committed, but never part of one.
    assert!(ids.len() > 256 && ids.len() <= 256 * (rounds + 1), "upserts were committed: {}", ids.len());
    assert_eq!(ids.len() % 256, 0, "an upsert is committed whole or not at all");
    for model in engine.models().values() {
        let missing: Vec<&String> = ids.iter().filter(|id| !model.index.contains(id)).take(5).collect();
        assert!(missing.is_empty(), "{}: stored but not indexed: {missing:?}", model.info.name);
    }
    // And searchable over HTTP: an exact search with the text of one document of each committed round finds it.
    let rounds_stored: BTreeSet<&str> = ids.iter().map(|id| id.split('-').next().unwrap()).collect();
    for round in rounds_stored {
        let round: usize = round[1..].parse().unwrap();
        let id = format!("r{round}-7");
        for (model, _) in model_counts(&server).await {
            let body = json!({"model": model, "query": text(round, 7), "k": 100, "exact": true});
            let (status, found) = server.post("/v1/search", &body).await;
            assert_eq!(status, 200, "{found}");
            let hits: Vec<&str> =
                found["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
            assert!(hits.contains(&id.as_str()), "{model}: {id} not found by an exact search");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_upserting_the_same_ids_keeps_index_slots_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.models.truncate(1);
    let model = "tiny-two-tower";
    let server = TestServer::start(config).await;
    let ids = 50;
    for round in 0..100 {
        let documents: Vec<Value> = (0..ids)
            .map(|i| json!({"id": format!("d{i}"), "text": format!("version {round} of document {i}")}))
            .collect();
        assert_eq!(server.post("/v1/documents", &json!({ "documents": documents })).await.0, 200);
    }
    let (_, models) = server.get("/v1/models").await;
    let index = &models["models"][0]["index"];
    let slots = index["slots"].as_u64().unwrap();
    assert_eq!(models["models"][0]["documents"], ids);
    // 5,000 writes of 50 ids: dead slots are dropped as they pile up.
    assert!(slots as usize <= ids + 64 + ids, "{slots} slots for {ids} documents");
    let series = format!("duet_index_slots{{model=\"{model}\"}}");
    assert_eq!(metric(&server.metrics().await, &series), slots as f64);
    server.stop().await;
}
