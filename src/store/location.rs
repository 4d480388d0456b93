//! Where the store is, and opening it: a file path (or `sqlite://PATH`) is the embedded SQLite store; a
//! `postgres://` or `postgresql://` URL is PostgreSQL, with its connection settings (`[postgres]`). Any other
//! URL scheme is refused with a message naming the two that work, rather than taken for a file name.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{Store, StoreError};

/// The store a server or a command opens (`store` in the config, `--store`, `DUET_STORE`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StoreLocation {
    /// An SQLite database file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

/// Why a store location cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("store {given:?}: {reason}")]
pub struct BadLocation {
    pub given: String,
    pub reason: String,
}

impl FromStr for StoreLocation {
    type Err = BadLocation;

    fn from_str(given: &str) -> Result<Self, BadLocation> {
        let bad = |reason: String| BadLocation { given: redact(given), reason };
        if given.trim().is_empty() {
            return Err(bad("empty: give an SQLite file path or a postgres:// URL".into()));
        }
        let Some((scheme, rest)) =
            given.split_once("://").or_else(|| given.split_once(':').filter(|(s, _)| *s == "sqlite"))
        else {
            return Ok(Self::Sqlite(PathBuf::from(given)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => {
                let options = sqlx::postgres::PgConnectOptions::from_str(given)
                    .map_err(|e| bad(format!("not a valid PostgreSQL URL: {e}")))?;
                drop(options);
                Ok(Self::Postgres(given.to_string()))
            }
            "sqlite" if rest.is_empty() => Err(bad("the sqlite: URL names no file".into())),
            "sqlite" => Ok(Self::Sqlite(PathBuf::from(rest))),
            other if other.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) && !other.is_empty() => {
                Err(bad(format!(
                    "`{other}://` stores are not supported: use an SQLite file path (or sqlite://PATH) or a postgres:// URL"
                )))
            }
            // Something like `./a://b`: a path that happens to contain `://`.
            _ => Ok(Self::Sqlite(PathBuf::from(given))),
        }
    }
}

impl TryFrom<String> for StoreLocation {
    type Error = BadLocation;
    fn try_from(value: String) -> Result<Self, BadLocation> {
        value.parse()
    }
}

impl From<PathBuf> for StoreLocation {
    fn from(path: PathBuf) -> Self {
        Self::Sqlite(path)
    }
}

impl From<&std::path::Path> for StoreLocation {
    fn from(path: &std::path::Path) -> Self {
        Self::Sqlite(path.to_path_buf())
    }
}

/// A URL with its password replaced by `***`, for logs and messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// PostgreSQL connection settings (`[postgres]`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// Connections in the pool at most.
    pub pool_size: u32,
    /// Statements running longer are cancelled by the server (`statement_timeout`), in milliseconds.
    pub statement_timeout_ms: u64,
    /// How long a query waits for a connection (including connecting) before the store counts as unavailable
    /// and a write answers 503, in milliseconds.
    pub acquire_timeout_ms: u64,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self { pool_size: 8, statement_timeout_ms: 30_000, acquire_timeout_ms: 2_000 }
    }
}

/// Opens the store at a location, applying its pending migrations.
pub async fn open(location: &StoreLocation, postgres: &PostgresSettings) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
        StoreLocation::Postgres(url) => Arc::new(PgStore::connect(url, postgres).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_sqlite_and_postgres_urls_are_told_apart_and_other_schemes_refused() {
        assert_eq!("data/duet.db".parse::<StoreLocation>().unwrap(), StoreLocation::Sqlite("data/duet.db".into()));
        assert_eq!("sqlite://x/y.db".parse::<StoreLocation>().unwrap(), StoreLocation::Sqlite("x/y.db".into()));
        assert_eq!("sqlite:y.db".parse::<StoreLocation>().unwrap(), StoreLocation::Sqlite("y.db".into()));
        let pg = "postgres://duet:secret@db:5432/duet";
        assert_eq!(pg.parse::<StoreLocation>().unwrap(), StoreLocation::Postgres(pg.into()));
        assert!(matches!("postgresql://h/db".parse::<StoreLocation>().unwrap(), StoreLocation::Postgres(_)));
        for bad in ["mysql://h/db", "redis://h", "", "sqlite:"] {
            let err = bad.parse::<StoreLocation>().unwrap_err().to_string();
            assert!(
                err.contains("not supported") || err.contains("empty") || err.contains("names no file"),
                "{bad}: {err}"
            );
        }
        let err = "mysql://u:pw@h/db".parse::<StoreLocation>().unwrap_err().to_string();
        assert!(!err.contains("pw"), "the password is not repeated: {err}");
    }

    #[test]
    fn passwords_are_redacted_in_messages() {
        assert_eq!(redact("postgres://duet:secret@db:5432/duet?x=1"), "postgres://duet:***@db:5432/duet?x=1");
        assert_eq!(redact("postgres://db/duet"), "postgres://db/duet");
        assert_eq!(StoreLocation::Postgres("postgres://u:p@h/d".into()).to_string(), "postgres://u:***@h/d");
    }
}
