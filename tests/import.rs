//! `duet import`: good lines land, bad lines are reported with their numbers, and a re-run skips what is
//! already stored unchanged (so an interrupted import can simply be run again).

mod common;

use common::{tiny_config, TestServer};
use duet::corpus::import_jsonl;
use duet::engine::Engine;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reports_bad_lines_keeps_good_ones_and_skips_unchanged_on_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    let lines = [
        json!({"id": "a", "text": "sort a list of numbers"}).to_string(),
        "{not json".to_string(),
        json!({"id": "b", "text": "read a json file", "metadata": {"lang": "python"}}).to_string(),
        String::new(),
        json!({"id": "", "text": "no id"}).to_string(),
        json!({"id": "c", "text": "   "}).to_string(),
        json!({"id": "d", "text": "x", "metadata": "not an object"}).to_string(),
        json!({"id": "e", "text": "kill the process on a port", "extra": 1}).to_string(),
        json!({"id": "a", "text": "sort a list of numbers quickly"}).to_string(),
    ];
    std::fs::write(&corpus, lines.join("\n") + "\n").unwrap();
    let config = tiny_config(&dir.path().join("duet.db"));

    let engine = Engine::open(&config).await.unwrap();
    engine.prepare_indexes().await.unwrap();
    let mut batches = 0;
    let report = import_jsonl(&engine, &corpus, 2, |_, _| batches += 1).await.unwrap();
    let bad: Vec<usize> = report.bad_lines.iter().map(|b| b.line).collect();
    assert_eq!(bad, [2, 5, 6, 7, 8], "{report:?}");
    assert!(report.bad_lines[3].message.contains("metadata"), "{report:?}");
    assert!(report.bad_lines[4].message.contains("extra"), "{report:?}");
    assert_eq!(report.upserted, 3, "a, b, then a again with a new text");
    assert!(batches >= 2, "progress is reported per batch");
    assert_eq!(engine.store().count().await.unwrap(), 2);
    assert_eq!(engine.get("a").await.unwrap().unwrap().text, "sort a list of numbers quickly", "the later line wins");

    let again = import_jsonl(&engine, &corpus, 64, |_, _| {}).await.unwrap();
    assert_eq!((again.upserted, again.unchanged), (0, 2), "{again:?}");
    engine.close().await;

    // What the import wrote is served (and searchable) by a server on the same store.
    let server = TestServer::start(config).await;
    let (status, body) =
        server.post("/v1/search", &json!({"query": "read a json file", "k": 1, "model": "tiny-llm"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["id"], "b");
    assert_eq!(body["results"][0]["metadata"]["lang"], "python");
    server.stop().await;
}
