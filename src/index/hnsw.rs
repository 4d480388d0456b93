//! The `hnsw_rs` graph backend (`DistDot` over unit f32 vectors, slots as data ids). Its vectors are read back
//! by walking its points. Uses only the graph trait.

use std::collections::HashMap;

use hnsw_rs::filter::FilterT;
use hnsw_rs::prelude::{DistDot, Hnsw};

use super::graph::{AnnGraph, Backend, GraphError, GraphSpec, SlotFilter};

pub struct HnswRsGraph {
    graph: Hnsw<'static, f32, DistDot>,
    dim: usize,
    m: usize,
}

impl HnswRsGraph {
    pub fn new(spec: GraphSpec) -> Self {
        let m = spec.m.clamp(2, 255);
        let graph = Hnsw::new(m, spec.expected.max(1024), 16, spec.ef_construction.max(8), DistDot);
        Self { graph, dim: spec.dim, m }
    }
}

impl AnnGraph for HnswRsGraph {
    fn insert(&self, rows: &[(usize, &[f32])]) {
        let rows: Vec<(&[f32], usize)> = rows.iter().map(|(slot, v)| (*v, *slot)).collect();
        if rows.len() > 16 {
            self.graph.parallel_insert_slice(&rows);
        } else {
            rows.iter().for_each(|row| self.graph.insert_slice(*row));
        }
    }

    fn search(&self, query: &[f32], k: usize, ef: usize, filter: Option<SlotFilter<'_>>) -> Vec<(usize, f32)> {
        let found = match filter {
            Some(keep) => {
                let keep = |id: &usize| keep(*id);
                self.graph.search_filter(query, k, ef, Some(&keep as &dyn FilterT))
            }
            None => self.graph.search(query, k, ef),
        };
        found.into_iter().map(|n| (n.d_id, 1.0 - n.distance)).collect()
    }

    fn visit(&self, slots: &[usize], visit: &mut dyn FnMut(usize, &[f32])) {
        let wanted: HashMap<usize, ()> = slots.iter().map(|&s| (s, ())).collect();
        for point in self.graph.get_point_indexation() {
            let slot = point.get_origin_id();
            if wanted.contains_key(&slot) {
                visit(slot, point.get_v());
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        // Vectors plus about 2·M neighbour ids (with their distances) on layer 0.
        self.graph.get_nb_point() * (self.dim * 4 + 2 * self.m * 16)
    }

    fn to_bytes(&self) -> Result<Vec<u8>, GraphError> {
        Err(GraphError::NoSnapshots { backend: Backend::HnswRs.as_str() })
    }

    fn backend(&self) -> Backend {
        Backend::HnswRs
    }
}
