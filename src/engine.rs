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

mod backfill;
pub mod documents;
mod follow;
pub mod health;
mod lifecycle;
mod model;
mod prepare;
mod snapshots;
#[cfg(test)]
mod tests;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::{Config, LifecycleSettings, Limits};
pub use crate::encoder::Priority;
use crate::encoder::{self, EncoderError, ModelInfo, Side};
use crate::index::{Hit, IndexError, SearchMethod};
use crate::metrics::Metrics;
use crate::store::{Document, ModelVersion, NewDocument, Store, StoreError, VersionState};

/// The store setting that keeps the default model chosen at run time.
const DEFAULT_MODEL_SETTING: &str = "default_model";
pub use lifecycle::{ModelDetail, VersionOut};
pub use model::{BackfillProgress, ModelState, ModelStatus, ServedModel};

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
    /// An embeddings request asked for more (or fewer than one) components than the model serves.
    #[error("`dimensions` must be 1 to {dimension} for model `{model}` (its width); {asked} was asked for")]
    BadDimensions { model: String, asked: usize, dimension: usize },
    #[error("a model named `{0}` is already served or being added")]
    ModelExists(String),
    #[error("model path `{path}` is not inside the model root {root} (models_dir): only folders under it can be loaded through the API")]
    OutsideModelRoot { path: String, root: String },
    #[error("model path `{path}`: {reason}")]
    BadModelPath { path: String, reason: String },
    #[error("model `{model}` already serves version {version} from that folder")]
    SameVersion { model: String, version: String },
    #[error("model `{model}` is changing already (version {version} is {state}); wait for it to finish, or retire the model")]
    ChangeInProgress { model: String, version: String, state: &'static str },
    #[error("model `{model}` has no previous version to roll back to{reason}")]
    NoPrevious { model: String, reason: String },
    #[error("model `{0}` is the default model; make another model the default before retiring it")]
    RetireDefault(String),
    #[error("model name {0:?} is not valid: use 1 to 64 letters, digits, `.`, `_` or `-`")]
    BadModelName(String),
    #[error("the model in `{path}` cannot be served")]
    BadModel {
        path: String,
        #[source]
        source: EncoderError,
    },
    #[error("the change to model `{0}` was abandoned (the model was retired or the server is stopping)")]
    Cancelled(String),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("the store has been unreachable since {since} ({error}); writes are refused until it is back, searches are answered from memory")]
    StoreDown { since: String, error: String },
    #[error("internal task failed")]
    Task(#[from] tokio::task::JoinError),
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
    /// The serving version of each model. Replaced as a whole, so a model can be added or swapped without
    /// stopping searches: a request holds the version it started with.
    models: RwLock<Arc<BTreeMap<String, Arc<ServedModel>>>>,
    /// Versions being prepared beside the serving ones (added, replacing or rolled back to); writes go to them
    /// too, so nothing is missing when they take over.
    candidates: RwLock<Arc<BTreeMap<String, Arc<ServedModel>>>>,
    /// One model change (add, replace, rollback, retire) is decided at a time.
    changes: tokio::sync::Mutex<()>,
    /// Background work of the life cycle (back-fills, drains), stopped at close.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// What loading a model needs: the runtime, the encoder and index settings of config entries by name.
    loader: lifecycle::Loader,
    lifecycle: LifecycleSettings,
    /// Held by the commit-and-index phase of every write (a task of its own); readers never take it.
    writes: Arc<tokio::sync::Mutex<()>>,
    /// Permits for exact and high-`ef` searches over a graph.
    heavy_searches: Arc<Semaphore>,
    /// Changed by promoting an experiment's winner (and persisted in the store).
    default_model: RwLock<String>,
    /// Every stored document, as searches show them.
    documents: documents::DocumentTable,
    /// Whether the store answers, as last seen.
    pub health: health::StoreHealth,
    /// The change-feed sequence read before the documents and indexes were loaded: following starts there.
    feed_start: std::sync::atomic::AtomicI64,
    /// Set by [`Engine::close`]: changes from other servers still in flight are then dropped, not applied.
    closed: std::sync::atomic::AtomicBool,
    /// Commit tasks of writes (upserts, deletes) spawned and not yet finished.
    commits_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Graph snapshots, when a folder for them is configured.
    snapshots: Option<snapshots::Snapshots>,
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
    if doc.text.contains('\0') {
        return Err(format!("document {:?}: text must not contain the NUL character (U+0000)", doc.id));
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
    /// Opens the store and loads the models to serve (networks and tokenizers); indexes are empty until
    /// [`Engine::prepare_indexes`]. The store's model registry decides what is served: each model's serving
    /// version, as last recorded; the config's models are served as well the first time they are seen. (Later
    /// edits of the config's `[[models]]` are applied through the life cycle: see `server`'s config reload.)
    pub async fn open(config: &Config) -> Result<Arc<Self>, EngineError> {
        let metrics = Arc::new(Metrics::new());
        let store = crate::store::open(&config.store, &config.postgres).await?;
        let env = encoder::runtime::environment(config.onnxruntime.as_deref())?;
        let (loader, configured) = lifecycle::Loader::new(config, env)?;
        let rows = store.model_versions().await?;
        // (name, folder, recorded row): the serving versions of the registry, then the config's new models.
        let mut plan: Vec<(String, std::path::PathBuf, Option<ModelVersion>)> = rows
            .iter()
            .filter(|v| v.state == VersionState::Ready)
            .map(|v| (v.model.clone(), v.path.clone().into(), Some(v.clone())))
            .collect();
        for (name, folder) in &configured {
            if !rows.iter().any(|v| &v.model == name) {
                plan.push((name.clone(), folder.clone(), None));
            }
        }
        let mut models = BTreeMap::new();
        // Versions a stop caught draining are retired now.
        let mut changes: Vec<ModelVersion> = rows
            .iter()
            .filter(|v| v.state == VersionState::Draining)
            .map(|v| {
                let at = crate::util::now();
                ModelVersion {
                    state: VersionState::Retired,
                    reason: Some("drained when the server stopped".into()),
                    since: at.clone(),
                    retired_at: Some(at),
                    ..v.clone()
                }
            })
            .collect();
        for (name, folder, row) in plan {
            let loaded = loader.load(&folder, &name, &metrics);
            let served = match (loaded, &row) {
                (Ok(served), _) => served,
                // A version recorded as serving whose folder no longer loads: the others are served.
                (Err(err), Some(row)) => {
                    tracing::error!(model = %name, path = %folder.display(), error = %crate::util::error_chain(&err),
                        "the serving version of this model cannot be loaded; it is not served");
                    let mut failed = row.clone();
                    failed.state = VersionState::Failed;
                    failed.reason = Some(format!("cannot be loaded: {}", crate::util::error_chain(&err)));
                    failed.since = crate::util::now();
                    changes.push(failed);
                    continue;
                }
                (Err(err), None) => return Err(err),
            };
            let at = crate::util::now();
            let serving = ModelVersion {
                model: name.clone(),
                version: served.info.version.clone(),
                path: folder.display().to_string(),
                state: VersionState::Ready,
                reason: Some("serving".into()),
                since: at.clone(),
                created_at: at.clone(),
                retired_at: None,
                purged_at: None,
            };
            match &row {
                None => changes.push(serving),
                Some(row) if row.version != serving.version => {
                    tracing::warn!(model = %name, recorded = %row.version, found = %serving.version,
                        "the files of the serving version changed in place; serving (and encoding for) the new version");
                    let mut old = row.clone();
                    old.state = VersionState::Retired;
                    old.reason = Some(format!("its files changed in place into {}", serving.version));
                    old.since = at.clone();
                    old.retired_at = Some(at.clone());
                    changes.extend([old, serving]);
                }
                // Unchanged: its row stays as recorded.
                Some(_) => {}
            }
            metrics.documents.with_label_values(&[&name]).set(0);
            models.insert(name, Arc::new(served));
        }
        store.set_version_states(&changes).await?;
        let stored_default = store.setting(DEFAULT_MODEL_SETTING).await?.filter(|name| models.contains_key(name));
        let default_model = match (stored_default, &config.default_model) {
            (Some(name), _) => name,
            (None, Some(name)) if models.contains_key(name) => name.clone(),
            (None, Some(name)) => {
                return Err(EngineError::UnknownModel { name: name.clone(), known: models.keys().cloned().collect() })
            }
            (None, None) => configured
                .iter()
                .map(|(name, _)| name)
                .find(|name| models.contains_key(*name))
                .or(models.keys().next())
                .cloned()
                .unwrap_or_default(),
        };
        let (snapshots, rebuilt) = match config.snapshot_dir() {
            Some(dir) => {
                let (snapshots, rebuilt) = snapshots::Snapshots::new(dir);
                (Some(snapshots), Some(rebuilt))
            }
            None => (None, None),
        };
        let engine = Arc::new(Self {
            snapshots,
            store,
            models: RwLock::new(Arc::new(models)),
            candidates: RwLock::new(Arc::new(BTreeMap::new())),
            changes: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
            loader,
            lifecycle: config.lifecycle,
            writes: Arc::new(tokio::sync::Mutex::new(())),
            heavy_searches: Arc::new(Semaphore::new(config.limits.max_heavy_searches)),
            default_model: RwLock::new(default_model),
            documents: documents::DocumentTable::default(),
            health: health::StoreHealth::new(metrics.clone()),
            feed_start: std::sync::atomic::AtomicI64::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
            commits_in_flight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            metrics,
            limits: config.limits,
        });
        for model in engine.models().values() {
            engine.set_state_gauge(&model.info.name, &model.info.version, VersionState::Ready);
        }
        if let Some(rebuilt) = rebuilt {
            engine.start_snapshot_writer(rebuilt);
        }
        Ok(engine)
    }

    /// The model used when a request names none: the promoted one, else `default_model` in the config, else the
    /// first configured.
    pub fn default_model(&self) -> String {
        self.default_model.read().clone()
    }

    /// Makes a served model the default (the model used when a request names none); kept over restarts.
    pub async fn set_default_model(&self, name: &str) -> Result<(), EngineError> {
        self.model(name)?;
        self.store.set_setting(DEFAULT_MODEL_SETTING, name).await?;
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

    /// The serving version of a model; a model still being added is not ready yet.
    pub fn model(&self, name: &str) -> Result<Arc<ServedModel>, EngineError> {
        let models = self.models();
        if let Some(model) = models.get(name) {
            return Ok(model.clone());
        }
        if self.candidates.read().contains_key(name) {
            return Err(EngineError::NotReady(name.to_string()));
        }
        Err(EngineError::UnknownModel { name: name.to_string(), known: models.keys().cloned().collect() })
    }

    pub fn is_ready(&self) -> bool {
        self.models().values().all(|m| m.is_ready())
    }

    fn ready_model(&self, name: &str) -> Result<Arc<ServedModel>, EngineError> {
        let model = self.model(name)?;
        model.check_ready()?;
        Ok(model)
    }

    /// A stored document: read from the store (so that a write another server made is seen at once), else —
    /// while the store cannot be reached — as this server holds it.
    pub async fn get(&self, id: &str) -> Result<Option<Document>, EngineError> {
        if id.contains('\0') {
            // No stored id has one (ids have no control characters), and PostgreSQL cannot even be asked.
            return Ok(None);
        }
        match self.store.get(id).await {
            Ok(found) => Ok(found),
            Err(err) if err.is_unavailable() => {
                self.health.mark_down(crate::util::error_chain(&err));
                Ok(self.documents.get(id).map(|d| (*d).clone()))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Commit tasks of writes still running: they finish even when their request was abandoned.
    pub fn commits_in_flight(&self) -> usize {
        self.commits_in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Refuses a write at once while the store is known to be unreachable.
    fn check_store(&self) -> Result<(), EngineError> {
        if self.health.is_up() {
            return Ok(());
        }
        let status = self.health.status();
        Err(EngineError::StoreDown { since: status.since, error: status.error.unwrap_or_default() })
    }

    /// Notes a store error that says the store is unreachable, so that the next writes are refused at once.
    fn note_store_error(&self, err: &EngineError) {
        if let EngineError::Store(store_error) = err {
            if store_error.is_unavailable() {
                self.health.mark_down(crate::util::error_chain(store_error));
            }
        }
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

    /// Like [`Engine::embed`], with the vectors cut to `dimensions` components and re-normalised (when the model
    /// normalises) — the OpenAI API's `dimensions`. Refused before encoding when it is not 1 to the model's width.
    pub async fn embed_cut(
        &self,
        model: &str,
        texts: Vec<String>,
        side: Side,
        dimensions: Option<usize>,
    ) -> Result<(Arc<ModelInfo>, encoder::Encoded), EngineError> {
        let served = self.model(model)?;
        let width = served.info.dimension;
        if let Some(asked) = dimensions.filter(|&d| d == 0 || d > width) {
            return Err(EngineError::BadDimensions { model: served.info.name.clone(), asked, dimension: width });
        }
        let mut encoded = served.encoder.encode(texts, side).await?;
        if let Some(cut) = dimensions.filter(|&d| d < width) {
            let normalize = served.info.normalize;
            encoded.vectors.iter_mut().for_each(|v| encoder::truncate(v, cut, normalize));
        }
        Ok((served.info.clone(), encoded))
    }

    /// Encodes the query, searches the model's index and fetches the documents, in a `search` span (with the
    /// stages `encode`, `index.search` and `fetch` as its children; the encoder adds `encode.queue_wait` and
    /// `encode.inference` under `encode`).
    pub async fn search(&self, q: SearchQuery) -> Result<SearchResult, EngineError> {
        let span = tracing::info_span!("search", model = %q.model, k = q.k, exact = q.exact);
        self.search_traced(q).instrument(span).await
    }

    async fn search_traced(&self, q: SearchQuery) -> Result<SearchResult, EngineError> {
        let model = self.ready_model(&q.model)?;
        // Taken before encoding, so that a refusal is immediate; released when the index search ends.
        let permit = self.heavy_search_permit(&model, &q)?;
        let started = Instant::now();
        let encoded = model.encoder.encode_query(q.query, q.priority).instrument(tracing::info_span!("encode")).await?;
        let encode_seconds = started.elapsed().as_secs_f64();
        let query_truncated = encoded.truncated.first().copied().unwrap_or(false);
        let vector = encoded.vectors.into_iter().next().unwrap_or_default();

        let started = Instant::now();
        let index = model.index.clone();
        let (k, ef, exact) = (q.k, q.ef, q.exact);
        let span = tracing::info_span!("index.search", method = tracing::field::Empty, hits = tracing::field::Empty);
        let outcome = blocking(move || {
            let _permit = permit;
            let _entered = span.enter();
            let outcome = index.search(&vector, k, ef, exact);
            span.record("method", outcome.method.as_str()).record("hits", outcome.hits.len());
            outcome
        })
        .await?;
        let search_seconds = started.elapsed().as_secs_f64();
        self.metrics
            .search_duration
            .with_label_values(&[model.info.name.as_str(), outcome.method.as_str()])
            .observe(search_seconds);

        let started = Instant::now();
        let hits = self.fetch(outcome.hits).instrument(tracing::info_span!("fetch")).await?;
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

    /// The documents of the hits, best first: from memory, else (a row unreadable at start-up) from the store;
    /// a document deleted since the index read is left out.
    async fn fetch(&self, found: Vec<Hit>) -> Result<Vec<(Hit, Document)>, EngineError> {
        let mut documents: std::collections::HashMap<String, Document> = self
            .documents
            .get_many(found.iter().map(|h| &*h.id))
            .into_iter()
            .map(|(id, d)| (id, Document::clone(&d)))
            .collect();
        let unheld: Vec<String> =
            found.iter().filter(|h| !documents.contains_key(&*h.id)).map(|h| h.id.to_string()).collect();
        // Held in memory unless the stored row could not be read at start-up: those come from the store.
        if !unheld.is_empty() {
            match self.store.get_many(&unheld).await {
                Ok(found) => documents.extend(found),
                // (Or deleted just now.) With the store away they are left out rather than failing the search.
                Err(err) if err.is_unavailable() => {}
                Err(err) => return Err(err.into()),
            }
        }
        // A document deleted between the index read and this read is left out.
        Ok(found.into_iter().filter_map(|h| documents.remove(&*h.id).map(|d| (h, d))).collect())
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
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.stop_changes();
        let _write = self.writes.lock().await;
        self.write_snapshots_locked().await;
        self.store.close().await;
    }
}
