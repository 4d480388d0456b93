//! Configuration: the `duet.toml` file, with command-line flags and `DUET_*` environment variables on top.
//! Relative paths in the file are relative to the file's folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::{AuthError, AuthSettings};
use crate::encoder::onnx::SessionOptions;
use crate::encoder::queue::QueueOptions;
use crate::encoder::Device;
use crate::index::IndexParams;
use crate::store::{PostgresSettings, StoreLocation};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] crate::util::fs::FileError),
    #[error("invalid config {path}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The store: an SQLite database file (the embedded default), or a `postgres://` URL shared by replicas.
    #[serde(default = "default_store")]
    pub store: StoreLocation,
    /// PostgreSQL connection settings (`[postgres]`), when `store` is a `postgres://` URL.
    #[serde(default)]
    pub postgres: PostgresSettings,
    /// How this server follows the changes other servers over the same store make (`[replication]`).
    #[serde(default)]
    pub replication: ReplicationSettings,
    /// Path of libonnxruntime (after `ORT_DYLIB_PATH`, before the project's .venv).
    #[serde(default)]
    pub onnxruntime: Option<PathBuf>,
    /// A JSONL corpus imported at start-up (unchanged documents are skipped).
    #[serde(default)]
    pub import: Option<PathBuf>,
    /// Model used when a request names none (default: the first `[[models]]` entry).
    #[serde(default)]
    pub default_model: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Defaults for every model's encoding queue and sessions.
    #[serde(default)]
    pub encoder: EncoderSettings,
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    /// The only folder under which `POST /v1/models` and `PUT /v1/models/{name}` may load models (relative
    /// paths in those requests are relative to it). The `[[models]]` entries of this file are not restricted.
    #[serde(default = "default_models_dir")]
    pub models_dir: PathBuf,
    /// Model changes at run time: back-fill pace, draining, retention of retired versions (`[lifecycle]`).
    #[serde(default)]
    pub lifecycle: LifecycleSettings,
    /// The file this config was read from (re-read on SIGHUP); not a key of the file.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The exposure log and shadow searches of live experiments.
    #[serde(default)]
    pub experiments: ExperimentSettings,
    /// Evaluation jobs (`POST /v1/eval` with more than 100 pairs).
    #[serde(default)]
    pub eval: EvalSettings,
    /// Connections: their number, their timeouts, and the shutdown deadline.
    #[serde(default)]
    pub http: HttpSettings,
    /// API keys, open operational endpoints, the Host allow-list and CORS (`[auth]`).
    #[serde(default)]
    pub auth: AuthSettings,
    /// Graph snapshots (`[index]`).
    #[serde(default)]
    pub index: IndexSettings,
}

/// Graph snapshots (`[index]`): each model's graph is saved after it is built and at shutdown, and loaded at
/// start-up when it still matches the store (else rebuilt).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexSettings {
    /// Whether snapshots are written and loaded.
    pub snapshots: bool,
    /// Where they live (default: `<SQLite file>.snapshots` beside the database; none for PostgreSQL unless set).
    pub snapshot_dir: Option<PathBuf>,
}

impl Default for IndexSettings {
    fn default() -> Self {
        Self { snapshots: true, snapshot_dir: None }
    }
}

impl Config {
    /// The folder graph snapshots are written to and read from, if any.
    pub fn snapshot_dir(&self) -> Option<PathBuf> {
        if !self.index.snapshots {
            return None;
        }
        match (&self.index.snapshot_dir, &self.store) {
            (Some(dir), _) => Some(dir.clone()),
            (None, StoreLocation::Sqlite(path)) => {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                Some(path.with_file_name(format!("{name}.snapshots")))
            }
            (None, _) => None,
        }
    }
}

/// Following the change feed of a shared store (`[replication]`): documents, experiments and the default model
/// changed by another server over the same store are applied here within about `poll_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSettings {
    /// How often the change feed is read, in milliseconds (also how often the store's health is checked).
    pub poll_ms: u64,
    /// Changes older than this are deleted from the feed (a replica stopped for longer reloads at start-up
    /// anyway), in seconds.
    pub change_retention_secs: u64,
    /// With a PostgreSQL store: how long feedback for a request not logged yet waits for the server that served
    /// the search to write its exposure, in milliseconds, before it is refused as unknown (404).
    pub feedback_wait_ms: u64,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        Self { poll_ms: 200, change_retention_secs: 24 * 3600, feedback_wait_ms: 1000 }
    }
}

