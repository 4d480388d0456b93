//! The `duet` command: parse the command line, set up logging once, and run the command (see [`cli`]).

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    cli.init_logging();
    cli.command.run().await
}
