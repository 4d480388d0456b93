//! The HTTP API (axum, JSON, versioned under `/v1`): one file per resource, the router, and the middleware that
//! gives every response a request id (and its work a `request` span carrying it), refuses oversize requests
//! before reading them (413 on `Content-Length`, 414, 431), records request metrics and writes one access-log
//! line per request ([`guard`] adds the Host check, CORS and API keys). Every route is
//! listed once, in [`routes`], with the access it needs; `openapi.yaml` must describe exactly those (a test
//! checks it).

pub mod compare;
pub mod documents;
pub mod embed;
pub mod embeddings;
pub mod error;
pub mod eval;
pub mod experiments;
pub mod feedback;
pub mod guard;
pub mod models;
pub mod ops;
pub mod search;
pub mod ui;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::config::Limits;
use crate::engine::Engine;
use crate::experiment::Experiments;
pub use error::ApiError;
use guard::{Access, Guard, ADMIN, OPS, PUBLIC, SEARCH, WRITE};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub experiments: Arc<Experiments>,
    pub eval_jobs: Arc<eval::EvalJobs>,
    /// API keys, open operational endpoints, Host allow-list and CORS.
    pub guard: Arc<Guard>,
}

/// The id of the request, from a valid incoming `X-Request-Id` or freshly made; echoed in the response header.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Set by handlers on their response: the model that served it, for the metrics' `model` label.
#[derive(Debug, Clone)]
pub struct ServedBy(pub String);

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Every route: method, path, who may call it, handler. The access column sits in the table so that no route
/// can be added without deciding it (tests walk it): `PUBLIC` (the browser UI's static files), `OPS` (probes, metrics, this API's description: open or
/// any key, per `auth.open_ops`), `SEARCH` (searches, embeddings, feedback, reads), `WRITE` (documents),
/// `ADMIN` (experiments, evaluation runs, anything else that changes state).
fn routes() -> Vec<(&'static str, &'static str, Access, MethodRouter<AppState>)> {
    vec![
        ("GET", "/healthz", OPS, get(ops::healthz)),
        ("GET", "/readyz", OPS, get(ops::readyz)),
        ("GET", "/metrics", OPS, get(ops::metrics)),
        ("GET", "/openapi.yaml", OPS, get(ops::openapi)),
        ("GET", "/ui", PUBLIC, get(ui::page)),
        ("GET", "/ui/{file}", PUBLIC, get(ui::file)),
        ("GET", "/v1/models", SEARCH, get(models::list)),
        ("POST", "/v1/models", ADMIN, post(models::add)),
        ("GET", "/v1/models/{name}", SEARCH, get(models::get_one)),
        ("PUT", "/v1/models/{name}", ADMIN, put(models::replace)),
        ("DELETE", "/v1/models/{name}", ADMIN, delete(models::retire)),
        ("POST", "/v1/models/{name}/rollback", ADMIN, post(models::rollback)),
        ("POST", "/v1/documents", WRITE, post(documents::upsert)),
        ("GET", "/v1/documents/{id}", SEARCH, get(documents::get_one)),
        ("DELETE", "/v1/documents/{id}", WRITE, delete(documents::delete_one)),
        ("GET", "/v1/search", SEARCH, get(search::search_get)),
        ("POST", "/v1/search", SEARCH, post(search::search_post)),
        ("POST", "/v1/compare", SEARCH, post(compare::compare)),
        ("POST", "/v1/embed", SEARCH, post(embed::embed)),
        ("POST", "/v1/embeddings", SEARCH, post(embeddings::embeddings)),
        ("GET", "/v1/experiments", SEARCH, get(experiments::list)),
        ("POST", "/v1/experiments", ADMIN, post(experiments::create)),
        ("GET", "/v1/experiments/{id}", SEARCH, get(experiments::get_one)),
        ("PATCH", "/v1/experiments/{id}", ADMIN, patch(experiments::update)),
        ("GET", "/v1/experiments/{id}/report", SEARCH, get(experiments::report)),
        ("GET", "/v1/experiments/{id}/judgements", SEARCH, get(experiments::judgements)),
        ("POST", "/v1/feedback", SEARCH, post(feedback::record)),
        ("POST", "/v1/eval", ADMIN, post(eval::start)),
        ("GET", "/v1/eval/{id}", SEARCH, get(eval::get_job)),
        ("DELETE", "/v1/eval/{id}", ADMIN, delete(eval::cancel)),
    ]
}

/// (method, path) of every route the router serves.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    routes().into_iter().map(|(method, path, _, _)| (method, path)).collect()
}

