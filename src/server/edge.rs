//! The HTTP edge: the accept loop and each connection, served by hyper's HTTP/1.1 server (HTTP/2 is not offered,
//! as with `axum::serve` in this build).
//!
//! - At most `max_connections` are open; beyond it a new connection is answered `503 too-many-connections` (if
//!   the socket takes it at once) and closed, never queued.
//! - Each connection has the timeouts of `[http]` (see the connection watch module) and a cap on hyper's read
//!   buffer above the configured head limits, so that over-limit heads reach the router's 414/431 checks.
//! - Shutdown: stop accepting; close at once every connection that is not answering a request (idle, or a head
//!   half sent); let the others finish their response, then close, until the drain deadline; cut what is left.
//!
//! Uses the router (as a tower service), hyper, and the connection watch.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::conn::{raw_problem, Activity, EdgeIo, HeadTimer, Tracked};
use crate::api::ApiError;
use crate::config::{HttpSettings, Limits};

/// hyper's default read-buffer cap; raised when the configured head limits need more.
const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;

/// The metrics the edge keeps.
pub(super) struct EdgeCounters {
    pub open: IntGauge,
    pub refused: IntCounter,
    pub timed_out: IntCounterVec,
    /// The request counter, for hyper's own error answers (route `unparsed`).
    pub requests: IntCounterVec,
}

pub(super) struct Edge {
    pub settings: HttpSettings,
    pub limits: Limits,
    pub counters: EdgeCounters,
}

impl Edge {
    /// Time to let requests in flight finish on shutdown: three quarters of the grace, the rest is for the store.
    pub(super) fn drain_time(&self) -> Duration {
        Duration::from_secs(self.settings.shutdown_grace_secs) * 3 / 4
    }
}

/// Accepts and serves connections until `stop`, then drains them (see the module comment).
pub(super) async fn serve(listener: TcpListener, app: Router, edge: Edge, stop: oneshot::Receiver<()>) {
    let edge = Arc::new(edge);
    let permits = Arc::new(Semaphore::new(edge.settings.max_connections));
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(serve_connection(stream, app.clone(), edge.clone(), closing_rx.clone(), permit));
                    }
                    Err(_) => {
                        edge.counters.refused.inc();
                        refuse(stream, edge.settings.max_connections);
                    }
                },
                Err(err) => {
                    // Out of file descriptors, most likely: wait instead of spinning.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = closing.send(true);
    let open = connections.len();
    let drained = tokio::time::timeout(edge.drain_time(), async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!(open, left = connections.len(), "requests still running at the shutdown deadline are cut");
        connections.shutdown().await;
    }
}

/// Best effort, never waiting: take what the client already sent (so the close is a FIN rather than a reset),
/// answer 503, close.
fn refuse(stream: TcpStream, limit: usize) {
    let mut scratch = [0u8; 4096];
    for _ in 0..16 {
        match stream.try_read(&mut scratch) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let mut problem = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too-many-connections",
        format!("the server has {limit} connections open, its limit; retry shortly"),
    );
    problem.retry_after_secs = Some(1);
    let _ = stream.try_write(&raw_problem(&problem, ""));
}

/// Counts the connection as open while it lives, also when its task is cut.
struct OpenGuard(IntGauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    edge: Arc<Edge>,
    mut closing: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let counters = &edge.counters;
    counters.open.inc();
    let _open = OpenGuard(counters.open.clone());
    let _ = stream.set_nodelay(true);
    let settings = &edge.settings;
    let (header, idle) =
        (Duration::from_secs(settings.header_read_timeout_secs), Duration::from_secs(settings.idle_timeout_secs));
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(EdgeIo::new(stream, activity.clone(), idle));
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let busy = activity.begin_request();
            let mut app = app.clone();
            async move {
                let response = match tower::Service::call(&mut app, request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
            }
        })
    };
    let max_buf = HYPER_DEFAULT_MAX_BUF.max(edge.limits.max_uri_bytes + edge.limits.max_header_bytes + 16 * 1024);
    let mut builder = http1::Builder::new();
    builder
        .timer(HeadTimer { activity: activity.clone(), header, idle })
        .header_read_timeout(header)
        .max_buf_size(max_buf);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let closing = async move {
        let _ = closing.wait_for(|closing| *closing).await;
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = closing => {
            if activity.is_quiet() {
                Ok(()) // idle or a head half sent: nothing to lose, close now
            } else {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    };
    if let Some(status) = activity.rewritten_status() {
        counters.requests.with_label_values(&["unparsed", "other", "", &status.to_string()]).inc();
    }
    if let Some(reason) = activity.timeout_reason() {
        counters.timed_out.with_label_values(&[reason]).inc();
        tracing::debug!(reason, "connection closed by a timeout");
    } else if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}
