//! `POST /v1/embeddings`: the OpenAI-compatible embeddings endpoint (as TEI and infinity serve it), so that the
//! `openai` client, LangChain and LlamaIndex work unchanged. Validates the request, calls the engine's
//! `Engine::embed_cut` (what `/v1/embed` calls, plus the `dimensions` cut) and shapes the
//! answer: float lists or base64 of little-endian f32 bytes, and the real token counts as `usage`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ApiJson};
use super::{served_by, AppState};
use crate::encoder::Side;

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    /// A string or an array of strings (token-id arrays are refused: Duet tokenises itself).
    pub input: Value,
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub model: Option<String>,
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub dimensions: Option<usize>,
    /// Accepted and ignored, as OpenAI's end-user id.
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub user: Option<String>,
    /// Duet's extension: which side's prompt frames the texts (default `document`).
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub input_type: Option<Side>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct EmbeddingItem {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingValue,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<EmbeddingItem>,
    pub model: String,
    pub usage: Usage,
}

/// The texts of `input`, or what is wrong with it.
fn texts(input: Value) -> Result<Vec<String>, ApiError> {
    const TOKENS: &str = "`input` holds token ids; this server tokenises itself: send the texts as strings";
    match input {
        Value::String(text) => Ok(vec![text]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(text) => Ok(text),
                Value::Number(_) | Value::Array(_) => Err(ApiError::invalid(TOKENS)),
                _ => Err(ApiError::invalid(format!("input[{i}] must be a string"))),
            })
            .collect(),
        _ => Err(ApiError::invalid("`input` must be a string or an array of strings")),
    }
}

/// Little-endian f32 bytes, base64 (standard alphabet, padded), as OpenAI's `encoding_format: "base64"`.
fn base64_f32(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `POST /v1/embeddings`
pub async fn embeddings(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let limits = &state.engine.limits;
    let texts = texts(body.input)?;
    if texts.is_empty() {
        return Err(ApiError::invalid("`input` must hold at least one text"));
    }
    super::embed::check_texts(&texts, "input", limits)?;
    let model = body.model.unwrap_or_else(|| state.engine.default_model());
    let side = body.input_type.unwrap_or(Side::Document);
    let (info, encoded) = state.engine.embed_cut(&model, texts, side, body.dimensions).await?;
    let format = body.encoding_format.unwrap_or_default();
    let data = encoded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingItem {
            object: "embedding",
            index,
            embedding: match format {
                EncodingFormat::Float => EmbeddingValue::Float(vector),
                EncodingFormat::Base64 => EmbeddingValue::Base64(base64_f32(&vector)),
            },
        })
        .collect();
    let tokens: usize = encoded.tokens.iter().sum();
    let response = EmbeddingsResponse {
        object: "list",
        data,
        model: info.name.clone(),
        usage: Usage { prompt_tokens: tokens, total_tokens: tokens },
    };
    Ok(served_by(&info.name, StatusCode::OK, response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_is_a_string_or_strings_and_token_ids_are_refused_clearly() {
        assert_eq!(texts(json!("a")).unwrap(), ["a"]);
        assert_eq!(texts(json!(["a", "b"])).unwrap(), ["a", "b"]);
        for tokens in [json!([1, 2, 3]), json!([[1, 2], [3]])] {
            let err = texts(tokens).unwrap_err();
            assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(err.detail.contains("token ids"), "{}", err.detail);
        }
        assert!(texts(json!({"text": "a"})).unwrap_err().detail.contains("string or an array"));
        assert!(texts(json!(["a", null])).unwrap_err().detail.contains("input[1]"));
    }

    #[test]
    fn base64_holds_little_endian_f32_bytes() {
        let encoded = base64_f32(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
    }
}
