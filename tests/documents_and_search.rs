//! The serving loop over HTTP: upsert → search with each model → update → delete → restart → the same results,
//! without re-encoding anything.

mod common;

use common::{metric, sample_corpus, tiny_config, TestServer};
use serde_json::{json, Value};

const MODELS: [&str; 3] = ["tiny-two-tower", "tiny-llm", "tiny-encoder"];

fn ids(body: &Value) -> Vec<String> {
    body["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

fn scores(body: &Value) -> Vec<f64> {
    body["results"].as_array().unwrap().iter().map(|r| r["score"].as_f64().unwrap()).collect()
}

async fn search(server: &TestServer, model: &str, query: &str, k: usize) -> Value {
    let (status, body) = server.post("/v1/search", &json!({"query": query, "k": k, "model": model})).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_search_delete_and_restart_without_reencoding() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("duet.db");
    let server = TestServer::start(tiny_config(&db)).await;

    let (status, body) = server.post("/v1/documents", &json!({"documents": sample_corpus()})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upserted"], 50);
    assert_eq!(body["models"], json!(["tiny-encoder", "tiny-llm", "tiny-two-tower"]));

    // A document's own text finds it first, with every model; results carry score, snippet and metadata.
    for model in MODELS {
        let body = search(&server, model, "a detective story about a murder on a train in the snow", 3).await;
        assert_eq!(body["model"], model);
        assert_eq!(ids(&body)[0], "book-detective", "{model}: {body}");
        let first = &body["results"][0];
        assert_eq!(first["metadata"]["kind"], "book");
        assert_eq!(first["snippet"], "a detective story about a murder on a train in the snow");
        assert!(first["score"].as_f64().unwrap() > 0.9, "{model}: {first}");
        let s = scores(&body);
        assert!(s.windows(2).all(|w| w[0] >= w[1]), "scores descend: {s:?}");
        assert!(body["request_id"].as_str().unwrap().len() >= 16);
        assert_eq!(body["method"], "exact", "50 documents are below exact_below");
        for key in ["encode_ms", "search_ms", "fetch_ms", "total_ms"] {
            assert!(body["timings_ms"][key].as_f64().unwrap() >= 0.0);
        }
    }

    // GET /v1/search answers like POST.
    let (status, get_body) = server.get("/v1/search?q=sort%20a%20list%20of%20numbers&k=5&model=tiny-llm").await;
    assert_eq!(status, 200);
    let post_body = search(&server, "tiny-llm", "sort a list of numbers", 5).await;
    assert_eq!(ids(&get_body), ids(&post_body));

    // No model named: the default (first configured) model serves.
    let (_, body) = server.post("/v1/search", &json!({"query": "compress a directory"})).await;
    assert_eq!(body["model"], "tiny-two-tower");
    assert_eq!(body["results"].as_array().unwrap().len(), 10, "k defaults to 10");

    // Updating a document's text moves it in every index at once.
    let (status, _) = server
        .post("/v1/documents", &json!({"documents": [{"id": "book-garden", "text": "a guide to python files and disk usage", "metadata": {"v": 2}}]}))
        .await;
    assert_eq!(status, 200);
    let (status, doc) = server.get("/v1/documents/book-garden").await;
    assert_eq!(status, 200);
    assert_eq!(doc["text"], "a guide to python files and disk usage");
    assert_eq!(doc["metadata"], json!({"v": 2}));
    assert!(doc["created_at"].as_str().unwrap() <= doc["updated_at"].as_str().unwrap());
    for model in MODELS {
        let body = search(&server, model, "a guide to python files and disk usage", 1).await;
        assert_eq!(ids(&body), ["book-garden"], "{model}");
        let body = search(&server, model, "a practical guide to growing vegetables in a small garden", 50).await;
        assert_eq!(ids(&body).iter().filter(|id| *id == "book-garden").count(), 1, "{model}: one entry per document");
    }

    // Deleting removes it from the store and every index before the answer.
    assert_eq!(server.delete("/v1/documents/book-detective").await, 204);
    assert_eq!(server.delete("/v1/documents/book-detective").await, 404);
    assert_eq!(server.get("/v1/documents/book-detective").await.0, 404);
    let mut before_restart = Vec::new();
    for model in MODELS {
        let body = search(&server, model, "a detective story about a murder on a train in the snow", 49).await;
        assert!(!ids(&body).contains(&"book-detective".to_string()), "{model}");
        assert_eq!(ids(&body).len(), 49);
        before_restart.push((ids(&body), scores(&body)));
    }
    let (_, models) = server.get("/v1/models").await;
    assert!(models["models"].as_array().unwrap().iter().all(|m| m["documents"] == 49));
    server.stop().await;

    // Restart on the same store: indexes come back from stored embeddings; nothing is encoded again.
    let server = TestServer::start(tiny_config(&db)).await;
    for (model, (ids_before, scores_before)) in MODELS.iter().zip(&before_restart) {
        let body = search(&server, model, "a detective story about a murder on a train in the snow", 49).await;
        assert_eq!(&ids(&body), ids_before, "{model}");
        for (a, b) in scores(&body).iter().zip(scores_before) {
            assert!((a - b).abs() < 1e-6, "{model}: {a} vs {b}");
        }
    }
    let metrics = server.metrics().await;
    for model in MODELS {
        let series = format!("duet_encode_duration_seconds_count{{model=\"{model}\",side=\"document\"}}");
        assert_eq!(metric(&metrics, &series), 0.0, "{model} re-encoded documents after a restart:\n{metrics}");
        assert_eq!(metric(&metrics, &format!("duet_documents{{model=\"{model}\"}}")), 49.0);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_added_later_encodes_only_what_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("duet.db");
    let mut config = tiny_config(&db);
    config.models.truncate(1);
    let server = TestServer::start(config).await;
    let (status, _) = server.post("/v1/documents", &json!({"documents": sample_corpus()})).await;
    assert_eq!(status, 200);
    server.stop().await;

    let server = TestServer::start(tiny_config(&db)).await;
    let metrics = server.metrics().await;
    let encoded = |model: &str| metric(&metrics, &format!("duet_encode_batch_size_sum{{model=\"{model}\"}}"));
    assert_eq!(encoded("tiny-two-tower"), 0.0, "the first model's embeddings come from the store");
    assert_eq!(encoded("tiny-llm"), 50.0, "the new model encodes the stored corpus once");
    let body = search(&server, "tiny-llm", "generate a new ssh key pair for logging in to a server", 1).await;
    assert_eq!(ids(&body), ["sh-ssh-key"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_describe_themselves_and_embed_uses_the_right_tower() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;

    let (status, body) = server.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(body["default_model"], "tiny-two-tower");
    let models = body["models"].as_array().unwrap();
    let by_name = |name: &str| models.iter().find(|m| m["name"] == name).unwrap().clone();
    let tt = by_name("tiny-two-tower");
    assert_eq!(
        (tt["kind"].as_str(), tt["role"].as_str(), tt["pooling"].as_str()),
        (Some("two-tower"), Some("two-tower"), Some("output"))
    );
    assert_eq!(tt["dimension"], 32);
    assert_eq!(tt["version"].as_str().unwrap().len(), 12);
    assert_eq!(tt["index"]["m"], 16);
    assert_eq!(tt["index"]["ef_search"], 64);
    let llm = by_name("tiny-llm");
    assert_eq!((llm["kind"].as_str(), llm["pooling"].as_str()), (Some("llm"), Some("last-token")));
    assert_eq!(llm["query_prefix"], "query : ");
    assert_eq!(by_name("tiny-encoder")["role"], "encoder");

    // The two towers of the two-tower model give different vectors for the same text.
    let text = "sort a list of numbers";
    let (_, q) = server.post("/v1/embed", &json!({"texts": [text], "model": "tiny-two-tower", "side": "query"})).await;
    let (_, d) =
        server.post("/v1/embed", &json!({"texts": [text], "model": "tiny-two-tower", "side": "document"})).await;
    let (qv, dv) = (q["embeddings"][0].as_array().unwrap(), d["embeddings"][0].as_array().unwrap());
    assert_eq!(qv.len(), 32);
    let dot: f64 = qv.iter().zip(dv).map(|(a, b)| a.as_f64().unwrap() * b.as_f64().unwrap()).sum();
    assert!(dot < 0.999 && dot > 0.5, "towers differ but agree on direction: cosine {dot}");
    assert_eq!(q["side"], "query");
    assert_eq!(d["normalized"], true);

    // The LLM's query instruction prefix makes query and document vectors differ; document side has none.
    let (_, q) = server.post("/v1/embed", &json!({"texts": [text], "model": "tiny-llm", "side": "query"})).await;
    let (_, d) = server.post("/v1/embed", &json!({"texts": [text], "model": "tiny-llm", "side": "document"})).await;
    assert_ne!(q["embeddings"], d["embeddings"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hnsw_serving_sees_writes_at_once_and_ef_is_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    for model in &mut config.models {
        model.index.exact_below = 20;
        model.index.rebuild_dead_fraction = 0.0;
    }
    let server = TestServer::start(config).await;
    let (status, _) = server.post("/v1/documents", &json!({"documents": sample_corpus()})).await;
    assert_eq!(status, 200);
    // The graph is built in the background once the index passes exact_below; until then search is exact.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, models) = server.get("/v1/models").await;
        if models["models"].as_array().unwrap().iter().all(|m| m["index"]["has_graph"] == true) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "graphs not built: {models}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for model in MODELS {
        let (_, body) = server
            .post("/v1/search", &json!({"query": "generate a new ssh key pair for logging in to a server", "k": 3, "model": model, "ef": 40}))
            .await;
        assert_eq!(body["method"], "hnsw", "{body}");
        assert_eq!(body["ef"], 40);
        assert_eq!(ids(&body)[0], "sh-ssh-key");
        let (_, exact) = server
            .post("/v1/search", &json!({"query": "generate a new ssh key pair for logging in to a server", "k": 3, "model": model, "exact": true}))
            .await;
        assert_eq!(exact["method"], "exact");
        assert_eq!(ids(&exact)[0], "sh-ssh-key");
    }
    // A delete is filtered out of HNSW results at once; dead entries past the threshold (here: any) trigger a
    // background rebuild, also when they arrive while another rebuild runs.
    assert_eq!(server.delete("/v1/documents/sh-ssh-key").await, 204);
    for model in MODELS {
        let body = search(&server, model, "generate a new ssh key pair for logging in to a server", 49).await;
        assert_eq!(body["method"], "hnsw");
        assert!(!ids(&body).contains(&"sh-ssh-key".to_string()), "{model}");
    }
    for id in ["sh-cron", "sh-git-undo", "sh-git-branch"] {
        assert_eq!(server.delete(&format!("/v1/documents/{id}")).await, 204);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, models) = server.get("/v1/models").await;
        if models["models"].as_array().unwrap().iter().all(|m| m["index"]["dead_entries"] == 0 && m["documents"] == 46)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "dead entries not rebuilt away: {models}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}
