//! Experiments know model versions, over HTTP: every exposure records the version that served each arm (read back
//! through the report), an arm whose model is replaced mid-experiment is split by version, and stopping an
//! experiment can promote its winning arm's model to the default model, keeping who won, the report it won on,
//! and when.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{create, patch, sample_corpus, search, tiny_config, TestServer};
use serde_json::{json, Value};

async fn loaded(config: duet::config::Config) -> TestServer {
    let server = TestServer::start(config).await;
    let (status, body) = server.post("/v1/documents", &json!({"documents": sample_corpus()})).await;
    assert_eq!(status, 200, "{body}");
    server
}

/// Each served model's version (content hash), and the default model.
async fn versions(server: &TestServer) -> (BTreeMap<String, String>, String) {
    let (status, models) = server.get("/v1/models").await;
    assert_eq!(status, 200, "{models}");
    let versions = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["version"].as_str().unwrap().to_string()))
        .collect();
    (versions, models["default_model"].as_str().unwrap().to_string())
}

fn problem(body: &Value) -> &str {
    body["type"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_the_winner_makes_it_the_default_model_and_keeps_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("duet.db");
    let server = loaded(tiny_config(&db)).await;
    let (version, default_before) = versions(&server).await;
    let (control, winner) = ("tiny-two-tower", "tiny-encoder");
    assert_ne!(default_before, winner, "the test needs the winner not to be the default already");
    let exp = create(
        &server,
        json!({"name": "ranker", "mode": "ab", "status": "running", "arms": [{"model": control}, {"model": winner}]}),
    )
    .await;
    let id = exp["id"].as_str().unwrap().to_string();
    assert_eq!(exp["promotion"], Value::Null);
    let mut served = BTreeMap::<String, u64>::new();
    for u in 0..16 {
        let body =
            search(&server, json!({"query": "sort a list", "unit_id": format!("u{u}"), "experiment": "ranker"})).await;
        let arm = body["arm"].as_str().unwrap().to_string();
        assert_eq!(body["model_version"], version[&arm].as_str(), "the response names the version that served");
        *served.entry(arm).or_default() += 1;
    }
    assert_eq!(served.len(), 2, "both arms served: {served:?}");

    // Exposures recorded the version of each serving arm; one version throughout: named, not split.
    let (_, report) = server.get(&format!("/v1/experiments/{id}/report")).await;
    for arm in report["arms"].as_array().unwrap() {
        let name = arm["name"].as_str().unwrap();
        assert_eq!(arm["versions"], json!([version[name]]), "{report}");
        assert_eq!(arm["impressions"], served[name]);
        assert!(arm.get("by_version").is_none(), "{arm}");
    }

    // Refusals change nothing: a running experiment, a model that is no arm's.
    let (status, body) = patch(&server, &id, json!({"promote": winner})).await;
    assert_eq!((status, problem(&body)), (409, "/problems/not-stopped"), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("stopped"), "{body}");
    let (status, body) = patch(&server, &id, json!({"status": "stopped", "promote": "tiny-llm"})).await;
    assert_eq!((status, problem(&body)), (422, "/problems/not-an-arm-model"), "{body}");
    let (_, unchanged) = server.get(&format!("/v1/experiments/{id}")).await;
    assert_eq!((unchanged["status"].as_str(), &unchanged["promotion"]), (Some("running"), &Value::Null));
    assert_eq!(versions(&server).await.1, default_before);

    let (status, promoted) = patch(&server, &id, json!({"status": "stopped", "promote": winner})).await;
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["status"], "stopped");
    let promotion = &promoted["promotion"];
    assert_eq!((promotion["arm"].as_str(), promotion["model"].as_str()), (Some(winner), Some(winner)), "{promoted}");
    assert_eq!(promotion["version"], version[winner].as_str());
    assert!(promotion["promoted_at"].is_string());
    let evidence = &promotion["report"];
    assert_eq!(evidence["experiment"]["status"], "stopped", "the report at the moment of the promotion");
    assert_eq!(evidence["arms"][1]["name"], winner);
    assert_eq!(evidence["arms"][1]["impressions"], served[winner]);
    assert_eq!(evidence["arms"][1]["versions"], json!([version[winner]]));
    assert!(evidence["comparisons"].is_array(), "{evidence}");
    let (_, fetched) = server.get(&format!("/v1/experiments/{id}")).await;
    assert_eq!(&fetched["promotion"], promotion);

    // The winner is the default model: a search naming no model and no experiment is served by it.
    assert_eq!(versions(&server).await.1, winner);
    let body = search(&server, json!({"query": "sort a list"})).await;
    assert_eq!((body["model"].as_str(), &body["experiment"]), (Some(winner), &Value::Null), "{body}");

    let (status, body) = patch(&server, &id, json!({"promote": control})).await;
    assert_eq!((status, problem(&body)), (409, "/problems/already-promoted"), "{body}");

    // A stopped experiment whose arm's model is not served after a restart cannot promote it.
    let gone = create(
        &server,
        json!({"name": "gone", "mode": "ab", "status": "running", "arms": [{"model": "tiny-llm"}, {"model": winner}]}),
    )
    .await;
    let gone = gone["id"].as_str().unwrap().to_string();
    assert_eq!(patch(&server, &gone, json!({"status": "stopped"})).await.0, 200);
    server.stop().await;
    let mut config = tiny_config(&db);
    config.models.retain(|m| !m.path.ends_with("tiny-llm"));
    let server = TestServer::start(config).await;
    let (_, fetched) = server.get(&format!("/v1/experiments/{id}")).await;
    assert_eq!(&fetched["promotion"], promotion, "the promotion is stored");
    let (status, body) = patch(&server, &gone, json!({"promote": "tiny-llm"})).await;
    assert_eq!((status, problem(&body)), (404, "/problems/unknown-model"), "{body}");
    assert_eq!(server.get(&format!("/v1/experiments/{gone}")).await.1["promotion"], Value::Null);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_and_shadow_exposures_record_every_arm_version() {
    let dir = tempfile::tempdir().unwrap();
    let server = loaded(tiny_config(&dir.path().join("duet.db"))).await;
    let (version, _) = versions(&server).await;
    let (a, b) = ("tiny-encoder", "tiny-two-tower");
    let arms = json!([{"model": a}, {"model": b}]);
    create(&server, json!({"name": "il", "mode": "interleave", "status": "running", "arms": arms})).await;
    create(&server, json!({"name": "sh", "mode": "shadow", "status": "running", "arms": arms})).await;
    for u in 0..4 {
        for experiment in ["il", "sh"] {
            search(
                &server,
                json!({"query": "a detective story", "unit_id": format!("u{u}"), "experiment": experiment}),
            )
            .await;
        }
    }

    let (_, report) = server.get("/v1/experiments/il/report").await;
    let il = &report["interleave"];
    assert_eq!(il["versions"], json!([{a: version[a], b: version[b]}]), "both teams' versions: {report}");
    assert_eq!(il["impressions"], 4);
    assert!(il.get("by_versions").is_none(), "one pair: no split");

    // The shadow arm's version is recorded with its comparison (written off the request path: poll).
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let (_, report) = server.get("/v1/experiments/sh/report").await;
        if report["shadow"]["compared"] == 4 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(report["arms"][0]["versions"], json!([version[a]]), "{report}");
    assert_eq!(report["shadow"]["compared"], 4, "{report}");
    assert_eq!(report["shadow"]["versions"], json!([version[b]]), "{report}");
    assert!(report["shadow"].get("by_version").is_none());
    server.stop().await;
}

/// 12 A/B searches (counted per arm and version served) and 3 interleaved ones.
async fn round(server: &TestServer, served: &mut BTreeMap<(String, String), u64>) {
    for u in 0..12 {
        let body =
            search(server, json!({"query": "sort numbers", "unit_id": format!("u{u}"), "experiment": "ab"})).await;
        let key = (body["arm"].as_str().unwrap().to_string(), body["model_version"].as_str().unwrap().to_string());
        *served.entry(key).or_default() += 1;
    }
    for u in 0..3 {
        search(server, json!({"query": "sort numbers", "unit_id": format!("u{u}"), "experiment": "il"})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arm_whose_model_is_replaced_mid_experiment_is_split_by_version() {
    // The next version of tiny-encoder: the same network under a changed manifest (a new content hash), in a
    // models_dir of its own.
    let dir = tempfile::tempdir().unwrap();
    let next = dir.path().join("models/tiny-encoder-next");
    std::fs::create_dir_all(&next).unwrap();
    for file in ["model.onnx", "model.toml", "tokenizer.json"] {
        std::fs::copy(common::repo().join("models/tiny-encoder").join(file), next.join(file)).unwrap();
    }
    let manifest = std::fs::read_to_string(next.join("model.toml")).unwrap();
    std::fs::write(next.join("model.toml"), format!("# The next version.\n{manifest}")).unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.models_dir = dir.path().join("models");
    let server = loaded(config).await;
    let (before, _) = versions(&server).await;
    let (replaced, other) = ("tiny-encoder", "tiny-two-tower");
    let arms = json!([{"model": replaced}, {"model": other}]);
    create(&server, json!({"name": "ab", "mode": "ab", "status": "running", "arms": arms})).await;
    create(&server, json!({"name": "il", "mode": "interleave", "status": "running", "arms": arms})).await;
    let mut served = BTreeMap::new();
    round(&server, &mut served).await;

    // A new version of one arm's model takes over while both experiments run.
    let response = server
        .client
        .put(server.url(&format!("/v1/models/{replaced}")))
        .json(&json!({"path": "tiny-encoder-next"}))
        .send()
        .await
        .unwrap();
    let (status, body) = common::read(response).await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let (after, _) = versions(&server).await;
        if after[replaced] != before[replaced] {
            break after[replaced].clone();
        }
        assert!(Instant::now() < deadline, "the new version did not take over within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    round(&server, &mut served).await;
    let count = |arm: &str, version: &str| served.get(&(arm.to_string(), version.to_string())).copied().unwrap_or(0);
    let (old, kept) = (before[replaced].as_str(), before[other].as_str());
    assert!(count(replaced, old) > 0 && count(replaced, &new) > 0, "both versions served the arm: {served:?}");

    let (_, report) = server.get("/v1/experiments/ab/report").await;
    let (arm, unchanged) = (&report["arms"][0], &report["arms"][1]);
    assert_eq!(arm["versions"], json!([old, new]), "first served first: {report}");
    assert_eq!(arm["impressions"], count(replaced, old) + count(replaced, &new));
    let split: Vec<_> = arm["by_version"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].clone(), v["impressions"].clone()))
        .collect();
    assert_eq!(split, [(json!(old), json!(count(replaced, old))), (json!(new), json!(count(replaced, &new)))]);
    assert_eq!(unchanged["versions"], json!([kept]));
    assert!(unchanged.get("by_version").is_none(), "{unchanged}");

    let (_, report) = server.get("/v1/experiments/il/report").await;
    let il = &report["interleave"];
    let pairs = json!([{replaced: old, other: kept}, {replaced: new, other: kept}]);
    assert_eq!(il["versions"], pairs, "{report}");
    let split: Vec<_> = il["by_versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["versions"].clone(), p["impressions"].clone()))
        .collect();
    assert_eq!(split, [(pairs[0].clone(), json!(3)), (pairs[1].clone(), json!(3))]);
    server.stop().await;
}
