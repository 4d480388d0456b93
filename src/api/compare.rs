//! `/v1/compare`: one query searched with 2 to 4 served models side by side, and the overlap of every pair of
//! rankings. The handler checks the request as `/v1/search` does (query, `k`, `ef`) plus the model list, then
//! calls [`crate::experiment::compare::compare`]. Experiments are bypassed and nothing is logged.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiJson};
use super::search::check_query;
use super::AppState;
use crate::experiment::compare::{self, CompareRequest};

pub async fn compare(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CompareRequest>,
) -> Result<Response, ApiError> {
    check_query(&state.engine.limits, &body.query, body.k, body.ef)?;
    body.check_models().map_err(ApiError::invalid)?;
    // Not tagged with a model: the metrics' `model` label would grow with every combination of models.
    Ok(axum::Json(compare::compare(&state.engine, body).await?).into_response())
}
