//! `duet serve`: the server flags (shared with `import`), their overlay on the config file, and the command
//! itself — start the server and run until SIGINT or SIGTERM.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use duet::auth::KeyEntry;
use duet::config::{Config, ModelEntry};
use duet::encoder::Device;
use duet::store::StoreLocation;

use super::RuntimeArgs;

/// What `serve` and `import` share: the config file, the store and the models, each a flag and an environment
/// variable that override the config file.
#[derive(ClapArgs)]
pub struct ServerArgs {
    /// Config file (TOML); see examples/tiny.toml.
    #[arg(long, env = "DUET_CONFIG")]
    pub config: Option<PathBuf>,
    /// The store (overrides the config's `store`): an SQLite file path, or a `postgres://user:password@host/db`
    /// URL shared by replicas. Other URL schemes are refused.
    // Read as text and parsed in `config()`, so that a refused URL is never echoed with its password.
    #[arg(long, env = "DUET_STORE", hide_env_values = true)]
    pub store: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Model folders (holding model.toml) to serve instead of the config's [[models]]; comma-separated in the
    /// environment variable.
    #[arg(long = "model", env = "DUET_MODELS", value_delimiter = ',')]
    pub models: Vec<PathBuf>,
    /// Model used when a request names none (default: the first one).
    #[arg(long, env = "DUET_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Folder of graph snapshots (overrides the config's `[index] snapshot_dir`).
    #[arg(long, env = "DUET_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Where every model runs: cpu, cuda (ONNX Runtime's CUDA execution provider, else the model fails to load)
    /// or auto (CUDA when it registers, else the CPU). Overrides `[encoder] device` and the models' own.
    #[arg(long, env = "DUET_DEVICE")]
    pub device: Option<Device>,
}

impl ServerArgs {
    /// The config file (or the defaults), with the flags laid over it.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(store) = &self.store {
            config.store = store.parse::<StoreLocation>()?;
        }
        if let Some(lib) = &self.runtime.onnxruntime {
            config.onnxruntime = Some(lib.clone());
        }
        if !self.models.is_empty() {
            config.models = self
                .models
                .iter()
                .map(|path| ModelEntry { path: path.clone(), index: Default::default(), encoder: None, task: None })
                .collect();
        }
        if let Some(name) = &self.default_model {
            config.default_model = Some(name.clone());
        }
        if let Some(dir) = &self.snapshot_dir {
            config.index.snapshot_dir = Some(dir.clone());
        }
        if let Some(device) = self.device {
            config.encoder.device = device;
            config.models.iter_mut().filter_map(|m| m.encoder.as_mut()).for_each(|e| e.device = device);
        }
        Ok(config)
    }
}

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Address to listen on (default: the config's `listen`, else 127.0.0.1:8080).
    #[arg(long, env = "DUET_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// JSONL corpus to import at start-up (unchanged documents are skipped).
    #[arg(long, env = "DUET_IMPORT")]
    pub import: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Who may call the server, on top of the config's `[auth]` table.
#[derive(ClapArgs)]
pub struct AuthArgs {
    /// API key entries `name:scope+scope:hash`, as `duet keys` prints them, added to the config's
    /// [[auth.keys]]; comma-separated in the environment variable.
    #[arg(long = "api-key", env = "DUET_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub keys: Vec<KeyEntry>,
    /// Serve a non-loopback --listen without API keys (anyone who can reach the port may write).
    #[arg(long, env = "DUET_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Host names clients reach the server by (replaces auth.allowed_hosts; default localhost, 127.0.0.1,
    /// [::1]; `*` for any); comma-separated in the environment variable.
    #[arg(long, env = "DUET_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed by CORS, e.g. https://app.example.com (replaces auth.cors_origins; default none);
    /// comma-separated in the environment variable.
    #[arg(long, env = "DUET_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
}

impl AuthArgs {
    fn apply(self, config: &mut Config) {
        let auth = &mut config.auth;
        auth.keys.extend(self.keys);
        auth.allow_unauthenticated |= self.allow_unauthenticated;
        let hosts: Vec<String> = self.allowed_hosts.into_iter().filter(|h| !h.trim().is_empty()).collect();
        if !hosts.is_empty() {
            auth.allowed_hosts = Some(hosts);
        }
        let origins: Vec<String> = self.cors_origins.into_iter().filter(|o| !o.trim().is_empty()).collect();
        if !origins.is_empty() {
            auth.cors_origins = origins;
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = args.server.config()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(import) = args.import {
        config.import = Some(import);
    }
    args.auth.apply(&mut config);
    let server = duet::server::start(config).await?;
    println!("duet listening on http://{}", server.addr);
    server.run_until(shutdown_signal()).await
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
