//! `duet bench-encode`: one model's encoding throughput ([`duet::encoder::bench`]).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use duet::encoder::bench::{bench_encode, BenchOptions, BenchPath};
use duet::encoder::{Device, Side};

use super::RuntimeArgs;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SideArg {
    Query,
    Document,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PathArg {
    /// The encoder in batches of --batch texts.
    Direct,
    /// One background request through the encoding queue and its bulk session (what an import gets).
    Queue,
}

#[derive(ClapArgs)]
pub struct Args {
    /// Model folder (holding model.toml).
    #[arg(long, env = "DUET_BENCH_MODEL")]
    pub model: PathBuf,
    /// JSONL corpus ({"id","text"} per line); the first --limit documents are encoded.
    #[arg(long, env = "DUET_BENCH_CORPUS")]
    pub corpus: PathBuf,
    /// Documents encoded.
    #[arg(long, env = "DUET_BENCH_LIMIT", default_value_t = 256)]
    pub limit: usize,
    /// Texts per inference call.
    #[arg(long, env = "DUET_BENCH_BATCH", default_value_t = 32)]
    pub batch: usize,
    /// ONNX Runtime intra-op threads.
    #[arg(long, env = "DUET_BENCH_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// Most padded tokens per inference call on the queue path.
    #[arg(long, env = "DUET_BENCH_MAX_BATCH_TOKENS", default_value_t = 8192)]
    pub max_batch_tokens: usize,
    /// Keep the corpus order instead of sorting the texts by length (to compare).
    #[arg(long, env = "DUET_BENCH_CORPUS_ORDER")]
    pub corpus_order: bool,
    /// Which way texts reach the network.
    #[arg(long, env = "DUET_BENCH_PATH", value_enum, default_value = "direct")]
    pub path: PathArg,
    /// Texts encoded one at a time for the batch-1 latency (0: not measured).
    #[arg(long, env = "DUET_BENCH_LATENCY_SAMPLES", default_value_t = 32)]
    pub latency_samples: usize,
    /// Print the report as JSON.
    #[arg(long, env = "DUET_BENCH_JSON")]
    pub json: bool,
    /// Which side (tower or prefix) to encode with.
    #[arg(long, env = "DUET_BENCH_SIDE", value_enum, default_value = "document")]
    pub side: SideArg,
    /// Where the model runs: cpu, cuda or auto (as `[encoder] device`).
    #[arg(long, env = "DUET_BENCH_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// Also write the texts as the network sees them (framed with the model's prompt for --side, in the order
    /// they are encoded), one JSON object per line with their token count: what a raw ONNX Runtime run is
    /// given to encode the same texts (scripts/bench-encode).
    #[arg(long, env = "DUET_BENCH_DUMP_FRAMED")]
    pub dump_framed: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let side = match args.side {
        SideArg::Query => Side::Query,
        SideArg::Document => Side::Document,
    };
    let report = bench_encode(&BenchOptions {
        model: args.model,
        corpus: args.corpus,
        limit: args.limit,
        batch: args.batch,
        max_batch_tokens: args.max_batch_tokens,
        threads: args.threads,
        side,
        corpus_order: args.corpus_order,
        path: match args.path {
            PathArg::Direct => BenchPath::Direct,
            PathArg::Queue => BenchPath::Queue,
        },
        latency_samples: args.latency_samples,
        onnxruntime: args.runtime.onnxruntime,
        device: args.device,
        dump_framed: args.dump_framed,
    })?;
    match args.json {
        true => println!("{}", serde_json::to_string(&report)?),
        false => println!("{report}"),
    }
    Ok(())
}
