//! Wiring: open the engine, bind the socket, serve the API, build the indexes in the background (the server
//! answers `/healthz` at once and `/readyz` once every index is ready), import the start-up corpus if one is
//! configured (into the models that are served: one that failed to prepare is skipped and logged), and shut
//! down gracefully within `[http] shutdown_grace_secs`. The connections themselves (limits, timeouts,
//! draining) are the edge's. Once the indexes are ready, interrupted back-fills resume and the config file's
//! `[[models]]` are applied through the model life cycle ([`reload`]) — again on each SIGHUP — and embeddings of
//! versions retired longer than `retention_secs` are removed (then every ten minutes). Once the indexes are
//! loaded, the changes other servers over the same store make are followed ([`replication`]).

mod conn;
mod edge;
pub mod load_bench;
pub mod reload;
pub mod replica_bench;
mod replication;
pub mod restart_bench;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::corpus::import_jsonl;
use crate::engine::Engine;
use crate::experiment::Experiments;
use crate::util::error_chain;

pub struct RunningServer {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    pub experiments: Arc<Experiments>,
    shutdown: Option<oneshot::Sender<()>>,
    serve: JoinHandle<()>,
    background: JoinHandle<()>,
    /// The SIGHUP listener and the retention sweeper.
    upkeep: Vec<JoinHandle<()>>,
    grace: Duration,
    /// The config file, re-read by [`RunningServer::reload`].
    source: Option<std::path::PathBuf>,
}

/// How often embeddings of versions retired longer than `retention_secs` are looked for.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Starts a server for `config` (use port 0 for an ephemeral port; the bound address is in `addr`).
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
    let engine = Engine::open(&config).await?;
    let mut experiments = Experiments::load(engine.store().clone(), config.experiments, engine.metrics.clone()).await?;
    if matches!(config.store, crate::store::StoreLocation::Postgres(_)) {
        experiments = experiments.with_other_servers_wait(Duration::from_millis(config.replication.feedback_wait_ms));
    }
    let experiments = Arc::new(experiments);
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");

    let (prepared, follow_from) = oneshot::channel::<()>();
    let background = tokio::spawn({
        let engine = engine.clone();
        let experiments = experiments.clone();
        let import = config.import.clone();
        let config = config.clone();
        async move {
            if let Err(err) = engine.prepare_indexes().await {
                tracing::error!(error = %error_chain(&err), "building an index failed; the server stays unready");
            }
            let _ = prepared.send(());
            engine.resume_changes().await;
            if let Err(err) = reload::apply_models(&engine, &experiments, &config).await {
                tracing::error!(error = %error_chain(&*err), "applying the config file's models failed");
            }
            let Some(path) = import else { return };
            // A model that failed is not served; the import goes on for the ones that are.
            let (served, failed): (Vec<_>, Vec<_>) = engine.models().values().cloned().partition(|m| m.is_ready());
            for model in &failed {
                tracing::warn!(model = %model.info.name, file = %path.display(),
                    reason = model.status().reason.unwrap_or_default(),
                    "this model failed to prepare; the start-up import skips it");
            }
            if served.is_empty() {
                tracing::error!(file = %path.display(), "no model is served; the start-up import is not run");
                return;
            }
            match import_jsonl(&engine, &path, 64, |_, _| {}).await {
                Ok(report) => {
                    for bad in &report.bad_lines {
                        tracing::warn!(file = %path.display(), line = bad.line, "{}", bad.message);
                    }
                    tracing::info!(file = %path.display(), upserted = report.upserted,
                        unchanged = report.unchanged, bad = report.bad_lines.len(), "start-up import done");
                }
                Err(err) => {
                    tracing::error!(file = %path.display(), error = %error_chain(&err), "start-up import failed")
                }
            }
        }
    });

    let (tx, rx) = oneshot::channel::<()>();
    let app = crate::api::router(crate::api::AppState {
        engine: engine.clone(),
        experiments: experiments.clone(),
        eval_jobs: Arc::new(crate::eval::live::EvalJobs::new(config.eval, engine.metrics.clone())),
        guard: Arc::new(crate::api::guard::Guard::new(&config.auth)),
    });
    let metrics = &engine.metrics;
    let edge = edge::Edge {
        settings: config.http,
        limits: config.limits,
        counters: edge::EdgeCounters {
            open: metrics.http_connections_open.clone(),
            refused: metrics.http_connections_refused.clone(),
            timed_out: metrics.http_connections_timed_out.clone(),
            requests: metrics.http_requests.clone(),
        },
    };
    let serve = tokio::spawn(edge::serve(listener, app, edge, rx));
    let grace = Duration::from_secs(config.http.shutdown_grace_secs);
    let mut upkeep = vec![tokio::spawn({
        let engine = engine.clone();
        async move {
            let mut every = tokio::time::interval(PURGE_EVERY);
            loop {
                every.tick().await;
                if let Err(err) = engine.purge_expired().await {
                    tracing::error!(error = %error_chain(&err), "removing the embeddings of retired versions failed");
                }
            }
        }
    })];
    upkeep.push(tokio::spawn({
        let (engine, experiments, settings) = (engine.clone(), experiments.clone(), config.replication);
        async move {
            // Once the indexes are loaded: the feed is followed from the position they were loaded at.
            if follow_from.await.is_ok() {
                replication::follow(engine, experiments, settings).await;
            }
        }
    }));
    if let Some(path) = config.source.clone() {
        // Registered now, before start returns: a SIGHUP from then on reloads instead of ending the process.
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let (engine, experiments) = (engine.clone(), experiments.clone());
        upkeep.push(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!(file = %path.display(), "SIGHUP: re-reading the config file's models");
                if let Err(err) = reload_from(&engine, &experiments, &path).await {
                    tracing::error!(error = %error_chain(&*err), "reloading the config file failed");
                }
            }
        }));
    }
    let source = config.source.clone();
    Ok(RunningServer { addr, engine, experiments, shutdown: Some(tx), serve, background, upkeep, grace, source })
}

async fn reload_from(
    engine: &Arc<Engine>,
    experiments: &Experiments,
    path: &std::path::Path,
) -> anyhow::Result<reload::Applied> {
    let config = Config::from_file(path)?;
    config.validate()?;
    reload::apply_models(engine, experiments, &config).await
}

impl RunningServer {
    /// Re-reads the config file's `[[models]]` and applies what changed (what SIGHUP does).
    pub async fn reload(&self) -> anyhow::Result<reload::Applied> {
        let path =
            self.source.as_ref().ok_or_else(|| anyhow::anyhow!("this server was not started from a config file"))?;
        reload_from(&self.engine, &self.experiments, path).await
    }

    /// Stops accepting connections, closes idle ones, lets requests in flight finish, writes the queued
    /// exposures and closes the store — all within the shutdown grace, after which it returns regardless.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.grace;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.background.abort();
        let _ = (&mut self.background).await;
        for task in &self.upkeep {
            task.abort();
        }
        // The edge cuts requests still running at its drain deadline, before ours.
        let served = (&mut self.serve).await;
        // Exposures queued by the last requests are written before the store closes.
        let left = deadline.saturating_duration_since(Instant::now());
        let closed = tokio::time::timeout(left, async {
            self.experiments.log.flush().await;
            self.engine.close().await;
        });
        if closed.await.is_err() {
            tracing::error!(
                grace_secs = self.grace.as_secs(),
                "the shutdown grace ran out before the exposure log was written and the store closed; exiting anyway"
            );
        }
        served?;
        Ok(())
    }

    /// Serves until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}
