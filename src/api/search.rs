//! `/v1/search`: nearest documents to a query. `POST` takes a JSON body; `GET` takes the same fields as a query
//! string (`q` for the query). The handlers validate the request and the unit id (`unit_id` or the `X-Duet-Unit`
//! header), then call [`crate::experiment::serve::search`], which decides which model answers.

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::{ApiError, ApiJson, ApiQuery};
use super::{served_by, AppState, RequestId, ServedBy};
use crate::config::Limits;
pub use crate::experiment::serve::SearchRequest;
use crate::experiment::serve::{self, Served};

pub const UNIT_HEADER: &str = "x-duet-unit";

pub async fn search_post(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SearchRequest>,
) -> Result<Response, ApiError> {
    run(state, request_id, &headers, body).await
}

pub async fn search_get(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<SearchRequest>,
) -> Result<Response, ApiError> {
    run(state, request_id, &headers, params).await
}

/// The checks of a query, `k` and `ef` that every search shares (`/v1/search`, `/v1/compare`).
pub(super) fn check_query(limits: &Limits, query: &str, k: usize, ef: Option<usize>) -> Result<(), ApiError> {
    if crate::util::json::is_blank(query) {
        return Err(ApiError::invalid("`query` must not be empty"));
    }
    let chars = query.chars().count();
    if chars > limits.max_query_chars {
        return Err(ApiError::invalid(format!(
            "`query` has {chars} characters; the limit is {}",
            limits.max_query_chars
        )));
    }
    if k == 0 || k > limits.max_k {
        return Err(ApiError::invalid(format!("`k` must be between 1 and {}; got {k}", limits.max_k)));
    }
    if let Some(ef) = ef {
        if ef == 0 || ef > limits.max_ef {
            return Err(ApiError::invalid(format!("`ef` must be between 1 and {}; got {ef}", limits.max_ef)));
        }
    }
    Ok(())
}

fn validate(state: &AppState, body: &SearchRequest) -> Result<(), ApiError> {
    check_query(&state.engine.limits, &body.query, body.k, body.ef)?;
    if let Some(unit) = &body.unit_id {
        if unit.is_empty() || unit.len() > 256 || unit.chars().any(char::is_control) {
            return Err(ApiError::invalid("`unit_id` must be 1-256 bytes without control characters"));
        }
    }
    Ok(())
}

/// The unit id: the body's, else the `X-Duet-Unit` header's. A malformed header is refused even when the body
/// has one.
fn unit_from(headers: &HeaderMap, body: &SearchRequest) -> Result<Option<String>, ApiError> {
    let header = match headers.get(UNIT_HEADER) {
        None => None,
        Some(value) => match value.to_str() {
            Ok(unit) if !unit.is_empty() && unit.len() <= 256 && !unit.chars().any(char::is_control) => {
                Some(unit.to_string())
            }
            _ => return Err(ApiError::invalid("the X-Duet-Unit header must be 1-256 visible ASCII characters")),
        },
    };
    Ok(body.unit_id.clone().or(header))
}

async fn run(
    state: AppState,
    request_id: RequestId,
    headers: &HeaderMap,
    body: SearchRequest,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    validate(&state, &body)?;
    let unit = unit_from(headers, &body)?;
    // The exposure is keyed by an id the server makes, so a client cannot collide with another request's
    // exposure or choose the interleaving coin; the request's own id is only a correlation id.
    let exposure_id = uuid::Uuid::new_v4().to_string();
    let RequestId(correlation_id) = request_id;
    tracing::debug!(%exposure_id, %correlation_id, "search");
    // A failed search is counted under the model it asked for (a configured one, else the default), so the
    // per-model availability SLO sees load shedding and errors; an unknown model's name is not a label.
    let asked = match &body.model {
        Some(name) => state.engine.models().contains_key(name).then(|| name.clone()),
        None => Some(state.engine.default_model()),
    };
    let searched = serve::search(&state.engine, &state.experiments, exposure_id, unit, body, started).await;
    let Served { mut response, served_by: model } = match searched {
        Ok(served) => served,
        Err(err) => {
            let mut refused = ApiError::from(err).into_response();
            if let Some(name) = asked {
                refused.extensions_mut().insert(ServedBy(name));
            }
            return Ok(refused);
        }
    };
    response.correlation_id = Some(correlation_id);
    Ok(served_by(&model, StatusCode::OK, response))
}
