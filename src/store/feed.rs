//! The change feed: every write to the store also appends, in the same transaction, one row per thing it changed
//! (a document, an experiment, a setting, a model's versions) with a sequence number that only grows, in commit
//! order. Replicas over one store poll it from the last sequence they applied and re-read the current state of
//! what changed, so applying a change twice, or out of order with their own writes, is harmless. Plain data;
//! uses nothing of Duet's above the store.

use serde::Serialize;

use super::StoreError;

/// What a change row names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A document was inserted, replaced or deleted (the key is its id).
    Document,
    /// An experiment was created or changed (the key is its id).
    Experiment,
    /// A server-wide setting changed (the key is the setting's name).
    Setting,
    /// A model's versions changed state (the key is the model's name).
    Model,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 4] =
        [ChangeKind::Document, ChangeKind::Experiment, ChangeKind::Setting, ChangeKind::Model];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Document => "document",
            ChangeKind::Experiment => "experiment",
            ChangeKind::Setting => "setting",
            ChangeKind::Model => "model",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown change kind {text:?}")))
    }
}

/// One row of the change feed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Grows with every change, in commit order (gaps are possible: a rolled-back transaction uses numbers).
    pub seq: i64,
    pub kind: ChangeKind,
    pub key: String,
    /// The [`super::Store::origin`] of the store handle that wrote it: a replica skips its own changes.
    pub origin: String,
    /// When it was committed (RFC 3339 UTC).
    pub at: String,
}