/// (method, path, access) of every route the router serves.
pub fn route_access() -> Vec<(&'static str, &'static str, Access)> {
    routes().into_iter().map(|(method, path, access, _)| (method, path, access)).collect()
}

pub fn router(state: AppState) -> Router {
    let limits = state.engine.limits;
    let guard = state.guard.clone();
    let mut router = Router::new();
    // Routes on the same path merge into one method router; each method keeps its own key check.
    for (_, path, access, handler) in routes() {
        let handler = match guard.route_check(access, path) {
            Some(check) => handler.route_layer(middleware::from_fn_with_state(check, guard::require_key)),
            None => handler,
        };
        router = router.route(path, handler);
    }
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; the server log has the details",
            )
            .into_response()
        }));
    // CORS outside the handlers and key checks, so that preflights need no key and errors carry its headers.
    let router = match guard.cors_layer() {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router
        .layer(middleware::from_fn_with_state(guard, guard::check_host))
        // Outside the panic catcher and the Host check, so every response — timeouts, panics and refusals
        // included — gets a request id and is counted.
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no-such-route", "no such route; see /openapi.yaml")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this route does not take that method; see /openapi.yaml",
    )
}

fn valid_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.to_string())
}

/// The `method` label: a standard method's name, else `other` (so made-up methods cannot grow `/metrics`).
pub fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD.iter().find(|m| *m == method).map(Method::as_str).unwrap_or("other")
}

/// Reads and drops up to `cap` bytes (or 5 s) of a refused request's body while its answer is sent, so that the
/// connection is not closed on unread data, which makes the kernel reset it and can destroy the answer before
/// the client reads it (a lingering close, as web servers do). Past the cap the connection is closed anyway.
async fn discard_some(body: axum::body::Body, cap: usize) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read = 0;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > cap {
                break;
            }
        }
    })
    .await;
}

/// A request over the limits that can be told from its head alone, answered before its body is read: a declared
/// `Content-Length` over `max_body_bytes` (413; a chunked body is cut at the limit while it is read), a request
/// target over `max_uri_bytes` (414), a header section over `max_header_bytes` (431).
fn oversize_head(request: &Request, limits: &Limits) -> Option<ApiError> {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len()) + uri.authority().map_or(0, |a| a.as_str().len());
    if target > limits.max_uri_bytes {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            format!(
                "the request target is {target} bytes; the limit is {} (send long input in a POST body)",
                limits.max_uri_bytes
            ),
        ));
    }
    let headers: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if headers > limits.max_header_bytes {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            format!("the request headers are {headers} bytes; the limit is {}", limits.max_header_bytes),
        ));
    }
    let declared = request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse::<u64>().ok()?;
    (declared > limits.max_body_bytes as u64).then(|| {
        ApiError::too_large(format!(
            "the body is {declared} bytes (Content-Length); the limit is {} bytes",
            limits.max_body_bytes
        ))
    })
}

/// Request id in, request id out; count and time every request by route template, method, model and status.
async fn observe(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = matched.map(|m| m.as_str().to_string()).unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(request.method());
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(valid_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    // Every span and log line of the request's work is under this span, so each carries its request id.
    let span = tracing::info_span!("request", request_id = %id, method, route = %route);
    let started = Instant::now();
    let limits = &state.engine.limits;
    let timeout = Duration::from_secs(limits.request_timeout_secs.max(1));
    let mut response = match oversize_head(&request, limits) {
        Some(refusal) => {
            let mut response = refusal.into_response();
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            tokio::spawn(discard_some(request.into_body(), limits.max_body_bytes));
            response
        }
        None => match tokio::time::timeout(timeout, next.run(request).instrument(span)).await {
            Ok(response) => response,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("the request took longer than {} s", timeout.as_secs()),
            )
            .into_response(),
        },
    };
    let model = response.extensions().get::<ServedBy>().map(|s| s.0.clone()).unwrap_or_default();
    let status = response.status().as_u16().to_string();
    let labels = [route.as_str(), method, model.as_str(), status.as_str()];
    let metrics = &state.engine.metrics;
    let seconds = started.elapsed().as_secs_f64();
    metrics.http_requests.with_label_values(&labels).inc();
    metrics.http_duration.with_label_values(&labels).observe(seconds);
    // The access log: one line per request (`--log-format json` makes it one JSON object).
    tracing::info!(
        target: "duet::access",
        request_id = %id,
        method,
        route = %route,
        status = response.status().as_u16(),
        model = %model,
        latency_ms = (seconds * 1e6).round() / 1e3,
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// A JSON response tagged with the model that served it.
pub(crate) fn served_by<T: serde::Serialize>(model: &str, status: StatusCode, body: T) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.extensions_mut().insert(ServedBy(model.to_string()));
    response
}
