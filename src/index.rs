//! The vector index of one model: cosine similarity over L2-normalised vectors, answered exactly (brute force)
//! while the index is small and by an HNSW graph (`usearch` by default, or `hnsw_rs`: [`graph::AnnGraph`]) once it
//! holds `exact_below` documents or more. Each vector is held once: in a flat array while there is no graph, in
//! the graph once there is one (exact searches and rebuilds read them back from it).
//!
//! Writes are visible to the next search. A replaced or deleted document is marked dead at once and filtered
//! out of HNSW results; when dead entries pile up, [`VectorIndex::rebuild_graph`] builds a fresh graph off the
//! lock (searches keep using the old one meanwhile) and swaps it in.
//!
//! Locks: searches only ever take the read side of one lock, held briefly by writers to assign or switch slots —
//! never while inserting into the graph (HNSW insertion takes `&self` and runs outside it). Writers (upserts,
//! deletes, compaction, the swap of a rebuilt graph) are serialised by a second lock that searches never take.
//! Counts (`len`, slots, dead entries) are atomics, read without any lock.
//!
//! Slots are compacted: a rebuild keeps only the live slots (renumbered) plus what was written while it ran, and
//! without a graph (exact mode) the dead slots are dropped once they exceed `rebuild_dead_fraction` of the live
//! ones, so memory stays proportional to the live documents however often the same ids are re-upserted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::util::normalize;

mod exact;
pub mod graph;
mod hnsw;
pub mod snapshot;
mod unum;

use exact::exact_top_k;
pub use exact::recall;
pub use graph::{AnnGraph, Backend, GraphError, GraphSpec, Precision};

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
    /// The graph library.
    pub backend: Backend,
    /// How the graph stores vectors (f16 and i8 need `usearch`).
    pub precision: Precision,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
            exact_below: 2000,
            rebuild_dead_fraction: 0.2,
            backend: Backend::default(),
            precision: Precision::default(),
        }
    }
}

impl IndexParams {
    /// Why these settings cannot be used, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if self.m < 2 || self.m > 255 || self.ef_construction == 0 || self.ef_search == 0 {
            return Some("index m must be 2..=255 and ef_construction, ef_search positive".into());
        }
        if self.backend == Backend::HnswRs && self.precision != Precision::F32 {
            return Some(format!("index backend hnsw_rs stores f32 vectors only, not {}", self.precision.as_str()));
        }
        None
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
    #[error("vector for {id} has a non-finite value")]
    NonFinite { id: String },
}

type Graph = Arc<dyn AnnGraph>;

/// Dead slots tolerated in exact mode regardless of the live count, so tiny indexes do not compact on every write.
const MIN_DEAD_BEFORE_COMPACTION: usize = 64;

struct Inner {
    /// Slot → document id.
    ids: Vec<Arc<str>>,
    /// Slot → normalised vector, `dim` floats per slot, while there is no graph (empty once there is one: the
    /// graph holds the vectors then).
    vectors: Vec<f32>,
    /// Whether the slot is the current vector of its id. New slots start dead and come alive together with the
    /// retirement of the slots they replace, once they are linked into the graph.
    alive: Vec<bool>,
    by_id: HashMap<Arc<str>, usize>,
    /// When present, every slot is in it (or being linked in by the writer that holds the writer lock).
    graph: Option<Graph>,
}

impl Inner {
    /// A slot's vector from the flat array (no graph).
    fn vector(&self, slot: usize, dim: usize) -> &[f32] {
        &self.vectors[slot * dim..(slot + 1) * dim]
    }

    /// Calls `visit` with the vector of each slot, wherever it is held (in no set order with a graph).
    fn visit(&self, slots: &[usize], dim: usize, visit: &mut dyn FnMut(usize, &[f32])) {
        match &self.graph {
            Some(graph) => graph.visit(slots, visit),
            None => slots.iter().for_each(|&s| visit(s, self.vector(s, dim))),
        }
    }

