//! `/v1/experiments`: create, list, read and change live experiments, and read their report. Experiments are
//! never deleted: archive them (`PATCH {"status": "archived"}` after stopping). Their graded feedback downloads as
//! a qrels file (`/judgements`).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::experiment::report::ReportSettings;
use crate::experiment::{ExperimentPatch, NewExperiment, Status};

pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewExperiment>,
) -> Result<Response, ApiError> {
    let models: Vec<String> = state.engine.models().keys().cloned().collect();
    let experiment = state.experiments.create(body, &models).await?;
    Ok((StatusCode::CREATED, axum::Json(experiment)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Include archived experiments.
    #[serde(default)]
    pub archived: bool,
}

pub async fn list(State(state): State<AppState>, ApiQuery(params): ApiQuery<ListParams>) -> Response {
    let all = state.experiments.all();
    let shown: Vec<_> = all.iter().filter(|e| params.archived || e.status != Status::Archived).collect();
    axum::Json(json!({ "experiments": shown })).into_response()
}

pub async fn get_one(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    Ok(axum::Json(state.experiments.find(&id)?).into_response())
}

pub async fn update(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<ExperimentPatch>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(state.experiments.update(&id, patch, &state.engine).await?).into_response())
}

pub async fn report(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(settings): ApiQuery<ReportSettings>,
) -> Result<Response, ApiError> {
    settings.validate().map_err(ApiError::invalid)?;
    Ok(axum::Json(state.experiments.report(&id, settings).await?).into_response())
}

/// The experiment's graded feedback as a qrels file `duet eval --qrels` reads.
pub async fn judgements(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    let qrels = crate::experiment::judgements::qrels(&state.experiments, &id).await?;
    // Experiment names are letters, digits, '-', '_' and '.': safe inside the quoted file name.
    let disposition = format!("attachment; filename=\"{}-qrels.tsv\"", qrels.experiment);
    let headers = [
        (header::CONTENT_TYPE, "text/tab-separated-values; charset=utf-8".to_string()),
        (header::CONTENT_DISPOSITION, disposition),
    ];
    Ok((headers, qrels.tsv).into_response())
}
