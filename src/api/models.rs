//! `/v1/models`: what is served, with its index settings and state.

use axum::extract::State;
use serde::Serialize;

use super::error::ApiJson;
use super::AppState;
use crate::encoder::ModelInfo;
use crate::index::IndexParams;

#[derive(Debug, Serialize)]
pub struct IndexState {
    #[serde(flatten)]
    pub params: IndexParams,
    /// Whether an HNSW graph exists (below `exact_below` documents, search is exact).
    pub has_graph: bool,
    /// Deleted or replaced entries still in the graph, filtered out of results until a rebuild.
    pub dead_entries: usize,
    /// Vector slots held, live or dead (dead ones are dropped when the graph is rebuilt, or once they pile up
    /// without a graph).
    pub slots: usize,
}

#[derive(Debug, Serialize)]
pub struct ModelOut {
    #[serde(flatten)]
    pub info: ModelInfo,
    pub ready: bool,
    pub documents: usize,
    pub index: IndexState,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub default_model: String,
    pub models: Vec<ModelOut>,
}

/// `GET /v1/models`
pub async fn list(State(state): State<AppState>) -> ApiJson<ModelList> {
    let models = state
        .engine
        .models()
        .values()
        .map(|m| ModelOut {
            info: (*m.info).clone(),
            ready: m.is_ready(),
            documents: m.index.len(),
            index: IndexState {
                params: *m.index_params(),
                has_graph: m.index.has_graph(),
                dead_entries: m.index.dead_in_graph(),
                slots: m.index.slots(),
            },
        })
        .collect();
    ApiJson(ModelList { default_model: state.engine.default_model(), models })
}
