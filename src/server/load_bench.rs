//! The HTTP load benchmark behind `duet bench-search` (issue 16, targets P2 and P6). A real server is started in
//! this process on an ephemeral port over a fresh SQLite store, a corpus slice is imported, and then:
//!
//! 1. **in-process baseline**: the same engine's search (encode + index + documents, no HTTP) at one caller, and
//!    the searched model's encoder on batches of `encoder_batch` queries (texts per second);
//! 2. **closed loop**: `/v1/search` from 1, 8, 32, 128… concurrent clients, each sending its next search when
//!    the last is answered (p50 / p99 / QPS per level);
//! 3. **overload** (optional): a second server over the same store with a small encoding queue; its unloaded
//!    latency at one client, then an open-loop arrival rate of `overload_factor` × the best QPS of step 2:
//!    admitted latency, refused latency and the refused fraction.
//!
//! Every query text is distinct ([`drive::Queries`]), so a query-embedding cache never answers. Uses the
//! server's own start-up and the corpus import; prints nothing (the command does).

pub mod drive;
pub mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use self::drive::{Queries, Target};
use self::stats::{ratio, LevelStats};
use crate::config::{Config, ModelEntry};
use crate::corpus::import_jsonl;
use crate::store::StoreLocation;

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadBenchSettings {
    /// Model folders served; the first is the one searched.
    pub models: Vec<PathBuf>,
    /// JSONL corpus ({"id","text"} per line); its first `documents` lines are imported.
    pub corpus: PathBuf,
    pub documents: usize,
    /// Query texts: JSONL with a `query` (or `text`) field per line, or plain lines; default: the corpus texts.
    pub queries: Option<PathBuf>,
    /// Query texts are cut to this many characters.
    pub query_chars: usize,
    /// Concurrent clients of each closed-loop level.
    pub levels: Vec<usize>,
    /// Warm-up before each measured window (connections opened, nothing recorded).
    pub warmup: Duration,
    /// Each measured window: every level, the in-process baseline and the unloaded overload run.
    pub window: Duration,
    /// Texts per encoder call of the throughput baseline.
    pub encoder_batch: usize,
    /// The open-loop overload's window (zero skips the overload phase).
    pub overload_window: Duration,
    /// Arrival rate of the overload, as a multiple of the best closed-loop QPS.
    pub overload_factor: f64,
    /// The overload server's encoding queue capacity (`[encoder] queue_capacity`).
    pub overload_queue_capacity: usize,
    pub k: usize,
    /// ONNX Runtime intra-op threads per session (default: the server's).
    pub intra_threads: Option<usize>,
    pub onnxruntime: Option<PathBuf>,
    /// A folder for the store and the corpus slice (the caller removes it).
    pub work_dir: PathBuf,
}

/// One closed-loop level.
#[derive(Debug, Clone, Serialize)]
pub struct LevelOutcome {
    pub clients: usize,
    #[serde(flatten)]
    pub stats: LevelStats,
}

/// The overload phase.
#[derive(Debug, Clone, Serialize)]
pub struct OverloadOutcome {
    pub queue_capacity: usize,
    /// The best closed-loop QPS the rate is a multiple of.
    pub capacity_qps: f64,
    pub rate: f64,
    /// One closed-loop client on the overload server.
    pub unloaded: LevelStats,
    /// The open-loop arrivals at `rate`.
    pub loaded: LevelStats,
}

/// The targets' ratios.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// P2: HTTP p50 at one client over in-process p50 (target ≤ 1.2).
    pub http_p50_over_in_process: f64,
    /// P2: QPS at 32 clients over the encoder's batch throughput (target ≥ 0.9); absent without a 32 level.
    pub qps_32_over_encoder: Option<f64>,
    /// P6: admitted p99 at overload over unloaded p99 (target ≤ 2).
    pub admitted_p99_over_unloaded: Option<f64>,
    /// P6: p99 of the refused requests in ms (target < 5).
    pub refused_p99_ms: Option<f64>,
    pub refused_fraction: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadBenchOutcome {
    pub settings: LoadBenchSettings,
    pub model: String,
    pub model_version: String,
    pub dimension: usize,
    pub documents: usize,
    pub has_graph: bool,
    pub import_seconds: f64,
    pub in_process: LevelStats,
    pub encoder_qps: f64,
    pub levels: Vec<LevelOutcome>,
    pub overload: Option<OverloadOutcome>,
    /// Distinct query texts sent, all phases together.
    pub queries_sent: usize,
    pub ratios: Ratios,
}