/// Model changes at run time (`[lifecycle]`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleSettings {
    /// Documents a back-fill encodes per batch (through the model's background lane, behind live queries).
    pub backfill_batch: usize,
    /// The share of time a back-fill may spend encoding, in (0, 1]: after each batch it pauses for
    /// (1 − duty) / duty times as long as the batch took, leaving the cores to live traffic.
    pub backfill_duty: f64,
    /// Seconds a replaced or retired version may finish the requests that hold it before it is let go.
    pub drain_secs: u64,
    /// Seconds the embeddings of a retired version are kept (so that a rollback needs no encoding); after
    /// that they are deleted and the version can no longer be rolled back to. Default 7 days.
    pub retention_secs: u64,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self { backfill_batch: 64, backfill_duty: 0.25, drain_secs: 30, retention_secs: 7 * 24 * 3600 }
    }
}

/// Bounds on evaluation jobs (`[eval]`): they run in the background, below live traffic.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSettings {
    /// Jobs queued or running at most; beyond it new ones are refused with 429.
    pub max_jobs: usize,
    /// Jobs running at once; the others wait, queued.
    pub concurrency: usize,
    /// Seconds a finished job's result stays available.
    pub job_ttl_secs: u64,
    /// Finished jobs kept at most; the oldest are forgotten first.
    pub kept_jobs: usize,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self { max_jobs: 8, concurrency: 1, job_ttl_secs: 3600, kept_jobs: 64 }
    }
}

/// Connection settings (`[http]`): how many, how long a slow or idle one may stay, and how long shutdown waits.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Connections open at once at most; beyond it new ones get a 503 and are closed at once (and counted).
    pub max_connections: usize,
    /// Once a request head has begun to arrive, it must be complete within this long, else the connection is
    /// closed (a slow-loris client).
    pub header_read_timeout_secs: u64,
    /// A connection is closed when it waits this long for a request without receiving a byte (a fresh
    /// connection or keep-alive between requests), or when a response write makes no progress for this long
    /// (a client that stopped reading).
    pub idle_timeout_secs: u64,
    /// On shutdown, the most time before the process exits: requests in flight get the first three quarters,
    /// writing the queued exposures and closing the store the rest. Idle and half-sent connections are closed
    /// at once.
    pub shutdown_grace_secs: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { max_connections: 1024, header_read_timeout_secs: 10, idle_timeout_secs: 60, shutdown_grace_secs: 20 }
    }
}

/// Settings of live experiments (`[experiments]`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentSettings {
    /// Exposure records waiting to be written at most; beyond it they are dropped (and counted) so that
    /// searches never wait for the store.
    pub exposure_queue: usize,
    /// Most exposure records written in one transaction.
    pub exposure_batch: usize,
    /// Shadow searches in flight at most; beyond it they are skipped (and counted).
    pub shadow_concurrency: usize,
}

impl Default for ExperimentSettings {
    fn default() -> Self {
        Self { exposure_queue: 10_000, exposure_batch: 256, shadow_concurrency: 8 }
    }
}

/// Request limits: anything beyond them is a client error (4xx), never a crash.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest query, in characters.
    pub max_query_chars: usize,
    /// Longest document text, in characters.
    pub max_document_chars: usize,
    /// Most documents in one upsert, and most texts in one embed call.
    pub max_batch: usize,
    /// Largest `k`.
    pub max_k: usize,
    /// Largest `ef` a request may ask for.
    pub max_ef: usize,
    /// Longest document id, in bytes.
    pub max_id_bytes: usize,
    /// Characters of document text returned as a result's snippet.
    pub snippet_chars: usize,
    /// Requests taking longer than this are answered 503.
    pub request_timeout_secs: u64,
    /// Longest request target (path and query), in bytes; longer is 414.
    pub max_uri_bytes: usize,
    /// Largest request header section (names, values and separators), in bytes; larger is 431.
    pub max_header_bytes: usize,
    /// Most heavy searches (`exact`, or `ef` above `heavy_ef_above`, on a model with an HNSW graph) running at
    /// once; beyond it they are refused with 503 and `Retry-After`. 0 refuses every heavy search.
    pub max_heavy_searches: usize,
    /// An `ef` above this makes a search heavy.
    pub heavy_ef_above: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            max_query_chars: 4096,
            max_document_chars: 100_000,
            max_batch: 256,
            max_k: 1000,
            max_ef: 4096,
            max_id_bytes: 256,
            snippet_chars: 300,
            request_timeout_secs: 60,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_heavy_searches: 4,
            heavy_ef_above: 512,
        }
    }
}

