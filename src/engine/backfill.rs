//! Back-filling a version prepared beside the serving one: its stored embeddings are read into its index (under
//! the write lock, so no write interleaves), then every stored document without a valid embedding for it is
//! encoded through the model's *background* lane — live queries are always taken first — in batches of
//! `backfill_batch`, pausing between batches so that it encodes at most `backfill_duty` of the time. Each batch
//! is stored as it is done, so a restart resumes where it stopped. A batch is committed under the write lock and
//! only for documents whose text has not changed meanwhile (a concurrent write encoded those itself).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::model::ServedModel;
use super::prepare::unusable;
use super::{blocking, Engine, EngineError};
use crate::encoder::{Priority, Side};
use crate::store::{Document, NewEmbedding, VersionState};

/// Documents encoded per batch while catching up under the write lock at the switch.
const CATCH_UP_BATCH: u32 = 256;

impl Engine {
    /// Reads the candidate's stored embeddings, then encodes what is missing.
    pub(super) async fn fill_candidate(&self, model: &ServedModel) -> Result<(), EngineError> {
        let info = &model.info;
        {
            let _write = self.writes.clone().lock_owned().await;
            let mut stored = self.store.embeddings(&info.name, &info.version).await?;
            // Unusable vectors are left out: the back-fill treats those documents as missing only if the store
            // does; they are re-encoded at the next start's check (`prepare`).
            stored.retain(|(_, vector)| unusable(vector, info.dimension).is_none());
            let index = model.index.clone();
            blocking(move || index.upsert(stored)).await??;
        }
        let (stored, missing) = self.store.embedding_counts(&info.name, &info.version).await?;
        tracing::info!(model = %info.name, version = %info.version, stored, missing, "back-filling");
        model.begin_backfill(missing);
        self.record(model, VersionState::Backfilling, Some(format!("{missing} documents to encode"))).await?;
        let batch_size = self.lifecycle.backfill_batch as u32;
        let pause_per_busy = (1.0 - self.lifecycle.backfill_duty) / self.lifecycle.backfill_duty;
        let mut after: Option<String> = None;
        loop {
            if model.is_cancelled() {
                return Err(EngineError::Cancelled(info.name.clone()));
            }
            let batch = self.store.missing_embeddings(&info.name, &info.version, after.as_deref(), batch_size).await?;
            let Some(last) = batch.last() else { break };
            after = Some(last.id.clone());
            let started = Instant::now();
            let count = self.encode_batch(model, batch, Priority::Background, true).await?;
            model.add_done(count as u64);
            self.metrics.model_backfill_documents.with_label_values(&[&info.name]).inc_by(count as u64);
            let left = model.backfill().map_or(0, |p| p.remaining);
            self.metrics.model_backfill_remaining.with_label_values(&[&info.name]).set(left as i64);
            let pause = started.elapsed().mul_f64(pause_per_busy);
            if !pause.is_zero() {
                tokio::time::sleep(pause.min(Duration::from_secs(10))).await;
            }
        }
        self.metrics.model_backfill_remaining.with_label_values(&[&info.name]).set(0);
        Ok(())
    }

    /// Encodes, under the write lock the caller holds, what writes left missing (documents written before the
    /// candidate was a write target, or past the back-fill's cursor).
    pub(super) async fn catch_up(&self, model: &ServedModel) -> Result<(), EngineError> {
        let info = &model.info;
        let mut after: Option<String> = None;
        loop {
            let batch =
                self.store.missing_embeddings(&info.name, &info.version, after.as_deref(), CATCH_UP_BATCH).await?;
            let Some(last) = batch.last() else { return Ok(()) };
            after = Some(last.id.clone());
            let count = self.encode_batch(model, batch, Priority::Live, false).await?;
            model.add_done(count as u64);
            self.metrics.model_backfill_documents.with_label_values(&[&info.name]).inc_by(count as u64);
        }
    }

    /// Encodes stored documents with one model and stores and indexes their embeddings; returns how many. With
    /// `lock`, the commit takes the write lock and skips documents changed or deleted since they were read.
    async fn encode_batch(
        &self,
        model: &ServedModel,
        batch: Vec<Document>,
        priority: Priority,
        lock: bool,
    ) -> Result<usize, EngineError> {
        let info = &model.info;
        let texts: Vec<String> = batch.iter().map(|d| d.text.clone()).collect();
        let vectors = model.encoder.encode_with(texts, Side::Document, priority).await?.vectors;
        let _write = match lock {
            true => Some(self.writes.clone().lock_owned().await),
            false => None,
        };
        let current: HashMap<String, String> = match lock {
            true => {
                let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
                self.store.fingerprints(&ids).await?.into_iter().map(|(id, f)| (id, f.content_hash)).collect()
            }
            false => batch.iter().map(|d| (d.id.clone(), d.content_hash.clone())).collect(),
        };
        let (embeddings, items): (Vec<NewEmbedding>, Vec<(String, Vec<f32>)>) = batch
            .into_iter()
            .zip(vectors)
            .filter(|(d, _)| current.get(&d.id) == Some(&d.content_hash))
            .map(|(d, vector)| {
                let embedding = NewEmbedding {
                    model: info.name.clone(),
                    model_version: info.version.clone(),
                    document_id: d.id.clone(),
                    content_hash: d.content_hash,
                    vector: vector.clone(),
                };
                (embedding, (d.id, vector))
            })
            .unzip();
        self.store.put_embeddings(&embeddings).await?;
        let count = items.len();
        let index = model.index.clone();
        blocking(move || index.upsert(items)).await??;
        Ok(count)
    }
}
