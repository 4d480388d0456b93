//! `/v1/eval`: score the live models on posted pairs ([`crate::eval::live`]). A small set is answered at once
//! (`200`); a larger one becomes a job: `202 Accepted` with a `Location` to poll (`GET /v1/eval/{id}`) or cancel
//! (`DELETE /v1/eval/{id}`); beyond `[eval] max_jobs` queued or running, `429`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiJson, ApiPath};
use super::AppState;
pub use crate::eval::live::EvalJobs;
use crate::eval::live::{EvalRequest, Submitted};

pub async fn start(State(state): State<AppState>, ApiJson(body): ApiJson<EvalRequest>) -> Result<Response, ApiError> {
    match state.eval_jobs.submit(&state.engine, body).await? {
        Submitted::Done(result) => Ok(axum::Json(result).into_response()),
        Submitted::Accepted(job) => {
            let location = format!("/v1/eval/{}", job.id);
            Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], axum::Json(job)).into_response())
        }
    }
}

pub async fn get_job(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    Ok(axum::Json(state.eval_jobs.view(&id)?).into_response())
}

/// `DELETE /v1/eval/{id}`: stops a queued or running job at once, or forgets a finished one.
pub async fn cancel(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    state.eval_jobs.cancel(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
