//! The restart benchmark behind `duet bench-restart` (issue 16, target P4):
//!
//! 1. **fill**: an SQLite store gets N documents, each with a stored embedding of the model's name and version —
//!    synthetic clustered unit vectors of the model's dimension, written in bulk through the store API — so that
//!    no model encodes anything at start-up;
//! 2. **starts**: `duet serve` is spawned as a child process over the store, first over an empty store (the
//!    memory of the model and the runtime alone), then twice over the filled one; each start is timed from spawn
//!    to `/readyz` answering 200 and to the model's HNSW graph being in place (`has_graph` in `/v1/models`), and
//!    its VmRSS and VmHWM (`/proc/PID/status`) are read at both moments. The child is stopped with SIGTERM, so
//!    that whatever a server writes on a clean shutdown is written before the next start.
//!
//! Vectors + graph bytes are N × dim × 4 plus an estimate of the graph of N × M × 2 × 4 bytes (the neighbour ids
//! of layer 0, where almost all links are): the index exposes no size of its own.
//! Uses the engine (to open the store with the model's identity) and the store; prints nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, ModelEntry};
use crate::engine::Engine;
use crate::store::{content_hash, NewDocument, NewEmbedding, StoreLocation};
use crate::util::rng::Rng;

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct RestartBenchSettings {
    /// The `duet` binary spawned as `duet serve`.
    pub binary: PathBuf,
    pub model: PathBuf,
    pub documents: usize,
    /// Documents per store write while filling.
    pub batch: usize,
    /// Cluster centres of the synthetic vectors.
    pub clusters: usize,
    /// Filled-store starts (the first builds the graph; later ones may load what it left).
    pub starts: usize,
    /// The longest a start may take to be ready, and then to have its graph.
    pub timeout: Duration,
    pub onnxruntime: Option<PathBuf>,
    /// Folder of the stores and the children's logs.
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct FillOutcome {
    pub model: String,
    pub version: String,
    pub dimension: usize,
    pub documents: usize,
    pub seconds: f64,
    pub per_second: f64,
}

/// Memory of the child, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StartOutcome {
    pub documents: usize,
    /// Spawn to `/readyz` 200.
    pub ready_seconds: f64,
    pub at_ready: Memory,
    /// Spawn to the graph being in place (absent below `exact_below` documents, where none is built).
    pub graph_seconds: Option<f64>,
    pub at_graph: Option<Memory>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartBenchOutcome {
    pub settings: RestartBenchSettings,
    pub fill: FillOutcome,
    /// `N × dim × 4`.
    pub vector_bytes: u64,
    /// Estimated: `N × M × 2 × 4`.
    pub graph_bytes_estimate: u64,
    pub m: usize,
    /// Over an empty store: the model and the runtime alone.
    pub empty: StartOutcome,
    pub starts: Vec<StartOutcome>,
}

impl RestartBenchOutcome {
    pub fn ideal_bytes(&self) -> u64 {
        self.vector_bytes + self.graph_bytes_estimate
    }
}

fn config(model: &Path, store: &Path, onnxruntime: Option<PathBuf>) -> Config {
    Config {
        store: StoreLocation::Sqlite(store.to_path_buf()),
        onnxruntime,
        models: vec![ModelEntry { path: model.to_path_buf(), index: Default::default(), encoder: None, task: None }],
        ..Config::default()
    }
}

/// Fills `store` with `documents` documents and a stored clustered unit vector each, under the model's name and
/// version; nothing is encoded.
pub async fn fill(
    store: &Path,
    model: &Path,
    onnxruntime: Option<PathBuf>,
    documents: usize,
    batch: usize,
    clusters: usize,
) -> anyhow::Result<FillOutcome> {
    let engine = Engine::open(&config(model, store, onnxruntime)).await?;
    let served = engine.model(&engine.default_model())?;
    let (name, version, dimension) = (served.info.name.clone(), served.info.version.clone(), served.info.dimension);
    let mut rng = Rng::new(16);
    let centres: Vec<Vec<f32>> = (0..clusters.max(1))
        .map(|_| {
            let mut c: Vec<f32> = (0..dimension).map(|_| rng.normal() as f32).collect();
            crate::util::normalize(&mut c);
            c
        })
        .collect();
    let started = Instant::now();
    for first in (0..documents).step_by(batch.max(1)) {
        let last = (first + batch.max(1)).min(documents);
        let docs: Vec<NewDocument> = (first..last)
            .map(|i| NewDocument {
                id: format!("doc-{i:07}"),
                text: format!("stored document {i} of the restart benchmark, its vector read back at start-up"),
                metadata: serde_json::json!({"n": i}),
            })
            .collect();
        let embeddings: Vec<NewEmbedding> = docs
            .iter()
            .map(|d| {
                let centre = &centres[rng.below(centres.len())];
                let mut vector: Vec<f32> = centre.iter().map(|c| c + 0.08 * rng.normal() as f32).collect();
                crate::util::normalize(&mut vector);
                NewEmbedding {
                    model: name.clone(),
                    model_version: version.clone(),
                    document_id: d.id.clone(),
                    content_hash: content_hash(&d.text),
                    vector,
                }
            })
            .collect();
        engine.store().upsert(&docs, &embeddings).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    engine.close().await;
    Ok(FillOutcome { model: name, version, dimension, documents, seconds, per_second: documents as f64 / seconds })
}

/// VmRSS and VmHWM of a process, from `/proc/PID/status`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(parse_memory(&status))
}

fn parse_memory(status: &str) -> Memory {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    Memory { rss: field("VmRSS:"), hwm: field("VmHWM:") }
}

/// A free local port (bound and let go: another process could take it in between, which the start would report).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Stops the child with SIGTERM, waiting for it to exit (killed after 30 s).
fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One `duet serve` start over `store`, timed and measured; the child is stopped before returning.
pub async fn start_once(settings: &RestartBenchSettings, store: &Path, log: &Path) -> anyhow::Result<StartOutcome> {
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(&settings.binary);
    command.arg("serve").arg("--listen").arg(format!("127.0.0.1:{port}")).arg("--store").arg(store);
    command.arg("--model").arg(&settings.model).env_remove("DUET_CONFIG").env("NO_COLOR", "1");
    if let Some(lib) = &settings.onnxruntime {
        command.arg("--onnxruntime").arg(lib);
    }
    let log_file = std::fs::File::create(log)?;
    command.stdout(Stdio::null()).stderr(log_file);
    let spawned = Instant::now();
    let mut child = command.spawn()?;
    let outcome = measure(&mut child, &base, spawned, settings.timeout).await;
    stop(&mut child);
    outcome.map_err(|err| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
        anyhow::anyhow!("{err}; the server's last log lines:\n{}", tail.join("\n"))
    })
}