/// The one place the overload server's queue bound is set (the config key may change with the queue).
fn with_queue_capacity(mut config: Config, capacity: usize) -> Config {
    config.encoder.queue_capacity = capacity;
    config
}

fn config(settings: &LoadBenchSettings) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        store: StoreLocation::Sqlite(settings.work_dir.join("bench.db")),
        onnxruntime: settings.onnxruntime.clone(),
        models: settings
            .models
            .iter()
            .map(|path| ModelEntry { path: path.clone(), index: Default::default(), encoder: None, task: None })
            .collect(),
        ..Config::default()
    };
    if let Some(threads) = settings.intra_threads {
        config.encoder.intra_threads = threads;
    }
    config
}

/// Query texts from a JSONL file (`query`, else `text`) or plain lines: distinct, non-blank, cut to `chars`.
pub fn load_query_texts(path: &Path, chars: usize, limit: usize) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let value = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => v.get("query").or_else(|| v.get("text")).and_then(|t| t.as_str()).map(str::to_string),
            Err(_) => Some(line.to_string()),
        };
        let Some(value) = value else { continue };
        let cut: String = value.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(chars).collect();
        if !cut.is_empty() && seen.insert(cut.clone()) {
            out.push(cut);
            if out.len() >= limit {
                break;
            }
        }
    }
    anyhow::ensure!(!out.is_empty(), "{} holds no query text", path.display());
    Ok(out)
}

