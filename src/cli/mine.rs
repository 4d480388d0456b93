//! `duet mine`: (query, result) pairs mined from source code ([`duet::mine`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand};

#[derive(Subcommand)]
pub enum Command {
    /// Documented Python functions: first docstring paragraph → the function's code without its docstring,
    /// split into train/test by source file.
    PythonDocstrings(PythonArgs),
}

#[derive(ClapArgs)]
pub struct PythonArgs {
    /// Folder of Python sources (default: this machine's Python standard library).
    #[arg(long, env = "DUET_MINE_SRC")]
    pub src: Option<PathBuf>,
    /// Output folder.
    #[arg(long, env = "DUET_MINE_OUT")]
    pub out: PathBuf,
    /// Seed of the train/test split.
    #[arg(long, env = "DUET_MINE_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Share of source files in the test split.
    #[arg(long, env = "DUET_MINE_TEST_FRACTION", default_value_t = 0.1)]
    pub test_fraction: f64,
    /// Keep functions that look like tests (test_* names, files under test/ or tests/).
    #[arg(long, env = "DUET_MINE_KEEP_TESTS")]
    pub keep_tests: bool,
    /// Keep at most this many documents (a seeded sample, with their pairs).
    #[arg(long, env = "DUET_MINE_MAX_DOCUMENTS")]
    pub max_documents: Option<usize>,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let Command::PythonDocstrings(args) = command;
    let src = match args.src {
        Some(src) => src,
        None => duet::mine::default_python_source()
            .context("no --src given and python3's standard library was not found")?,
    };
    let options = duet::mine::MineOptions {
        seed: args.seed,
        test_fraction: args.test_fraction,
        skip_tests: !args.keep_tests,
        max_documents: args.max_documents,
        ..Default::default()
    };
    let bar = super::bar(0, "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} files");
    let stats = duet::mine::mine_python_docstrings(&src, &args.out, &options, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish();
    eprintln!("mined {} from {}", args.out.display(), src.display());
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}
