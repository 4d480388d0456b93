//! `duet verify`: a model folder against its reference vectors ([`duet::encoder::verify`]).

use std::path::PathBuf;

use clap::Args as ClapArgs;

use super::RuntimeArgs;

#[derive(ClapArgs)]
pub struct Args {
    /// Model folder (holding model.toml and reference.json).
    #[arg(long, env = "DUET_VERIFY_MODEL")]
    pub model: PathBuf,
    /// Reference file (default: <model>/reference.json).
    #[arg(long, env = "DUET_REFERENCE")]
    pub reference: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let report =
        duet::encoder::verify::verify(&args.model, args.reference.as_deref(), args.runtime.onnxruntime.as_deref())
            .map_err(|e| anyhow::anyhow!(e))?;
    print!("{report}");
    anyhow::ensure!(report.passed, "{}: Duet's vectors do not match the reference", report.model);
    Ok(())
}
