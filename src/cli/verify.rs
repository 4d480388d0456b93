//! `duet verify`: a model folder against its reference vectors, or a quantised variant against its fp32 model
//! ([`duet::encoder::verify`]).

use std::path::PathBuf;

use clap::Args as ClapArgs;

use super::RuntimeArgs;

#[derive(ClapArgs)]
pub struct Args {
    /// Model folder (holding model.toml and reference.json; a quantised variant's model.toml names its fp32
    /// folder with `quantized_from`, and is compared with it, cosine floor 0.99).
    #[arg(long, env = "DUET_VERIFY_MODEL")]
    pub model: PathBuf,
    /// Reference file (default: <model>/reference.json; for a quantised variant without one, its fp32 model's).
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
    match report.failure() {
        None => Ok(()),
        Some(failure) => Err(anyhow::anyhow!(failure)),
    }
}
