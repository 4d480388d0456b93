//! `duet keys`: make a fresh API key (256 bits from the OS random generator) and print it once, with the
//! `[[auth.keys]]` entry and the `DUET_API_KEYS` entry that configure its salted hash. The key itself is stored
//! nowhere.

use std::collections::BTreeSet;

use clap::Args as ClapArgs;
use duet::auth::{keys, Scope};

#[derive(ClapArgs)]
pub struct Args {
    /// The key's name, shown in logs and 403 messages (letters, digits, `-`, `_`, `.`).
    #[arg(long, env = "DUET_KEY_NAME")]
    pub name: String,
    /// Scopes the key holds, repeated or comma-separated: search (searches, embeddings, feedback, reads), write
    /// (documents), admin (experiments, evaluation runs; implies the other two).
    #[arg(long = "scope", env = "DUET_KEY_SCOPES", value_delimiter = ',', required = true)]
    pub scopes: Vec<Scope>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let scopes: BTreeSet<Scope> = args.scopes.into_iter().collect();
    let (key, entry) = keys::generate(&args.name, scopes)?;
    print!("{}", render(&key, &entry));
    Ok(())
}

/// What `duet keys` prints: the key, then where its entry goes.
fn render(key: &str, entry: &keys::KeyEntry) -> String {
    format!(
        "# API key `{name}`. It is shown only now: Duet keeps only its salted hash. Send it as\n\
         # `Authorization: Bearer <key>`.\n\
         key = \"{key}\"\n\
         \n\
         # For the config file (duet.toml):\n\
         {toml}\n\
         # Or in the environment (several entries: comma-separated):\n\
         # DUET_API_KEYS={compact}\n",
        name = entry.name,
        toml = entry.to_toml(),
        compact = entry.to_compact(),
    )
}
