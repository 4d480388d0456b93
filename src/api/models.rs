//! `/v1/models`: what is served, with its index settings and state, and the model life cycle — add, replace,
//! roll back, retire, and each model's versions and back-fill progress. Changes run as tasks of their own, so a
//! client that disconnects cannot stop one half-way.

use std::future::Future;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson, ApiPath};
use super::AppState;
use crate::encoder::ModelInfo;
use crate::engine::{ModelDetail, ModelState};
use crate::index::IndexParams;

#[derive(Debug, Serialize)]
pub struct IndexState {
    #[serde(flatten)]
    pub params: IndexParams,
    /// Whether an HNSW graph exists (below `exact_below` documents, search is exact).
    pub has_graph: bool,
    /// Deleted or replaced entries still in the graph, filtered out of results until a rebuild.
    pub dead_entries: usize,
    /// Vector slots held, live or dead (dead ones are dropped when the graph is rebuilt, or once they pile up
    /// without a graph).
    pub slots: usize,
}

#[derive(Debug, Serialize)]
pub struct ModelOut {
    #[serde(flatten)]
    pub info: ModelInfo,
    pub ready: bool,
    pub state: ModelState,
    /// A new version being prepared beside this one (replace or rollback), or this model's first (add).
    pub changing_to: Option<String>,
    pub documents: usize,
    pub index: IndexState,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub default_model: String,
    pub models: Vec<ModelOut>,
}

/// `GET /v1/models`
pub async fn list(State(state): State<AppState>) -> ApiJson<ModelList> {
    let candidates = state.engine.candidates();
    let serving = state.engine.models();
    // Models being added are listed too, not ready.
    let adding = candidates.iter().filter(|(name, _)| !serving.contains_key(*name)).map(|(_, m)| m);
    let models = serving
        .values()
        .chain(adding)
        .map(|m| ModelOut {
            info: (*m.info).clone(),
            ready: m.is_ready(),
            state: m.status().state,
            changing_to: candidates.get(&m.info.name).map(|c| c.info.version.clone()),
            documents: m.index.len(),
            index: IndexState {
                params: *m.index_params(),
                has_graph: m.index.has_graph(),
                dead_entries: m.index.dead_in_graph(),
                slots: m.index.slots(),
            },
        })
        .collect();
    ApiJson(ModelList { default_model: state.engine.default_model(), models })
}

/// `POST /v1/models`: a model to add.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddModel {
    /// The name to serve it as (default: the manifest's `name`).
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub name: Option<String>,
    /// Its folder (holding `model.toml`), inside `models_dir`; a relative path is relative to it.
    pub path: String,
}

/// `PUT /v1/models/{name}`: the folder of the new version.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceModel {
    pub path: String,
}

/// Runs a change as a task of its own, so that a disconnect cannot cancel it half-way.
async fn spawned<F>(change: F) -> Result<ModelDetail, ApiError>
where
    F: Future<Output = Result<ModelDetail, ApiError>> + Send + 'static,
{
    tokio::spawn(change).await.map_err(|err| ApiError::from(crate::engine::EngineError::Task(err)))?
}

fn accepted(detail: ModelDetail) -> Response {
    (StatusCode::ACCEPTED, axum::Json(detail)).into_response()
}

/// `GET /v1/models/{name}`
pub async fn get_one(State(state): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<Response, ApiError> {
    Ok(axum::Json(state.engine.model_detail(&name).await?).into_response())
}

/// `POST /v1/models`
pub async fn add(State(state): State<AppState>, ApiJson(body): ApiJson<AddModel>) -> Result<Response, ApiError> {
    let engine = state.engine.clone();
    let detail = spawned(async move { Ok(engine.add_model(body.name.as_deref(), &body.path).await?) }).await?;
    Ok(accepted(detail))
}

/// `PUT /v1/models/{name}`
pub async fn replace(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ReplaceModel>,
) -> Result<Response, ApiError> {
    let engine = state.engine.clone();
    let detail = spawned(async move { Ok(engine.replace_model(&name, &body.path).await?) }).await?;
    Ok(accepted(detail))
}

/// `POST /v1/models/{name}/rollback`
pub async fn rollback(State(state): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<Response, ApiError> {
    let engine = state.engine.clone();
    let detail = spawned(async move { Ok(engine.rollback_model(&name).await?) }).await?;
    Ok(accepted(detail))
}

/// `DELETE /v1/models/{name}`
pub async fn retire(State(state): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<Response, ApiError> {
    let (engine, experiments) = (state.engine.clone(), state.experiments.clone());
    let detail = spawned(async move { Ok(experiments.retire_model(&engine, &name).await?) }).await?;
    Ok(axum::Json(detail).into_response())
}