/// The first `n` non-blank lines of the corpus, written to `to`; how many.
fn corpus_slice(from: &Path, to: &Path, n: usize) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(from).map_err(|e| anyhow::anyhow!("reading {}: {e}", from.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(n).collect();
    std::fs::write(to, lines.join("\n") + "\n")?;
    Ok(lines.len())
}

/// Starts a server and waits until it is ready and, when it holds enough documents for one, its graph is built.
async fn ready_server(config: Config, timeout: Duration) -> anyhow::Result<super::RunningServer> {
    let server = super::start(config).await?;
    let deadline = Instant::now() + timeout;
    while !server.engine.is_ready() {
        anyhow::ensure!(Instant::now() < deadline, "the server was not ready within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_graph(&server, deadline).await?;
    Ok(server)
}

async fn wait_for_graph(server: &super::RunningServer, deadline: Instant) -> anyhow::Result<()> {
    for model in server.engine.models().values() {
        let exact_below = model.index_params().exact_below;
        while model.index.len() >= exact_below && !model.index.has_graph() {
            anyhow::ensure!(Instant::now() < deadline, "the HNSW graph of {} was not built in time", model.info.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

fn target(server: &super::RunningServer, model: &str, k: usize) -> anyhow::Result<Target> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    Ok(Target { client, url: format!("http://{}/v1/search", server.addr), model: model.to_string(), k })
}

/// Runs the benchmark; `progress` hears what is happening.
pub async fn run(settings: LoadBenchSettings, progress: impl Fn(&str)) -> anyhow::Result<LoadBenchOutcome> {
    anyhow::ensure!(!settings.models.is_empty(), "at least one model");
    anyhow::ensure!(!settings.levels.is_empty() && settings.levels.iter().all(|&c| c > 0), "levels must be positive");
    std::fs::create_dir_all(&settings.work_dir)?;
    let slice = settings.work_dir.join("corpus.jsonl");
    let documents = corpus_slice(&settings.corpus, &slice, settings.documents)?;
    let query_source = settings.queries.clone().unwrap_or_else(|| settings.corpus.clone());
    let queries = Arc::new(Queries::new(load_query_texts(&query_source, settings.query_chars, 100_000)?));
    let patience = Duration::from_secs(1800);

    let server = ready_server(config(&settings), patience).await?;
    // The first [[models]] entry is the default model, the one searched.
    let searched = server.engine.model(&server.engine.default_model())?;
    let (model, version, dimension) =
        (searched.info.name.clone(), searched.info.version.clone(), searched.info.dimension);
    progress(&format!("importing {documents} documents into {model} {version}"));
    let started = Instant::now();
    import_jsonl(&server.engine, &slice, 64, |_, _| {}).await?;
    let import_seconds = started.elapsed().as_secs_f64();
    wait_for_graph(&server, Instant::now() + patience).await?;
    let has_graph = searched.index.has_graph();
    progress(&format!("imported in {import_seconds:.1} s (graph: {has_graph}); in-process baseline"));

    let http = target(&server, &model, settings.k)?;
    // Warm-up: the session's first calls, the HTTP connection.
    for _ in 0..8 {
        http.search(queries.next()).await;
    }
    let in_process = drive::in_process_search(&server.engine, &model, settings.k, &queries, settings.window)
        .await?
        .summarize(settings.window.as_secs_f64());
    let encoder_qps =
        drive::encoder_throughput(&server.engine, &model, settings.encoder_batch, &queries, settings.window).await?;
    progress(&format!(
        "in-process search p50 {:.2} ms, p99 {:.2} ms; encoder batch-{} {:.0} queries/s",
        in_process.latency_ms.p50, in_process.latency_ms.p99, settings.encoder_batch, encoder_qps
    ));

    let mut levels = Vec::new();
    for &clients in &settings.levels {
        let (samples, seconds) = drive::closed_loop(&http, &queries, clients, settings.warmup, settings.window).await;
        let stats = samples.summarize(seconds);
        progress(&format!(
            "{clients} clients: p50 {:.2} ms, p99 {:.2} ms, {:.1} QPS ({} refused, {} errors, {} failed)",
            stats.latency_ms.p50, stats.latency_ms.p99, stats.qps, stats.refused, stats.errors, stats.failed
        ));
        levels.push(LevelOutcome { clients, stats });
    }
    server.shutdown().await?;

    let overload = if settings.overload_window.is_zero() {
        None
    } else {
        Some(overload(&settings, &model, &queries, &levels, patience, &progress).await?)
    };

    let one = levels.iter().find(|l| l.clients == 1).map(|l| l.stats.latency_ms.p50).unwrap_or(0.0);
    let ratios = Ratios {
        http_p50_over_in_process: ratio(one, in_process.latency_ms.p50),
        qps_32_over_encoder: levels.iter().find(|l| l.clients == 32).map(|l| ratio(l.stats.qps, encoder_qps)),
        admitted_p99_over_unloaded: overload
            .as_ref()
            .map(|o| ratio(o.loaded.latency_ms.p99, o.unloaded.latency_ms.p99)),
        refused_p99_ms: overload.as_ref().map(|o| o.loaded.refused_ms.p99),
        refused_fraction: overload.as_ref().map(|o| o.loaded.refused_fraction),
    };
    Ok(LoadBenchOutcome {
        settings,
        model,
        model_version: version,
        dimension,
        documents,
        has_graph,
        import_seconds,
        in_process,
        encoder_qps,
        levels,
        overload,
        queries_sent: queries.used(),
        ratios,
    })
}

async fn overload(
    settings: &LoadBenchSettings,
    model: &str,
    queries: &Arc<Queries>,
    levels: &[LevelOutcome],
    patience: Duration,
    progress: &impl Fn(&str),
) -> anyhow::Result<OverloadOutcome> {
    let capacity_qps = levels.iter().map(|l| l.stats.qps).fold(0.0, f64::max);
    let rate = settings.overload_factor * capacity_qps.max(1.0);
    let server =
        ready_server(with_queue_capacity(config(settings), settings.overload_queue_capacity), patience).await?;
    let http = target(&server, model, settings.k)?;
    let (samples, seconds) = drive::closed_loop(&http, queries, 1, settings.warmup, settings.window).await;
    let unloaded = samples.summarize(seconds);
    progress(&format!(
        "overload server (queue capacity {}): unloaded p99 {:.2} ms; sending {rate:.0} searches/s for {:?}",
        settings.overload_queue_capacity, unloaded.latency_ms.p99, settings.overload_window
    ));
    let samples = drive::open_loop(&http, queries, rate, settings.overload_window, 2048, Duration::from_secs(60)).await;
    let loaded = samples.summarize(settings.overload_window.as_secs_f64());
    progress(&format!(
        "at {rate:.0}/s: admitted p99 {:.2} ms ({:.1} QPS), refused {:.1} % in p99 {:.2} ms; {} not sent (the \
         client's limit)",
        loaded.latency_ms.p99,
        loaded.qps,
        loaded.refused_fraction * 100.0,
        loaded.refused_ms.p99,
        loaded.skipped
    ));
    server.shutdown().await?;
    Ok(OverloadOutcome { queue_capacity: settings.overload_queue_capacity, capacity_qps, rate, unloaded, loaded })
}

/// The outcome as a Markdown table (one row a measurement, the targets' ratios at the end).
pub fn markdown(o: &LoadBenchOutcome) -> String {
    let mut s = format!(
        "`/v1/search` of {} ({}-d) over {} documents (graph: {}), k {}, distinct queries; a real server in this \
         process, client and server sharing the machine.\n\n",
        o.model, o.dimension, o.documents, o.has_graph, o.settings.k
    );
    s += "| measurement | p50 ms | p99 ms | QPS | refused | errors | not sent |\n|---|---|---|---|---|---|---|\n";
    let row = |name: String, l: &LevelStats| {
        format!(
            "| {name} | {:.2} | {:.2} | {:.1} | {} | {} | {} |\n",
            l.latency_ms.p50,
            l.latency_ms.p99,
            l.qps,
            l.refused,
            l.errors + l.failed,
            l.skipped
        )
    };
    s += &row("in-process encode+search, 1 caller".into(), &o.in_process);
    s += &format!("| encoder, batch {} (texts/s) | | | {:.1} | | | |\n", o.settings.encoder_batch, o.encoder_qps);
    for l in &o.levels {
        s += &row(format!("HTTP, {} clients (closed loop)", l.clients), &l.stats);
    }
    if let Some(ov) = &o.overload {
        s += &row(format!("overload server (queue {}), 1 client", ov.queue_capacity), &ov.unloaded);
        s += &row(format!("overload: {:.0}/s open loop, admitted", ov.rate), &ov.loaded);
        s += &format!(
            "| overload: refused ({:.1} %) | {:.2} | {:.2} | | {} | | |\n",
            ov.loaded.refused_fraction * 100.0,
            ov.loaded.refused_ms.p50,
            ov.loaded.refused_ms.p99,
            ov.loaded.refused
        );
    }
    let r = &o.ratios;
    let opt = |v: Option<f64>, digits: usize| v.map_or_else(|| "not run".to_string(), |v| format!("{v:.digits$}"));
    s += "\n| target | measured | goal |\n|---|---|---|\n";
    s += &format!("| P2: HTTP p50 at 1 client / in-process p50 | {:.2} | ≤ 1.2 |\n", r.http_p50_over_in_process);
    s += &format!(
        "| P2: QPS at 32 clients / encoder batch-{} throughput | {} | ≥ 0.9 |\n",
        o.settings.encoder_batch,
        opt(r.qps_32_over_encoder, 2)
    );
    s += &format!(
        "| P6: admitted p99 / unloaded p99 at 2× capacity | {} | ≤ 2 |\n",
        opt(r.admitted_p99_over_unloaded, 2)
    );
    s += &format!("| P6: refused p99 (ms) | {} | < 5 |\n", opt(r.refused_p99_ms, 2));
    s
}
