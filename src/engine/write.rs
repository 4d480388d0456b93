//! Writes: upserts and deletes. The caller's part (checks, encoding) may be abandoned at any point — nothing is
//! committed yet. The commit-and-index part (the store transaction, then every index) runs as a spawned task that
//! finishes whatever happens to the caller's future: a client that disconnects or a request that times out
//! cannot leave a document committed to the store but absent from an index.
//!
//! Also the index upkeep after a write: gauges, and a background graph rebuild when one is due.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;

use super::{blocking, Engine, EngineError, ModelState, ServedModel, UpsertReport};
use crate::encoder::{Priority, Side};
use crate::metrics::Metrics;
use crate::store::{content_hash, NewDocument, NewEmbedding};

/// Counts a commit task from its spawn to its end (whatever way it ends).
struct CommitInFlight(Arc<std::sync::atomic::AtomicUsize>);

impl CommitInFlight {
    fn new(engine: &Engine) -> Self {
        engine.commits_in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(engine.commits_in_flight.clone())
    }
}

impl Drop for CommitInFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The models a write goes to: every serving model, once none is still preparing at start-up, and every version
/// being prepared beside them; a failed model is left out (it is not served, and it encodes what it lacks when it
/// next prepares).
pub(super) fn write_targets(engine: &Engine) -> Result<Vec<Arc<ServedModel>>, EngineError> {
    let models = engine.models();
    // Writes wait for the indexes prepared at start-up: a document deleted (or replaced) while its stored
    // embedding is being loaded would come back as a ghost entry. (A version prepared beside the serving one
    // loads under the write lock instead.)
    if let Some(model) = models.values().find(|m| matches!(m.state(), ModelState::Loading | ModelState::Backfilling)) {
        return Err(EngineError::NotReady(model.info.name.clone()));
    }
    let candidates = engine.candidates();
    let preparing = candidates.values().filter(|m| m.state() != ModelState::Failed);
    Ok(models.values().filter(|m| m.is_ready()).chain(preparing).cloned().collect())
}

/// Versions that became write targets after a write chose its own (a swap or a new candidate in between): the
/// commit encodes for them too, under the write lock, so that the version serving next has every document.
fn late_targets(engine: &Engine, chosen: &[Arc<ServedModel>]) -> Vec<Arc<ServedModel>> {
    let current = write_targets(engine).unwrap_or_default();
    current.into_iter().filter(|m| !chosen.iter().any(|c| Arc::ptr_eq(c, m))).collect()
}

/// One model's embeddings of documents, to store beside them.
fn embeddings_of<'a>(
    model: &'a ServedModel,
    documents: &'a [NewDocument],
    vectors: &'a [Vec<f32>],
) -> impl Iterator<Item = NewEmbedding> + 'a {
    documents.iter().zip(vectors).map(|(doc, vector)| NewEmbedding {
        model: model.info.name.clone(),
        model_version: model.info.version.clone(),
        document_id: doc.id.clone(),
        content_hash: content_hash(&doc.text),
        vector: vector.clone(),
    })
}

impl Engine {
    /// Inserts or replaces documents: encoded by every model, stored durably, indexed — then acknowledged.
    /// Documents must already be validated and have distinct ids.
    pub async fn upsert(self: &Arc<Self>, documents: Vec<NewDocument>) -> Result<UpsertReport, EngineError> {
        self.upsert_with(documents, Priority::Live).await
    }

