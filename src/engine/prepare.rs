//! Start-up: each model's index is loaded from its graph snapshot when that still matches the store, or else
//! filled from its stored embeddings, checked as they are read — a vector with a
//! non-finite value or of the wrong length is logged, counted (`duet_corrupt_embeddings_total`) and encoded
//! again rather than served or allowed to stop the model — then the documents without a usable embedding are
//! encoded. Models are prepared one after the other; one that fails is marked failed (with the reason `/readyz`
//! reports) and the others are still prepared and served.

use std::sync::Arc;
use std::time::Instant;

use super::write::maintain;
use super::{blocking, Engine, EngineError, ModelState, PreparedIndex, ServedModel};
use crate::encoder::Side;
use crate::store::{Document, NewEmbedding};
use crate::util::error_chain;

/// Documents encoded per batch while preparing.
const BATCH: usize = 256;

/// Why a stored vector cannot be served.
pub(super) fn unusable(vector: &[f32], dimension: usize) -> Option<&'static str> {
    if vector.len() != dimension {
        Some("wrong-length")
    } else if vector.iter().any(|x| !x.is_finite()) {
        Some("non-finite")
    } else {
        None
    }
}

impl Engine {
    /// Fills every index: stored embeddings of the model's current version first, then encodes the documents
    /// that have none (new model, new version, or changed text) or whose stored one is unusable. Marks each model
    /// ready when done; the HNSW graphs are then built in the background (see [`Engine::build_graphs`]). A model
    /// that fails is marked failed and the others go on; the first failure is returned once all were tried.
    pub async fn prepare_indexes(&self) -> Result<Vec<PreparedIndex>, EngineError> {
        // Read first: whatever another server changes from here on is applied again by the follower, so nothing
        // changed while the documents and embeddings are being read is missed.
        let position = self.store.last_change().await?;
        self.feed_start.store(position, std::sync::atomic::Ordering::Release);
        let started = Instant::now();
        match self.documents.load(self.store.as_ref()).await {
            Ok(held) => tracing::info!(documents = held, seconds = started.elapsed().as_secs_f64(), "documents loaded"),
            Err(err) if err.is_unavailable() => return Err(err.into()),
            // A stored row that cannot be read: the models are still prepared (the one that must encode it
            // fails with the reason), and searches read the documents not held from the store.
            Err(err) => tracing::error!(error = %error_chain(&err), held = self.documents.len(),
                "reading the stored documents failed; searches read the others from the store"),
        }
        let mut reports = Vec::new();
        let mut first_error = None;
        for model in self.models().values() {
            match self.prepare_model(model, position).await {
                Ok(report) => reports.push(report),
                Err(err) => {
                    let reason = error_chain(&err);
                    tracing::error!(model = %model.info.name, error = %reason,
                        "preparing the index failed; this model is not served, the others are");
                    model.fail(reason);
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(reports), Err)
    }

    async fn prepare_model(&self, model: &Arc<ServedModel>, position: i64) -> Result<PreparedIndex, EngineError> {
        let started = Instant::now();
        let info = &model.info;
        model.set_state(ModelState::Loading);
        self.watch_graph(model);
        // A snapshot that matches the store holds the vectors and the graph: nothing to read or build.
        let loaded = self.load_snapshot(model, position).await?;
        let mut stored = if loaded { Vec::new() } else { self.store.embeddings(&info.name, &info.version).await? };
        let mut corrupt: Vec<String> = Vec::new();
        stored.retain(|(id, vector)| match unusable(vector, info.dimension) {
            None => true,
            Some(problem) => {
                self.metrics.corrupt_embeddings.with_label_values(&[info.name.as_str(), problem]).inc();
                if corrupt.len() < 10 {
                    tracing::warn!(model = %info.name, document = %id, problem, "unusable stored embedding");
                }
                corrupt.push(id.clone());
                false
            }
        });
        if !corrupt.is_empty() {
            tracing::warn!(model = %info.name, count = corrupt.len(),
                "stored embeddings with non-finite values or of the wrong length; encoding them again");
        }
        let from_store = if loaded { model.index.len() } else { stored.len() };
        let index = model.index.clone();
        blocking(move || index.upsert(stored)).await??;

        let (_, missing) = self.store.embedding_counts(&info.name, &info.version).await?;
        model.begin_backfill(missing + corrupt.len() as u64);
        let mut encoded = 0;
        let mut after: Option<String> = None;
        // (Nothing missing: no need to look for it.)
        while missing > 0 {
            let batch =
                self.store.missing_embeddings(&info.name, &info.version, after.as_deref(), BATCH as u32).await?;
            let Some(last) = batch.last() else { break };
            after = Some(last.id.clone());
            encoded += self.encode_and_index(model, batch).await?;
            tracing::info!(model = %info.name, encoded, "encoded documents without a stored embedding");
        }
        let mut reencoded = 0;
        for ids in corrupt.chunks(BATCH) {
            let mut found = self.store.get_many(ids).await?;
            let batch: Vec<Document> = ids.iter().filter_map(|id| found.remove(id)).collect();
            reencoded += self.encode_and_index(model, batch).await?;
        }
        // Ready at once: searches are exact until the HNSW graph, built in the background, is swapped in.
        model.set_state(ModelState::Ready);
        maintain(model, &self.metrics);
        let report = PreparedIndex {
            model: info.name.clone(),
            from_store,
            encoded,
            reencoded,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(model = %report.model, from_store, encoded, reencoded, seconds = report.seconds, "index ready");
        Ok(report)
    }

    /// Encodes stored documents with one model, stores their embeddings and indexes them; returns how many.
    async fn encode_and_index(&self, model: &ServedModel, batch: Vec<Document>) -> Result<usize, EngineError> {
        let info = &model.info;
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
        let count = batch.len();
        let items: Vec<(String, Vec<f32>)> = batch.into_iter().map(|d| d.id).zip(vectors).collect();
        let index = model.index.clone();
        blocking(move || index.upsert(items)).await??;
        model.add_done(count as u64);
        Ok(count)
    }
}