/// Encoding settings; `[encoder]` sets defaults, each `[[models]]` entry may override them.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderSettings {
    /// Most texts in one inference call.
    pub max_batch: usize,
    /// Most tokens in one inference call, padding included (longest text × texts); a longer text goes alone.
    pub max_batch_tokens: usize,
    /// Most texts waiting in a model's queue before new requests get 503.
    pub queue_capacity: usize,
    /// Most tokens waiting in a model's queue before new requests get 503.
    pub max_queued_tokens: usize,
    /// ONNX Runtime intra-op threads per live session.
    pub intra_threads: usize,
    /// Background work (import, back-fill, evaluation) on a session and thread of its own, built when it comes.
    pub bulk_session: bool,
    /// The bulk session's intra-op threads; 0 is every available core.
    pub bulk_threads: usize,
    /// The bulk session's ONNX Runtime memory arena (off: memory goes back after each batch).
    pub bulk_arena: bool,
    /// Search query vectors cached per model version (least recently used dropped first); 0 caches none.
    pub query_cache: usize,
    /// Where the model's sessions (live and bulk) run: `cpu` (default), `cuda` (ONNX Runtime's CUDA execution
    /// provider, or the model fails to load) or `auto` (CUDA when it registers, else the CPU with a warning).
    pub device: Device,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_batch_tokens: 8192,
            queue_capacity: 4096,
            max_queued_tokens: 262_144,
            intra_threads: 1,
            bulk_session: true,
            bulk_threads: 0,
            bulk_arena: false,
            query_cache: 1024,
            device: Device::Cpu,
        }
    }
}

impl EncoderSettings {
    pub fn queue(&self) -> QueueOptions {
        let bulk = SessionOptions {
            cpu_arena: self.bulk_arena,
            device: self.device,
            ..SessionOptions::bulk(self.bulk_threads)
        };
        QueueOptions {
            max_batch: self.max_batch,
            max_batch_tokens: self.max_batch_tokens,
            capacity: self.queue_capacity,
            max_queued_tokens: self.max_queued_tokens,
            session: self.session(),
            bulk: self.bulk_session.then_some(bulk),
            query_cache: self.query_cache,
        }
    }
    pub fn session(&self) -> SessionOptions {
        SessionOptions { intra_threads: self.intra_threads, device: self.device, ..SessionOptions::default() }
    }
}

/// One served model: its manifest folder and optional overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Folder holding `model.toml`.
    pub path: PathBuf,
    #[serde(default)]
    pub index: IndexParams,
    #[serde(default)]
    pub encoder: Option<EncoderSettings>,
    /// Which of the manifest's `[tasks]` frames the texts (default: the manifest's `task`). Its prompts are part
    /// of the model's version: changing it re-encodes the stored documents.
    #[serde(default)]
    pub task: Option<String>,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("valid default address")
}

fn default_models_dir() -> PathBuf {
    PathBuf::from("models")
}

fn default_store() -> StoreLocation {
    StoreLocation::Sqlite(PathBuf::from("duet.db"))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            store: default_store(),
            postgres: PostgresSettings::default(),
            replication: ReplicationSettings::default(),
            onnxruntime: None,
            import: None,
            default_model: None,
            limits: Limits::default(),
            encoder: EncoderSettings::default(),
            models: Vec::new(),
            models_dir: default_models_dir(),
            lifecycle: LifecycleSettings::default(),
            source: None,
            experiments: ExperimentSettings::default(),
            eval: EvalSettings::default(),
            http: HttpSettings::default(),
            auth: AuthSettings::default(),
            index: IndexSettings::default(),
        }
    }
}

