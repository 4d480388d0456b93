//! Operational routes: liveness, readiness, Prometheus metrics and the OpenAPI description.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use crate::engine::{ModelState, ModelStatus};

/// The API description, served as it is in the repository.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

#[derive(Debug, Serialize)]
pub struct ModelReadiness {
    pub ready: bool,
    pub documents: usize,
    /// `loading`, `encoding`, `ready` or `failed`, and unless ready a `reason`.
    #[serde(flatten)]
    pub status: ModelStatus,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub models: BTreeMap<String, ModelReadiness>,
    /// `ok`, or `degraded` while the store cannot be reached: searches are still answered (from memory), so
    /// readiness does not depend on it; writes get 503 meanwhile.
    pub store: crate::engine::health::StoreStatus,
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: 200 once every model's index is built, 503 before (or when one failed), saying per model why,
/// and whether the store answers (a degraded store does not make the server unready: searches go on).
pub async fn readyz(State(state): State<AppState>) -> Response {
    let models: BTreeMap<String, ModelReadiness> = state
        .engine
        .models()
        .values()
        .map(|m| {
            let status = m.status();
            let ready = status.state == ModelState::Ready;
            (m.info.name.clone(), ModelReadiness { ready, documents: m.index.len(), status })
        })
        .collect();
    let ready = models.values().all(|m| m.ready);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let store = state.engine.health.status();
    (status, axum::Json(Readiness { ready, models, store })).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.engine.metrics.render())
        .into_response()
}

/// `GET /openapi.yaml`
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response()
}
