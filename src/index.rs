//! The vector index of one model: cosine similarity over L2-normalised vectors, answered exactly (brute force)
//! while the index is small and by an HNSW graph (`hnsw_rs`) once it holds `exact_below` documents or more.
//!
//! Writes are visible to the next search. A replaced or deleted document is marked dead at once and filtered
//! out of HNSW results; when dead entries pile up, [`VectorIndex::rebuild_graph`] builds a fresh graph off the
//! lock (searches keep using the old one meanwhile) and swaps it in. Slots are append-only, so a rebuild can
//! replay whatever was written while it ran.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hnsw_rs::filter::FilterT;
use hnsw_rs::prelude::{DistDot, Hnsw};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::util::normalize;

/// Per-model index settings (`[models.index]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexParams {
    /// HNSW links per node.
    pub m: usize,
    /// HNSW candidate list size while building.
    pub ef_construction: usize,
    /// HNSW candidate list size while searching (a request may override it with `ef`).
    pub ef_search: usize,
    /// Below this many documents, search is exact and no graph is kept.
    pub exact_below: usize,
    /// Rebuild the graph once this fraction of its entries are dead (deleted or replaced).
    pub rebuild_dead_fraction: f64,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self { m: 16, ef_construction: 200, ef_search: 64, exact_below: 2000, rebuild_dead_fraction: 0.2 }
    }
}

/// How a search was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMethod {
    Exact,
    Hnsw,
}

impl SearchMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMethod::Exact => "exact",
            SearchMethod::Hnsw => "hnsw",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: Arc<str>,
    /// Cosine similarity, in [-1, 1].
    pub score: f32,
}

#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub hits: Vec<Hit>,
    pub method: SearchMethod,
    /// The HNSW candidate list size used, for HNSW searches.
    pub ef: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("vector for {id} has dimension {got}, the index holds {expected}")]
    Dimension { id: String, got: usize, expected: usize },
}

type Graph = Hnsw<'static, f32, DistDot>;

struct Inner {
    /// Slot → document id; slots are never reused.
    ids: Vec<Arc<str>>,
    /// Slot → normalised vector, `dim` floats per slot.
    vectors: Vec<f32>,
    alive: Vec<bool>,
    by_id: HashMap<Arc<str>, usize>,
    graph: Option<Graph>,
    /// Slots `0..graph_covers` that are alive at graph build time or inserted since are in the graph.
    graph_covers: usize,
    /// Dead slots still in the graph.
    dead_in_graph: usize,
}

pub struct VectorIndex {
    dim: usize,
    params: IndexParams,
    inner: RwLock<Inner>,
    rebuilding: AtomicBool,
}

impl VectorIndex {
    pub fn new(dim: usize, params: IndexParams) -> Self {
        Self {
            dim,
            params,
            inner: RwLock::new(Inner {
                ids: Vec::new(),
                vectors: Vec::new(),
                alive: Vec::new(),
                by_id: HashMap::new(),
                graph: None,
                graph_covers: 0,
                dead_in_graph: 0,
            }),
            rebuilding: AtomicBool::new(false),
        }
    }

    pub fn params(&self) -> &IndexParams {
        &self.params
    }

    pub fn dimension(&self) -> usize {
        self.dim
    }

    /// Live documents.
    pub fn len(&self) -> usize {
        self.inner.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: &str) -> bool {
        self.inner.read().by_id.contains_key(id)
    }

    /// Dead entries still held by the HNSW graph.
    pub fn dead_in_graph(&self) -> usize {
        self.inner.read().dead_in_graph
    }

    pub fn has_graph(&self) -> bool {
        self.inner.read().graph.is_some()
    }

    /// Inserts or replaces vectors. Graph insertion happens here when a graph exists; otherwise the caller should
    /// check [`Self::needs_rebuild`] and run [`Self::rebuild_graph`] (off the async runtime).
    pub fn upsert(&self, items: Vec<(String, Vec<f32>)>) -> Result<(), IndexError> {
        for (id, v) in &items {
            if v.len() != self.dim {
                return Err(IndexError::Dimension { id: id.clone(), got: v.len(), expected: self.dim });
            }
        }
        let mut inner = self.inner.write();
        let first_new = inner.ids.len();
        for (id, mut vector) in items {
            normalize(&mut vector);
            let id: Arc<str> = Arc::from(id);
            let slot = inner.ids.len();
            if let Some(old) = inner.by_id.insert(id.clone(), slot) {
                inner.alive[old] = false;
                if inner.graph.is_some() && old < inner.graph_covers {
                    inner.dead_in_graph += 1;
                }
            }
            inner.ids.push(id);
            inner.vectors.extend_from_slice(&vector);
            inner.alive.push(true);
        }
        let last = inner.ids.len();
        if inner.graph.is_some() {
            let inner = &mut *inner;
            let rows: Vec<(&[f32], usize)> = (first_new..last)
                .filter(|&s| inner.alive[s])
                .map(|s| (&inner.vectors[s * self.dim..(s + 1) * self.dim], s))
                .collect();
            let graph = inner.graph.as_ref().expect("checked above");
            if rows.len() > 16 {
                graph.parallel_insert_slice(&rows);
            } else {
                rows.iter().for_each(|row| graph.insert_slice(*row));
            }
            inner.graph_covers = last;
        }
        Ok(())
    }

