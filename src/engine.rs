//! The engine: the served models (encoder + index each) over one store, and the operations the API and the CLI
//! share — upsert, delete, search, embed — with their consistency rules:
//!
//! - An upsert is encoded by every model first (outside any lock, each model on its own thread), then written to
//!   the store in one transaction, then applied to every index, under one write lock so that concurrent writes
//!   to the same id land in the same order in the store and in every index.
//! - At start-up, indexes are rebuilt from the stored embeddings of each model's current version; only documents
//!   without one are encoded. A model serves searches once its index is ready.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use parking_lot::RwLock;
use serde::Serialize;

use crate::config::{Config, Limits};
pub use crate::encoder::Priority;
use crate::encoder::{self, EncoderError, EncoderHandle, Manifest, ModelInfo, Side};
use crate::index::{Hit, IndexError, IndexParams, SearchMethod, VectorIndex};
use crate::metrics::Metrics;
use crate::store::{content_hash, Document, NewDocument, NewEmbedding, SqliteStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown model `{name}`; known models: {}", known.join(", "))]
    UnknownModel { name: String, known: Vec<String> },
    #[error("model `{0}` is still building its index; retry shortly")]
    NotReady(String),
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

/// One model as served: its encoding queue and its index.
pub struct ServedModel {
    pub info: Arc<ModelInfo>,
    pub encoder: EncoderHandle,
    pub index: Arc<VectorIndex>,
    ready: AtomicBool,
}

impl ServedModel {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
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
    pub seconds: f64,
}

/// The result of an upsert.
#[derive(Debug, Clone, Serialize)]
pub struct UpsertReport {
    pub upserted: usize,
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
    writes: tokio::sync::Mutex<()>,
    default_model: String,
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
            let served = ServedModel {
                info: Arc::new(info.clone()),
                encoder: EncoderHandle::spawn(loaded, settings.queue(), metrics.clone()),
                index: Arc::new(VectorIndex::new(info.dimension, entry.index)),
                ready: AtomicBool::new(false),
            };
            metrics.documents.with_label_values(&[&info.name]).set(0);
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
            writes: tokio::sync::Mutex::new(()),
            default_model,
            metrics,
            limits: config.limits,
        }))
    }

    /// The model used when a request names none: `default_model` in the config, else the first configured.
    pub fn default_model(&self) -> &str {
        &self.default_model
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
        if !model.is_ready() {
            return Err(EngineError::NotReady(model.info.name.clone()));
        }
        Ok(model)
    }

    /// Fills every index: stored embeddings of the model's current version first, then encodes the documents
    /// that have none (new model, new version, or changed text). Marks each model ready when done; the HNSW
    /// graphs are then built in the background (see [`Engine::build_graphs`]).
    pub async fn prepare_indexes(&self) -> Result<Vec<PreparedIndex>, EngineError> {
        let mut reports = Vec::new();
        for model in self.models().values() {
            let started = Instant::now();
            let info = &model.info;
            let stored = self.store.embeddings(&info.name, &info.version).await?;
            let from_store = stored.len();
            let index = model.index.clone();
            blocking(move || index.upsert(stored)).await??;

            let mut encoded = 0;
            let mut after: Option<String> = None;
            loop {
                let batch = self.store.missing_embeddings(&info.name, &info.version, after.as_deref(), 256).await?;
                let Some(last) = batch.last() else { break };
                after = Some(last.id.clone());
                let texts: Vec<String> = batch.iter().map(|d| d.text.clone()).collect();
                let vectors = model.encoder.encode(texts, Side::Document).await?.vectors;
                let embeddings: Vec<NewEmbedding> = batch
                    .iter()
                    .zip(&vectors)
                    .map(|(d, v)| NewEmbedding {
                        model: info.name.clone(),
                        model_version: info.version.clone(),
                        document_id: d.id.clone(),
                        content_hash: d.content_hash.clone(),
                        vector: v.clone(),
                    })
                    .collect();
                self.store.put_embeddings(&embeddings).await?;
                encoded += batch.len();
                let items: Vec<(String, Vec<f32>)> = batch.into_iter().map(|d| d.id).zip(vectors).collect();
                let index = model.index.clone();
                blocking(move || index.upsert(items)).await??;
                tracing::info!(model = %info.name, encoded, "encoded documents without a stored embedding");
            }
            // Ready at once: searches are exact until the HNSW graph, built in the background, is swapped in.
            model.ready.store(true, Ordering::Release);
            self.maintain(model);
            let report = PreparedIndex {
                model: info.name.clone(),
                from_store,
                encoded,
                seconds: started.elapsed().as_secs_f64(),
            };
            tracing::info!(model = %report.model, from_store, encoded, seconds = report.seconds, "index ready");
            reports.push(report);
        }
        Ok(reports)
    }

    /// Builds every graph that is due now, and waits for it (searches go on meanwhile).
    pub async fn build_graphs(&self) -> Result<(), EngineError> {
        for model in self.models().values() {
            let index = model.index.clone();
            if index.needs_rebuild() {
                blocking(move || index.rebuild_graph()).await?;
            }
            self.update_gauges(model);
        }
        Ok(())
    }

    fn update_gauges(&self, model: &ServedModel) {
        let name = model.info.name.as_str();
        self.metrics.documents.with_label_values(&[name]).set(model.index.len() as i64);
        self.metrics.index_deleted.with_label_values(&[name]).set(model.index.dead_in_graph() as i64);
    }

    /// Rebuilds a model's graph in the background when it has grown past `exact_below` or holds too many dead
    /// entries; searches go on meanwhile.
    fn maintain(&self, model: &Arc<ServedModel>) {
        self.update_gauges(model);
        if model.index.needs_rebuild() {
            let index = model.index.clone();
            let gauge = self.metrics.index_deleted.with_label_values(&[model.info.name.as_str()]);
            tokio::task::spawn_blocking(move || {
                if index.rebuild_graph() {
                    gauge.set(index.dead_in_graph() as i64);
                }
            });
        }
    }

    /// Inserts or replaces documents: encoded by every model, stored durably, indexed — then acknowledged.
    /// Documents must already be validated and have distinct ids.
    pub async fn upsert(&self, documents: Vec<NewDocument>) -> Result<UpsertReport, EngineError> {
        let models = self.models();
        for model in models.values() {
            if !model.is_ready() {
                return Err(EngineError::NotReady(model.info.name.clone()));
            }
        }
        let texts: Vec<String> = documents.iter().map(|d| d.text.clone()).collect();
        // Every model encodes at once, each on its own thread.
        let encodings = join_all(models.values().map(|m| m.encoder.encode(texts.clone(), Side::Document))).await;
        let mut embeddings = Vec::with_capacity(documents.len() * models.len());
        let mut per_model = Vec::with_capacity(models.len());
        let mut truncated = BTreeMap::new();
        for (model, encoded) in models.values().zip(encodings) {
            let encoded = encoded?;
            let cut: Vec<String> =
                documents.iter().zip(&encoded.truncated).filter(|(_, &t)| t).map(|(d, _)| d.id.clone()).collect();
            if !cut.is_empty() {
                truncated.insert(model.info.name.clone(), cut);
            }
            for (doc, vector) in documents.iter().zip(&encoded.vectors) {
                embeddings.push(NewEmbedding {
                    model: model.info.name.clone(),
                    model_version: model.info.version.clone(),
                    document_id: doc.id.clone(),
                    content_hash: content_hash(&doc.text),
                    vector: vector.clone(),
                });
            }
            per_model.push((model.clone(), encoded.vectors));
        }

        let _write = self.writes.lock().await;
        self.store.upsert(&documents, &embeddings).await?;
        for (model, vectors) in per_model {
            let items: Vec<(String, Vec<f32>)> = documents.iter().map(|d| d.id.clone()).zip(vectors).collect();
            let index = model.index.clone();
            blocking(move || index.upsert(items)).await??;
            self.maintain(&model);
        }
        Ok(UpsertReport { upserted: documents.len(), truncated })
    }

    /// Deletes a document from the store and every index; returns whether it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, EngineError> {
        // Like upserts, deletes wait for the indexes: one deleted while its stored embedding is being loaded
        // would come back as a ghost entry.
        if let Some(model) = self.models().values().find(|m| !m.is_ready()) {
            return Err(EngineError::NotReady(model.info.name.clone()));
        }
        let _write = self.writes.lock().await;
        let existed = self.store.delete(id).await?;
        for model in self.models().values() {
            model.index.delete(id);
            self.maintain(model);
        }
        Ok(existed)
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
        let started = Instant::now();
        let encoded = model.encoder.encode_with(vec![q.query], Side::Query, q.priority).await?;
        let encode_seconds = started.elapsed().as_secs_f64();
        let query_truncated = encoded.truncated.first().copied().unwrap_or(false);
        let vector = encoded.vectors.into_iter().next().unwrap_or_default();

        let started = Instant::now();
        let index = model.index.clone();
        let (k, ef, exact) = (q.k, q.ef, q.exact);
        let outcome = blocking(move || index.search(&vector, k, ef, exact)).await?;
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

    /// Stops accepting work and closes the store.
    pub async fn close(&self) {
        let _write = self.writes.lock().await;
        self.store.close().await;
    }
}
