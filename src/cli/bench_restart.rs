//! `duet bench-restart`: fills a store with N documents and stored vectors, then times `duet serve` starts over
//! it and reads their memory ([`duet::server::restart_bench`]); `--fill-only` just fills a store.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;
use duet::server::restart_bench::{self, RestartBenchSettings};

use super::{write_json, RuntimeArgs};

#[derive(ClapArgs)]
pub struct Args {
    /// The model whose name, version and dimension the stored vectors get (default: models/minilm when it
    /// exists, else models/tiny-encoder).
    #[arg(long, env = "DUET_BENCH_MODEL")]
    pub model: Option<PathBuf>,
    /// Documents (each with a stored vector).
    #[arg(long, env = "DUET_BENCH_DOCUMENTS", default_value_t = 100_000)]
    pub documents: usize,
    /// Documents per store write.
    #[arg(long, env = "DUET_BENCH_BATCH", default_value_t = 2000)]
    pub batch: usize,
    /// Cluster centres of the synthetic vectors.
    #[arg(long, env = "DUET_BENCH_CLUSTERS", default_value_t = 100)]
    pub clusters: usize,
    /// Starts over the filled store.
    #[arg(long, env = "DUET_BENCH_STARTS", default_value_t = 2)]
    pub starts: usize,
    /// Seconds a start may take to be ready, and again to have its graph.
    #[arg(long, env = "DUET_BENCH_TIMEOUT", default_value_t = 1800.0)]
    pub timeout: f64,
    /// The duet binary spawned as `duet serve` (default: this one).
    #[arg(long, env = "DUET_BIN")]
    pub binary: Option<PathBuf>,
    /// Folder for the stores and the servers' logs (default: a temporary folder, removed at the end).
    #[arg(long, env = "DUET_BENCH_WORK")]
    pub work: Option<PathBuf>,
    /// Only fill this SQLite store (created) and stop: a store for other experiments.
    #[arg(long, env = "DUET_BENCH_FILL_ONLY")]
    pub fill_only: Option<PathBuf>,
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
    anyhow::ensure!(args.documents > 0 && args.batch > 0 && args.timeout > 0.0, "counts must be positive");
    let model = args.model.unwrap_or_else(|| {
        let minilm = PathBuf::from("models/minilm");
        if minilm.join("model.toml").exists() {
            minilm
        } else {
            PathBuf::from("models/tiny-encoder")
        }
    });
    if let Some(store) = &args.fill_only {
        let fill =
            restart_bench::fill(store, &model, args.runtime.onnxruntime, args.documents, args.batch, args.clusters)
                .await?;
        println!(
            "filled {} with {} documents and {}-d vectors of {} {} in {:.1} s ({:.0} documents/s)",
            store.display(),
            fill.documents,
            fill.dimension,
            fill.model,
            fill.version,
            fill.seconds,
            fill.per_second
        );
        return Ok(());
    }
    let binary = match args.binary {
        Some(path) => path,
        None => std::env::current_exe()?,
    };
    let (work_dir, temporary) = match args.work {
        Some(dir) => (dir, false),
        None => (std::env::temp_dir().join(format!("duet-bench-restart-{}", uuid::Uuid::new_v4())), true),
    };
    let settings = RestartBenchSettings {
        binary,
        model,
        documents: args.documents,
        batch: args.batch,
        clusters: args.clusters,
        starts: args.starts,
        timeout: Duration::from_secs_f64(args.timeout),
        onnxruntime: args.runtime.onnxruntime,
        work_dir: work_dir.clone(),
    };
    let outcome = restart_bench::run(settings, |what| eprintln!("{what}")).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    let outcome = outcome?;
    let table = restart_bench::markdown(&outcome);
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
