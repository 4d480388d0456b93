//! `/v1/documents`: batch upsert, fetch and delete of corpus documents.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson, ApiPath};
use super::AppState;
use crate::engine::validate_document;
use crate::store::{Document, NewDocument};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentIn {
    pub id: String,
    pub text: String,
    /// Absent or `null`: `{}`.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    pub documents: Vec<DocumentIn>,
}

#[derive(Debug, Serialize)]
pub struct UpsertResponse {
    pub upserted: usize,
    /// Models that encoded and indexed the documents.
    pub models: Vec<String>,
    /// Per model, ids of documents cut at the model's `max_tokens`.
    pub truncated: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct DocumentOut {
    pub id: String,
    pub text: String,
    pub metadata: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Document> for DocumentOut {
    fn from(d: Document) -> Self {
        Self { id: d.id, text: d.text, metadata: d.metadata, created_at: d.created_at, updated_at: d.updated_at }
    }
}

/// `POST /v1/documents`: answered only once every document is durable in the store and in every model's index.
pub async fn upsert(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<UpsertRequest>,
) -> Result<Response, ApiError> {
    let limits = &state.engine.limits;
    if body.documents.is_empty() {
        return Err(ApiError::invalid("`documents` must hold at least one document"));
    }
    if body.documents.len() > limits.max_batch {
        return Err(ApiError::too_large(format!(
            "{} documents in one request; the limit is {} (send several requests)",
            body.documents.len(),
            limits.max_batch
        )));
    }
    let mut documents: Vec<NewDocument> = Vec::with_capacity(body.documents.len());
    let mut position: HashMap<String, usize> = HashMap::new();
    for (i, d) in body.documents.into_iter().enumerate() {
        let doc = NewDocument { id: d.id, text: d.text, metadata: d.metadata.unwrap_or_else(|| serde_json::json!({})) };
        validate_document(&doc, limits).map_err(|m| ApiError::invalid(format!("documents[{i}]: {m}")))?;
        // An id given twice is written once, as its last version (as if the documents were sent one by one).
        match position.get(&doc.id) {
            Some(&earlier) => documents[earlier] = doc,
            None => {
                position.insert(doc.id.clone(), documents.len());
                documents.push(doc);
            }
        }
    }
    let report = state.engine.upsert(documents).await?;
    Ok(axum::Json(UpsertResponse { upserted: report.upserted, models: report.models, truncated: report.truncated })
        .into_response())
}

/// `GET /v1/documents/{id}`
pub async fn get_one(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    match state.engine.get(&id).await? {
        Some(doc) => Ok(axum::Json(DocumentOut::from(doc)).into_response()),
        None => Err(ApiError::not_found("no-such-document", format!("no document with id {id:?}"))),
    }
}

/// `DELETE /v1/documents/{id}`: removed from the store and every index before the answer.
pub async fn delete_one(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    if state.engine.delete(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("no-such-document", format!("no document with id {id:?}")))
    }
}
