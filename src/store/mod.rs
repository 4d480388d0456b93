//! The relational store: documents of the corpus and their embeddings per (model, model version), and the
//! experiments with their exposures, shadow comparisons and feedback. The
//! [`Store`] trait is what the rest of Duet sees; [`sqlite::SqliteStore`] is the embedded default, and a
//! PostgreSQL implementation can follow with its own `migrations/postgres`.

pub mod sqlite;

use std::collections::HashMap;

use async_trait::async_trait;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use sqlite::SqliteStore;

use crate::experiment::{Experiment, ExposureItem, ExposureRecord, ShadowRecord};

/// A document as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    pub id: String,
    pub text: String,
    pub metadata: serde_json::Value,
    pub content_hash: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A document to write.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub id: String,
    pub text: String,
    pub metadata: serde_json::Value,
}

/// One embedding to write, for the document of the same id in the same call.
#[derive(Debug, Clone)]
pub struct NewEmbedding {
    pub model: String,
    pub model_version: String,
    pub document_id: String,
    pub content_hash: String,
    pub vector: Vec<f32>,
}

/// What identifies a stored document's content: used to skip unchanged documents on re-import.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub content_hash: String,
    pub metadata: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {location}: {message}")]
    Open { location: String, message: String },
    #[error("store migration failed: {0}")]
    Migrate(String),
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// What a request under an experiment showed, as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub experiment_id: String,
    pub arm: Option<String>,
    pub items: Vec<ExposureItem>,
}

/// Per-impression outcomes summed over one arm (`arm` is `None` for interleaved impressions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmOutcome {
    pub arm: Option<String>,
    pub impressions: u64,
    /// Impressions with at least one click.
    pub clicked: u64,
    /// Impressions with at least one conversion.
    pub converted: u64,
    /// Sum and sum of squares of 1 / (position of the first click), 0 for impressions without a click.
    pub rr_sum: f64,
    pub rr_squares: f64,
}

/// Interleaved impressions by outcome: team 0 or 1 got more credited clicks, both the same, or no click.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InterleaveCounts {
    pub impressions: u64,
    pub wins: [u64; 2],
    pub ties: u64,
    pub no_click: u64,
    /// Credited clicks per team.
    pub clicks: [u64; 2],
}

/// One shadow comparison, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowRow {
    pub jaccard: f64,
    pub rbo: f64,
    pub latency_ms: f64,
}

/// SHA-256 of a document's text, hex.
pub fn content_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Everything Duet keeps in SQL. Implementations must make [`Store::upsert`] atomic: documents and their
/// embeddings land together or not at all.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts or replaces documents (keeping `created_at` of existing ones) and writes the given embeddings, in
    /// one transaction. Embeddings of other models for a replaced text become stale (their hash differs).
    async fn upsert(&self, documents: &[NewDocument], embeddings: &[NewEmbedding]) -> Result<(), StoreError>;
    /// Writes embeddings for documents already stored.
    async fn put_embeddings(&self, embeddings: &[NewEmbedding]) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<Document>, StoreError>;
    async fn get_many(&self, ids: &[String]) -> Result<HashMap<String, Document>, StoreError>;
    async fn fingerprints(&self, ids: &[String]) -> Result<HashMap<String, Fingerprint>, StoreError>;
    /// Deletes a document and its embeddings; returns whether it existed.
    async fn delete(&self, id: &str) -> Result<bool, StoreError>;
    async fn count(&self) -> Result<u64, StoreError>;
    /// Every valid (current-text) embedding of a model version, as (document id, vector).
    async fn embeddings(&self, model: &str, model_version: &str) -> Result<Vec<(String, Vec<f32>)>, StoreError>;
    /// Up to `limit` documents with no valid embedding for a model version, in id order after `after`.
    async fn missing_embeddings(
        &self,
        model: &str,
        model_version: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Document>, StoreError>;

    /// Every experiment, oldest first.
    async fn experiments(&self) -> Result<Vec<Experiment>, StoreError>;
    /// Inserts or updates an experiment; when it is the default, the previous default is unset in the same
    /// transaction.
    async fn save_experiment(&self, experiment: &Experiment) -> Result<(), StoreError>;
    /// Writes a batch of exposures (with their shown items) and shadow comparisons in one transaction. A request
    /// id already logged is ignored.
    async fn write_exposures(&self, exposures: &[ExposureRecord], shadows: &[ShadowRecord]) -> Result<(), StoreError>;
    /// What a request showed, if it was logged.
    async fn shown(&self, request_id: &str) -> Result<Option<Shown>, StoreError>;
    /// Records a feedback event; returns false when the same (request, document, event) was recorded before.
    async fn add_feedback(
        &self,
        request_id: &str,
        doc_id: &str,
        event: &str,
        position: u32,
    ) -> Result<bool, StoreError>;
    /// Documents clicked in a request.
    async fn clicked(&self, request_id: &str) -> Result<Vec<String>, StoreError>;
    /// Outcomes per arm of an experiment's impressions.
    async fn arm_outcomes(&self, experiment_id: &str) -> Result<Vec<ArmOutcome>, StoreError>;
    /// Interleaving outcomes of an experiment whose teams are `teams`.
    async fn interleave_counts(&self, experiment_id: &str, teams: [&str; 2]) -> Result<InterleaveCounts, StoreError>;
    /// Served latency (ms) of every impression, by arm (`None` when interleaved).
    async fn latencies(&self, experiment_id: &str) -> Result<Vec<(Option<String>, f64)>, StoreError>;
    /// Every shadow comparison of an experiment.
    async fn shadow_rows(&self, experiment_id: &str) -> Result<Vec<ShadowRow>, StoreError>;

    /// Closes connections (checkpointing the write-ahead log).
    async fn close(&self);
}
