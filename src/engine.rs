//! The engine: the served models (encoder + index each) over one store, and the operations the API and the CLI
//! share — upsert, delete, search, embed — with their consistency rules:
//!
//! - An upsert is encoded by every model first (outside any lock, each model on its own thread), then written to
//!   the store in one transaction, then applied to every index, under one write lock so that concurrent writes
//!   to the same id land in the same order in the store and in every index. That commit-and-index phase runs as
//!   a task of its own ([`write`]): a client that disconnects, or a request that times out, cannot stop it
//!   between the store and the indexes.
//! - At start-up, indexes are rebuilt from the stored embeddings of each model's current version; only documents
//!   without one, or whose stored one is unusable (non-finite, wrong length), are encoded ([`prepare`]). A model
//!   serves searches once its index is ready; one that fails to prepare is reported failed and leaves the others
//!   serving.
//! - Exact and high-`ef` searches over a graph are bounded by a semaphore; beyond it they are refused at once.

mod prepare;
#[cfg(test)]
mod tests;
mod write;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::config::{Config, Limits};
pub use crate::encoder::Priority;
use crate::encoder::{self, EncoderError, EncoderHandle, EncoderHealth, Manifest, ModelInfo, Side};
use crate::index::{Hit, IndexError, IndexParams, SearchMethod, VectorIndex};
use crate::metrics::Metrics;
use crate::store::{Document, NewDocument, SqliteStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown model `{name}`; known models: {}", known.join(", "))]
    UnknownModel { name: String, known: Vec<String> },
    #[error("model `{0}` is still building its index; retry shortly")]
    NotReady(String),
    #[error("model `{model}` failed to prepare its index and is not served: {reason}")]
    Failed { model: String, reason: String },
    #[error("too many exact or high-`ef` searches are running (at most {limit}); retry shortly, or search without `exact` and with a lower `ef`")]
    Busy { limit: usize },
    #[error("two models are named `{0}`")]
    DuplicateModel(String),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("internal task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// One model as served: its encoding queue, its index and where its preparation stands.
pub struct ServedModel {
    pub info: Arc<ModelInfo>,
    pub encoder: EncoderHandle,
    pub index: Arc<VectorIndex>,
    /// A [`ModelState`] as its index.
    state: AtomicU8,
    /// Documents encoded so far while preparing.
    encoded: AtomicUsize,
    failure: Mutex<Option<String>>,
}

/// Where a model's index stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    /// Reading its stored embeddings.
    Loading,
    /// Encoding the documents that have no usable stored embedding.
    Encoding,
    Ready,
    /// Preparing failed; the model is not served until a restart.
    Failed,
    /// Its encoder panicked or its session kept failing, and is being rebuilt (not stored: read from the encoder).
    Restarting,
    /// Its encoder cannot encode (rebuilding it failed); tried again every few seconds while requests come.
    Stopped,
}

const STATES: [ModelState; 4] = [ModelState::Loading, ModelState::Encoding, ModelState::Ready, ModelState::Failed];

/// A model's state, with what it is doing or why it failed.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub state: ModelState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ServedModel {
    pub fn new(info: Arc<ModelInfo>, encoder: EncoderHandle, index: Arc<VectorIndex>) -> Self {
        Self { info, encoder, index, state: AtomicU8::new(0), encoded: AtomicUsize::new(0), failure: Mutex::new(None) }
    }

    pub fn state(&self) -> ModelState {
        STATES[self.state.load(Ordering::Acquire) as usize]
    }

    fn set_state(&self, state: ModelState) {
        let at = STATES.iter().position(|s| *s == state).expect("a listed state");
        self.state.store(at as u8, Ordering::Release);
    }

    fn fail(&self, reason: String) {
        *self.failure.lock() = Some(reason);
        self.set_state(ModelState::Failed);
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
            ModelState::Loading => Some("reading the stored embeddings".to_string()),
            ModelState::Encoding => Some(format!(
                "encoding the documents without a usable stored embedding ({} done)",
                self.encoded.load(Ordering::Relaxed)
            )),
            ModelState::Ready => None,
            ModelState::Failed => self.failure.lock().clone(),
            ModelState::Restarting | ModelState::Stopped => None,
        };
        ModelStatus { state, reason }
    }

    /// Ready, or the error a request for it gets.
    fn check_ready(&self) -> Result<(), EngineError> {
        match self.state() {
            ModelState::Ready => Ok(()),
            ModelState::Failed => Err(EngineError::Failed {
                model: self.info.name.clone(),
                reason: self.failure.lock().clone().unwrap_or_default(),
            }),
            ModelState::Loading | ModelState::Encoding => Err(EngineError::NotReady(self.info.name.clone())),
            // Never stored: the encoder answers for itself.
            ModelState::Restarting | ModelState::Stopped => Ok(()),
        }
    }

    pub fn index_params(&self) -> &IndexParams {
        self.index.params()
    }
}

