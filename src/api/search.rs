//! `/v1/search`: nearest documents to a query, with one named model (or the default one).
//! `POST` takes a JSON body; `GET` takes the same fields as a query string (`q` for the query).

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson, ApiQuery};
use super::{served_by, AppState, RequestId};
use crate::engine::SearchQuery;
use crate::index::SearchMethod;

fn default_k() -> usize {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The query text (`q` in a query string).
    #[serde(alias = "q")]
    pub query: String,
    #[serde(default = "default_k")]
    pub k: usize,
    /// Model to search with; the server's default model when absent.
    #[serde(default)]
    pub model: Option<String>,
    /// HNSW candidate list size for this request (default: the model's `ef_search`).
    #[serde(default)]
    pub ef: Option<usize>,
    /// Brute-force search, bypassing the HNSW graph (the reference for recall).
    #[serde(default)]
    pub exact: bool,
}

#[derive(Debug, Serialize)]
pub struct SearchHit {
    pub id: String,
    pub score: f32,
    pub snippet: String,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct Timings {
    pub encode_ms: f64,
    pub search_ms: f64,
    pub fetch_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct SearchResponse {
    pub request_id: String,
    pub model: String,
    pub model_version: String,
    pub method: SearchMethod,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ef: Option<usize>,
    /// Whether the query was cut at the model's `max_tokens`.
    pub query_truncated: bool,
    pub results: Vec<SearchHit>,
    pub timings_ms: Timings,
}

/// The first `chars` characters of `text`, with an ellipsis when cut.
pub fn snippet(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

pub async fn search_post(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    ApiJson(body): ApiJson<SearchRequest>,
) -> Result<Response, ApiError> {
    run(state, request_id, body).await
}

pub async fn search_get(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    ApiQuery(params): ApiQuery<SearchRequest>,
) -> Result<Response, ApiError> {
    run(state, request_id, params).await
}

async fn run(state: AppState, request_id: RequestId, body: SearchRequest) -> Result<Response, ApiError> {
    let started = Instant::now();
    let limits = &state.engine.limits;
    if body.query.trim().is_empty() {
        return Err(ApiError::invalid("`query` must not be empty"));
    }
    let chars = body.query.chars().count();
    if chars > limits.max_query_chars {
        return Err(ApiError::invalid(format!(
            "`query` has {chars} characters; the limit is {}",
            limits.max_query_chars
        )));
    }
    if body.k == 0 || body.k > limits.max_k {
        return Err(ApiError::invalid(format!("`k` must be between 1 and {}; got {}", limits.max_k, body.k)));
    }
    if let Some(ef) = body.ef {
        if ef == 0 || ef > limits.max_ef {
            return Err(ApiError::invalid(format!("`ef` must be between 1 and {}; got {ef}", limits.max_ef)));
        }
    }
    let model = body.model.unwrap_or_else(|| state.engine.default_model().to_string());
    let result = state
        .engine
        .search(SearchQuery { model, query: body.query, k: body.k, ef: body.ef, exact: body.exact })
        .await?;
    let results = result
        .hits
        .into_iter()
        .map(|(hit, doc)| SearchHit {
            id: doc.id,
            score: hit.score,
            snippet: snippet(&doc.text, limits.snippet_chars),
            metadata: doc.metadata,
        })
        .collect();
    let ms = |s: f64| (s * 1e6).round() / 1e3;
    let response = SearchResponse {
        request_id: request_id.0,
        model: result.model.name.clone(),
        model_version: result.model.version.clone(),
        method: result.method,
        ef: result.ef,
        query_truncated: result.query_truncated,
        results,
        timings_ms: Timings {
            encode_ms: ms(result.encode_seconds),
            search_ms: ms(result.search_seconds),
            fetch_ms: ms(result.fetch_seconds),
            total_ms: ms(started.elapsed().as_secs_f64()),
        },
    };
    Ok(served_by(&result.model.name, StatusCode::OK, response))
}

#[cfg(test)]
mod tests {
    use super::snippet;

    #[test]
    fn snippets_cut_on_character_boundaries() {
        assert_eq!(snippet("héllo wörld", 4), "héll…");
        assert_eq!(snippet("short", 10), "short");
        assert_eq!(snippet("exact", 5), "exact");
    }
}
