//! Following other servers over the same store: the documents they wrote or deleted, and the default model they
//! chose, applied here from the store without encoding again. The change feed itself is read by the server's
//! replication loop; this applies what it names, under the write lock, so that it interleaves with this server's
//! own writes in one order. Each document is re-read as it is now in the store, so applying a change twice, late,
//! or after a newer local write of the same id, leaves the index as the store is.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::write::{maintain, write_targets};
use super::{blocking, Engine, EngineError, DEFAULT_MODEL_SETTING};
use crate::encoder::Side;
use crate::store::{Document, NewEmbedding};

/// What applying a batch of document changes did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub upserted: usize,
    pub deleted: usize,
    /// Documents that had no stored embedding for a version served here (another server did not write to it),
    /// encoded here.
    pub encoded: usize,
}

impl Engine {
    /// The change-feed sequence the indexes were loaded at; following starts after it.
    pub fn feed_start(&self) -> i64 {
        self.feed_start.load(Ordering::Acquire)
    }

    /// Applies documents changed by another server: each is read from the store with its stored embedding for
    /// every version served or being prepared here, and indexed; one no longer stored is removed.
    pub async fn apply_document_changes(self: &Arc<Self>, ids: Vec<String>) -> Result<Applied, EngineError> {
        let ids: Vec<String> = ids.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        let engine = self.clone();
        // Spawned, like a local write: once the store has been read, the indexes are brought to it whatever
        // happens to the caller.
        tokio::spawn(async move {
            let _write = engine.writes.clone().lock_owned().await;
            if engine.closed.load(Ordering::Acquire) {
                // Stopping: the store is closed or closing; a restart reads the current state anyway.
                return Ok(Applied::default());
            }
            let targets = write_targets(&engine)?;
            let stored = engine.store.get_many(&ids).await?;
            let present: Vec<String> = ids.iter().filter(|id| stored.contains_key(*id)).cloned().collect();
            let gone: Vec<&String> = ids.iter().filter(|id| !stored.contains_key(*id)).collect();
            let mut applied = Applied { upserted: present.len(), deleted: 0, encoded: 0 };
            for model in &targets {
                let info = &model.info;
                let mut vectors = engine.store.embeddings_of(&info.name, &info.version, &present).await?;
                vectors.retain(|_, v| super::prepare::unusable(v, info.dimension).is_none());
                let lacking: Vec<&Document> =
                    present.iter().filter(|id| !vectors.contains_key(*id)).map(|id| &stored[id]).collect();
                if !lacking.is_empty() {
                    applied.encoded += encode_missing(&engine, model, &lacking, &mut vectors).await?;
                }
                let items: Vec<(String, Vec<f32>)> = vectors.into_iter().collect();
                let index = model.index.clone();
                blocking(move || index.upsert(items)).await??;
                for id in &gone {
                    model.index.delete(id);
                }
                maintain(model, &engine.metrics);
            }
            for id in gone {
                applied.deleted += usize::from(engine.documents.remove(id));
            }
            engine.documents.put_stored(stored.into_values());
            Ok(applied)
        })
        .await?
    }

    /// Takes the default model from the store again (another server promoted one).
    pub async fn reload_default_model(&self) -> Result<(), EngineError> {
        if let Some(name) = self.store.setting(DEFAULT_MODEL_SETTING).await? {
            if self.models().contains_key(&name) {
                *self.default_model.write() = name;
            }
        }
        Ok(())
    }
}

/// Encodes documents a served version has no stored embedding for, and stores what it encoded (so that the next
/// server to need them reads them).
async fn encode_missing(
    engine: &Engine,
    model: &super::ServedModel,
    lacking: &[&Document],
    vectors: &mut HashMap<String, Vec<f32>>,
) -> Result<usize, EngineError> {
    let texts: Vec<String> = lacking.iter().map(|d| d.text.clone()).collect();
    let encoded = model.encoder.encode(texts, Side::Document).await?.vectors;
    let embeddings: Vec<NewEmbedding> = lacking
        .iter()
        .zip(&encoded)
        .map(|(d, v)| NewEmbedding {
            model: model.info.name.clone(),
            model_version: model.info.version.clone(),
            document_id: d.id.clone(),
            content_hash: d.content_hash.clone(),
            vector: v.clone(),
        })
        .collect();
    engine.store.put_embeddings(&embeddings).await?;
    for (d, v) in lacking.iter().zip(encoded) {
        vectors.insert(d.id.clone(), v);
    }
    Ok(lacking.len())
}
