//! PostgreSQL for the integration tests: [`fresh_database`] gives each test a brand-new empty database on the
//! server named by `DUET_TEST_POSTGRES` (scripts/test starts a throw-away cluster and sets it) or, when that is
//! unset, on one throw-away cluster started for the whole test process through scripts/pg-cluster and stopped
//! when the process exits. [`PgCluster`] is a cluster of a test's own, for tests that stop and restart the server
//! under a running Duet. A missing PostgreSQL installation fails the test with a message; it never skips it.
//! The helpers that shell out are synchronous and short: tokio tests call them directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sqlx::{Connection, Executor, PgConnection};

fn script() -> PathBuf {
    super::repo().join("scripts").join("pg-cluster")
}

/// Runs `scripts/pg-cluster ACTION DIR` and returns what it printed (the URL, for `start`); panics with its
/// message when it fails (no PostgreSQL installed: "run scripts/setup --test").
fn pg_cluster(action: &str, dir: &Path) -> String {
    let output = Command::new(script())
        .arg(action)
        .arg(dir)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", script().display()));
    if !output.status.success() {
        panic!(
            "scripts/pg-cluster {action} {} failed ({}): {}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).expect("scripts/pg-cluster prints UTF-8").trim().to_string()
}

/// A new temporary folder for a cluster (the script hands it to the server's user).
fn cluster_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("duet-pg-").tempdir().expect("a temporary folder for PostgreSQL")
}

/// The cluster this process started because `DUET_TEST_POSTGRES` was unset.
struct Shared {
    dir: PathBuf,
    url: String,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

extern "C" fn stop_shared_cluster() {
    if let Some(shared) = SHARED.get() {
        let _ = Command::new(script()).arg("stop").arg(&shared.dir).output();
        let _ = std::fs::remove_dir_all(&shared.dir);
    }
}

/// The URL of the test server (its `postgres` database): `DUET_TEST_POSTGRES`, or this process's own cluster,
/// started on first use.
pub fn server_url() -> String {
    if let Some(url) = std::env::var("DUET_TEST_POSTGRES").ok().filter(|url| !url.trim().is_empty()) {
        return url;
    }
    SHARED
        .get_or_init(|| {
            let dir = cluster_dir().keep();
            let url = std::panic::catch_unwind(|| pg_cluster("start", &dir)).unwrap_or_else(|panic| {
                let _ = std::fs::remove_dir_all(&dir);
                std::panic::resume_unwind(panic)
            });
            // SAFETY: registers a plain function with no captured state; it runs once, at process exit.
            let registered = unsafe { libc::atexit(stop_shared_cluster) };
            assert_eq!(registered, 0, "cannot register the PostgreSQL clean-up at exit");
            Shared { dir, url }
        })
        .url
        .clone()
}

/// `server` (a PostgreSQL URL) with its database replaced by `database`, its query string kept.
pub fn with_database(server: &str, database: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut url = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// Creates a new empty database on `server` and returns its URL. Its default collation is ICU `en-US` where the
/// server has ICU (PostgreSQL 15 and later), as production databases usually sort by language rules: a store
/// that leans on the default collation for its byte order of ids is caught.
pub async fn create_database(server: &str) -> String {
    let name = format!("duet_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(server)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to the test PostgreSQL server {server}: {err}"));
    let icu = format!("CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'");
    if conn.execute(icu.as_str()).await.is_err() {
        let plain = format!("CREATE DATABASE {name}");
        conn.execute(plain.as_str()).await.unwrap_or_else(|err| panic!("{plain} on {server}: {err}"));
    }
    let _ = conn.close().await;
    with_database(server, &name)
}

/// A brand-new empty database on the test server.
pub async fn fresh_database() -> String {
    create_database(&server_url()).await
}

/// A throw-away cluster of one test's own, in its own folder on its own port: stopped (and the folder removed)
/// when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    url: String,
}

impl PgCluster {
    pub fn start() -> Self {
        let dir = cluster_dir();
        let url = pg_cluster("start", dir.path());
        Self { dir, url }
    }

    /// Its `postgres` database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new empty database on it.
    pub async fn fresh_database(&self) -> String {
        create_database(&self.url).await
    }

    /// Stops the server (fast shutdown: open sessions are cut, committed data stays).
    pub fn stop(&self) {
        pg_cluster("stop", self.dir.path());
    }

    /// Starts the same cluster again, with its data, on the same port.
    pub fn start_again(&self) {
        let url = pg_cluster("start", self.dir.path());
        assert_eq!(url, self.url, "the cluster came back on another port");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).output();
    }
}
