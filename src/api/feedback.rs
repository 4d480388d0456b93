//! `/v1/feedback`: a click or a conversion on a result shown under an experiment. The request must have been
//! logged (404 otherwise), the document must have been shown in it (422), and repeating an event is harmless
//! (`duplicate: true`, nothing counted twice). An optional `grade` (0 to 10, a rater's relevance grade) is stored
//! with the event; sent again for the same event, it replaces the earlier one.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::experiment::Feedback;

pub async fn record(State(state): State<AppState>, ApiJson(body): ApiJson<Feedback>) -> Result<Response, ApiError> {
    if body.request_id.is_empty() || body.request_id.len() > 128 {
        return Err(ApiError::invalid("`request_id` must be 1-128 characters"));
    }
    if body.position == Some(0) {
        return Err(ApiError::invalid("`position` is 1-based"));
    }
    if body.grade.is_some_and(|g| !(0.0..=10.0).contains(&g)) {
        return Err(ApiError::invalid("`grade` must be between 0 and 10"));
    }
    Ok(axum::Json(state.experiments.feedback(body).await?).into_response())
}
