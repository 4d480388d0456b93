//! The relational store: documents of the corpus and their embeddings per (model, model version), the
//! experiments with their exposures, shadow comparisons and feedback, the model registry, and the change feed
//! that keeps replicas over one store in step. The [`Store`] trait is what the rest of Duet sees;
//! [`sqlite::SqliteStore`] is the embedded default and [`postgres::PgStore`] the shared one, each with its own
//! migrations; [`location`] picks one from the configured location. The rows themselves are plain data in
//! [`records`], [`registry`] and [`feed`]. The store uses only [`crate::util`]: it knows nothing of the layers
//! above it.

pub mod feed;
pub mod header;
pub mod location;
pub mod postgres;
pub mod records;
pub mod registry;
pub mod sqlite;

use std::collections::HashMap;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

pub use feed::{Change, ChangeKind};
pub use location::{open, PostgresSettings, StoreLocation};
pub use postgres::PgStore;
pub use records::{
    Arm, ArmOutcome, Document, Experiment, ExposureItem, ExposureLatency, ExposureRecord, Fingerprint, GradedFeedback,
    InterleaveCounts, InterleaveImpression, Mode, NewDocument, NewEmbedding, Promotion, ShadowRecord, ShadowRow, Shown,
    Status, Versions,
};
pub use registry::{ModelEvent, ModelRegistry, ModelVersion, VersionState};
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the folder of the store at {location}")]
    CreateDir {
        location: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store at {location}")]
    Open {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot read the store file {location}")]
    Read {
        location: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to open the store at {location}: {reason}")]
    NotADatabase { location: String, reason: String },
    #[error("store migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database cannot be reached (or refuses connections, or is too busy to answer in time): the same
    /// request can succeed once it is back. Nothing of the failed call was committed.
    #[error("the store is unavailable; retry shortly")]
    Unavailable(#[source] sqlx::Error),
    #[error("store query failed")]
    Query(#[source] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            Self::Unavailable(err)
        } else {
            Self::Query(err)
        }
    }
}

impl StoreError {
    /// Whether the store could not be reached (as opposed to a query or the data being wrong).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Errors that mean "the database is not there right now" rather than "this query is wrong": lost or refused
/// connections, an exhausted pool, a server shutting down or starting, too many clients (PostgreSQL SQLSTATE
/// classes 08, 57P0x, 53300), a statement cancelled by its timeout (57014), and SQLite's busy and locked
/// (5, 6 and their extended codes).
fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300" | "57014")
                || (code.len() < 5 && code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)))
        }),
        _ => false,
    }
}

/// A vector as both stores keep it: its f32 values, little-endian, one after the other.
fn vector_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The vector stored as `bytes` for document `id`.
fn bytes_to_vector(id: &str, bytes: &[u8]) -> Result<Vec<f32>, StoreError> {
    if bytes.len() % 4 != 0 {
        return Err(StoreError::Corrupt(format!("embedding of {id} has {} bytes, not a multiple of 4", bytes.len())));
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// SHA-256 of a document's text, hex.
pub fn content_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Everything Duet keeps in SQL (the model registry's part is [`ModelRegistry`]). Implementations must make [`Store::upsert`] atomic: documents and their
/// embeddings land together or not at all.
#[async_trait]
pub trait Store: ModelRegistry + Send + Sync + 'static {
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
    /// Every valid (current-text) embedding of a model version, as (document id, vector). A vector that cannot
    /// be decoded comes back empty; the values are as stored (the caller checks them).
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
    /// transaction. A promotion, once stored, is never replaced.
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
    /// Sets the grade of a recorded feedback event (a rater's relevance grade; a later one replaces it).
    async fn set_feedback_grade(
        &self,
        request_id: &str,
        doc_id: &str,
        event: &str,
        grade: f64,
    ) -> Result<(), StoreError>;
    /// Every graded feedback event of an experiment, with the query of the search it is about.
    async fn graded_feedback(&self, experiment_id: &str) -> Result<Vec<GradedFeedback>, StoreError>;
    /// Every impression of an experiment whose teams are `teams`, oldest first (by logging time, then as
    /// logged), with the clicks credited to each team: what `interleave_counts` sums, one row per impression.
    async fn interleave_impressions(
        &self,
        experiment_id: &str,
        teams: [&str; 2],
    ) -> Result<Vec<InterleaveImpression>, StoreError>;
    /// Outcomes of an experiment's impressions per arm and model versions, by arm, then first served first.
    async fn arm_outcomes(&self, experiment_id: &str) -> Result<Vec<ArmOutcome>, StoreError>;
    /// Interleaving outcomes of an experiment whose teams are `teams`, per the teams' model versions, first served
    /// first.
    async fn interleave_counts(
        &self,
        experiment_id: &str,
        teams: [&str; 2],
    ) -> Result<Vec<InterleaveCounts>, StoreError>;
    /// Served latency (ms) of every impression, by arm (`None` when interleaved) and model versions.
    async fn latencies(&self, experiment_id: &str) -> Result<Vec<ExposureLatency>, StoreError>;
    /// Every shadow comparison of an experiment.
    async fn shadow_rows(&self, experiment_id: &str) -> Result<Vec<ShadowRow>, StoreError>;

    /// Every document, in id order after `after`, up to `limit` (a replica keeps them in memory).
    async fn documents_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<Document>, StoreError>;
    /// The valid (current-text) stored embeddings of a model version for some documents, by document id.
    async fn embeddings_of(
        &self,
        model: &str,
        model_version: &str,
        ids: &[String],
    ) -> Result<HashMap<String, Vec<f32>>, StoreError>;

    /// This handle's identity in the change feed: random for every open, written beside each change it makes.
    fn origin(&self) -> &str;
    /// Changes committed after sequence `after`, oldest first, at most `limit`. A change is listed only once
    /// every change with a smaller sequence is committed and listed too.
    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<Change>, StoreError>;
    /// The sequence of the latest change (0 when there is none).
    async fn last_change(&self) -> Result<i64, StoreError>;
    /// Deletes the changes committed before `before` (RFC 3339); returns how many went.
    async fn prune_changes(&self, before: &str) -> Result<u64, StoreError>;
    /// A cheap round trip: whether the store answers now.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes connections (checkpointing the write-ahead log).
    async fn close(&self);
}
