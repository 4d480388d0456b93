//! Graded human judgements over HTTP: raters click results of a running interleave experiment with a grade, a
//! rater corrects a grade (still one event), the experiment's judgements download as a qrels file that
//! `duet eval`'s reader gives back as the same triples, and the interleave report's timeline sums to its totals.

mod common;

use common::{create, sample_corpus, search, tiny_config, TestServer};
use serde_json::{json, Value};

async fn feedback(server: &TestServer, body: Value) -> Value {
    let (status, receipt) = server.post("/v1/feedback", &body).await;
    assert_eq!(status, 200, "{body}: {receipt}");
    receipt
}

async fn judgements(server: &TestServer, experiment: &str) -> (reqwest::header::HeaderMap, String) {
    let url = server.url(&format!("/v1/experiments/{experiment}/judgements"));
    let response = server.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    (headers, response.text().await.unwrap())
}

fn doc(result: &Value, i: usize) -> String {
    result["results"][i]["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graded_clicks_export_as_qrels_that_eval_reads() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;
    let (status, body) = server.post("/v1/documents", &json!({"documents": sample_corpus()})).await;
    assert_eq!(status, 200, "{body}");
    let arms = json!([{"model": "tiny-encoder"}, {"model": "tiny-llm"}]);
    create(&server, json!({"name": "blind.judging", "mode": "interleave", "arms": arms, "status": "running"})).await;

    let query = "open a file\tand read lines";
    let shown = |rater: &str| json!({"query": query, "k": 4, "experiment": "blind.judging", "unit_id": rater});
    let first = search(&server, shown("rater-1")).await;
    let second = search(&server, shown("rater-2")).await;
    let (r1, r2) = (first["request_id"].as_str().unwrap(), second["request_id"].as_str().unwrap());
    // A document both raters were shown, and another the first one was.
    let ids = |shown: &Value| -> Vec<String> {
        (0..shown["results"].as_array().unwrap().len()).map(|i| doc(shown, i)).collect()
    };
    let top = ids(&first).into_iter().find(|d| ids(&second).contains(d)).expect("a document both were shown");
    let next = ids(&first).into_iter().find(|d| *d != top).unwrap();

    let receipt = feedback(&server, json!({"request_id": r1, "doc_id": top, "event": "click", "grade": 3})).await;
    assert_eq!((receipt["duplicate"].as_bool(), receipt["grade"].as_f64()), (Some(false), Some(3.0)), "{receipt}");
    let receipt = feedback(&server, json!({"request_id": r1, "doc_id": next, "event": "click"})).await;
    assert_eq!(receipt["grade"], Value::Null, "no grade, none echoed: {receipt}");
    feedback(&server, json!({"request_id": r2, "doc_id": top, "event": "click", "grade": 1.5})).await;

    let (headers, tsv) = judgements(&server, "blind.judging").await;
    assert_eq!(headers["content-type"], "text/tab-separated-values; charset=utf-8");
    assert_eq!(headers["content-disposition"], "attachment; filename=\"blind.judging-qrels.tsv\"");
    let line = "open a file and read lines";
    assert_eq!(tsv, format!("query\tdoc_id\tgrade\n{line}\t{top}\t2.25\n"), "the mean of two raters' grades");

    // A rater corrects a grade: still a duplicate, counted once; the export changes.
    let again = json!({"request_id": r1, "doc_id": top, "event": "click", "grade": 6.5});
    let receipt = feedback(&server, again).await;
    assert_eq!((receipt["duplicate"].as_bool(), receipt["grade"].as_f64()), (Some(true), Some(6.5)), "{receipt}");
    let receipt = feedback(&server, json!({"request_id": r1, "doc_id": top, "event": "click"})).await;
    assert_eq!(receipt["duplicate"], true, "the same event without a grade keeps the grade it has");
    feedback(&server, json!({"request_id": r1, "doc_id": next, "event": "conversion", "grade": 10})).await;
    let (_, tsv) = judgements(&server, "blind.judging").await;
    let mut expected = vec![(line.to_string(), top.clone(), 4.0), (line.to_string(), next.clone(), 10.0)];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    let text: String = expected.iter().map(|(q, d, g)| format!("{q}\t{d}\t{g}\n")).collect();
    assert_eq!(tsv, format!("query\tdoc_id\tgrade\n{text}"));

    // What `duet eval --qrels` reads from the file.
    let path = dir.path().join("qrels.tsv");
    std::fs::write(&path, &tsv).unwrap();
    assert_eq!(duet::eval::read_qrels(&path).unwrap(), expected);

    // The clicks count once each in the report, and its timeline sums to its totals.
    let (status, report) = server.get("/v1/experiments/blind.judging/report").await;
    assert_eq!(status, 200, "{report}");
    let il = &report["interleave"];
    let clicks: u64 = il["credited_clicks"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(clicks, 3, "{il}");
    let timeline = il["timeline"].as_array().unwrap();
    assert!((1..=24).contains(&timeline.len()), "{il}");
    let sum = |f: &dyn Fn(&Value) -> u64| timeline.iter().map(f).sum::<u64>();
    assert_eq!(sum(&|b| b["impressions"].as_u64().unwrap()), il["impressions"].as_u64().unwrap());
    assert_eq!(sum(&|b| b["ties"].as_u64().unwrap()), il["ties"].as_u64().unwrap());
    assert_eq!(sum(&|b| b["no_click"].as_u64().unwrap()), il["no_click"].as_u64().unwrap());
    for arm in ["tiny-encoder", "tiny-llm"] {
        assert_eq!(sum(&|b| b["wins"][arm].as_u64().unwrap()), il["wins"][arm].as_u64().unwrap(), "{il}");
    }
    assert!(chrono::DateTime::parse_from_rfc3339(timeline[0]["start"].as_str().unwrap()).is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grades_outside_0_to_10_are_refused_and_unknown_experiments_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;
    let (status, body) = server.post("/v1/documents", &json!({"documents": sample_corpus()})).await;
    assert_eq!(status, 200, "{body}");
    let arms = json!([{"model": "tiny-encoder"}, {"model": "tiny-llm"}]);
    create(&server, json!({"name": "il", "mode": "interleave", "arms": arms, "status": "running"})).await;
    let shown = search(&server, json!({"query": "sort a list", "experiment": "il", "unit_id": "u"})).await;
    let request_id = shown["request_id"].as_str().unwrap();
    for grade in [json!(-1), json!(10.5), json!("3"), Value::Null] {
        let body = json!({"request_id": request_id, "doc_id": doc(&shown, 0), "event": "click", "grade": grade});
        let (status, problem) = server.post("/v1/feedback", &body).await;
        assert_eq!(status, 422, "{grade}: {problem}");
    }
    let (_, tsv) = judgements(&server, "il").await;
    assert_eq!(tsv, "query\tdoc_id\tgrade\n", "refused grades left nothing");
    let (status, problem) = server.get("/v1/experiments/nope/judgements").await;
    assert_eq!((status, problem["type"].as_str()), (404, Some("/problems/unknown-experiment")), "{problem}");
    let (status, report) = server.get("/v1/experiments/il/report").await;
    assert_eq!(status, 200);
    assert_eq!(report["interleave"]["timeline"].as_array().unwrap().len(), 1, "one impression, one bucket");
    server.stop().await;
}
