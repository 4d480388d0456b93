//! The model-swap benchmark behind `duet bench-swap`: live searches from concurrent clients against a running
//! server, timed client side, in three phases —
//!
//! 1. **idle**: nothing else runs, for a fixed duration;
//! 2. **back-fill**: another model is added (`POST /v1/models`) and the same searches run for as long as its
//!    back-fill does (`GET /v1/models/{name}` polled until it serves);
//! 3. **swap** (optional): the searched model itself is replaced by a new version (`PUT /v1/models/{name}`)
//!    while the clients keep searching; the swap time runs from the request until `serving.version` is the new
//!    one, and every response's `model_version` shows whether each client switched once and never back.
//!
//! It calls the server through [`super::simulate::Server`] and summarises latencies with the project's one
//! quantile ([`super::simulate::summarize`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use super::simulate::{summarize, LatencySummary, Server};

/// What the benchmark does.
#[derive(Debug, Clone, Serialize)]
pub struct SwapBenchSettings {
    /// The model searched by the clients (and replaced in the swap phase).
    pub model: String,
    /// The model added in the back-fill phase: its name and folder (relative to the server's `models_dir`).
    pub add_name: String,
    pub add_path: String,
    /// The folder of the searched model's new version, for the swap phase.
    pub replace_path: Option<String>,
    pub clients: usize,
    /// Searches per second, all clients together (each client paces itself at `rate / clients`, sending the
    /// next one at once when an answer came late); `None`: each client sends its next search as soon as the
    /// last one is answered.
    pub rate: Option<f64>,
    /// Length of the idle phase.
    pub idle: Duration,
    /// Searches before each phase's clock starts (connections opened, caches warm).
    pub warmup: Duration,
    /// Searches kept running after the switch, so that every client sees the new version.
    pub settle: Duration,
    pub k: usize,
    /// How often the model's state is read.
    pub poll: Duration,
    /// The longest a back-fill may take before the benchmark gives up.
    pub timeout: Duration,
    /// Only the swap phase (e.g. over fewer documents than the back-fill phase of an earlier run).
    pub swap_only: bool,
}

/// One phase's live searches.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseOutcome {
    pub seconds: f64,
    pub requests: usize,
    /// Answers with a status other than 2xx.
    pub non_2xx: usize,
    /// Requests that got no answer (connection error or the client's timeout).
    pub failed: usize,
    /// 2xx answers per second, all clients together.
    pub per_second: f64,
    /// Latency of the 2xx answers.
    pub latency_ms: LatencySummary,
}

/// A back-fill as the client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillOutcome {
    pub model: String,
    pub version: String,
    /// Seconds the add or replace request took (loading and probing the network).
    pub load_seconds: f64,
    /// Documents the back-fill had to encode (its `total`).
    pub documents: u64,
    /// From the request's answer until the version served.
    pub seconds: f64,
    /// `documents / seconds`.
    pub per_second: f64,
    /// The server's last reported pace (`backfill.per_second`).
    pub server_per_second: Option<f64>,
}