    /// Copies of the given slots' ids and vectors, in the order given.
    fn rows(&self, slots: &[usize], dim: usize) -> Vec<(Arc<str>, Vec<f32>)> {
        let position: HashMap<usize, usize> = slots.iter().enumerate().map(|(i, &s)| (s, i)).collect();
        let mut rows: Vec<(Arc<str>, Vec<f32>)> = slots.iter().map(|&s| (self.ids[s].clone(), Vec::new())).collect();
        self.visit(slots, dim, &mut |slot, v| rows[position[&slot]].1 = v.to_vec());
        rows
    }
}

/// What a snapshot keeps of an index with a graph: its slots (renumbered as the graph knows them) and the graph.
pub struct Exported {
    pub ids: Vec<Arc<str>>,
    pub alive: Vec<bool>,
    pub graph: Vec<u8>,
}

/// The counts readers need, kept outside the lock.
#[derive(Default)]
struct Counts {
    live: AtomicUsize,
    slots: AtomicUsize,
    has_graph: AtomicBool,
}

/// The slots kept by a compaction, renumbered from 0 in this order.
struct Compacted {
    ids: Vec<Arc<str>>,
    vectors: Vec<f32>,
    alive: Vec<bool>,
    by_id: HashMap<Arc<str>, usize>,
}

impl Compacted {
    fn with_capacity(slots: usize, dim: usize) -> Self {
        Self {
            ids: Vec::with_capacity(slots),
            vectors: Vec::with_capacity(slots * dim),
            alive: Vec::with_capacity(slots),
            by_id: HashMap::with_capacity(slots),
        }
    }

    /// A slot; its vector is kept here only when given (without a graph).
    fn push(&mut self, id: Arc<str>, vector: Option<&[f32]>, alive: bool) {
        if alive {
            self.by_id.insert(id.clone(), self.ids.len());
        }
        self.ids.push(id);
        if let Some(vector) = vector {
            self.vectors.extend_from_slice(vector);
        }
        self.alive.push(alive);
    }
}

