//! The teacher's embedding cache: a Duet store (an SQLite file through [`crate::store::SqliteStore`]) whose
//! documents are the framed texts the teacher encoded and whose embeddings are its vectors, per teacher name and
//! model version. A text's key is its side and the SHA-256 of the framed text (what the network saw), so a change
//! of prompt, of weights (the version) or of text misses, and a re-run over the same data encodes nothing.
//!
//! The store is asynchronous and the trainer is not (and may itself run inside a runtime, as the learning curves
//! do, and the command line): the cache keeps a runtime of its own, blocks on it from a helper thread, and is
//! dropped on one.
//!
//! It may use [`crate::store`] and [`crate::encoder`]'s [`Side`]; nothing else.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;

use crate::encoder::Side;
use crate::store::{content_hash, NewDocument, NewEmbedding, SqliteStore, Store, StoreError};

/// One teacher text's key in the cache.
pub fn key(side: Side, framed: &str) -> String {
    format!("{}:{}", side.as_str(), content_hash(framed))
}

/// An open cache file.
pub struct TeacherCache {
    /// Both are `Some` until dropped (on a helper thread: a runtime may not be dropped inside another one).
    store: Option<SqliteStore>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TeacherCache {
    fn drop(&mut self) {
        let (store, runtime) = (self.store.take(), self.runtime.take());
        std::thread::scope(|scope| {
            scope.spawn(move || {
                drop(store);
                drop(runtime);
            });
        });
    }
}

impl TeacherCache {
    /// Opens (creating it and its folder if needed) the cache at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| StoreError::CreateDir { location: path.display().to_string(), source })?;
        let store = on_helper_thread(&runtime, SqliteStore::open(path));
        let store = match store {
            Ok(store) => store,
            Err(err) => {
                std::thread::scope(|scope| scope.spawn(move || drop(runtime)).join().expect("the cache thread"));
                return Err(err);
            }
        };
        Ok(Self { store: Some(store), runtime: Some(runtime) })
    }

    fn parts(&self) -> (&SqliteStore, &tokio::runtime::Runtime) {
        (self.store.as_ref().expect("open until dropped"), self.runtime.as_ref().expect("open until dropped"))
    }

    /// The cached vectors of `keys` for the teacher `model` at `version`, by key.
    pub fn get(&self, model: &str, version: &str, keys: &[String]) -> Result<HashMap<String, Vec<f32>>, StoreError> {
        let (store, runtime) = self.parts();
        on_helper_thread(runtime, store.embeddings_of(model, version, keys))
    }

    /// Stores `(side, framed text, vector)` entries for the teacher `model` at `version`, in one transaction.
    pub fn put(&self, model: &str, version: &str, entries: &[(Side, &str, &[f32])]) -> Result<(), StoreError> {
        let documents: Vec<NewDocument> = entries
            .iter()
            .map(|(side, text, _)| NewDocument {
                id: key(*side, text),
                text: text.to_string(),
                metadata: serde_json::json!({ "side": side.as_str() }),
            })
            .collect();
        let embeddings: Vec<NewEmbedding> = entries
            .iter()
            .zip(&documents)
            .map(|((_, text, vector), d)| NewEmbedding {
                model: model.to_string(),
                model_version: version.to_string(),
                document_id: d.id.clone(),
                content_hash: content_hash(text),
                vector: vector.to_vec(),
            })
            .collect();
        let (store, runtime) = self.parts();
        on_helper_thread(runtime, store.upsert(&documents, &embeddings))
    }
}

/// Runs `future` to completion on `runtime`, from a thread of its own (blocking on a runtime is refused inside
/// another one).
fn on_helper_thread<T: Send>(runtime: &tokio::runtime::Runtime, future: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| scope.spawn(|| runtime.block_on(future)).join().expect("the cache thread"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_come_back_by_side_text_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache").join("teacher.db");
        let cache = TeacherCache::open(&path).unwrap();
        let (a, b) = ([0.25f32, -1.5, 3.0], [1.0f32, 2.0, 0.125]);
        cache.put("t", "v1", &[(Side::Query, "q: hello", &a), (Side::Document, "q: hello", &b)]).unwrap();
        drop(cache);
        let cache = TeacherCache::open(&path).unwrap();
        let keys = [key(Side::Query, "q: hello"), key(Side::Document, "q: hello"), key(Side::Query, "other")];
        let found = cache.get("t", "v1", &keys).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[&keys[0]], a);
        assert_eq!(found[&keys[1]], b);
        assert!(cache.get("t", "v2", &keys).unwrap().is_empty(), "another version misses");
        assert!(cache.get("u", "v1", &keys).unwrap().is_empty(), "another teacher misses");
    }
}