impl Config {
    /// Reads a config file, resolving its relative paths against the file's folder.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::util::fs::read_to_string(path)?;
        let mut config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let StoreLocation::Sqlite(path) = &mut config.store {
            resolve(path);
        }
        resolve(&mut config.models_dir);
        if let Some(p) = config.index.snapshot_dir.as_mut() {
            resolve(p);
        }
        config.source = Some(path.to_path_buf());
        if let Some(p) = config.onnxruntime.as_mut() {
            resolve(p);
        }
        if let Some(p) = config.import.as_mut() {
            resolve(p);
        }
        for model in &mut config.models {
            resolve(&mut model.path);
        }
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.models.is_empty() {
            return Err(ConfigError::Invalid("no models: add at least one [[models]] entry with a `path`".into()));
        }
        let l = &self.limits;
        if l.max_k == 0
            || l.max_batch == 0
            || l.max_query_chars == 0
            || l.max_document_chars == 0
            || l.max_body_bytes < 1024
        {
            return Err(ConfigError::Invalid("limits must be positive (and max_body_bytes at least 1024)".into()));
        }
        if l.max_uri_bytes < 256 || l.max_header_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_uri_bytes must be at least 256 and max_header_bytes at least 1024".into(),
            ));
        }
        let h = &self.http;
        if h.max_connections == 0
            || h.header_read_timeout_secs == 0
            || h.idle_timeout_secs == 0
            || h.shutdown_grace_secs == 0
        {
            return Err(ConfigError::Invalid(
                "[http] max_connections, header_read_timeout_secs, idle_timeout_secs and shutdown_grace_secs must \
                 be positive"
                    .into(),
            ));
        }
        let e = &self.experiments;
        if e.exposure_queue == 0 || e.exposure_batch == 0 || e.shadow_concurrency == 0 {
            return Err(ConfigError::Invalid(
                "[experiments] exposure_queue, exposure_batch and shadow_concurrency must be positive".into(),
            ));
        }
        let v = &self.eval;
        if v.max_jobs == 0 || v.concurrency == 0 || v.kept_jobs == 0 {
            return Err(ConfigError::Invalid("[eval] max_jobs, concurrency and kept_jobs must be positive".into()));
        }
        let c = &self.lifecycle;
        if c.backfill_batch == 0 || !(c.backfill_duty > 0.0 && c.backfill_duty <= 1.0) {
            return Err(ConfigError::Invalid(
                "[lifecycle] backfill_batch must be positive and backfill_duty in (0, 1]".into(),
            ));
        }
        self.auth.validate(self.listen)?;
        for m in &self.models {
            if let Some(problem) = m.index.problem() {
                return Err(ConfigError::Invalid(format!("{}: {problem}", m.path.display())));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_config_folder_and_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duet.toml");
        std::fs::write(
            &path,
            "store = 'data/duet.db'\n[limits]\nmax_k = 50\n[[models]]\npath = 'models/a'\n[models.index]\nef_search = 99\n",
        )
        .unwrap();
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config.store, StoreLocation::Sqlite(dir.path().join("data/duet.db")));
        assert_eq!(config.models[0].path, dir.path().join("models/a"));
        assert_eq!(config.models[0].index.ef_search, 99);
        assert_eq!(config.models[0].index.m, IndexParams::default().m);
        assert_eq!(config.limits.max_k, 50);
        assert_eq!(config.limits.max_batch, Limits::default().max_batch);
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        config.validate().unwrap();
    }

    #[test]
    fn the_shipped_configs_parse_and_the_example_shows_the_defaults() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let example = Config::from_file(&root.join("examples/tiny.toml")).unwrap();
        example.validate().unwrap();
        assert_eq!(example.limits, Limits::default());
        assert_eq!(example.experiments, ExperimentSettings::default());
        assert_eq!(example.eval, EvalSettings::default());
        assert_eq!(example.http, HttpSettings::default());
        assert_eq!(example.auth, AuthSettings::default());
        assert_eq!(example.lifecycle, LifecycleSettings::default());
        Config::from_file(&root.join("duet.toml")).unwrap().validate().unwrap();
        let mut zero = example;
        zero.experiments.exposure_queue = 0;
        assert!(zero.validate().unwrap_err().to_string().contains("exposure_queue"));
    }

    #[test]
    fn unknown_keys_and_empty_model_lists_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duet.toml");
        std::fs::write(&path, "lisen = '0.0.0.0:1'\n").unwrap();
        assert!(crate::util::error_chain(&Config::from_file(&path).unwrap_err()).contains("lisen"));
        std::fs::write(&path, "").unwrap();
        assert!(Config::from_file(&path).unwrap().validate().unwrap_err().to_string().contains("no models"));
    }
}