/// How one model's index was prepared at start-up.
#[derive(Debug, Clone, Serialize)]
pub struct PreparedIndex {
    pub model: String,
    pub from_store: usize,
    pub encoded: usize,
    /// Stored embeddings found unusable (non-finite, wrong length) and encoded again.
    pub reencoded: usize,
    pub seconds: f64,
}

/// The result of an upsert.
#[derive(Debug, Clone, Serialize)]
pub struct UpsertReport {
    pub upserted: usize,
    /// Models that encoded and indexed the documents (a model that failed to prepare is left out).
    pub models: Vec<String>,
    /// Per model, the ids of documents cut at the model's `max_tokens`.
    pub truncated: BTreeMap<String, Vec<String>>,
}

/// One search, as the API needs it to answer.
#[derive(Debug, Clone)]
pub struct SearchResult {
    pub model: Arc<ModelInfo>,
    pub hits: Vec<(Hit, Document)>,
    pub method: SearchMethod,
    pub ef: Option<usize>,
    pub query_truncated: bool,
    pub encode_seconds: f64,
    pub search_seconds: f64,
    pub fetch_seconds: f64,
}

/// What a search asks for.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub model: String,
    pub query: String,
    pub k: usize,
    pub ef: Option<usize>,
    pub exact: bool,
    /// Live traffic, or background work (evaluation jobs) that waits for it.
    pub priority: Priority,
}

pub struct Engine {
    store: Arc<dyn Store>,
    /// Replaced as a whole, so a model can be added or swapped without stopping searches.
    models: RwLock<Arc<BTreeMap<String, Arc<ServedModel>>>>,
    /// Held by the commit-and-index phase of every write (a task of its own); readers never take it.
    writes: Arc<tokio::sync::Mutex<()>>,
    /// Permits for exact and high-`ef` searches over a graph.
    heavy_searches: Arc<Semaphore>,
    /// Changed by promoting an experiment's winner (and persisted in the store).
    default_model: RwLock<String>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
}