async fn measure(child: &mut Child, base: &str, spawned: Instant, timeout: Duration) -> anyhow::Result<StartOutcome> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let deadline = spawned + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("duet serve exited ({status}) before it was ready");
        }
        let ready = client.get(format!("{base}/readyz")).send().await.map(|r| r.status().is_success());
        if matches!(ready, Ok(true)) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not ready within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready_seconds = spawned.elapsed().as_secs_f64();
    let at_ready = memory(child.id())?;
    let mut documents;
    let (mut graph_seconds, mut at_graph) = (None, None);
    let deadline = Instant::now() + timeout;
    loop {
        let models: serde_json::Value = client.get(format!("{base}/v1/models")).send().await?.json().await?;
        let model = &models["models"][0];
        documents = model["documents"].as_u64().unwrap_or(0) as usize;
        let exact_below = model["index"]["exact_below"].as_u64().unwrap_or(u64::MAX) as usize;
        if model["index"]["has_graph"].as_bool() == Some(true) {
            graph_seconds = Some(spawned.elapsed().as_secs_f64());
            at_graph = Some(memory(child.id())?);
            break;
        }
        if documents < exact_below {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the graph was not in place within {timeout:?} of ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(StartOutcome { documents, ready_seconds, at_ready, graph_seconds, at_graph })
}

/// Fills the store (unless it already holds the documents' vectors), then measures the starts.
pub async fn run(settings: RestartBenchSettings, progress: impl Fn(&str)) -> anyhow::Result<RestartBenchOutcome> {
    std::fs::create_dir_all(&settings.work_dir)?;
    let store = settings.work_dir.join(format!("restart-{}.db", settings.documents));
    let _ = std::fs::remove_file(&store);
    progress(&format!("filling {} with {} documents and their vectors", store.display(), settings.documents));
    let fill = fill(
        &store,
        &settings.model,
        settings.onnxruntime.clone(),
        settings.documents,
        settings.batch,
        settings.clusters,
    )
    .await?;
    progress(&format!(
        "filled in {:.1} s ({:.0} documents/s); {} {} {}-d",
        fill.seconds, fill.per_second, fill.model, fill.version, fill.dimension
    ));
    let empty_store = settings.work_dir.join("restart-empty.db");
    let _ = std::fs::remove_file(&empty_store);
    let empty = start_once(&settings, &empty_store, &settings.work_dir.join("serve-empty.log")).await?;
    progress(&format!("empty store: ready in {:.2} s, RSS {} MiB", empty.ready_seconds, empty.at_ready.rss >> 20));
    let mut starts = Vec::new();
    for i in 0..settings.starts {
        let start = start_once(&settings, &store, &settings.work_dir.join(format!("serve-{i}.log"))).await?;
        progress(&format!(
            "start {}: ready in {:.2} s (RSS {} MiB), graph in place at {}",
            i + 1,
            start.ready_seconds,
            start.at_ready.rss >> 20,
            start.graph_seconds.map_or("-".to_string(), |s| format!("{s:.2} s"))
        ));
        starts.push(start);
    }
    let m = config(&settings.model, &store, None).models[0].index.m;
    let n = settings.documents as u64;
    Ok(RestartBenchOutcome {
        vector_bytes: n * fill.dimension as u64 * 4,
        graph_bytes_estimate: n * m as u64 * 2 * 4,
        m,
        settings,
        fill,
        empty,
        starts,
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 20) as f64)
}

/// The outcome as a Markdown table.
pub fn markdown(o: &RestartBenchOutcome) -> String {
    let ideal = o.ideal_bytes();
    let mut s = format!(
        "`duet serve` over {} stored documents with {}-d vectors of {} (SQLite), spawned as a child; vectors + \
         graph = {} MiB ({} MiB of vectors, {} MiB of graph estimated as N × M {} × 2 × 4 bytes). Store filled \
         at {:.0} documents/s.\n\n",
        o.fill.documents,
        o.fill.dimension,
        o.fill.model,
        mib(ideal),
        mib(o.vector_bytes),
        mib(o.graph_bytes_estimate),
        o.m,
        o.fill.per_second
    );
    s += "| start | ready s | graph in place s | VmRSS ready MiB | VmHWM ready MiB | VmRSS graph MiB | VmHWM graph \
          MiB | RSS / (vectors+graph) | (RSS − empty) / (vectors+graph) |\n|---|---|---|---|---|---|---|---|---|\n";
    let row = |name: &str, st: &StartOutcome, ratios: bool| {
        let last = st.at_graph.unwrap_or(st.at_ready);
        let extra = last.rss.saturating_sub(o.empty.at_ready.rss);
        let (over_ideal, extra_over_ideal) = if ratios {
            let ideal = ideal.max(1) as f64;
            (format!("{:.2}", last.rss as f64 / ideal), format!("{:.2}", extra as f64 / ideal))
        } else {
            ("-".to_string(), "-".to_string())
        };
        format!(
            "| {name} | {:.2} | {} | {} | {} | {} | {} | {over_ideal} | {extra_over_ideal} |\n",
            st.ready_seconds,
            st.graph_seconds.map_or("-".into(), |g| format!("{g:.2}")),
            mib(st.at_ready.rss),
            mib(st.at_ready.hwm),
            st.at_graph.map_or("-".into(), |m| mib(m.rss)),
            st.at_graph.map_or("-".into(), |m| mib(m.hwm)),
        )
    };
    s += &row("empty store (model + runtime)", &o.empty, false);
    for (i, st) in o.starts.iter().enumerate() {
        s += &row(&format!("{} documents, start {}", st.documents, i + 1), st, true);
    }
    s += "\nRatios use VmRSS once the graph is in place. Targets (P4): ready ≤ 2 s with the graph persisted (the \
          last start's \"graph in place\"); RSS ≤ 1.5 × vectors+graph.\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_proc_status() {
        let status = "Name:\tduet\nVmPeak:\t  900 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        let m = parse_memory(status);
        assert_eq!((m.rss, m.hwm), (1024 * 1024, 2048 * 1024));
        let own = memory(std::process::id()).unwrap();
        assert!(own.rss > 0 && own.hwm >= own.rss);
    }
}
