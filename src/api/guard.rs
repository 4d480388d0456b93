//! The `[auth]` decisions enforced over HTTP: the Host check on every request (a Host not allowed is
//! `421 misdirected-host`), CORS when origins are configured, and per route the key its access needs (`401
//! unauthorized` with `WWW-Authenticate: Bearer` for a missing or unknown key, `403 forbidden` for a key without
//! the scope). The access of each route is declared in the route table (`routes()` in the parent module).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::search::UNIT_HEADER;
use super::{ApiError, REQUEST_ID_HEADER};
use crate::auth::{AuthSettings, HostAllowList, KeyRing, Scope, Verdict};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The browser UI's static files: open even when keys are configured (they hold no data; the page asks
    /// its user for a key and sends it with its API calls).
    Public,
    /// An operational endpoint: open, or any configured key, as `auth.open_ops` says.
    Ops,
    /// A key holding this scope (or `admin`).
    Needs(Scope),
}

pub const PUBLIC: Access = Access::Public;
pub const OPS: Access = Access::Ops;
pub const SEARCH: Access = Access::Needs(Scope::Search);
pub const WRITE: Access = Access::Needs(Scope::Write);
pub const ADMIN: Access = Access::Needs(Scope::Admin);

/// The request's key, for handlers and logs, once the route's check has passed (absent when auth is off).
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// What the middleware needs of the `[auth]` settings.
pub struct Guard {
    keys: KeyRing,
    open_ops: BTreeSet<String>,
    hosts: HostAllowList,
    cors_origins: Vec<String>,
}

/// What one route checks: a key with this scope, or any key (`None`).
#[derive(Clone)]
pub struct RouteCheck {
    guard: Arc<Guard>,
    needed: Option<Scope>,
}

impl Guard {
    /// From validated settings.
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            keys: settings.key_ring(),
            open_ops: settings.open_ops.iter().cloned().collect(),
            hosts: settings.host_allow_list(),
            cors_origins: settings.cors_origins.clone(),
        }
    }

    /// The check a route with this access and path needs; `None` when it is open (auth off, or an open
    /// operational endpoint).
    pub fn route_check(self: &Arc<Self>, access: Access, path: &str) -> Option<RouteCheck> {
        let needed = match access {
            _ if self.keys.is_empty() => return None,
            Access::Public => return None,
            Access::Ops if self.open_ops.contains(path) => return None,
            Access::Ops => None,
            Access::Needs(scope) => Some(scope),
        };
        Some(RouteCheck { guard: self.clone(), needed })
    }

    /// The CORS layer, when origins are configured: preflights are answered for them, and every response to
    /// them (errors included) carries `Access-Control-Allow-Origin`.
    pub fn cors_layer(&self) -> Option<CorsLayer> {
        if self.cors_origins.is_empty() {
            return None;
        }
        let origins = if self.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(self.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        let header = HeaderName::from_static;
        Some(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header(REQUEST_ID_HEADER),
                    header(UNIT_HEADER),
                ])
                .expose_headers([
                    header(REQUEST_ID_HEADER),
                    header::RETRY_AFTER,
                    header::LOCATION,
                    header::WWW_AUTHENTICATE,
                ])
                .max_age(Duration::from_secs(600)),
        )
    }
}

/// Refuses a request whose Host (or URI authority) is not allowed: `421 misdirected-host`.
pub async fn check_host(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let authority = request.uri().authority().map(|a| a.as_str());
    let allowed = match (host, authority) {
        (None, None) => guard.hosts.allows(None),
        (host, authority) => [host, authority].into_iter().flatten().all(|h| guard.hosts.allows(Some(h))),
    };
    if allowed {
        return next.run(request).await;
    }
    let shown: String = host.or(authority).unwrap_or("").chars().take(100).collect();
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "misdirected-host",
        format!(
            "this server does not answer to Host `{shown}`; its operator lists the names it answers to in \
             auth.allowed_hosts"
        ),
    )
    .into_response()
}

/// Lets the request through when its `Authorization: Bearer` key passes the route's check.
pub async fn require_key(State(check): State<RouteCheck>, mut request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match check.guard.keys.check(authorization, check.needed) {
        Verdict::Allowed(entry) => {
            request.extensions_mut().insert(Caller(entry.name.clone()));
            next.run(request).await
        }
        Verdict::Missing => unauthorized(
            "this route needs an API key: send `Authorization: Bearer <key>` (`duet keys` makes one)",
            r#"Bearer realm="duet""#,
        ),
        Verdict::Unknown => unauthorized(
            "the bearer token is not an API key this server knows",
            r#"Bearer realm="duet", error="invalid_token""#,
        ),
        Verdict::Forbidden(entry) => {
            let scope = check.needed.map(Scope::as_str).unwrap_or_default();
            let mut error = ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the API key `{}` lacks the `{scope}` scope this route needs", entry.name),
            );
            error.extra.insert("required_scope".into(), json!(scope));
            with_challenge(error, &format!(r#"Bearer realm="duet", error="insufficient_scope", scope="{scope}""#))
        }
    }
}

fn unauthorized(detail: &str, challenge: &str) -> Response {
    with_challenge(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail), challenge)
}

fn with_challenge(error: ApiError, challenge: &str) -> Response {
    let mut response = error.into_response();
    if let Ok(value) = HeaderValue::from_str(challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