/// The searched model replaced under load.
#[derive(Debug, Clone, Serialize)]
pub struct SwapOutcome {
    pub model: String,
    pub from_version: String,
    pub to_version: String,
    /// From the `PUT` until `serving.version` was the new one.
    pub swap_seconds: f64,
    pub backfill: BackfillOutcome,
    pub live: PhaseOutcome,
    /// Clients whose answers went from the old version to the new one exactly once.
    pub clients_switched_once: usize,
    /// Clients that only ever saw one version.
    pub clients_one_version: usize,
    /// Clients that saw the old version again after the new one, or a third version.
    pub clients_mixed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SwapBenchOutcome {
    pub settings: SwapBenchSettings,
    pub queries: usize,
    /// The idle and back-fill phases (absent with `swap_only`).
    pub idle: Option<PhaseOutcome>,
    pub during_backfill: Option<PhaseOutcome>,
    pub backfill: Option<BackfillOutcome>,
    /// During back-fill over idle.
    pub p50_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    pub swap: Option<SwapOutcome>,
}

impl SwapBenchOutcome {
    /// What went wrong that must not: failed or non-2xx searches during the swap, or a client that saw versions
    /// mixed. Empty when the swap was clean (or not run).
    pub fn violations(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        if let Some(swap) = &self.swap {
            if swap.live.non_2xx + swap.live.failed > 0 {
                wrong.push(format!(
                    "{} non-2xx and {} failed searches during the swap",
                    swap.live.non_2xx, swap.live.failed
                ));
            }
            if swap.clients_mixed > 0 {
                wrong.push(format!("{} clients saw the versions mixed", swap.clients_mixed));
            }
        }
        wrong
    }
}

/// Queries from a file: JSONL lines with a `query` field (a pairs file such as test.jsonl), or plain text lines;
/// duplicates dropped, the first `limit` kept.
pub fn load_queries(path: &Path, limit: usize) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut seen = std::collections::HashSet::new();
    let queries: Vec<String> = text
        .lines()
        .filter_map(|line| match serde_json::from_str::<Value>(line) {
            Ok(value) => value["query"].as_str().map(str::to_string),
            Err(_) => Some(line.to_string()),
        })
        .filter(|q| !q.trim().is_empty() && seen.insert(q.clone()))
        .take(limit)
        .collect();
    if queries.is_empty() {
        bail!("{} holds no queries", path.display());
    }
    Ok(queries)
}

/// One search as a client saw it.
#[derive(Debug, Clone)]
struct Sample {
    /// When it was sent, in seconds since the load began.
    at: f64,
    ms: f64,
    /// The HTTP status; 0 when no answer came.
    status: u16,
    version: Option<String>,
}

/// Searches the given share of a time window: what a phase reports.
fn phase(samples: &[Vec<Sample>], from: f64, to: f64) -> PhaseOutcome {
    let inside = || samples.iter().flatten().filter(|s| s.at >= from && s.at < to);
    let ok: Vec<f64> = inside().filter(|s| (200..300).contains(&s.status)).map(|s| s.ms).collect();
    let seconds = (to - from).max(0.0);
    PhaseOutcome {
        seconds,
        requests: inside().count(),
        non_2xx: inside().filter(|s| s.status != 0 && !(200..300).contains(&s.status)).count(),
        failed: inside().filter(|s| s.status == 0).count(),
        per_second: if seconds > 0.0 { ok.len() as f64 / seconds } else { 0.0 },
        latency_ms: summarize(ok),
    }
}

/// How a client's sequence of served versions went from `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    Once,
    OneVersion,
    Mixed,
}

fn classify<'a>(versions: impl IntoIterator<Item = &'a str>, from: &str, to: &str) -> Switch {
    let mut runs: Vec<&str> = Vec::new();
    for v in versions {
        if runs.last() != Some(&v) {
            runs.push(v);
        }
    }
    match runs.as_slice() {
        [a, b] if *a == from && *b == to => Switch::Once,
        [a] if *a == from || *a == to => Switch::OneVersion,
        _ => Switch::Mixed,
    }
}

