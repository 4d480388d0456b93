//! `duet bench-replicas`: replication lag between two servers over one PostgreSQL store, and the import rate and
//! start-up time of a server over N stored vectors ([`duet::server::replica_bench`]); prints the figures.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use duet::config::ReplicationSettings;
use duet::server::replica_bench::{self, ReplicaBenchSettings};
use duet::store::PostgresSettings;

use super::write_json;

#[derive(ClapArgs)]
pub struct Args {
    /// A `postgres://` URL of an empty database: the benchmark writes documents to it.
    #[arg(long, env = "DUET_BENCH_STORE")]
    pub store: String,
    /// The model both servers serve in the lag phase.
    #[arg(long, env = "DUET_BENCH_LAG_MODEL", default_value = "models/tiny-encoder")]
    pub lag_model: PathBuf,
    /// Documents written to server A one at a time (0 skips the lag phase).
    #[arg(long, env = "DUET_BENCH_WRITES", default_value_t = 1000)]
    pub writes: usize,
    /// How often each server reads the change feed, in milliseconds.
    #[arg(long, env = "DUET_BENCH_POLL_MS", default_value_t = ReplicationSettings::default().poll_ms)]
    pub poll_ms: u64,
    /// The model whose stored vectors the start-up phase loads (e.g. models/minilm, 384 dimensions).
    #[arg(long, env = "DUET_BENCH_STARTUP_MODEL", default_value = "models/minilm")]
    pub startup_model: PathBuf,
    /// Documents with a stored vector for the start-up phase (0 skips it).
    #[arg(long, env = "DUET_BENCH_STARTUP_DOCUMENTS", default_value_t = 100_000)]
    pub startup_documents: usize,
    /// Another empty database for the start-up phase (default: --store; the lag phase's servers, still
    /// finishing their work, would otherwise see its documents).
    #[arg(long, env = "DUET_BENCH_STARTUP_STORE")]
    pub startup_store: Option<String>,
    /// Documents per import batch.
    #[arg(long, env = "DUET_BENCH_BATCH", default_value_t = 1000)]
    pub batch: usize,
    /// Path of libonnxruntime.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub onnxruntime: Option<PathBuf>,
    /// Also write the outcome as JSON here.
    #[arg(long, env = "DUET_BENCH_OUT")]
    pub out: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.store.starts_with("postgres"), "--store must be a postgres:// URL");
    let settings = ReplicaBenchSettings {
        store: args.store,
        postgres: PostgresSettings::default(),
        replication: ReplicationSettings { poll_ms: args.poll_ms, ..ReplicationSettings::default() },
        lag_model: args.lag_model,
        writes: args.writes,
        startup_model: args.startup_model,
        startup_documents: args.startup_documents,
        batch: args.batch,
        startup_store: args.startup_store,
        onnxruntime: args.onnxruntime,
    };
    let outcome = replica_bench::run(settings, |what| eprintln!("{what}")).await?;
    if let Some(l) = &outcome.lag {
        println!(
            "replication lag over {} writes (A acknowledged → B searches it), poll every {} ms: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (a write on A took {:.1} ms at p50)",
            l.writes, l.poll_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.write_ms_p50
        );
    }
    if let Some(s) = &outcome.startup {
        println!(
            "import: {} documents with a {}-dimension vector in {:.1} s = {:.0} documents/s",
            s.documents, s.dimension, s.import_seconds, s.import_per_second
        );
        println!(
            "start-up over {} stored vectors of {}: ready in {:.2} s (open {:.2} s, documents + vectors read and indexed {:.2} s; {} from the store, {} encoded)",
            s.documents, s.model, s.ready_seconds, s.open_seconds, s.prepare_seconds, s.from_store, s.encoded
        );
    }
    write_json(args.out.as_deref(), &outcome)?;
    Ok(())
}
