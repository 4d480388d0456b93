//! `duet import`: encode a JSONL corpus into the store with every configured model, with a progress bar.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args as ClapArgs;

use super::serve::ServerArgs;

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The JSONL corpus.
    #[arg(long, env = "DUET_CORPUS")]
    pub corpus: PathBuf,
    /// Documents per batch.
    #[arg(long, env = "DUET_BATCH", default_value_t = 64)]
    pub batch: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.server.config()?;
    config.validate()?;
    let engine = duet::engine::Engine::open(&config).await?;
    for prepared in engine.prepare_indexes().await? {
        eprintln!(
            "{}: {} embeddings from the store, {} documents encoded, {} unusable stored embeddings re-encoded \
             ({:.1} s)",
            prepared.model, prepared.from_store, prepared.encoded, prepared.reencoded, prepared.seconds
        );
    }
    let size = std::fs::metadata(&args.corpus).with_context(|| format!("reading {}", args.corpus.display()))?.len();
    let bar = super::bar(size, "{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg}");
    let report = duet::corpus::import_jsonl(&engine, &args.corpus, args.batch, |report, bytes| {
        bar.set_position(bytes);
        bar.set_message(report.progress());
    })
    .await?;
    bar.finish();
    for bad in &report.bad_lines {
        eprintln!("{}:{}: {}", args.corpus.display(), bad.line, bad.message);
    }
    println!("{}", serde_json::to_string(&report)?);
    engine.close().await;
    Ok(())
}