pub struct VectorIndex {
    dim: usize,
    params: IndexParams,
    /// Serialises writers; searches never take it.
    writer: Mutex<()>,
    inner: RwLock<Inner>,
    counts: Counts,
    rebuilding: AtomicBool,
    /// Called on the rebuilding thread each time a new graph has been swapped in.
    on_graph_built: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl VectorIndex {
    pub fn new(dim: usize, params: IndexParams) -> Self {
        Self {
            dim,
            params,
            writer: Mutex::new(()),
            inner: RwLock::new(Inner {
                ids: Vec::new(),
                vectors: Vec::new(),
                alive: Vec::new(),
                by_id: HashMap::new(),
                graph: None,
            }),
            counts: Counts::default(),
            rebuilding: AtomicBool::new(false),
            on_graph_built: OnceLock::new(),
        }
    }

    /// Sets what is called each time a rebuilt graph has been swapped in (once; later calls are ignored).
    pub fn on_graph_built(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_graph_built.set(Box::new(hook));
    }

    pub fn params(&self) -> &IndexParams {
        &self.params
    }

    pub fn dimension(&self) -> usize {
        self.dim
    }

    /// Live documents (no lock).
    pub fn len(&self) -> usize {
        self.counts.live.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots held, live or dead (no lock): what the index's memory is proportional to.
    pub fn slots(&self) -> usize {
        self.counts.slots.load(Ordering::Acquire)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.inner.read().by_id.contains_key(id)
    }

    /// Dead entries still held by the HNSW graph (no lock).
    pub fn dead_in_graph(&self) -> usize {
        if self.has_graph() {
            self.slots().saturating_sub(self.len())
        } else {
            0
        }
    }

    /// Whether a graph rebuild is running.
    pub fn is_rebuilding(&self) -> bool {
        self.rebuilding.load(Ordering::Acquire)
    }

    pub fn has_graph(&self) -> bool {
        self.counts.has_graph.load(Ordering::Acquire)
    }

    fn publish_counts(&self, inner: &Inner) {
        self.counts.live.store(inner.by_id.len(), Ordering::Release);
        self.counts.slots.store(inner.ids.len(), Ordering::Release);
        self.counts.has_graph.store(inner.graph.is_some(), Ordering::Release);
    }

    /// Inserts or replaces vectors (which must be finite and of the index's dimension). Graph insertion happens
    /// here when a graph exists, outside the lock searches take; otherwise the caller should check
    /// [`Self::needs_rebuild`] and run [`Self::rebuild_graph`] (off the async runtime).
    pub fn upsert(&self, items: Vec<(String, Vec<f32>)>) -> Result<(), IndexError> {
        for (id, v) in &items {
            if v.len() != self.dim {
                return Err(IndexError::Dimension { id: id.clone(), got: v.len(), expected: self.dim });
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(IndexError::NonFinite { id: id.clone() });
            }
        }
        let items: Vec<(Arc<str>, Vec<f32>)> = items
            .into_iter()
            .map(|(id, mut v)| {
                normalize(&mut v);
                (Arc::from(id), v)
            })
            .collect();
        let _writer = self.writer.lock();
        // 1. New slots, not alive yet: searches keep seeing the replaced vectors.
        let (first, graph) = {
            let mut inner = self.inner.write();
            let first = inner.ids.len();
            let flat = inner.graph.is_none();
            for (id, vector) in &items {
                inner.ids.push(id.clone());
                if flat {
                    inner.vectors.extend_from_slice(vector);
                }
                inner.alive.push(false);
            }
            self.publish_counts(&inner);
            (first, inner.graph.clone())
        };
        // 2. Linked into the graph with no lock held: searches go on meanwhile.
        if let Some(graph) = graph {
            let rows: Vec<(usize, &[f32])> =
                items.iter().enumerate().map(|(i, (_, v))| (first + i, v.as_slice())).collect();
            graph.insert(&rows);
        }
        // 3. The switch: new slots alive, replaced ones dead, in one step.
        {
            let mut inner = self.inner.write();
            for (i, (id, _)) in items.into_iter().enumerate() {
                let slot = first + i;
                inner.alive[slot] = true;
                if let Some(old) = inner.by_id.insert(id, slot) {
                    inner.alive[old] = false;
                }
            }
            self.publish_counts(&inner);
        }
        self.compact_if_due();
        Ok(())
    }

    /// Removes a document; returns whether it was present.
    pub fn delete(&self, id: &str) -> bool {
        let _writer = self.writer.lock();
        let existed = {
            let mut inner = self.inner.write();
            let existed = match inner.by_id.remove(id) {
                Some(slot) => {
                    inner.alive[slot] = false;
                    true
                }
                None => false,
            };
            self.publish_counts(&inner);
            existed
        };
        self.compact_if_due();
        existed
    }

    /// Exact mode only (a graph is compacted when it is rebuilt): drops dead slots once there are more of them
    /// than `rebuild_dead_fraction` of the live ones (and at least a few). The copy is made under the read lock,
    /// so searches go on; the caller holds the writer lock, so nothing changes meanwhile.
    fn compact_if_due(&self) {
        let (live, slots) = (self.len(), self.slots());
        let dead = slots - live;
        let due = dead >= MIN_DEAD_BEFORE_COMPACTION && dead as f64 > self.params.rebuild_dead_fraction * live as f64;
        // A rebuild in progress renumbers the slots itself, from a snapshot this must not invalidate.
        if !due || self.has_graph() || self.rebuilding.load(Ordering::Acquire) {
            return;
        }
        let compacted = {
            let inner = self.inner.read();
            let mut compacted = Compacted::with_capacity(inner.by_id.len(), self.dim);
            for slot in (0..inner.ids.len()).filter(|&s| inner.alive[s]) {
                compacted.push(inner.ids[slot].clone(), Some(inner.vector(slot, self.dim)), true);
            }
            compacted
        };
        let mut inner = self.inner.write();
        if inner.graph.is_none() {
            let Compacted { ids, vectors, alive, by_id } = compacted;
            (inner.ids, inner.vectors, inner.alive, inner.by_id) = (ids, vectors, alive, by_id);
            self.publish_counts(&inner);
        }
    }

    /// Whether a graph should be (re)built: the index has grown past `exact_below` without one, or too many of
    /// its graph's entries are dead.
    pub fn needs_rebuild(&self) -> bool {
        let live = self.len();
        if self.has_graph() {
            self.dead_in_graph() as f64 > self.params.rebuild_dead_fraction * live.max(1) as f64
        } else {
            live >= self.params.exact_below
        }
    }

    /// Builds a graph over the live vectors without blocking searches, then swaps it in, adding what was written
    /// meanwhile and dropping the dead slots. Blocking and CPU-heavy: run it on a blocking thread. Returns false
    /// when another rebuild was already running.
    pub fn rebuild_graph(&self) -> bool {
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return false;
        }
        // Writes made while a rebuild runs may call for another one, which they could not start themselves.
        loop {
            if let Err(err) = self.rebuild_once() {
                // Only a backend that cannot be built (settings checked at start-up) gets here.
                tracing::error!(error = %err, "building the graph failed; searches stay exact");
                break;
            }
            if !self.needs_rebuild() {
                break;
            }
        }
        self.rebuilding.store(false, Ordering::Release);
        if let Some(hook) = self.on_graph_built.get() {
            hook();
        }
        if self.needs_rebuild() {
            // A write slipped in between the last check and the reset of the flag.
            self.rebuild_graph();
        }
        true
    }

    fn rebuild_once(&self) -> Result<(), GraphError> {
        // 1. A copy of the live slots, under the writer lock so that no compaction renumbers them meanwhile.
        let (snapshot_len, rows): (usize, Vec<(Arc<str>, Vec<f32>)>) = {
            let _writer = self.writer.lock();
            let inner = self.inner.read();
            let live: Vec<usize> = (0..inner.ids.len()).filter(|&s| inner.alive[s]).collect();
            (inner.ids.len(), inner.rows(&live, self.dim))
        };
        // 2. The graph over them, numbered 0.., off every lock (writes go on into the old graph).
        let graph = self.new_graph(rows.len())?;
        let refs: Vec<(usize, &[f32])> = rows.iter().enumerate().map(|(i, (_, v))| (i, v.as_slice())).collect();
        graph.insert(&refs);
        drop(refs);

        // 3. With writers held off: what was written since the snapshot joins the new graph (searches go on), then
        //    the compacted slots and the graph are swapped in at once.
        let _writer = self.writer.lock();
        let (appended, snapshot_alive): (Vec<(Arc<str>, Vec<f32>)>, Vec<bool>) = {
            let inner = self.inner.read();
            let fresh: Vec<usize> = (snapshot_len..inner.ids.len()).filter(|&s| inner.alive[s]).collect();
            let appended = inner.rows(&fresh, self.dim);
            // A snapshot row is still alive when its id still points into the snapshot: a later write of the same
            // id has a slot past it (nothing renumbers slots while the rebuild runs).
            let snapshot_alive =
                rows.iter().map(|(id, _)| inner.by_id.get(id).is_some_and(|&s| s < snapshot_len)).collect();
            (appended, snapshot_alive)
        };
        let extra: Vec<(usize, &[f32])> =
            appended.iter().enumerate().map(|(j, (_, v))| (rows.len() + j, v.as_slice())).collect();
        graph.insert(&extra);
        drop(extra);
        // The vectors now live in the new graph only.
        let mut compacted = Compacted::with_capacity(rows.len() + appended.len(), 0);
        for ((id, _), alive) in rows.into_iter().zip(snapshot_alive) {
            compacted.push(id, None, alive);
        }
        for (id, _) in appended {
            compacted.push(id, None, true);
        }
        let Compacted { ids, vectors, alive, by_id } = compacted;
        let mut inner = self.inner.write();
        (inner.ids, inner.vectors, inner.alive, inner.by_id) = (ids, vectors, alive, by_id);
        inner.graph = Some(Arc::from(graph));
        self.publish_counts(&inner);
        Ok(())
    }

    fn spec(&self, expected: usize) -> GraphSpec {
        GraphSpec {
            dim: self.dim,
            m: self.params.m,
            ef_construction: self.params.ef_construction,
            precision: self.params.precision,
            expected,
        }
    }

    fn new_graph(&self, expected: usize) -> Result<Box<dyn AnnGraph>, GraphError> {
        graph::new_graph(self.params.backend, self.spec(expected))
    }

    /// Bytes held per live document: ids aside, the flat vectors without a graph, the graph's own count with one.
    pub fn bytes_per_vector(&self) -> usize {
        let inner = self.inner.read();
        let held = match &inner.graph {
            Some(graph) => graph.memory_bytes(),
            None => inner.vectors.len() * 4,
        };
        held / inner.by_id.len().max(1)
    }

    /// The slots and graph as a snapshot keeps them; `None` without a graph. Writers are held off meanwhile (not
    /// searches), so what is exported is the index at one instant.
    pub fn export(&self) -> Result<Option<Exported>, GraphError> {
        let _writer = self.writer.lock();
        let (ids, alive, graph) = {
            let inner = self.inner.read();
            let Some(graph) = inner.graph.clone() else { return Ok(None) };
            (inner.ids.clone(), inner.alive.clone(), graph)
        };
        Ok(Some(Exported { ids, alive, graph: graph.to_bytes()? }))
    }

    /// Replaces the index's content with an exported one (at start-up, before any write).
    pub fn restore(&self, exported: Exported) -> Result<(), GraphError> {
        let Exported { ids, alive, graph } = exported;
        let graph = graph::graph_from_bytes(self.params.backend, self.spec(ids.len()), &graph)?;
        let by_id: HashMap<Arc<str>, usize> =
            ids.iter().zip(&alive).enumerate().filter(|(_, (_, &a))| a).map(|(s, (id, _))| (id.clone(), s)).collect();
        let _writer = self.writer.lock();
        let mut inner = self.inner.write();
        (inner.ids, inner.vectors, inner.alive, inner.by_id) = (ids, Vec::new(), alive, by_id);
        inner.graph = Some(Arc::from(graph));
        self.publish_counts(&inner);
        Ok(())
    }

    /// The `k` nearest live documents to `query` (normalised here). Exact below `exact_below` documents, when no
    /// graph exists yet, or when `exact` is asked for; HNSW otherwise, with `ef` (default `ef_search`, at least k).
    /// A non-finite score (which no vector the index accepts can give) is never returned.
    pub fn search(&self, query: &[f32], k: usize, ef: Option<usize>, exact: bool) -> SearchOutcome {
        let mut query = query.to_vec();
        normalize(&mut query);
        let inner = self.inner.read();
        let live = inner.by_id.len();
        match &inner.graph {
            Some(graph) if !exact && live >= self.params.exact_below => {
                let ef = ef.unwrap_or(self.params.ef_search).max(k);
                let alive = |slot: usize| inner.alive.get(slot).copied().unwrap_or(false);
                let found = if inner.ids.len() > live {
                    graph.search(&query, k, ef, Some(&alive))
                } else {
                    graph.search(&query, k, ef, None)
                };
                let hits = found
                    .into_iter()
                    .filter(|&(slot, score)| alive(slot) && score.is_finite())
                    .map(|(slot, score)| Hit { id: inner.ids[slot].clone(), score })
                    .collect();
                SearchOutcome { hits, method: SearchMethod::Hnsw, ef: Some(ef) }
            }
            _ => {
                SearchOutcome { hits: exact_top_k(&inner, self.dim, &query, k), method: SearchMethod::Exact, ef: None }
            }
        }
    }
}

#[cfg(test)]
mod backend_tests;
#[cfg(test)]
mod tests;
