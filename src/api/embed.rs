//! `/v1/embed`: vectors for texts, from one model and one side (query or document tower / prefix).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson};
use super::{served_by, AppState};
use crate::encoder::Side;

fn default_side() -> Side {
    Side::Query
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    pub texts: Vec<String>,
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub model: Option<String>,
    #[serde(default = "default_side")]
    pub side: Side,
}

#[derive(Debug, Serialize)]
pub struct EmbedResponse {
    pub model: String,
    pub model_version: String,
    pub side: Side,
    pub dimension: usize,
    pub normalized: bool,
    pub embeddings: Vec<Vec<f32>>,
    /// How many texts were cut at the model's `max_tokens`, and which (indices into `texts`).
    pub truncated: usize,
    pub truncated_indices: Vec<usize>,
}

/// `POST /v1/embed`
pub async fn embed(State(state): State<AppState>, ApiJson(body): ApiJson<EmbedRequest>) -> Result<Response, ApiError> {
    let limits = &state.engine.limits;
    if body.texts.is_empty() {
        return Err(ApiError::invalid("`texts` must hold at least one text"));
    }
    check_texts(&body.texts, "texts", limits)?;
    let model = body.model.unwrap_or_else(|| state.engine.default_model());
    let (info, encoded) = state.engine.embed(&model, body.texts, body.side).await?;
    let truncated_indices: Vec<usize> =
        encoded.truncated.iter().enumerate().filter(|(_, &t)| t).map(|(i, _)| i).collect();
    let response = EmbedResponse {
        model: info.name.clone(),
        model_version: info.version.clone(),
        side: body.side,
        dimension: info.dimension,
        normalized: info.normalize,
        embeddings: encoded.vectors,
        truncated: truncated_indices.len(),
        truncated_indices,
    };
    Ok(served_by(&info.name, StatusCode::OK, response))
}

/// The request limits every embedding endpoint applies to its texts: at most `max_batch`, none blank, none longer
/// than `max_document_chars`. `field` names the texts in messages (`texts[3]`, `input[3]`).
pub(super) fn check_texts(texts: &[String], field: &str, limits: &crate::config::Limits) -> Result<(), ApiError> {
    if texts.len() > limits.max_batch {
        return Err(ApiError::too_large(format!(
            "{} texts in one request; the limit is {}",
            texts.len(),
            limits.max_batch
        )));
    }
    for (i, text) in texts.iter().enumerate() {
        if crate::util::json::is_blank(text) {
            return Err(ApiError::invalid(format!("{field}[{i}] is empty")));
        }
        let chars = text.chars().count();
        if chars > limits.max_document_chars {
            return Err(ApiError::invalid(format!(
                "{field}[{i}] has {chars} characters; the limit is {}",
                limits.max_document_chars
            )));
        }
    }
    Ok(())
}