/// Concurrent clients searching one model until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    origin: Instant,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(server: &Server, model: &str, queries: &Arc<Vec<String>>, s: &SwapBenchSettings) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let origin = Instant::now();
        let url = server.url("/v1/search");
        let (clients, k) = (s.clients.max(1), s.k);
        let gap = s.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(clients as f64 / r));
        let tasks = (0..clients)
            .map(|c| {
                let (client, url, stop, queries) = (server.client.clone(), url.clone(), stop.clone(), queries.clone());
                let model = model.to_string();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    // Each client starts at its own place in the query list.
                    let mut i = c * queries.len() / clients;
                    // Paced clients start spread over one gap, so that their searches do not arrive together.
                    let mut next =
                        tokio::time::Instant::now() + gap.map_or(Duration::ZERO, |g| g * c as u32 / clients as u32);
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(gap) = gap {
                            tokio::time::sleep_until(next).await;
                            next = (next + gap).max(tokio::time::Instant::now());
                        }
                        let body = json!({"query": queries[i % queries.len()], "k": k, "model": model});
                        i += 1;
                        let at = origin.elapsed().as_secs_f64();
                        let started = Instant::now();
                        let answer = client.post(&url).json(&body).timeout(Duration::from_secs(30)).send().await;
                        let (status, version) = match answer {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let body: Value = response.json().await.unwrap_or(Value::Null);
                                (status, body["model_version"].as_str().map(str::to_string))
                            }
                            Err(_) => (0, None),
                        };
                        samples.push(Sample { at, ms: started.elapsed().as_secs_f64() * 1e3, status, version });
                    }
                    samples
                })
            })
            .collect();
        Self { stop, origin, tasks }
    }

    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    async fn finish(self) -> anyhow::Result<Vec<Vec<Sample>>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.push(task.await?);
        }
        Ok(all)
    }
}

