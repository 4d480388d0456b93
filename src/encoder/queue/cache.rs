//! The query cache of one model version: a bounded LRU from the query text as the network sees it (framed by
//! the model's query prefix or template) to its vector, with hit and miss counters. Used by the queue's handle.

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;
use prometheus::IntCounter;

use crate::encoder::Encoded;
use crate::metrics::Metrics;

/// Query vectors (whether the query was cut, and its tokens) by framed query text, least recently used dropped
/// first.
pub(super) struct QueryCache {
    entries: Mutex<LruCache<String, (Vec<f32>, bool, usize)>>,
    hits: IntCounter,
    misses: IntCounter,
}

impl QueryCache {
    pub(super) fn new(model: &str, size: usize, metrics: &Metrics) -> Self {
        Self {
            entries: Mutex::new(LruCache::new(NonZeroUsize::new(size.max(1)).expect("at least one"))),
            hits: metrics.query_cache_hits.with_label_values(&[model]),
            misses: metrics.query_cache_misses.with_label_values(&[model]),
        }
    }

    /// The cached encoding of `key`, counted as a hit or a miss.
    pub(super) fn get(&self, key: &str) -> Option<Encoded> {
        let found = self.entries.lock().get(key).cloned();
        match found {
            Some((vector, truncated, tokens)) => {
                self.hits.inc();
                Some(Encoded { vectors: vec![vector], truncated: vec![truncated], tokens: vec![tokens] })
            }
            None => {
                self.misses.inc();
                None
            }
        }
    }

    pub(super) fn put(&self, key: String, encoded: &Encoded) {
        if let (Some(vector), Some(&truncated)) = (encoded.vectors.first(), encoded.truncated.first()) {
            let tokens = encoded.tokens.first().copied().unwrap_or_default();
            self.entries.lock().put(key, (vector.clone(), truncated, tokens));
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.lock().len()
    }
}
