//! The model registry's rows and queries: every version of every model with its life-cycle state (the engine
//! decides the transitions, the store only keeps them), each state change as an event, the server-wide settings
//! changed at run time, and the per-version embedding counts a back-fill needs. Plain data; uses nothing of
//! Duet's above the store.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Where a model version stands in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// Its network and tokenizer are being loaded and probed, its stored embeddings read.
    Loading,
    /// Encoding the stored documents that have no embedding for it, beside the serving version (if any).
    Backfilling,
    /// Serving: searches and writes go to it.
    Ready,
    /// Replaced or retired; finishing the requests that hold it.
    Draining,
    /// Not served; its embeddings are kept for a rollback until the retention period ends.
    Retired,
    /// Could not be loaded or back-filled (the reason says why); not served.
    Failed,
}

impl VersionState {
    pub const ALL: [VersionState; 6] = [
        VersionState::Loading,
        VersionState::Backfilling,
        VersionState::Ready,
        VersionState::Draining,
        VersionState::Retired,
        VersionState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Loading => "loading",
            VersionState::Backfilling => "backfilling",
            VersionState::Ready => "ready",
            VersionState::Draining => "draining",
            VersionState::Retired => "retired",
            VersionState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown model version state {text:?}")))
    }
}

/// One version of a model, as registered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelVersion {
    pub model: String,
    pub version: String,
    /// The manifest folder it was loaded from.
    pub path: String,
    pub state: VersionState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it entered its state.
    pub since: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
    /// When its embeddings were removed (after the retention period): it can no longer be rolled back to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purged_at: Option<String>,
}

/// One state change of a model version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelEvent {
    pub version: String,
    pub state: VersionState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: String,
}

/// What the store keeps of the models (every store implements it).
#[async_trait]
pub trait ModelRegistry: Send + Sync {
    /// Every registered version of every model, by model then creation time.
    async fn model_versions(&self) -> Result<Vec<ModelVersion>, StoreError>;
    /// Sets a version's state (inserting the version when new) and records the change as an event, in one
    /// transaction. A version that becomes `ready` is the model's only ready one: any other ready version of the
    /// model must have been moved out of `ready` first (in the same call, listed before it).
    async fn set_version_states(&self, changes: &[ModelVersion]) -> Result<(), StoreError>;
    /// The latest `limit` state changes of a model, newest first.
    async fn model_events(&self, model: &str, limit: u32) -> Result<Vec<ModelEvent>, StoreError>;
    /// Removes a version's embeddings and marks it purged; returns how many embeddings went.
    async fn purge_version(&self, model: &str, version: &str, at: &str) -> Result<u64, StoreError>;
    /// How many stored documents have, and have no, valid embedding for a version: (stored, missing).
    async fn embedding_counts(&self, model: &str, version: &str) -> Result<(u64, u64), StoreError>;
    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError>;
}
