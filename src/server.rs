//! Wiring: open the engine, bind the socket, serve the API, build the indexes in the background (the server
//! answers `/healthz` at once and `/readyz` once every index is ready), import the start-up corpus if one is
//! configured, and shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;

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
    serve: JoinHandle<std::io::Result<()>>,
    background: JoinHandle<()>,
}

/// Starts a server for `config` (use port 0 for an ephemeral port; the bound address is in `addr`).
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
    let engine = Engine::open(&config).await?;
    let experiments =
        Arc::new(Experiments::load(engine.store().clone(), config.experiments, engine.metrics.clone()).await?);
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");

    let background = tokio::spawn({
        let engine = engine.clone();
        let import = config.import.clone();
        async move {
            if let Err(err) = engine.prepare_indexes().await {
                tracing::error!(error = %error_chain(&err), "building the indexes failed; the server stays unready");
                return;
            }
            if let Some(path) = import {
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
        }
    });

    let (tx, rx) = oneshot::channel::<()>();
    let app = crate::api::router(crate::api::AppState {
        engine: engine.clone(),
        experiments: experiments.clone(),
        eval_jobs: Default::default(),
        guard: Arc::new(crate::api::guard::Guard::new(&config.auth)),
    });
    let serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    Ok(RunningServer { addr, engine, experiments, shutdown: Some(tx), serve, background })
}

impl RunningServer {
    /// Stops accepting connections, lets requests in flight finish, and closes the store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.background.abort();
        let _ = (&mut self.background).await;
        let served = (&mut self.serve).await;
        // Exposures queued by the last requests are written before the store closes.
        self.experiments.log.flush().await;
        self.engine.close().await;
        served??;
        Ok(())
    }

    /// Serves until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}
