//! What an operator follows a request by: the span tree of a search (request → experiment routing, search →
//! encode → queue wait and inference, index search, fetch), every span of it under the `request` span that
//! carries the response's request id, and `duet serve --log-format json`'s one JSON access-log line per request
//! with route, status, model, latency and request id.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{sample_corpus, tiny_config, TestServer};
use serde_json::{json, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as recorded: a sequence number of our own (the registry reuses ids), its parent's, name and fields.
#[derive(Debug, Clone)]
struct Recorded {
    seq: usize,
    parent: Option<usize>,
    name: &'static str,
    fields: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Recorded>>>);

struct Seq(usize);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent_id = attrs
            .parent()
            .cloned()
            .or_else(|| attrs.is_contextual().then(|| ctx.current_span().id().cloned()).flatten());
        let parent = parent_id.and_then(|p| ctx.span(&p)).and_then(|p| p.extensions().get::<Seq>().map(|s| s.0));
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        let seq = spans.len();
        spans.push(Recorded { seq, parent, name: attrs.metadata().name(), fields });
        ctx.span(id).unwrap().extensions_mut().insert(Seq(seq));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(seq) = ctx.span(id).and_then(|s| s.extensions().get::<Seq>().map(|s| s.0)) else { return };
        values.record(&mut Fields(&mut self.0.lock().unwrap()[seq].fields));
    }
}

/// The spans under `root`, depth first, as "parent > child" paths of names.
fn paths(spans: &[Recorded], root: usize) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(spans: &[Recorded], at: usize, path: String, out: &mut Vec<String>) {
        for child in spans.iter().filter(|s| s.parent == Some(at)) {
            let here = format!("{path} > {}", child.name);
            out.push(here.clone());
            walk(spans, child.seq, here, out);
        }
    }
    walk(spans, root, spans[root].name.to_string(), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_searchs_spans_form_one_tree_under_its_request_id() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;
    assert_eq!(server.post("/v1/documents", &json!({ "documents": sample_corpus() })).await.0, 200);
    let (status, experiment) = server
        .post(
            "/v1/experiments",
            &json!({"name": "traced", "mode": "interleave", "status": "running",
                    "arms": [{"model": "tiny-encoder"}, {"model": "tiny-two-tower"}]}),
        )
        .await;
    assert_eq!(status, 201, "{experiment}");

    // One search under the experiment, with the caller's request id.
    let response = server
        .client
        .post(server.url("/v1/search"))
        .header("x-request-id", "trace-me-42")
        .json(&json!({"query": "unzip an archive of files", "experiment": "traced", "unit_id": "u1", "k": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["arms"], json!(["tiny-encoder", "tiny-two-tower"]), "{body}");
    // Spans close when the request's work is done; the response can come first. Wait for the inference spans.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (spans, root) = loop {
        let spans = recorder.0.lock().unwrap().clone();
        let root = spans
            .iter()
            .find(|s| s.name == "request" && s.fields.get("request_id").map(String::as_str) == Some("trace-me-42"))
            .map(|s| s.seq)
            .expect("a request span with the response's request id");
        if paths(&spans, root).iter().filter(|p| p.ends_with("encode.inference")).count() == 2 {
            break (spans, root);
        }
        assert!(std::time::Instant::now() < deadline, "{:#?}", paths(&spans, root));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let tree = paths(&spans, root);
    eprintln!("span tree of one interleaved search:\n  {}", tree.join("\n  "));
    for stage in [
        "request > experiment.route",
        "request > search",
        "request > search > encode",
        "request > search > encode > encode.queue_wait",
        "request > search > encode > encode.inference",
        "request > search > index.search",
        "request > search > fetch",
    ] {
        // Interleaved: both arms search, so each stage under `search` is there twice.
        let n = tree.iter().filter(|p| *p == stage).count();
        let want = if stage == "request > experiment.route" { 1 } else { 2 };
        assert_eq!(n, want, "{stage} in\n{}", tree.join("\n"));
    }
    let route = spans.iter().find(|s| s.parent == Some(root) && s.name == "experiment.route").unwrap();
    assert_eq!(route.fields["experiment"], "traced");
    assert_eq!(route.fields["plan"], "interleave");
    let mut models: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent == Some(root) && s.name == "search")
        .map(|s| s.fields["model"].as_str())
        .collect();
    models.sort();
    assert_eq!(models, ["tiny-encoder", "tiny-two-tower"]);
    let index =
        spans.iter().find(|s| tree.len() > 0 && s.name == "index.search" && s.fields.contains_key("method")).unwrap();
    assert_eq!(index.fields["method"], "exact", "50 documents are searched exactly");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_access_line_per_request_with_its_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_duet"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("DUET_")) {
        command.env_remove(name);
    }
    let mut child = command
        .current_dir(common::repo())
        .args(["serve", "--listen", "127.0.0.1:0", "--model", "models/tiny-encoder", "--log-format", "json"])
        .arg("--store")
        .arg(dir.path().join("duet.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let Some(base) = line.trim().strip_prefix("duet listening on ").map(str::to_string) else {
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        panic!("duet serve did not start: {line}\n{stderr}");
    };
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while client.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(std::time::Instant::now() < deadline, "not ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let search = client
        .get(format!("{base}/v1/search?q=sort%20a%20list&k=2&model=tiny-encoder"))
        .header("x-request-id", "json-log-7")
        .send()
        .await
        .unwrap();
    assert_eq!(search.status(), 200);
    let missing =
        client.get(format!("{base}/v1/documents/nope")).header("x-request-id", "json-log-8").send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // Read stderr until both access lines are there (every line must be JSON).
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let access = tokio::task::spawn_blocking(move || read_access_lines(stderr)).await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let hit = &access["json-log-7"];
    assert_eq!(
        (hit["route"].as_str(), hit["status"].as_u64(), hit["model"].as_str()),
        (Some("/v1/search"), Some(200), Some("tiny-encoder")),
        "{hit}"
    );
    assert_eq!(hit["method"], "GET");
    assert!(hit["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{hit}");
    let miss = &access["json-log-8"];
    assert_eq!((miss["route"].as_str(), miss["status"].as_u64()), (Some("/v1/documents/{id}"), Some(404)), "{miss}");
}

/// The access-log lines' fields by request id, read until the two the test sent are there.
fn read_access_lines(stderr: impl BufRead) -> HashMap<String, Value> {
    let mut access = HashMap::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["timestamp"].is_string() && value["level"].is_string(), "{line}");
        if value["target"] == "duet::access" {
            let fields = value["fields"].clone();
            access.insert(fields["request_id"].as_str().unwrap().to_string(), fields);
            if access.contains_key("json-log-7") && access.contains_key("json-log-8") {
                break;
            }
        }
    }
    access
}