async fn call(server: &Server, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let url = server.url(path);
    let mut request = server.client.request(method.clone(), &url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| format!("{method} {url}"))?;
    let (status, text) = (response.status(), response.text().await?);
    if !status.is_success() {
        bail!("{method} {url} → {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

async fn detail(server: &Server, name: &str) -> anyhow::Result<Value> {
    call(server, reqwest::Method::GET, &format!("/v1/models/{name}"), None).await
}

/// Polls a model until `version` serves it and no candidate is left; returns the last back-fill progress seen.
async fn wait_serving(server: &Server, name: &str, version: &str, s: &SwapBenchSettings) -> anyhow::Result<Value> {
    let deadline = Instant::now() + s.timeout;
    let mut progress = Value::Null;
    loop {
        let d = detail(server, name).await?;
        if d["candidate"]["backfill"].is_object() {
            progress = d["candidate"]["backfill"].clone();
        }
        if let Some(failed) = d["history"].as_array().and_then(|h| {
            h.iter().find(|e| e["version"] == version && e["state"] == "failed").map(|e| e["reason"].clone())
        }) {
            bail!("{name} version {version} failed: {failed}");
        }
        if d["serving"]["version"] == version && d["candidate"].is_null() && d["serving"]["state"] == "ready" {
            return Ok(progress);
        }
        if Instant::now() > deadline {
            bail!("{name} version {version} did not serve within {:?}: {d}", s.timeout);
        }
        tokio::time::sleep(s.poll).await;
    }
}

fn backfill_outcome(name: &str, version: &str, load: f64, seconds: f64, progress: &Value) -> BackfillOutcome {
    let documents = progress["total"].as_u64().unwrap_or(0);
    BackfillOutcome {
        model: name.to_string(),
        version: version.to_string(),
        load_seconds: load,
        documents,
        seconds,
        per_second: if seconds > 0.0 { documents as f64 / seconds } else { 0.0 },
        server_per_second: progress["per_second"].as_f64(),
    }
}

/// The version a change request is bringing in: the candidate's, else (already switched) the serving one's.
fn incoming_version(answer: &Value) -> anyhow::Result<String> {
    answer["candidate"]["version"]
        .as_str()
        .or_else(|| answer["serving"]["version"].as_str())
        .map(str::to_string)
        .with_context(|| format!("the answer names no version: {answer}"))
}

/// The idle phase, then the back-fill phase: their live searches and the back-fill.
async fn idle_then_backfill(
    server: &Server,
    queries: &Arc<Vec<String>>,
    s: &SwapBenchSettings,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<(PhaseOutcome, PhaseOutcome, BackfillOutcome)> {
    progress(&format!("idle: {} clients search {} for {:?}", s.clients, s.model, s.idle));
    let load = Load::start(server, &s.model, queries, s);
    tokio::time::sleep(s.warmup + s.idle).await;
    let end = load.now();
    let idle = phase(&load.finish().await?, s.warmup.as_secs_f64(), end);

    progress(&format!("back-fill: adding {} from {}", s.add_name, s.add_path));
    let load = Load::start(server, &s.model, queries, s);
    tokio::time::sleep(s.warmup).await;
    let asked = load.now();
    let body = json!({"name": s.add_name, "path": s.add_path});
    let added = call(server, reqwest::Method::POST, "/v1/models", Some(body)).await?;
    let version = incoming_version(&added)?;
    let loaded = load.now();
    let last = wait_serving(server, &s.add_name, &version, s).await?;
    let done = load.now();
    let during_backfill = phase(&load.finish().await?, loaded, done);
    let backfill = backfill_outcome(&s.add_name, &version, loaded - asked, done - loaded, &last);
    Ok((idle, during_backfill, backfill))
}

/// Runs the phases against `server` and reports them; `progress` hears what is happening.
pub async fn run(
    server: &Server,
    queries: Vec<String>,
    settings: SwapBenchSettings,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<SwapBenchOutcome> {
    let s = &settings;
    let queries = Arc::new(queries);
    let serving = detail(server, &s.model).await?;
    let from_version = serving["serving"]["version"].as_str().context("the searched model serves no version")?;
    let from_version = from_version.to_string();

    let (idle, during_backfill, backfill) = match s.swap_only {
        true => (None, None, None),
        false => {
            let (idle, during, backfill) = idle_then_backfill(server, &queries, s, &mut progress).await?;
            (Some(idle), Some(during), Some(backfill))
        }
    };
    let swap = match &s.replace_path {
        None => None,
        Some(path) => {
            progress(&format!("swap: replacing {} with {path}", s.model));
            let load = Load::start(server, &s.model, &queries, s);
            tokio::time::sleep(s.warmup).await;
            let asked = load.now();
            let answer =
                call(server, reqwest::Method::PUT, &format!("/v1/models/{}", s.model), Some(json!({"path": path})))
                    .await?;
            let to_version = incoming_version(&answer)?;
            let loaded = load.now();
            let last = wait_serving(server, &s.model, &to_version, s).await?;
            let swapped = load.now();
            tokio::time::sleep(s.settle).await;
            let end = load.now();
            let samples = load.finish().await?;
            let switches: Vec<Switch> = samples
                .iter()
                .map(|client| {
                    let versions = client.iter().filter_map(|x| x.version.as_deref());
                    classify(versions, &from_version, &to_version)
                })
                .collect();
            let count = |kind: Switch| switches.iter().filter(|&&k| k == kind).count();
            Some(SwapOutcome {
                model: s.model.clone(),
                from_version: from_version.clone(),
                swap_seconds: swapped - asked,
                backfill: backfill_outcome(&s.model, &to_version, loaded - asked, swapped - loaded, &last),
                to_version,
                // Every search of the phase, warm-up included: none may fail.
                live: phase(&samples, 0.0, end),
                clients_switched_once: count(Switch::Once),
                clients_one_version: count(Switch::OneVersion),
                clients_mixed: count(Switch::Mixed),
            })
        }
    };
    let ratio = |q: fn(&LatencySummary) -> f64| match (&idle, &during_backfill) {
        (Some(i), Some(d)) if q(&i.latency_ms) > 0.0 => Some(q(&d.latency_ms) / q(&i.latency_ms)),
        _ => None,
    };
    Ok(SwapBenchOutcome {
        p50_ratio: ratio(|l| l.p50),
        p99_ratio: ratio(|l| l.p99),
        queries: queries.len(),
        settings,
        idle,
        during_backfill,
        backfill,
        swap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, ms: f64, status: u16) -> Sample {
        Sample { at, ms, status, version: None }
    }

    #[test]
    fn a_phase_counts_only_its_window_and_times_only_successes() {
        let client_a = vec![sample(0.5, 100.0, 200), sample(1.0, 10.0, 200), sample(2.0, 30.0, 503)];
        let client_b = vec![sample(1.5, 20.0, 200), sample(2.5, 5.0, 0), sample(3.0, 40.0, 200)];
        let p = phase(&[client_a, client_b], 1.0, 3.0);
        assert_eq!((p.requests, p.non_2xx, p.failed), (4, 1, 1));
        assert_eq!(p.latency_ms.count, 2, "the warm-up search and the one after the window are left out");
        assert!((p.latency_ms.p50 - 15.0).abs() < 1e-9);
        assert!((p.per_second - 1.0).abs() < 1e-9, "2 answers over 2 seconds");
        let empty = phase(&[], 0.0, 0.0);
        assert_eq!((empty.requests, empty.per_second, empty.latency_ms.p99), (0, 0.0, 0.0));
    }

    fn outcome(swap: Option<SwapOutcome>) -> SwapBenchOutcome {
        SwapBenchOutcome {
            settings: SwapBenchSettings {
                model: "m".into(),
                add_name: "b".into(),
                add_path: "b".into(),
                replace_path: None,
                clients: 1,
                rate: None,
                idle: Duration::ZERO,
                warmup: Duration::ZERO,
                settle: Duration::ZERO,
                k: 10,
                poll: Duration::ZERO,
                timeout: Duration::ZERO,
                swap_only: false,
            },
            queries: 1,
            idle: None,
            during_backfill: None,
            backfill: None,
            p50_ratio: None,
            p99_ratio: None,
            swap,
        }
    }

    #[test]
    fn a_swap_with_a_failed_search_or_mixed_versions_is_a_violation() {
        assert!(outcome(None).violations().is_empty());
        let backfill = backfill_outcome("m", "v2", 0.5, 10.0, &json!({"total": 200, "per_second": 21.0}));
        assert_eq!((backfill.documents, backfill.per_second, backfill.server_per_second), (200, 20.0, Some(21.0)));
        let clean = SwapOutcome {
            model: "m".into(),
            from_version: "v1".into(),
            to_version: "v2".into(),
            swap_seconds: 10.5,
            backfill,
            live: phase(&[vec![sample(0.0, 1.0, 200)]], 0.0, 1.0),
            clients_switched_once: 1,
            clients_one_version: 0,
            clients_mixed: 0,
        };
        assert!(outcome(Some(clean.clone())).violations().is_empty());
        let failed = SwapOutcome { live: phase(&[vec![sample(0.0, 1.0, 503)]], 0.0, 1.0), ..clean.clone() };
        assert_eq!(outcome(Some(failed)).violations(), ["1 non-2xx and 0 failed searches during the swap"]);
        let mixed = SwapOutcome { clients_mixed: 2, ..clean };
        assert_eq!(outcome(Some(mixed)).violations(), ["2 clients saw the versions mixed"]);
    }

    #[test]
    fn a_client_switches_versions_once_and_never_back() {
        assert_eq!(classify(["v1", "v1", "v2", "v2"], "v1", "v2"), Switch::Once);
        assert_eq!(classify(["v1", "v1"], "v1", "v2"), Switch::OneVersion);
        assert_eq!(classify(["v2"], "v1", "v2"), Switch::OneVersion);
        assert_eq!(classify(["v1", "v2", "v1", "v2"], "v1", "v2"), Switch::Mixed);
        assert_eq!(classify(["v2", "v1"], "v1", "v2"), Switch::Mixed);
        assert_eq!(classify(["v1", "v3"], "v1", "v2"), Switch::Mixed);
    }

    #[test]
    fn queries_come_from_pairs_or_plain_lines_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.jsonl");
        std::fs::write(&path, "{\"query\":\"a\",\"doc_id\":\"1\"}\n{\"query\":\"a\",\"doc_id\":\"2\"}\nplain b\n\nc\n")
            .unwrap();
        assert_eq!(load_queries(&path, 10).unwrap(), ["a", "plain b", "c"]);
        assert_eq!(load_queries(&path, 2).unwrap(), ["a", "plain b"]);
        std::fs::write(&path, "\n").unwrap();
        assert!(load_queries(&path, 10).is_err());
    }
}
