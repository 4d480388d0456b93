//! The `duet` command line: the top-level parser, the flags several commands share, logging set-up, and the
//! terminal output helpers (progress bars, JSON files) every command uses. One file per command, each with its
//! clap `Args` and a `run()` that calls one library function and prints its result. It may use every library
//! module; nothing imports it.

pub mod bench;
pub mod bench_index;
pub mod bench_replicas;
pub mod bench_restart;
pub mod bench_search;
pub mod bench_store;
pub mod bench_swap;
#[cfg(feature = "offline-eval")]
pub mod eval;
pub mod import;
pub mod keys;
#[cfg(feature = "mine")]
pub mod mine;
pub mod serve;
pub mod simulate;
#[cfg(feature = "train")]
pub mod train;
pub mod verify;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "duet",
    version,
    about = "Serve a two-tower model and an LLM-embedding model side by side, and compare them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the configured models over HTTP.
    Serve(serve::Args),
    /// Make an API key: prints the key once, and the config entry with its salted hash.
    Keys(keys::Args),
    /// Import a JSONL corpus ({"id","text","metadata"?} per line) into the store, encoded by every model.
    Import(import::Args),
    /// Check a model folder against its reference vectors (reference.json): Duet's tokenizer, ONNX Runtime and
    /// pooling must reproduce them (cosine >= min_cosine), batched and one by one. A quantised variant (int8) is
    /// compared with its fp32 model on the same texts instead (cosine >= 0.99).
    Verify(verify::Args),
    /// Measure a model's encoding throughput on a corpus (documents per second, by batch size and threads).
    BenchEncode(bench::Args),
    /// Live search latency against a running server, idle versus during another model's back-fill, and across
    /// a replacement of the searched model by a new version (swap time, failed searches, versions seen).
    BenchSwap(bench_swap::Args),
    /// Replication lag between two servers over one PostgreSQL store, and start-up over N stored vectors.
    BenchReplicas(bench_replicas::Args),
    /// `/v1/search` from 1, 8, 32 and 128 concurrent clients against the same engine in process (p50 / p99 /
    /// QPS), and an open-loop overload at twice the capacity against a small encoding queue.
    BenchSearch(Box<bench_search::Args>),
    /// Restart time and memory of `duet serve` over N stored documents with their vectors (the store is filled
    /// first through the store API; nothing is encoded).
    BenchRestart(bench_restart::Args),
    /// On a PostgreSQL server: start-up load of stored vectors as bytea versus real[], and the bulk import rate
    /// of documents with embeddings through the store (in a database of its own, dropped at the end).
    BenchStore(bench_store::Args),
    /// The vector index's graph backends on the same vectors: build time, bytes per vector, recall@k and
    /// single-thread QPS at several ef (scripts/bench-index adds hnswlib side by side).
    BenchIndex(bench_index::Args),
    /// Score models on held-out pairs (recall@k, MRR@10, nDCG@10; exact and HNSW search) through the same
    /// engine the server uses; embeddings are cached in a store per data set and sample.
    #[cfg(feature = "offline-eval")]
    Eval(Box<eval::Args>),
    /// Mine (query, result) pairs from source code into corpus.jsonl, train.jsonl, test.jsonl and stats.json.
    #[cfg(feature = "mine")]
    #[command(subcommand)]
    Mine(mine::Command),
    /// Train a two-tower model on (query, result) pairs and write a model folder `duet serve` loads: query.onnx,
    /// document.onnx, tokenizer.json, model.toml, and report.json (validation recall@10 and MRR@10, speed).
    /// Hyper-parameters come from --config, then the flags below; the test split is never read.
    #[cfg(feature = "train")]
    Train(Box<train::Args>),
    /// Simulated users against a running server: replay held-out pairs under an experiment (clicks from a
    /// position-biased model sent as feedback), or measure how many impressions A/B and interleaving need.
    #[command(subcommand)]
    Simulate(simulate::Command),
}

impl Command {
    /// The log filter a command uses when `--log` is not given: the server's progress for `serve` and
    /// `import`, warnings only for the offline commands (whose output is their report).
    fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Serve(_) | Command::Import(_) => "info,ort=warn",
            Command::Keys(_)
            | Command::Verify(_)
            | Command::BenchEncode(_)
            | Command::BenchSwap(_)
            | Command::BenchReplicas(_)
            | Command::BenchRestart(_)
            | Command::BenchIndex(_)
            | Command::Simulate(_) => "warn",
            // The server runs in process: its log of every refused (503) request would cost more than the refusal.
            Command::BenchSearch(_) => "warn,tower_http=off",
            // The benchmark's own statements are slow by design: sqlx's slow-statement warnings would bury it.
            Command::BenchStore(_) => "warn,sqlx::query=error",
            #[cfg(feature = "offline-eval")]
            Command::Eval(_) => "warn",
            #[cfg(feature = "mine")]
            Command::Mine(_) => "warn",
            #[cfg(feature = "train")]
            Command::Train(_) => "warn",
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Serve(args) => serve::run(args).await,
            Command::Keys(args) => keys::run(args),
            Command::Import(args) => import::run(args).await,
            Command::Verify(args) => verify::run(args),
            Command::BenchEncode(args) => bench::run(args),
            Command::BenchSwap(args) => bench_swap::run(args).await,
            Command::BenchReplicas(args) => bench_replicas::run(args).await,
            Command::BenchSearch(args) => bench_search::run(*args).await,
            Command::BenchRestart(args) => bench_restart::run(args).await,
            Command::BenchStore(args) => bench_store::run(args).await,
            Command::BenchIndex(args) => bench_index::run(args),
            #[cfg(feature = "offline-eval")]
            Command::Eval(args) => eval::run(*args).await,
            #[cfg(feature = "mine")]
            Command::Mine(command) => mine::run(command),
            #[cfg(feature = "train")]
            Command::Train(args) => train::run(*args),
            Command::Simulate(command) => simulate::run(command).await,
        }
    }
}

/// The log filter, accepted by every command.
#[derive(Args)]
pub struct LogArgs {
    /// Log filter, e.g. `info` or `duet=debug,tower_http=debug` (default: `info,ort=warn` for serve and import,
    /// `warn` for the other commands).
    #[arg(long, env = "DUET_LOG", global = true)]
    pub log: Option<String>,
    /// Log line format: `text` (for a terminal) or `json` (one JSON object per line, for log shippers; each
    /// line within a request lists its spans, the first being `request` with its `request_id`).
    #[arg(long, env = "DUET_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// Sets up logging once, for every command; an invalid filter falls back to `info`.
    pub fn init_logging(&self) {
        let filter = self.log.log.as_deref().unwrap_or_else(|| self.command.default_log_filter());
        let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
        match self.log.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().with_current_span(false).with_span_list(true).init(),
        }
    }
}

/// Where ONNX Runtime comes from, for the commands that load models.
#[derive(Args, Clone)]
pub struct RuntimeArgs {
    /// Path of libonnxruntime (after ORT_DYLIB_PATH; default: the project's .venv).
    #[arg(long, env = "DUET_ONNXRUNTIME")]
    pub onnxruntime: Option<PathBuf>,
}

/// A progress bar over `len` items named `what`, with rate and ETA.
pub fn progress_bar(len: usize, what: &str) -> ProgressBar {
    bar(len as u64, &format!("{{bar:40}} {{pos}}/{{len}} {what} {{per_sec}} eta {{eta}}"))
}

/// A progress bar with the given indicatif template.
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}

/// Writes `value` as pretty JSON to `path` (creating its folder), when a path is given.
pub fn write_json(path: Option<&Path>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(value)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
