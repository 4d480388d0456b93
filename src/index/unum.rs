//! The `usearch` graph backend (Unum's C++ HNSW through `cxx`): inner-product metric over unit vectors (cosine
//! for i8, which usearch scales by 127), slots as keys, vectors stored as f32, f16 or i8.
//!
//! usearch wants two things the index does not give it by itself: a capacity reserved before adds (growing it is
//! not safe while others search, so growth takes a write lock every other call reads), and one of a fixed number
//! of thread contexts per concurrent call (taken from a small counting gate, so a call never finds none free).
//! The candidate list size of a search is index-wide in usearch; it uses the larger of it and the results
//! wanted, so it is kept at 1 and a search asks for `ef` results and keeps the best `k`. Uses only the graph
//! trait.

use parking_lot::{Condvar, Mutex, RwLock};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::graph::{AnnGraph, Backend, GraphError, GraphSpec, Precision, SlotFilter};

/// Concurrent calls into one graph (each holds a usearch thread context).
const CONTEXTS: usize = 64;

pub struct UsearchGraph {
    index: Index,
    dim: usize,
    /// Read by every add and search; written to grow the capacity.
    resize: RwLock<()>,
    gate: Gate,
}

fn usearch_error(err: impl std::fmt::Display) -> GraphError {
    GraphError::Usearch(err.to_string())
}

fn options(spec: &GraphSpec) -> IndexOptions {
    let (metric, quantization) = match spec.precision {
        Precision::F32 => (MetricKind::IP, ScalarKind::F32),
        Precision::F16 => (MetricKind::IP, ScalarKind::F16),
        Precision::I8 => (MetricKind::Cos, ScalarKind::I8),
    };
    IndexOptions {
        dimensions: spec.dim,
        metric,
        quantization,
        connectivity: spec.m.clamp(2, 255),
        expansion_add: spec.ef_construction.max(8),
        expansion_search: 1,
        multi: false,
    }
}

impl UsearchGraph {
    pub fn new(spec: GraphSpec) -> Result<Self, GraphError> {
        let index = Index::new(&options(&spec)).map_err(usearch_error)?;
        index.reserve_capacity_and_threads(spec.expected.max(1024), CONTEXTS).map_err(usearch_error)?;
        Ok(Self { index, dim: spec.dim, resize: RwLock::new(()), gate: Gate::new(CONTEXTS) })
    }

    pub fn from_bytes(spec: GraphSpec, bytes: &[u8]) -> Result<Self, GraphError> {
        let graph = Self::new(GraphSpec { expected: 0, ..spec })?;
        graph.index.load_from_buffer(bytes).map_err(usearch_error)?;
        if graph.index.dimensions() != spec.dim {
            return Err(GraphError::Usearch(format!(
                "the graph holds {}-dimensional vectors, not {}",
                graph.index.dimensions(),
                spec.dim
            )));
        }
        let capacity = (graph.index.size() + graph.index.size() / 4).max(1024);
        graph.index.reserve_capacity_and_threads(capacity, CONTEXTS).map_err(usearch_error)?;
        Ok(graph)
    }

    /// Makes room for `more` rows (under the write side of `resize`, so no call is inside usearch meanwhile).
    fn reserve(&self, more: usize) {
        let needed = self.index.size() + more;
        if needed <= self.index.capacity() {
            return;
        }
        let _exclusive = self.resize.write();
        if needed > self.index.capacity() {
            let capacity = needed.max(self.index.capacity() * 2);
            if let Err(err) = self.index.reserve_capacity_and_threads(capacity, CONTEXTS) {
                panic!("usearch could not reserve {capacity} rows: {err}");
            }
        }
    }

    fn add(&self, slot: usize, vector: &[f32]) {
        let _context = self.gate.enter();
        let _shared = self.resize.read();
        // A failure here is out of memory or a programming error (a slot added twice, a wrong dimension).
        if let Err(err) = self.index.add(slot as u64, vector) {
            panic!("usearch could not add slot {slot}: {err}");
        }
    }
}

impl AnnGraph for UsearchGraph {
    fn insert(&self, rows: &[(usize, &[f32])]) {
        self.reserve(rows.len());
        let threads = if rows.len() > 16 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { 1 };
        if threads <= 1 {
            rows.iter().for_each(|(slot, v)| self.add(*slot, v));
            return;
        }
        std::thread::scope(|scope| {
            for t in 0..threads {
                scope.spawn(move || rows.iter().skip(t).step_by(threads).for_each(|(slot, v)| self.add(*slot, v)));
            }
        });
    }

    fn search(&self, query: &[f32], k: usize, ef: usize, filter: Option<SlotFilter<'_>>) -> Vec<(usize, f32)> {
        let _context = self.gate.enter();
        let _shared = self.resize.read();
        let wanted = ef.max(k);
        let found = match filter {
            Some(keep) => self.index.filtered_search(query, wanted, |key| keep(key as usize)),
            None => self.index.search(query, wanted),
        };
        match found {
            Ok(m) => m.keys.iter().zip(&m.distances).take(k).map(|(&key, &d)| (key as usize, 1.0 - d)).collect(),
            Err(err) => {
                tracing::error!(error = %err, "usearch search failed");
                Vec::new()
            }
        }
    }

    fn visit(&self, slots: &[usize], visit: &mut dyn FnMut(usize, &[f32])) {
        let _context = self.gate.enter();
        let _shared = self.resize.read();
        let mut buffer = vec![0f32; self.dim];
        for &slot in slots {
            if matches!(self.index.get(slot as u64, &mut buffer), Ok(1)) {
                visit(slot, &buffer);
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        // What the vectors and links take, as serialised (`memory_usage` also counts reserved capacity and the
        // per-thread contexts, which dwarf them in small graphs).
        self.index.serialized_length()
    }

    fn to_bytes(&self) -> Result<Vec<u8>, GraphError> {
        // The caller holds inserts off; searches may go on while it is copied.
        let _context = self.gate.enter();
        let _shared = self.resize.read();
        let mut bytes = vec![0u8; self.index.serialized_length()];
        self.index.save_to_buffer(&mut bytes).map_err(usearch_error)?;
        Ok(bytes)
    }

    fn backend(&self) -> Backend {
        Backend::Usearch
    }
}

/// A counting gate: at most `n` holders at once.
struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Pass<'a>(&'a Gate);

impl Gate {
    fn new(n: usize) -> Self {
        Self { free: Mutex::new(n), freed: Condvar::new() }
    }

    fn enter(&self) -> Pass<'_> {
        let mut free = self.free.lock();
        while *free == 0 {
            self.freed.wait(&mut free);
        }
        *free -= 1;
        Pass(self)
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        *self.0.free.lock() += 1;
        self.0.freed.notify_one();
    }
}
