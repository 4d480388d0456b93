//! `duet bench-store`: on a PostgreSQL server, the start-up load of stored vectors as `bytea` versus `real[]`
//! and the bulk import rate through the store ([`duet::store::postgres::bench`]); prints the figures. It works
//! in a database of its own, created for the run and dropped at its end.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use duet::store::postgres::bench::{self, StoreBench, StoreBenchSettings};
use duet::store::{PostgresSettings, StoreLocation};

use super::write_json;

#[derive(ClapArgs)]
pub struct Args {
    /// The PostgreSQL server, as a postgres:// URL (its user must be allowed to create databases).
    #[arg(long, env = "DUET_STORE")]
    pub store: StoreLocation,
    /// Documents imported, each with one embedding.
    #[arg(long, env = "DUET_BENCH_DOCUMENTS", default_value_t = 50_000)]
    pub documents: usize,
    /// Vectors in each load table (bytea and real[]).
    #[arg(long, env = "DUET_BENCH_VECTORS", default_value_t = 100_000)]
    pub vectors: usize,
    /// Dimensions of every vector.
    #[arg(long, env = "DUET_BENCH_DIMENSION", default_value_t = 384)]
    pub dimension: usize,
    /// Documents per upsert call.
    #[arg(long, env = "DUET_BENCH_BATCH", default_value_t = 500)]
    pub batch: usize,
    /// Loads of each table (the median is reported).
    #[arg(long, env = "DUET_BENCH_REPEATS", default_value_t = 3)]
    pub repeats: usize,
    /// Also write the figures as JSON here.
    #[arg(long, env = "DUET_BENCH_OUT")]
    pub out: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let StoreLocation::Postgres(url) = &args.store else {
        anyhow::bail!("--store must be a postgres:// URL (bench-store measures PostgreSQL)");
    };
    anyhow::ensure!(
        args.dimension > 0 && args.batch > 0 && args.repeats > 0,
        "--dimension, --batch and --repeats must be positive"
    );
    anyhow::ensure!(args.documents > 0 && args.vectors > 0, "--documents and --vectors must be positive");
    let settings = StoreBenchSettings {
        documents: args.documents,
        vectors: args.vectors,
        dimension: args.dimension,
        batch: args.batch,
        repeats: args.repeats,
    };
    let outcome = bench::run(url, &PostgresSettings::default(), &settings, |what| eprintln!("{what}")).await?;
    print_outcome(&outcome);
    write_json(args.out.as_deref(), &outcome)?;
    Ok(())
}

fn print_outcome(o: &StoreBench) {
    let s = &o.settings;
    println!("{}", o.server_version);
    println!(
        "load of {} × {} vectors (query, transfer, decoding into Vec<f32>; median of {}):",
        s.vectors, s.dimension, s.repeats
    );
    println!("| format | median s | vectors/s | each run s | table MiB |");
    println!("|---|---|---|---|---|");
    for l in &o.loads {
        let runs: Vec<String> = l.seconds.iter().map(|x| format!("{x:.3}")).collect();
        println!(
            "| {} | {:.3} | {:.0} | {} | {:.1} |",
            l.format,
            l.median_seconds,
            l.vectors_per_second,
            runs.join(", "),
            l.table_mib
        );
    }
    let i = &o.import;
    println!(
        "import of {} documents with one {}-dimension embedding each, {} per upsert: {:.1} s = {:.0} documents/s; \
         reading the {} embeddings back (Store::embeddings): {:.3} s",
        i.documents, s.dimension, i.batch, i.seconds, i.documents_per_second, i.documents, i.embeddings_load_seconds
    );
}
