//! `duet bench-encode`: one model's encoding throughput ([`duet::encoder::bench`]).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use duet::encoder::bench::{bench_encode, BenchOptions};
use duet::encoder::Side;

use super::RuntimeArgs;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SideArg {
    Query,
    Document,
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
    /// Which side (tower or prefix) to encode with.
    #[arg(long, env = "DUET_BENCH_SIDE", value_enum, default_value = "document")]
    pub side: SideArg,
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
        threads: args.threads,
        side,
        onnxruntime: args.runtime.onnxruntime,
    })?;
    println!("{report}");
    Ok(())
}