/// Checks a document against the limits; the message is meant for the client.
pub fn validate_document(doc: &NewDocument, limits: &Limits) -> Result<(), String> {
    if doc.id.is_empty() {
        return Err("document id must not be empty".into());
    }
    if doc.id.len() > limits.max_id_bytes {
        return Err(format!("document id is {} bytes long; the limit is {}", doc.id.len(), limits.max_id_bytes));
    }
    if doc.id.chars().any(char::is_control) {
        return Err(format!("document id {:?} contains control characters", doc.id));
    }
    if crate::util::json::is_blank(&doc.text) {
        return Err(format!("document {:?} has an empty text", doc.id));
    }
    let chars = doc.text.chars().count();
    if chars > limits.max_document_chars {
        return Err(format!(
            "document {:?} has {chars} characters; the limit is {}",
            doc.id, limits.max_document_chars
        ));
    }
    if !doc.metadata.is_object() {
        return Err(format!("metadata of document {:?} must be a JSON object", doc.id));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, EngineError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

impl Engine {
    /// Opens the store and loads every configured model (networks and tokenizers); indexes are empty until
    /// [`Engine::prepare_indexes`].
    pub async fn open(config: &Config) -> Result<Arc<Self>, EngineError> {
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.store).await?);
        let env = encoder::runtime::environment(config.onnxruntime.as_deref())?;
        let mut models = BTreeMap::new();
        let mut first_model = None;
        for entry in &config.models {
            let resolved = Manifest::load(&entry.path)?;
            let settings = entry.encoder.unwrap_or(config.encoder);
            let started = Instant::now();
            let loaded = encoder::onnx::load(&resolved, env, settings.session())?;
            let info = loaded.info().clone();
            tracing::info!(model = %info.name, kind = ?info.kind, version = %info.version,
                seconds = started.elapsed().as_secs_f64(), "model loaded");
            if models.contains_key(&info.name) {
                return Err(EngineError::DuplicateModel(info.name));
            }
            let rebuild = encoder::onnx::reloader(resolved, env, settings.session(), info.version.clone());
            let served = ServedModel::new(
                Arc::new(info.clone()),
                EncoderHandle::spawn_supervised(loaded, Some(rebuild), settings.queue(), metrics.clone()),
                Arc::new(VectorIndex::new(info.dimension, entry.index)),
            );
            metrics.documents.with_label_values(&[&info.name]).set(0);
            metrics.encoder_restarts.with_label_values(&[&info.name]).reset();
            first_model.get_or_insert_with(|| info.name.clone());
            models.insert(info.name.clone(), Arc::new(served));
        }
        let default_model = match &config.default_model {
            Some(name) if models.contains_key(name) => name.clone(),
            Some(name) => {
                return Err(EngineError::UnknownModel { name: name.clone(), known: models.keys().cloned().collect() })
            }
            None => first_model.unwrap_or_default(),
        };
        Ok(Arc::new(Self {
            store,
            models: RwLock::new(Arc::new(models)),
            writes: Arc::new(tokio::sync::Mutex::new(())),
            heavy_searches: Arc::new(Semaphore::new(config.limits.max_heavy_searches)),
            default_model: RwLock::new(default_model),
            metrics,
            limits: config.limits,
        }))
    }

    /// The model used when a request names none: `default_model` in the config, else the first configured.
    pub fn default_model(&self) -> String {
        self.default_model.read().clone()
    }

    /// Makes a served model the default (the model used when a request names none).
    pub async fn set_default_model(&self, name: &str) -> Result<(), EngineError> {
        self.model(name)?;
        *self.default_model.write() = name.to_string();
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// All served models, by name.
    pub fn models(&self) -> Arc<BTreeMap<String, Arc<ServedModel>>> {
        self.models.read().clone()
    }

    pub fn model(&self, name: &str) -> Result<Arc<ServedModel>, EngineError> {
        let models = self.models();
        models.get(name).cloned().ok_or_else(|| EngineError::UnknownModel {
            name: name.to_string(),
            known: models.keys().cloned().collect(),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.models().values().all(|m| m.is_ready())
    }

    fn ready_model(&self, name: &str) -> Result<Arc<ServedModel>, EngineError> {
        let model = self.model(name)?;
        model.check_ready()?;
        Ok(model)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Document>, EngineError> {
        Ok(self.store.get(id).await?)
    }

    /// Encodes texts with a model (its index need not be ready).
    pub async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        side: Side,
    ) -> Result<(Arc<ModelInfo>, encoder::Encoded), EngineError> {
        let model = self.model(model)?;
        let encoded = model.encoder.encode(texts, side).await?;
        Ok((model.info.clone(), encoded))
    }

    /// Encodes the query, searches the model's index and fetches the documents.
    pub async fn search(&self, q: SearchQuery) -> Result<SearchResult, EngineError> {
        let model = self.ready_model(&q.model)?;
        // Taken before encoding, so that a refusal is immediate; released when the index search ends.
        let permit = self.heavy_search_permit(&model, &q)?;
        let started = Instant::now();
        let encoded = model.encoder.encode_with(vec![q.query], Side::Query, q.priority).await?;
        let encode_seconds = started.elapsed().as_secs_f64();
        let query_truncated = encoded.truncated.first().copied().unwrap_or(false);
        let vector = encoded.vectors.into_iter().next().unwrap_or_default();

        let started = Instant::now();
        let index = model.index.clone();
        let (k, ef, exact) = (q.k, q.ef, q.exact);
        let outcome = blocking(move || {
            let _permit = permit;
            index.search(&vector, k, ef, exact)
        })
        .await?;
        let search_seconds = started.elapsed().as_secs_f64();
        self.metrics
            .search_duration
            .with_label_values(&[model.info.name.as_str(), outcome.method.as_str()])
            .observe(search_seconds);

        let started = Instant::now();
        let ids: Vec<String> = outcome.hits.iter().map(|h| h.id.to_string()).collect();
        let mut documents = self.store.get_many(&ids).await?;
        // A document deleted between the index read and the store read is left out.
        let hits = outcome.hits.into_iter().filter_map(|h| documents.remove(&*h.id).map(|d| (h, d))).collect();
        Ok(SearchResult {
            model: model.info.clone(),
            hits,
            method: outcome.method,
            ef: outcome.ef,
            query_truncated,
            encode_seconds,
            search_seconds,
            fetch_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// A search is heavy when the model has a graph and the search asks for `exact` or an `ef` above
    /// `heavy_ef_above` (without a graph every search is exact over fewer than `exact_below` documents). Heavy
    /// searches need a permit; with none left they are refused at once.
    fn heavy_search_permit(
        &self,
        model: &ServedModel,
        q: &SearchQuery,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, EngineError> {
        let heavy = model.index.has_graph() && (q.exact || q.ef.is_some_and(|ef| ef > self.limits.heavy_ef_above));
        if !heavy {
            return Ok(None);
        }
        match self.heavy_searches.clone().try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => {
                self.metrics.heavy_searches_refused.with_label_values(&[model.info.name.as_str()]).inc();
                Err(EngineError::Busy { limit: self.limits.max_heavy_searches })
            }
        }
    }

    /// Stops accepting work and closes the store (after the writes in flight).
    pub async fn close(&self) {
        let _write = self.writes.lock().await;
        self.store.close().await;
    }
}