    /// [`Engine::upsert`], encoding in the lane of `priority` (an import is background work: it waits behind
    /// live traffic, on the models' bulk sessions).
    pub async fn upsert_with(
        self: &Arc<Self>,
        documents: Vec<NewDocument>,
        priority: Priority,
    ) -> Result<UpsertReport, EngineError> {
        self.check_store()?;
        let models = write_targets(self)?;
        let texts: Vec<String> = documents.iter().map(|d| d.text.clone()).collect();
        // Every model encodes at once, each on its own thread.
        let encodings =
            join_all(models.iter().map(|m| m.encoder.encode_with(texts.clone(), Side::Document, priority))).await;
        let mut embeddings = Vec::with_capacity(documents.len() * models.len());
        let mut per_model = Vec::with_capacity(models.len());
        let mut truncated = BTreeMap::new();
        for (model, encoded) in models.iter().zip(encodings) {
            let encoded = encoded?;
            let cut: Vec<String> =
                documents.iter().zip(&encoded.truncated).filter(|(_, &t)| t).map(|(d, _)| d.id.clone()).collect();
            if !cut.is_empty() {
                truncated.insert(model.info.name.clone(), cut);
            }
            embeddings.extend(embeddings_of(model, &documents, &encoded.vectors));
            per_model.push((model.clone(), encoded.vectors));
        }
        let upserted = documents.len();
        let names = models.iter().map(|m| m.info.name.clone()).collect();

        let engine = self.clone();
        let in_flight = CommitInFlight::new(self);
        let commit = tokio::spawn(async move {
            let _in_flight = in_flight;
            let (store, metrics) = (engine.store.clone(), engine.metrics.clone());
            let _write = engine.writes.clone().lock_owned().await;
            let chosen: Vec<Arc<ServedModel>> = per_model.iter().map(|(m, _)| m.clone()).collect();
            let late = late_targets(&engine, &chosen);
            let mut embeddings = embeddings;
            let texts: Vec<String> = documents.iter().map(|d| d.text.clone()).collect();
            for model in late {
                let vectors = model.encoder.encode(texts.clone(), Side::Document).await?.vectors;
                embeddings.extend(embeddings_of(&model, &documents, &vectors));
                per_model.push((model, vectors));
            }
            if let Err(err) = store.upsert(&documents, &embeddings).await {
                let err = EngineError::from(err);
                engine.note_store_error(&err);
                return Err(err);
            }
            engine.documents.put_written(&documents, &crate::util::now());
            let mut first_error = None;
            for (model, vectors) in per_model {
                let items: Vec<(String, Vec<f32>)> = documents.iter().map(|d| d.id.clone()).zip(vectors).collect();
                let index = model.index.clone();
                if let Err(err) = blocking(move || index.upsert(items)).await.and_then(|r| Ok(r?)) {
                    first_error.get_or_insert(err);
                }
                maintain(&model, &metrics);
            }
            first_error.map_or(Ok(()), Err)
        });
        commit.await??;
        Ok(UpsertReport { upserted, models: names, truncated })
    }

    /// Deletes a document from the store and every index; returns whether it existed.
    pub async fn delete(self: &Arc<Self>, id: &str) -> Result<bool, EngineError> {
        if id.contains('\0') {
            // Never stored (ids have no control characters); PostgreSQL cannot even be asked.
            return Ok(false);
        }
        self.check_store()?;
        write_targets(self)?;
        let (engine, id) = (self.clone(), id.to_string());
        let in_flight = CommitInFlight::new(self);
        let commit = tokio::spawn(async move {
            let _in_flight = in_flight;
            let (store, metrics) = (engine.store.clone(), engine.metrics.clone());
            let _write = engine.writes.clone().lock_owned().await;
            // Chosen under the lock: every version serving or being prepared now forgets the document.
            let models = write_targets(&engine).unwrap_or_default();
            let existed = match store.delete(&id).await {
                Ok(existed) => existed,
                Err(err) => {
                    let err = EngineError::from(err);
                    engine.note_store_error(&err);
                    return Err(err);
                }
            };
            engine.documents.remove(&id);
            for model in &models {
                model.index.delete(&id);
                maintain(model, &metrics);
            }
            Ok::<_, EngineError>(existed)
        });
        commit.await?
    }

    /// Builds every graph that is due now, and waits for it (searches go on meanwhile).
    pub async fn build_graphs(&self) -> Result<(), EngineError> {
        for model in self.models().values() {
            // A rebuild already running in the background is waited for.
            while model.index.needs_rebuild() || model.index.is_rebuilding() {
                let index = model.index.clone();
                if !blocking(move || index.rebuild_graph()).await? {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
            update_gauges(model, &self.metrics);
        }
        Ok(())
    }
}

pub(super) fn update_gauges(model: &ServedModel, metrics: &Metrics) {
    let name = model.info.name.as_str();
    metrics.documents.with_label_values(&[name]).set(model.index.len() as i64);
    metrics.index_deleted.with_label_values(&[name]).set(model.index.dead_in_graph() as i64);
    metrics.index_slots.with_label_values(&[name]).set(model.index.slots() as i64);
}

/// Updates the model's gauges, and rebuilds its graph in the background when it has grown past `exact_below` or
/// holds too many dead entries; searches go on meanwhile.
pub(super) fn maintain(model: &Arc<ServedModel>, metrics: &Arc<Metrics>) {
    update_gauges(model, metrics);
    if model.index.needs_rebuild() {
        let (model, metrics) = (model.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || {
            if model.index.rebuild_graph() {
                update_gauges(&model, &metrics);
            }
        });
    }
}
