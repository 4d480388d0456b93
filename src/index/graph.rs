//! The approximate-nearest-neighbour graph behind a [`super::VectorIndex`], as a small trait with two
//! implementations: `hnsw_rs` (pure Rust) and `usearch` (Unum's C++ HNSW, the default: faster to build and to
//! search here, see the README's index figures). A graph holds the only copy of its vectors once it exists;
//! slots (the index's row numbers) are its keys. Uses only its two backend modules.

use serde::{Deserialize, Serialize};

use super::{hnsw, unum};

/// Which graph library answers approximate searches (`[models.index] backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// `hnsw_rs`: keeps f32 vectors only; its graphs are not snapshotted (rebuilt at start-up).
    HnswRs,
    /// `usearch`: f32, f16 or i8 vectors; snapshots.
    #[default]
    Usearch,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::HnswRs => "hnsw_rs",
            Backend::Usearch => "usearch",
        }
    }
}

/// How a graph stores its vectors (`[models.index] precision`; `usearch` only for f16 and i8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    I8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::I8 => "i8",
        }
    }

    /// Bytes one stored component takes.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
            Precision::I8 => 1,
        }
    }
}

/// Shape of a graph: what both backends are built from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphSpec {
    pub dim: usize,
    pub m: usize,
    pub ef_construction: usize,
    pub precision: Precision,
    /// Rows the graph is expected to hold (a capacity hint).
    pub expected: usize,
}

/// Decides whether a slot may be returned.
pub type SlotFilter<'a> = &'a (dyn Fn(usize) -> bool + Sync);

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("the {backend} backend cannot store {precision} vectors")]
    Unsupported { backend: &'static str, precision: &'static str },
    #[error("the {backend} backend does not snapshot its graphs")]
    NoSnapshots { backend: &'static str },
    #[error("usearch: {0}")]
    Usearch(String),
}

/// An HNSW graph over unit vectors (scores are dot products), keyed by slot. Inserts take `&self` and may run
/// while searches do.
pub trait AnnGraph: Send + Sync {
    /// Links rows in (in parallel for more than a few); slots are new to the graph.
    fn insert(&self, rows: &[(usize, &[f32])]);
    /// Up to `k` `(slot, score)` pairs, best first, searching with a candidate list of `ef` (≥ k), keeping only
    /// slots the filter accepts.
    fn search(&self, query: &[f32], k: usize, ef: usize, filter: Option<SlotFilter<'_>>) -> Vec<(usize, f32)>;
    /// Calls `visit` with each wanted slot's vector (as stored: f16/i8 come back rounded), in no set order.
    fn visit(&self, slots: &[usize], visit: &mut dyn FnMut(usize, &[f32]));
    /// Bytes the graph's vectors and links take (without spare capacity), as far as the backend tells.
    fn memory_bytes(&self) -> usize;
    /// The graph (with its vectors) as bytes, for a snapshot.
    fn to_bytes(&self) -> Result<Vec<u8>, GraphError>;
    fn backend(&self) -> Backend;
}

/// A new, empty graph.
pub fn new_graph(backend: Backend, spec: GraphSpec) -> Result<Box<dyn AnnGraph>, GraphError> {
    match backend {
        Backend::HnswRs if spec.precision != Precision::F32 => {
            Err(GraphError::Unsupported { backend: backend.as_str(), precision: spec.precision.as_str() })
        }
        Backend::HnswRs => Ok(Box::new(hnsw::HnswRsGraph::new(spec))),
        Backend::Usearch => Ok(Box::new(unum::UsearchGraph::new(spec)?)),
    }
}

/// A graph read back from [`AnnGraph::to_bytes`].
pub fn graph_from_bytes(backend: Backend, spec: GraphSpec, bytes: &[u8]) -> Result<Box<dyn AnnGraph>, GraphError> {
    match backend {
        Backend::HnswRs => Err(GraphError::NoSnapshots { backend: backend.as_str() }),
        Backend::Usearch => Ok(Box::new(unum::UsearchGraph::from_bytes(spec, bytes)?)),
    }
}