    /// Removes a document; returns whether it was present.
    pub fn delete(&self, id: &str) -> bool {
        let mut inner = self.inner.write();
        match inner.by_id.remove(id) {
            Some(slot) => {
                inner.alive[slot] = false;
                if inner.graph.is_some() && slot < inner.graph_covers {
                    inner.dead_in_graph += 1;
                }
                true
            }
            None => false,
        }
    }

    /// Whether a graph should be (re)built: the index has grown past `exact_below` without one, or too many of
    /// its graph's entries are dead.
    pub fn needs_rebuild(&self) -> bool {
        let inner = self.inner.read();
        let live = inner.by_id.len();
        match &inner.graph {
            None => live >= self.params.exact_below,
            Some(_) => inner.dead_in_graph as f64 > self.params.rebuild_dead_fraction * live.max(1) as f64,
        }
    }

    /// Builds a graph over the live vectors without blocking searches or writes, then swaps it in, adding what
    /// was written meanwhile. Blocking and CPU-heavy: run it on a blocking thread. Returns false when another
    /// rebuild was already running.
    pub fn rebuild_graph(&self) -> bool {
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return false;
        }
        // Writes made while a rebuild runs may call for another one, which they could not start themselves.
        loop {
            self.rebuild_once();
            if !self.needs_rebuild() {
                break;
            }
        }
        self.rebuilding.store(false, Ordering::Release);
        if self.needs_rebuild() {
            // A write slipped in between the last check and the reset of the flag.
            self.rebuild_graph();
        }
        true
    }

    fn rebuild_once(&self) {
        let (snapshot_len, rows): (usize, Vec<(Vec<f32>, usize)>) = {
            let inner = self.inner.read();
            let rows = (0..inner.ids.len())
                .filter(|&s| inner.alive[s])
                .map(|s| (inner.vectors[s * self.dim..(s + 1) * self.dim].to_vec(), s))
                .collect();
            (inner.ids.len(), rows)
        };
        let graph = self.new_graph(rows.len());
        let refs: Vec<(&[f32], usize)> = rows.iter().map(|(v, s)| (v.as_slice(), *s)).collect();
        graph.parallel_insert_slice(&refs);
        let mut inner = self.inner.write();
        let inner = &mut *inner;
        let total = inner.ids.len();
        for s in snapshot_len..total {
            if inner.alive[s] {
                graph.insert_slice((&inner.vectors[s * self.dim..(s + 1) * self.dim], s));
            }
        }
        // Slots alive at the snapshot but dead now are the only dead entries of the new graph.
        inner.dead_in_graph = rows.iter().filter(|(_, s)| !inner.alive[*s]).count();
        inner.graph = Some(graph);
        inner.graph_covers = total;
    }

    fn new_graph(&self, expected: usize) -> Graph {
        let max_layer = 16;
        Hnsw::new(
            self.params.m.clamp(2, 255),
            expected.max(1024),
            max_layer,
            self.params.ef_construction.max(8),
            DistDot,
        )
    }

    /// The `k` nearest live documents to `query` (normalised here). Exact below `exact_below` documents, when no
    /// graph exists yet, or when `exact` is asked for; HNSW otherwise, with `ef` (default `ef_search`, at least k).
    pub fn search(&self, query: &[f32], k: usize, ef: Option<usize>, exact: bool) -> SearchOutcome {
        let mut query = query.to_vec();
        normalize(&mut query);
        let inner = self.inner.read();
        let live = inner.by_id.len();
        match &inner.graph {
            Some(graph) if !exact && live >= self.params.exact_below => {
                let ef = ef.unwrap_or(self.params.ef_search).max(k);
                let found = if inner.dead_in_graph > 0 {
                    let alive = |id: &usize| inner.alive.get(*id).copied().unwrap_or(false);
                    graph.search_filter(&query, k, ef, Some(&alive as &dyn FilterT))
                } else {
                    graph.search(&query, k, ef)
                };
                let hits = found
                    .into_iter()
                    .filter(|n| inner.alive.get(n.d_id).copied().unwrap_or(false))
                    .map(|n| Hit { id: inner.ids[n.d_id].clone(), score: 1.0 - n.distance })
                    .collect();
                SearchOutcome { hits, method: SearchMethod::Hnsw, ef: Some(ef) }
            }
            _ => {
                SearchOutcome { hits: exact_top_k(&inner, self.dim, &query, k), method: SearchMethod::Exact, ef: None }
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn exact_top_k(inner: &Inner, dim: usize, query: &[f32], k: usize) -> Vec<Hit> {
    let mut scored: Vec<(f32, usize)> =
        inner.by_id.values().map(|&slot| (dot(query, &inner.vectors[slot * dim..(slot + 1) * dim]), slot)).collect();
    let k = k.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    let by_score_then_id =
        |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then_with(|| inner.ids[a.1].cmp(&inner.ids[b.1]));
    scored.select_nth_unstable_by(k - 1, by_score_then_id);
    scored.truncate(k);
    scored.sort_by(by_score_then_id);
    scored.into_iter().map(|(score, slot)| Hit { id: inner.ids[slot].clone(), score }).collect()
}

/// Fraction of `exact`'s ids that `approx` found (recall@k of one query).
pub fn recall(approx: &[Hit], exact: &[Hit]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let found = exact.iter().filter(|e| approx.iter().any(|a| a.id == e.id)).count();
    found as f64 / exact.len() as f64
}

/// Shared handle, so a rebuild can run on a blocking thread.
pub type SharedIndex = Arc<VectorIndex>;

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> IndexParams {
        IndexParams { exact_below: 50, ..IndexParams::default() }
    }

    fn unit(angle: f32) -> Vec<f32> {
        vec![angle.cos(), angle.sin(), 0.0]
    }

    #[test]
    fn exact_search_ranks_by_cosine_and_sees_upserts_and_deletes() {
        let index = VectorIndex::new(3, small());
        index
            .upsert(vec![("a".into(), unit(0.0)), ("b".into(), unit(0.5)), ("c".into(), vec![0.0, 0.0, 5.0])])
            .unwrap();
        let out = index.search(&[2.0, 0.0, 0.0], 2, None, false);
        assert_eq!(out.method, SearchMethod::Exact);
        let ids: Vec<&str> = out.hits.iter().map(|h| &*h.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!((out.hits[0].score - 1.0).abs() < 1e-6);
        assert!((out.hits[1].score - 0.5f32.cos()).abs() < 1e-6);

        index.upsert(vec![("a".into(), vec![0.0, 0.0, 1.0])]).unwrap();
        assert_eq!(&*index.search(&[1.0, 0.0, 0.0], 1, None, false).hits[0].id, "b", "replaced vector is gone");
        assert!(index.delete("b"));
        assert!(!index.delete("b"));
        assert_eq!(index.len(), 2);
        let ids: Vec<String> =
            index.search(&[1.0, 0.0, 0.0], 10, None, false).hits.iter().map(|h| h.id.to_string()).collect();
        assert_eq!(ids, ["a", "c"], "ties break by id; deleted ids never come back");
    }

    #[test]
    fn dimension_mismatch_is_refused() {
        let index = VectorIndex::new(3, small());
        assert!(matches!(index.upsert(vec![("x".into(), vec![1.0])]), Err(IndexError::Dimension { .. })));
    }

    #[test]
    fn graph_is_built_past_the_threshold_and_filters_dead_entries() {
        let index = VectorIndex::new(3, small());
        let items: Vec<(String, Vec<f32>)> = (0..200).map(|i| (format!("d{i}"), unit(i as f32 * 0.01))).collect();
        index.upsert(items).unwrap();
        assert!(index.needs_rebuild());
        assert!(index.rebuild_graph());
        assert!(index.has_graph());
        let out = index.search(&unit(0.0), 5, Some(32), false);
        assert_eq!(out.method, SearchMethod::Hnsw);
        assert_eq!(&*out.hits[0].id, "d0");

        // Delete the best match and replace the second: both must vanish from HNSW results at once.
        index.delete("d0");
        index.upsert(vec![("d1".into(), vec![0.0, 0.0, 1.0])]).unwrap();
        assert_eq!(index.dead_in_graph(), 2);
        let out = index.search(&unit(0.0), 3, None, false);
        let ids: Vec<&str> = out.hits.iter().map(|h| &*h.id).collect();
        assert_eq!(ids, ["d2", "d3", "d4"]);
        let exact = index.search(&unit(0.0), 3, None, true);
        assert_eq!(exact.method, SearchMethod::Exact);
        assert_eq!(recall(&out.hits, &exact.hits), 1.0);

        // Many deletions trigger a rebuild that drops the dead entries.
        for i in 100..200 {
            index.delete(&format!("d{i}"));
        }
        assert!(index.needs_rebuild());
        index.rebuild_graph();
        assert_eq!(index.dead_in_graph(), 0);
        assert_eq!(index.search(&unit(1.5), 1, None, false).hits[0].id.as_ref(), "d99");
    }
}
