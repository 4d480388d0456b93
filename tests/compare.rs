//! `POST /v1/compare` over HTTP with the tiny models: one column per model in the order asked, each the ranking
//! `/v1/search` gives for that model and `k`; one overlap per pair, equal to Jaccard@k and RBO recomputed here
//! from the columns' ids; and the client mistakes (too few, too many or repeated models, bad `k`, unknown model).

mod common;

use common::{sample_corpus, search, tiny_config, TestServer};
use duet::experiment::stats;
use serde_json::{json, Value};

fn ids(results: &Value) -> Vec<String> {
    results.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

async fn loaded(dir: &tempfile::TempDir) -> TestServer {
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;
    let (status, body) = server.post("/v1/documents", &json!({"documents": sample_corpus()})).await;
    assert_eq!(status, 200, "{body}");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_column_is_the_models_own_search_and_the_overlaps_are_recomputable() {
    let dir = tempfile::tempdir().unwrap();
    let server = loaded(&dir).await;
    let models = ["tiny-llm", "tiny-encoder", "tiny-two-tower"];
    for (query, k) in [("open a file and read lines", 5), ("a detective story about a murder on a train", 3)] {
        let (status, body) = server.post("/v1/compare", &json!({"query": query, "models": models, "k": k})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!((body["query"].as_str(), body["k"].as_u64()), (Some(query), Some(k as u64)));
        let columns = body["columns"].as_array().unwrap();
        let asked: Vec<&str> = columns.iter().map(|c| c["model"].as_str().unwrap()).collect();
        assert_eq!(asked, models, "columns come in the order asked");
        let mut rankings = Vec::new();
        for column in columns {
            let model = column["model"].as_str().unwrap();
            let alone = search(&server, json!({"query": query, "model": model, "k": k})).await;
            assert_eq!(ids(&column["results"]), ids(&alone["results"]), "{model}: the same ids in the same order");
            assert_eq!(column["results"][0]["snippet"], alone["results"][0]["snippet"]);
            assert_eq!(column["results"][0]["score"], alone["results"][0]["score"]);
            assert_eq!(column["model_version"], alone["model_version"]);
            assert_eq!(column["method"], alone["method"]);
            assert_eq!(column["query_truncated"], false);
            for timing in ["encode_ms", "search_ms", "fetch_ms", "total_ms"] {
                assert!(column["timings_ms"][timing].as_f64().is_some(), "{column}");
            }
            rankings.push(ids(&column["results"]));
        }
        let overlaps = body["overlaps"].as_array().unwrap();
        let pairs: Vec<(usize, usize)> = vec![(0, 1), (0, 2), (1, 2)];
        assert_eq!(overlaps.len(), pairs.len(), "{body}");
        for (overlap, (i, j)) in overlaps.iter().zip(pairs) {
            assert_eq!((overlap["a"].as_str(), overlap["b"].as_str()), (Some(models[i]), Some(models[j])));
            let jaccard = stats::jaccard_at(&rankings[i], &rankings[j], k);
            let rbo = stats::rbo(&rankings[i], &rankings[j], 0.9);
            // Within a rounding step: JSON numbers are parsed back without exact rounding.
            assert!((overlap["jaccard"].as_f64().unwrap() - jaccard).abs() < 1e-12, "{overlap} vs {jaccard}");
            assert!((overlap["rbo"].as_f64().unwrap() - rbo).abs() < 1e-12, "{overlap} vs {rbo}");
        }
    }

    // Two models, exact: one overlap; the columns say how they searched.
    let (status, body) = server
        .post("/v1/compare", &json!({"query": "sort a list", "models": ["tiny-encoder", "tiny-llm"], "exact": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["k"], 10);
    assert_eq!(body["overlaps"].as_array().unwrap().len(), 1);
    assert_eq!(body["columns"][0]["method"], "exact", "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_are_422_and_unknown_models_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = loaded(&dir).await;
    let problem = |models: Value| json!({"query": "sort a list", "models": models});
    for (models, says) in [
        (json!(["tiny-llm"]), "got 1"),
        (json!([]), "got 0"),
        (json!(["tiny-llm", "tiny-encoder", "tiny-two-tower", "a", "b"]), "got 5"),
        (json!(["tiny-llm", "tiny-encoder", "tiny-llm"]), "twice"),
    ] {
        let (status, body) = server.post("/v1/compare", &problem(models.clone())).await;
        assert_eq!(status, 422, "{models}: {body}");
        assert_eq!(body["type"], "/problems/invalid-request", "{body}");
        assert!(body["detail"].as_str().unwrap().contains(says), "{models}: {body}");
    }
    for bad in [
        json!({"query": " ", "models": ["tiny-llm", "tiny-encoder"]}),
        json!({"query": "q", "models": ["tiny-llm", "tiny-encoder"], "k": 0}),
        json!({"query": "q", "models": ["tiny-llm", "tiny-encoder"], "ef": 0}),
        json!({"query": "q", "models": ["tiny-llm", "tiny-encoder"], "model": "tiny-llm"}),
        json!({"models": ["tiny-llm", "tiny-encoder"]}),
    ] {
        let (status, body) = server.post("/v1/compare", &bad).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (status, body) = server.post("/v1/compare", &problem(json!(["tiny-llm", "no-such-model"]))).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["type"], "/problems/unknown-model", "{body}");
    assert!(body["known_models"].as_array().unwrap().contains(&json!("tiny-encoder")), "{body}");
    server.stop().await;
}
