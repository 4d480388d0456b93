//! Live experiments over HTTP: the life cycle, sticky A/B assignment across a restart, team-draft interleaving
//! checked against each arm's own ranking, shadow comparisons, feedback validation, the report's figures, and
//! searches that keep answering while the exposure log cannot write.

mod common;

use std::time::{Duration, Instant};

use common::{create, metric, patch, sample_corpus, search, tiny_config, TestServer};
use duet::experiment::stats;
use serde_json::{json, Value};
use sqlx::Connection;

const QUERIES: [&str; 6] = [
    "a detective story about a murder on a train",
    "sort a list of numbers",
    "open a file and read lines",
    "a comfortable pair of running shoes",
    "parse a date from a string",
    "space travel adventure novel",
];

async fn loaded(db: &std::path::Path) -> TestServer {
    let server = TestServer::start(tiny_config(db)).await;
    let (status, body) = server.post("/v1/documents", &json!({"documents": sample_corpus()})).await;
    assert_eq!(status, 200, "{body}");
    server
}

fn ids(body: &Value) -> Vec<String> {
    body["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

async fn feedback(server: &TestServer, request_id: &str, doc_id: &str, event: &str) -> (u16, Value) {
    server.post("/v1/feedback", &json!({"request_id": request_id, "doc_id": doc_id, "event": event})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_have_a_life_cycle_and_are_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;

    let arms = json!([{"model": "tiny-encoder"}, {"model": "tiny-two-tower", "weight": 3}]);
    let exp = create(&server, json!({"name": "ranker-v2", "mode": "ab", "arms": arms})).await;
    assert_eq!(exp["status"], "draft");
    assert_eq!(exp["arms"][1], json!({"name": "tiny-two-tower", "model": "tiny-two-tower", "weight": 3.0}));
    let id = exp["id"].as_str().unwrap().to_string();

    // Client mistakes are 4xx problems that say what is wrong.
    let (status, body) =
        server.post("/v1/experiments", &json!({"name": "ranker-v2", "mode": "ab", "arms": arms})).await;
    assert_eq!((status, body["type"].as_str()), (409, Some("/problems/name-taken")), "{body}");
    let (status, body) = server
        .post(
            "/v1/experiments",
            &json!({"name": "x", "mode": "ab", "arms": [{"model": "nope"}, {"model": "tiny-llm"}]}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["type"], "/problems/unknown-model", "{body}");
    assert!(body["known_models"].as_array().unwrap().contains(&json!("tiny-llm")), "{body}");
    let (status, _) = server
        .post("/v1/experiments", &json!({"name": "x", "mode": "interleave", "arms": [{"model": "tiny-llm"}]}))
        .await;
    assert_eq!(status, 422);
    let (status, _) = server.post("/v1/experiments", &json!({"name": "x", "mode": "bandit", "arms": arms})).await;
    assert_eq!(status, 422, "unknown modes are rejected");

    // By id or by name.
    let (status, by_name) = server.get("/v1/experiments/ranker-v2").await;
    assert_eq!((status, by_name["id"].as_str()), (200, Some(id.as_str())));
    assert_eq!(server.get("/v1/experiments/missing").await.0, 404);

    let (status, started) = patch(&server, &id, json!({"status": "running"})).await;
    assert_eq!(status, 200, "{started}");
    assert!(started["started_at"].is_string());
    let (status, body) = patch(&server, &id, json!({"status": "archived"})).await;
    assert_eq!(status, 409, "a running experiment is stopped before it is archived: {body}");
    let (status, body) = patch(&server, &id, json!({"weights": {"tiny-encoder": 2.0}})).await;
    assert_eq!((status, body["arms"][0]["weight"].as_f64()), (200, Some(2.0)));
    let (status, body) = patch(&server, &id, json!({"weights": {"ghost": 1.0}})).await;
    assert_eq!((status, body["type"].as_str()), (404, Some("/problems/unknown-arm")), "{body}");
    assert_eq!(patch(&server, &id, json!({"weights": {"tiny-encoder": -1.0}})).await.0, 422);

    // One default at a time: making another the default unsets the first.
    let other = create(
        &server,
        json!({"name": "other", "mode": "interleave", "arms": [{"model": "tiny-llm"}, {"model": "tiny-encoder"}], "default": true}),
    )
    .await;
    let (_, first) = patch(&server, &id, json!({"default": true})).await;
    assert_eq!(first["default"], true);
    let (_, other) = server.get(&format!("/v1/experiments/{}", other["id"].as_str().unwrap())).await;
    assert_eq!(other["default"], false);

    assert_eq!(patch(&server, &id, json!({"status": "stopped"})).await.0, 200);
    assert_eq!(patch(&server, &id, json!({"status": "running"})).await.0, 409, "stopped stays stopped");
    let (status, archived) = patch(&server, &id, json!({"status": "archived"})).await;
    assert_eq!((status, archived["default"].as_bool()), (200, Some(false)));
    let (_, list) = server.get("/v1/experiments").await;
    assert_eq!(list["experiments"].as_array().unwrap().len(), 1, "archived ones are hidden: {list}");
    let (_, list) = server.get("/v1/experiments?archived=true").await;
    assert_eq!(list["experiments"].as_array().unwrap().len(), 2);
    assert_eq!(server.delete(&format!("/v1/experiments/{id}")).await, 405, "no deletes");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_assignment_is_sticky_across_restarts_and_explicit_models_bypass_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("duet.db");
    let server = loaded(&db).await;
    let exp = create(
        &server,
        json!({"name": "ab", "mode": "ab", "status": "running", "default": true,
               "arms": [{"model": "tiny-encoder"}, {"model": "tiny-two-tower"}]}),
    )
    .await;

    let mut before = Vec::new();
    for u in 0..40 {
        let body = search(&server, json!({"query": QUERIES[u % 6], "unit_id": format!("user-{u}")})).await;
        assert_eq!(body["experiment"]["name"], "ab");
        assert_eq!(body["experiment"]["logged"], true);
        let arm = body["arm"].as_str().unwrap().to_string();
        assert_eq!(body["model"], arm.as_str(), "the arm's model ranked the results");
        assert!(body["results"].as_array().unwrap().iter().all(|r| r["arm"] == arm.as_str()));
        before.push(arm);
    }
    assert!(before.iter().any(|a| a == "tiny-encoder") && before.iter().any(|a| a == "tiny-two-tower"));
    // The header works like the body field, and the same unit gets the same arm on every request.
    let response = server
        .client
        .post(server.url("/v1/search"))
        .header("X-Duet-Unit", "user-3")
        .json(&json!({"query": "anything at all"}))
        .send()
        .await
        .unwrap();
    let (_, body) = common::read(response).await;
    assert_eq!(body["arm"], before[3].as_str());

    // An explicit model bypasses the experiment; no unit means no experiment either.
    let body = search(&server, json!({"query": "sort", "unit_id": "user-1", "model": "tiny-llm"})).await;
    assert_eq!((body["model"].as_str(), &body["experiment"]), (Some("tiny-llm"), &Value::Null));
    let body = search(&server, json!({"query": "sort"})).await;
    assert_eq!(body["experiment"], Value::Null);
    // Naming an experiment without a unit is a client mistake.
    let (status, body) = server.post("/v1/search", &json!({"query": "sort", "experiment": "ab"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(server.post("/v1/search", &json!({"query": "sort", "experiment": "nope", "unit_id": "u"})).await.0, 404);

    server.stop().await;
    let server = TestServer::start(tiny_config(&db)).await;
    for u in 0..40 {
        let body = search(&server, json!({"query": QUERIES[u % 6], "unit_id": format!("user-{u}")})).await;
        assert_eq!(body["arm"].as_str().unwrap(), before[u], "unit {u} keeps its arm after a restart");
    }

    // Paused: the control arm serves everyone and nothing is logged.
    let id = exp["id"].as_str().unwrap();
    assert_eq!(patch(&server, id, json!({"status": "paused"})).await.0, 200);
    for u in 0..6 {
        let body = search(&server, json!({"query": "sort", "unit_id": format!("user-{u}")})).await;
        assert_eq!(body["arm"], "tiny-encoder");
        assert_eq!(body["experiment"]["logged"], false);
        assert_eq!(body["experiment"]["status"], "paused");
    }
    let (_, report) = server.get(&format!("/v1/experiments/{id}/report")).await;
    let impressions: u64 = report["arms"].as_array().unwrap().iter().map(|a| a["impressions"].as_u64().unwrap()).sum();
    assert_eq!(impressions, 81, "40 + 1 searches before and 40 after the restart were logged, not the paused ones");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaving_merges_both_rankings_and_attributes_every_result() {
    let dir = tempfile::tempdir().unwrap();
    let server = loaded(&dir.path().join("duet.db")).await;
    let (a, b) = ("tiny-encoder", "tiny-two-tower");
    create(
        &server,
        json!({"name": "il", "mode": "interleave", "status": "running", "arms": [{"model": a}, {"model": b}]}),
    )
    .await;
    for (u, query) in QUERIES.iter().enumerate() {
        let k = 6;
        let body =
            search(&server, json!({"query": query, "k": k, "experiment": "il", "unit_id": format!("u{u}")})).await;
        assert_eq!(body["model"], Value::Null);
        assert_eq!(body["arms"], json!([a, b]));
        let ranked = |model: &str| {
            let server = &server;
            let query = query.to_string();
            let model = model.to_string();
            async move { ids(&search(server, json!({"query": query, "k": k, "model": model})).await) }
        };
        let (ra, rb) = (ranked(a).await, ranked(b).await);
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), k);
        let mut shown: Vec<String> = Vec::new();
        let mut picks = [0usize; 2];
        for r in results {
            let id = r["id"].as_str().unwrap().to_string();
            let team = if r["arm"] == a { 0 } else { 1 };
            let own = if team == 0 { &ra } else { &rb };
            let best = own.iter().find(|x| !shown.contains(x)).unwrap();
            assert_eq!(&id, best, "each pick is the team's best unshown result: {body}");
            assert!(picks[team] <= picks[1 - team], "picks stay balanced: {body}");
            picks[team] += 1;
            shown.push(id);
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_validated_idempotent_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = loaded(&dir.path().join("duet.db")).await;
    create(
        &server,
        json!({"name": "fb", "mode": "ab", "status": "running",
               "arms": [{"model": "tiny-llm", "name": "control"}, {"model": "tiny-llm", "name": "same"}]}),
    )
    .await;
    let body = search(&server, json!({"query": "sort a list", "k": 3, "experiment": "fb", "unit_id": "u1"})).await;
    let request_id = body["request_id"].as_str().unwrap();
    let arm = body["arm"].as_str().unwrap();
    let shown = ids(&body);

    // Right after the search: the exposure may still be queued, and feedback still finds it.
    let (status, receipt) = feedback(&server, request_id, &shown[1], "click").await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!((receipt["position"].as_u64(), receipt["arm"].as_str()), (Some(2), Some(arm)));
    assert_eq!(receipt["duplicate"], false);
    let (status, again) = feedback(&server, request_id, &shown[1], "click").await;
    assert_eq!((status, again["duplicate"].as_bool()), (200, Some(true)));
    assert_eq!(feedback(&server, request_id, &shown[1], "conversion").await.0, 200);

    let (status, body) = feedback(&server, "no-such-request", &shown[0], "click").await;
    assert_eq!((status, body["type"].as_str()), (404, Some("/problems/unknown-request")), "{body}");
    let (status, body) = feedback(&server, request_id, "book-not-shown-here", "click").await;
    assert_eq!((status, body["type"].as_str()), (404, Some("/problems/not-shown")), "{body}");
    let (status, _) = server
        .post("/v1/feedback", &json!({"request_id": request_id, "doc_id": shown[0], "event": "click", "position": 3}))
        .await;
    assert_eq!(status, 409, "the position must match what was shown");
    let (status, _) =
        server.post("/v1/feedback", &json!({"request_id": request_id, "doc_id": shown[0], "event": "like"})).await;
    assert_eq!(status, 422, "unknown events are rejected");
    // A search with an explicit model is not an exposure.
    let direct = search(&server, json!({"query": "sort a list", "model": "tiny-llm"})).await;
    assert_eq!(feedback(&server, direct["request_id"].as_str().unwrap(), &ids(&direct)[0], "click").await.0, 404);

    let text = server.metrics().await;
    let series = format!(r#"duet_experiment_feedback_total{{arm="{arm}",event="click",experiment="fb"}}"#);
    assert_eq!(metric(&text, &series), 1.0, "a duplicate is not counted twice:\n{text}");
    assert_eq!(metric(&text, &format!(r#"duet_experiment_exposures_total{{arm="{arm}",experiment="fb"}}"#)), 1.0);
    server.stop().await;
}

fn close(a: &Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_report_figures_follow_from_the_logged_clicks() {
    let dir = tempfile::tempdir().unwrap();
    let server = loaded(&dir.path().join("duet.db")).await;
    let exp = create(
        &server,
        json!({"name": "rep", "mode": "ab", "status": "running",
               "arms": [{"model": "tiny-encoder", "name": "control"}, {"model": "tiny-two-tower", "name": "treatment"}]}),
    )
    .await;
    // Search as units until each arm has 4 impressions, clicking by a fixed plan per arm: control clicks at
    // positions 1 and 2 on its first two impressions; treatment at 1, 1 and 3 (and converts once).
    let plan = |arm: &str| -> Vec<Option<usize>> {
        if arm == "control" {
            vec![Some(1), Some(2), None, None]
        } else {
            vec![Some(1), Some(1), Some(3), None]
        }
    };
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut u = 0;
    while seen.values().sum::<usize>() < 8 {
        u += 1;
        let body =
            search(&server, json!({"query": QUERIES[u % 6], "k": 5, "experiment": "rep", "unit_id": format!("r{u}")}))
                .await;
        let arm = body["arm"].as_str().unwrap().to_string();
        let n = seen.entry(arm.clone()).or_default();
        if *n == 4 {
            continue;
        }
        if let Some(position) = plan(&arm)[*n] {
            let request_id = body["request_id"].as_str().unwrap();
            let doc = ids(&body)[position - 1].clone();
            assert_eq!(feedback(&server, request_id, &doc, "click").await.0, 200);
            if arm == "treatment" && *n == 0 {
                assert_eq!(feedback(&server, request_id, &doc, "conversion").await.0, 200);
            }
        }
        *n += 1;
        assert!(u < 500, "both arms get traffic");
    }
    // Units beyond the plan also searched: count every logged impression per arm.
    let (status, report) = server.get(&format!("/v1/experiments/{}/report?mde=0.5", exp["id"].as_str().unwrap())).await;
    assert_eq!(status, 200, "{report}");
    let arms = report["arms"].as_array().unwrap();
    let (control, treatment) = (&arms[0], &arms[1]);
    let (nc, nt) = (control["impressions"].as_u64().unwrap(), treatment["impressions"].as_u64().unwrap());
    assert!(nc >= 4 && nt >= 4);
    assert_eq!(
        (control["clicked_impressions"].as_u64(), treatment["clicked_impressions"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(treatment["converted_impressions"], 1);
    // MRR of the first click: (1 + 1/2) / nc and (1 + 1 + 1/3) / nt.
    assert!(close(&control["mrr_first_click"]["value"], 1.5 / nc as f64), "{control}");
    assert!(close(&treatment["mrr_first_click"]["value"], (7.0 / 3.0) / nt as f64), "{treatment}");
    let ctr = stats::proportion(2, nc);
    assert!(close(&control["ctr"]["value"], ctr.value) && close(&control["ctr"]["ci95"][0], ctr.ci95[0]));
    let test = stats::two_proportion_z(2, nc, 3, nt);
    let cmp = &report["comparisons"][0];
    assert!(close(&cmp["p_value"], test.p_value) && close(&cmp["z"], test.statistic), "{cmp}");
    assert_eq!(cmp["significant"], false);
    let needed = stats::sample_size_two_proportions(2.0 / nc as f64, 1.5 * 2.0 / nc as f64, 0.05, 0.8).ceil() as u64;
    assert_eq!(cmp["needed_per_arm"].as_u64(), Some(needed));
    assert_eq!(cmp["remaining_per_arm"].as_u64(), Some(needed - nc.min(nt)));
    assert!(control["latency_ms"]["count"].as_u64().unwrap() == nc);
    assert_eq!(server.get(&format!("/v1/experiments/{}/report?alpha=2", exp["id"].as_str().unwrap())).await.0, 422);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaving_and_shadow_reports() {
    let dir = tempfile::tempdir().unwrap();
    let server = loaded(&dir.path().join("duet.db")).await;
    let il = create(
        &server,
        json!({"name": "il", "mode": "interleave", "status": "running",
               "arms": [{"model": "tiny-encoder", "name": "a"}, {"model": "tiny-two-tower", "name": "b"}]}),
    )
    .await;
    // Impression plans: click a's result, click b's, click both, click b's, no click.
    let plans: [&[&str]; 5] = [&["a"], &["b"], &["a", "b"], &["b"], &[]];
    for (u, plan) in plans.iter().enumerate() {
        let body =
            search(&server, json!({"query": QUERIES[u], "k": 6, "experiment": "il", "unit_id": format!("i{u}")})).await;
        let request_id = body["request_id"].as_str().unwrap();
        for team in plan.iter() {
            let hit = body["results"].as_array().unwrap().iter().find(|r| r["arm"] == *team).unwrap();
            assert_eq!(feedback(&server, request_id, hit["id"].as_str().unwrap(), "click").await.0, 200);
        }
    }
    let (_, report) = server.get(&format!("/v1/experiments/{}/report", il["id"].as_str().unwrap())).await;
    let r = &report["interleave"];
    assert_eq!(r["wins"], json!({"a": 1, "b": 2}), "{report}");
    assert_eq!((r["ties"].as_u64(), r["no_click"].as_u64(), r["impressions"].as_u64()), (Some(1), Some(1), Some(5)));
    assert_eq!(r["credited_clicks"], json!({"a": 2, "b": 3}));
    assert!(close(&r["sign_test_p"], stats::sign_test(1, 2)));
    assert!(close(&r["preference_for_second"]["value"], 2.0 / 3.0));
    assert_eq!(r["preferred"], Value::Null, "3 decided impressions prove nothing");
    assert_eq!(r["needed_decided"].as_u64(), Some(stats::sample_size_preference(0.55, 0.05, 0.8).ceil() as u64));
    // 4 of 5 impressions were clicked; first clicks at the positions of the clicked results.
    assert_eq!(r["clicked_impressions"], 4);
    assert_eq!(report["arms"], json!([]), "interleaved impressions belong to both arms: see `interleave`");
    // The outcome gauges moved with every click: impression 3 went from a win for `a` to a tie.
    let text = server.metrics().await;
    let gauge = |outcome: &str| {
        metric(&text, &format!(r#"duet_experiment_interleave_outcomes{{experiment="il",outcome="{outcome}"}}"#))
    };
    assert_eq!((gauge("a"), gauge("b"), gauge("tie")), (1.0, 2.0, 1.0), "{text}");

    let shadow = create(
        &server,
        json!({"name": "sh", "mode": "shadow", "status": "running",
               "arms": [{"model": "tiny-encoder"}, {"model": "tiny-encoder", "name": "same-model"}]}),
    )
    .await;
    for (u, query) in QUERIES.iter().enumerate() {
        let body = search(&server, json!({"query": query, "experiment": "sh", "unit_id": format!("s{u}")})).await;
        assert_eq!((body["arm"].as_str(), body["arms"].clone()), (Some("tiny-encoder"), json!(["tiny-encoder"])));
    }
    // Shadow searches finish off the request path: wait until all six are in the report.
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let (_, report) = server.get(&format!("/v1/experiments/{}/report", shadow["id"].as_str().unwrap())).await;
        if report["shadow"]["compared"] == 6 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let s = &report["shadow"];
    assert_eq!(s["compared"], 6, "{report}");
    // The same model in both arms: the lists are identical.
    assert!(close(&s["jaccard"]["value"], 1.0) && close(&s["rbo"]["value"], 1.0), "{s}");
    assert_eq!(s["shadow_latency_ms"]["count"], 6);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_answer_while_the_exposure_log_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("duet.db");
    let mut config = tiny_config(&db);
    config.experiments.exposure_queue = 2;
    config.experiments.exposure_batch = 1;
    let server = TestServer::start(config).await;
    let (status, _) = server.post("/v1/documents", &json!({"documents": sample_corpus()})).await;
    assert_eq!(status, 200);
    create(
        &server,
        json!({"name": "full", "mode": "ab", "status": "running", "arms": [{"model": "tiny-encoder"}, {"model": "tiny-llm"}]}),
    )
    .await;

    // Another connection takes SQLite's write lock: the exposure writer blocks on its first batch.
    let mut blocker = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut blocker).await.unwrap();

    let mut logged = Vec::new();
    for u in 0..30 {
        let body =
            search(&server, json!({"query": QUERIES[u % 6], "experiment": "full", "unit_id": format!("f{u}")})).await;
        assert_eq!(body["results"].as_array().unwrap().len(), 10, "every search answers in full");
        if body["experiment"]["logged"] == true {
            logged.push((body["request_id"].as_str().unwrap().to_string(), ids(&body)[0].clone()));
        }
    }
    // At most the batch being written plus the queue's two places were taken; the rest were dropped and counted.
    assert!(logged.len() <= 3, "{} logged", logged.len());
    let dropped = metric(&server.metrics().await, r#"duet_experiment_exposures_dropped_total{experiment="full"}"#);
    assert_eq!(dropped as usize, 30 - logged.len());

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    // Once the store is writable, the queued exposures land and feedback finds them.
    for (request_id, doc) in &logged {
        assert_eq!(feedback(&server, request_id, doc, "click").await.0, 200);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposure_ids_are_made_by_the_server_not_taken_from_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = loaded(&dir.path().join("duet.db")).await;
    create(
        &server,
        json!({"name": "ids", "mode": "ab", "status": "running",
               "arms": [{"model": "tiny-llm", "name": "a"}, {"model": "tiny-encoder", "name": "b"}]}),
    )
    .await;
    // Two clients reusing one X-Request-Id: each search is its own exposure, and feedback lands on each.
    let mut exposures = Vec::new();
    for unit in ["u1", "u2"] {
        let response = server
            .client
            .post(server.url("/v1/search"))
            .header("x-request-id", "client-chosen-id")
            .json(&json!({"query": "sort a list", "k": 3, "experiment": "ids", "unit_id": unit}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-request-id"], "client-chosen-id", "the header echoes the client's id");
        let (status, body) = common::read(response).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["correlation_id"], "client-chosen-id");
        assert_eq!(body["experiment"]["logged"], true);
        let id = body["request_id"].as_str().unwrap().to_string();
        assert_ne!(id, "client-chosen-id");
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "a server-made UUID: {id}");
        exposures.push((id, ids(&body)[0].clone(), body["arm"].as_str().unwrap().to_string()));
    }
    assert_ne!(exposures[0].0, exposures[1].0);
    for (id, doc, arm) in &exposures {
        let (status, receipt) = feedback(&server, id, doc, "click").await;
        assert_eq!(status, 200, "{receipt}");
        assert_eq!((receipt["duplicate"].as_bool(), receipt["arm"].as_str()), (Some(false), Some(arm.as_str())));
    }
    assert_eq!(feedback(&server, "client-chosen-id", &exposures[0].1, "click").await.0, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interleaving_coin_is_the_servers_whatever_request_id_the_client_sends() {
    let dir = tempfile::tempdir().unwrap();
    let server = loaded(&dir.path().join("duet.db")).await;
    create(
        &server,
        json!({"name": "coin", "mode": "interleave", "status": "running",
               "arms": [{"model": "tiny-llm", "name": "a"}, {"model": "tiny-encoder", "name": "b"}]}),
    )
    .await;
    // The same request id, unit and query every time: a coin seeded by the client's id would always pick the
    // same team first; the server's is fresh per search (all 24 alike: probability 2 × 2⁻²⁴).
    let mut first_teams = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let response = server
            .client
            .post(server.url("/v1/search"))
            .header("x-request-id", "always-the-same")
            .json(&json!({"query": "a detective story", "k": 4, "experiment": "coin", "unit_id": "u"}))
            .send()
            .await
            .unwrap();
        let (status, body) = common::read(response).await;
        assert_eq!(status, 200, "{body}");
        first_teams.insert(body["results"][0]["arm"].as_str().unwrap().to_string());
    }
    assert_eq!(first_teams.len(), 2, "both teams pick first in some searches: {first_teams:?}");
    server.stop().await;
}
