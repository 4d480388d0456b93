//! One served model version: its encoder queue, its index, where it stands in its life cycle, and its back-fill
//! progress. Uses the encoder, the index and the store's version states; the transitions themselves are the
//! engine's ([`super::lifecycle`], [`super::prepare`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

use super::EngineError;
use crate::encoder::{EncoderHandle, EncoderHealth, ModelInfo};
use crate::index::{IndexParams, VectorIndex};
use crate::store::VersionState;

/// Where a served model version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    /// Loading its network, probing it, reading its stored embeddings.
    Loading,
    /// Encoding the stored documents that have no usable embedding for this version.
    Backfilling,
    Ready,
    /// Replaced or retired: finishing the requests that hold it.
    Draining,
    /// Preparing failed; not served (the reason says why).
    Failed,
    /// Its encoder panicked or its session kept failing, and is being rebuilt (read from the encoder).
    Restarting,
    /// Its encoder cannot encode (rebuilding it failed); tried again every few seconds while requests come.
    Stopped,
}

const STATES: [ModelState; 5] =
    [ModelState::Loading, ModelState::Backfilling, ModelState::Ready, ModelState::Draining, ModelState::Failed];

impl ModelState {
    /// The state the registry keeps (restarting and stopped are the encoder's, not the version's).
    pub fn version_state(self) -> VersionState {
        match self {
            ModelState::Loading => VersionState::Loading,
            ModelState::Backfilling => VersionState::Backfilling,
            ModelState::Ready | ModelState::Restarting | ModelState::Stopped => VersionState::Ready,
            ModelState::Draining => VersionState::Draining,
            ModelState::Failed => VersionState::Failed,
        }
    }
}

/// A model's state, with what it is doing or why it failed.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub state: ModelState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How far a back-fill has got.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillProgress {
    pub done: u64,
    pub total: u64,
    pub remaining: u64,
    /// Documents encoded per second since the back-fill began.
    pub per_second: f64,
    /// Seconds left at that pace; absent until a first batch is done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
}

/// One model version as served (or being prepared beside the serving one).
pub struct ServedModel {
    pub info: Arc<ModelInfo>,
    pub encoder: EncoderHandle,
    pub index: Arc<VectorIndex>,
    /// The manifest folder it was loaded from.
    pub path: PathBuf,
    /// A [`ModelState`] as its index in `STATES`.
    state: AtomicU8,
    /// Documents encoded by its back-fill, and how many it had to encode.
    done: AtomicU64,
    total: AtomicU64,
    backfill_started: Mutex<Option<Instant>>,
    failure: Mutex<Option<String>>,
    /// Set when a change abandons it (retired, or the engine closes): its back-fill stops at the next batch.
    cancelled: AtomicBool,
}

impl ServedModel {
    pub fn new(info: Arc<ModelInfo>, encoder: EncoderHandle, index: Arc<VectorIndex>, path: PathBuf) -> Self {
        Self {
            info,
            encoder,
            index,
            path,
            state: AtomicU8::new(0),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            backfill_started: Mutex::new(None),
            failure: Mutex::new(None),
            cancelled: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> ModelState {
        STATES[self.state.load(Ordering::Acquire) as usize]
    }

    pub(super) fn set_state(&self, state: ModelState) {
        let at = STATES.iter().position(|s| *s == state).expect("a listed state");
        self.state.store(at as u8, Ordering::Release);
    }

    pub(super) fn fail(&self, reason: String) {
        *self.failure.lock() = Some(reason);
        self.set_state(ModelState::Failed);
    }

    pub(super) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Starts counting a back-fill of `total` documents.
    pub(super) fn begin_backfill(&self, total: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        *self.backfill_started.lock() = Some(Instant::now());
        self.set_state(ModelState::Backfilling);
    }

    pub(super) fn add_done(&self, count: u64) {
        self.done.fetch_add(count, Ordering::Relaxed);
        // Documents written while back-filling can add to what it encodes.
        self.total.fetch_max(self.done.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn backfill(&self) -> Option<BackfillProgress> {
        let started = (*self.backfill_started.lock())?;
        let (done, total) = (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed));
        let seconds = started.elapsed().as_secs_f64();
        let per_second = if seconds > 0.0 { done as f64 / seconds } else { 0.0 };
        let remaining = total.saturating_sub(done);
        let eta_seconds = (done > 0 && per_second > 0.0).then(|| remaining as f64 / per_second);
        Some(BackfillProgress { done, total, remaining, per_second, eta_seconds })
    }

    /// Its index is ready and its encoder can encode.
    pub fn is_ready(&self) -> bool {
        self.status().state == ModelState::Ready
    }

    /// The state and, unless ready, why: the index's, unless the encoder cannot encode now.
    pub fn status(&self) -> ModelStatus {
        match self.encoder.health() {
            EncoderHealth::Serving => {}
            EncoderHealth::Restarting(reason) => {
                return ModelStatus { state: ModelState::Restarting, reason: Some(reason) }
            }
            EncoderHealth::Stopped(reason) => return ModelStatus { state: ModelState::Stopped, reason: Some(reason) },
        }
        let state = self.state();
        let reason = match state {
            ModelState::Loading => Some("loading the network and reading the stored embeddings".to_string()),
            ModelState::Backfilling => Some(match self.backfill() {
                Some(p) => {
                    format!("encoding the documents without a usable stored embedding ({} of {})", p.done, p.total)
                }
                None => "encoding the documents without a usable stored embedding".to_string(),
            }),
            ModelState::Ready => None,
            ModelState::Draining => Some("replaced or retired; finishing the requests in flight".to_string()),
            ModelState::Failed => self.failure.lock().clone(),
            ModelState::Restarting | ModelState::Stopped => None,
        };
        ModelStatus { state, reason }
    }

    /// Ready, or the error a request for it gets.
    pub(super) fn check_ready(&self) -> Result<(), EngineError> {
        match self.state() {
            ModelState::Ready | ModelState::Draining => Ok(()),
            ModelState::Failed => Err(EngineError::Failed {
                model: self.info.name.clone(),
                reason: self.failure.lock().clone().unwrap_or_default(),
            }),
            ModelState::Loading | ModelState::Backfilling => Err(EngineError::NotReady(self.info.name.clone())),
            // Never stored: the encoder answers for itself.
            ModelState::Restarting | ModelState::Stopped => Ok(()),
        }
    }

    pub fn index_params(&self) -> &IndexParams {
        self.index.params()
    }
}
