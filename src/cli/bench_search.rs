//! `duet bench-search`: `/v1/search` under concurrent clients against the same engine in process, and an
//! open-loop overload ([`duet::server::load_bench`]); prints the Markdown table and writes it and the JSON.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;
use duet::server::load_bench::{self, LoadBenchSettings};

use super::{write_json, RuntimeArgs};

#[derive(ClapArgs)]
pub struct Args {
    /// Model folders served (the first is searched; default: models/minilm when it exists, else
    /// models/tiny-encoder).
    #[arg(long = "model", env = "DUET_BENCH_MODELS", value_delimiter = ',')]
    pub models: Vec<PathBuf>,
    /// JSONL corpus ({"id","text"} per line); its first --documents lines are imported.
    #[arg(long, env = "DUET_BENCH_CORPUS", default_value = "examples/corpus.jsonl")]
    pub corpus: PathBuf,
    /// Documents imported.
    #[arg(long, env = "DUET_BENCH_DOCUMENTS", default_value_t = 2000)]
    pub documents: usize,
    /// Query texts: JSONL with a `query` (or `text`) field, or plain lines (default: the corpus texts).
    #[arg(long, env = "DUET_BENCH_QUERIES")]
    pub queries: Option<PathBuf>,
    /// Query texts are cut to this many characters.
    #[arg(long, env = "DUET_BENCH_QUERY_CHARS", default_value_t = 200)]
    pub query_chars: usize,
    /// Concurrent clients of each closed-loop level.
    #[arg(long, env = "DUET_BENCH_LEVELS", value_delimiter = ',', default_value = "1,8,32,128")]
    pub levels: Vec<usize>,
    /// Seconds each level (and each baseline) is measured.
    #[arg(long, env = "DUET_BENCH_SECONDS", default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of warm-up before each level.
    #[arg(long, env = "DUET_BENCH_WARMUP", default_value_t = 1.0)]
    pub warmup: f64,
    /// Texts per call of the encoder-throughput baseline.
    #[arg(long, env = "DUET_BENCH_ENCODER_BATCH", default_value_t = 32)]
    pub encoder_batch: usize,
    /// Seconds of the open-loop overload (0 skips it).
    #[arg(long, env = "DUET_BENCH_OVERLOAD_SECONDS", default_value_t = 10.0)]
    pub overload_seconds: f64,
    /// Overload arrival rate as a multiple of the best closed-loop QPS.
    #[arg(long, env = "DUET_BENCH_OVERLOAD_FACTOR", default_value_t = 2.0)]
    pub overload_factor: f64,
    /// The overload server's encoding queue capacity.
    #[arg(long, env = "DUET_BENCH_OVERLOAD_QUEUE", default_value_t = 32)]
    pub overload_queue: usize,
    /// Results per search.
    #[arg(long, env = "DUET_BENCH_K", default_value_t = 10)]
    pub k: usize,
    /// ONNX Runtime intra-op threads per session (default: the server's default).
    #[arg(long, env = "DUET_BENCH_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// Write the outcome as JSON here.
    #[arg(long, env = "DUET_BENCH_JSON")]
    pub json: Option<PathBuf>,
    /// Write the Markdown table here.
    #[arg(long, env = "DUET_BENCH_MARKDOWN")]
    pub markdown: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0.0 && args.warmup >= 0.0, "--seconds must be positive");
    anyhow::ensure!(args.overload_seconds >= 0.0 && args.overload_factor > 0.0, "--overload-* must be positive");
    anyhow::ensure!(args.k > 0 && args.encoder_batch > 0 && args.overload_queue > 0, "counts must be positive");
    let models = if args.models.is_empty() {
        let minilm = PathBuf::from("models/minilm");
        vec![if minilm.join("model.toml").exists() { minilm } else { PathBuf::from("models/tiny-encoder") }]
    } else {
        args.models
    };
    let work_dir = std::env::temp_dir().join(format!("duet-bench-search-{}", uuid::Uuid::new_v4()));
    let settings = LoadBenchSettings {
        models,
        corpus: args.corpus,
        documents: args.documents,
        queries: args.queries,
        query_chars: args.query_chars,
        levels: args.levels,
        warmup: Duration::from_secs_f64(args.warmup),
        window: Duration::from_secs_f64(args.seconds),
        encoder_batch: args.encoder_batch,
        overload_window: Duration::from_secs_f64(args.overload_seconds),
        overload_factor: args.overload_factor,
        overload_queue_capacity: args.overload_queue,
        k: args.k,
        intra_threads: args.intra_threads,
        onnxruntime: args.runtime.onnxruntime,
        work_dir: work_dir.clone(),
    };
    let outcome = load_bench::run(settings, |what| eprintln!("{what}")).await;
    let _ = std::fs::remove_dir_all(&work_dir);
    let outcome = outcome?;
    let table = load_bench::markdown(&outcome);
    println!("{table}");
    if let Some(path) = &args.markdown {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, &table)?;
    }
    write_json(args.json.as_deref(), &outcome)?;
    Ok(())
}
