//! The documents of the corpus, held in memory beside the indexes. Searches take their hits' texts and metadata
//! from here, so they need no store round trip and are still answered while the store is unreachable. Filled
//! from the store at start-up, then changed by this server's writes once they commit, and by the writes of other
//! servers over the same store as the change feed brings them (see the engine's `apply_changes`). Uses only the
//! store's records.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::store::{content_hash, Document, NewDocument, Store, StoreError};

/// Documents read per query at start-up.
const PAGE: u32 = 5_000;

#[derive(Default)]
pub struct DocumentTable {
    by_id: RwLock<HashMap<String, Arc<Document>>>,
}

impl DocumentTable {
    /// Replaces the table with every stored document; returns how many. On an error, the pages read before it
    /// are kept.
    pub async fn load(&self, store: &dyn Store) -> Result<usize, StoreError> {
        self.by_id.write().clear();
        let mut after: Option<String> = None;
        loop {
            let page = store.documents_after(after.as_deref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            self.put_stored(page);
        }
        Ok(self.len())
    }

    pub fn len(&self) -> usize {
        self.by_id.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: &str) -> Option<Arc<Document>> {
        self.by_id.read().get(id).cloned()
    }

    /// The documents of these ids that are held, by id.
    pub fn get_many<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> HashMap<String, Arc<Document>> {
        let by_id = self.by_id.read();
        ids.into_iter().filter_map(|id| by_id.get(id).map(|d| (id.to_string(), d.clone()))).collect()
    }

    /// Records documents this server has just committed (keeping the creation time of those it held).
    pub fn put_written(&self, documents: &[NewDocument], at: &str) {
        let mut by_id = self.by_id.write();
        for d in documents {
            let created_at = by_id.get(&d.id).map_or_else(|| at.to_string(), |old| old.created_at.clone());
            let document = Document {
                id: d.id.clone(),
                text: d.text.clone(),
                metadata: d.metadata.clone(),
                content_hash: content_hash(&d.text),
                created_at,
                updated_at: at.to_string(),
            };
            by_id.insert(d.id.clone(), Arc::new(document));
        }
    }

    /// Records documents as read from the store.
    pub fn put_stored(&self, documents: impl IntoIterator<Item = Document>) {
        let mut by_id = self.by_id.write();
        for d in documents {
            by_id.insert(d.id.clone(), Arc::new(d));
        }
    }

    pub fn remove(&self, id: &str) -> bool {
        self.by_id.write().remove(id).is_some()
    }
}
