//! Duet: serve a two-tower model and an LLM-embedding model side by side over one corpus, and compare them.
//!
//! A request reads top to bottom through the modules:
//! [`api`] (HTTP, validation, problem+json) → [`experiment`] (which arm serves a unit; exposures, feedback,
//! reports) → [`engine`] (which model, consistency of writes) →
//! [`encoder`] (tokenize, ONNX, pool; one batching queue per model on its own thread) →
//! [`index`] (HNSW or exact search per model) → [`store`] (documents and embeddings in SQL).
//! [`config`] reads `duet.toml`, [`metrics`] owns the Prometheus registry, [`corpus`] imports JSONL corpora,
//! [`mine`] mines (query, result) pairs from source code, [`eval`] scores models on held-out pairs, and [`server`] wires it all to a listening socket.
//! [`train`] trains a two-tower model from (query, result) pairs and exports both towers to ONNX.

pub mod api;
pub mod config;
pub mod corpus;
pub mod encoder;
pub mod engine;
pub mod eval;
pub mod experiment;
pub mod index;
pub mod lexical;
pub mod metrics;
#[cfg(feature = "mine")]
pub mod mine;
pub mod server;
pub mod store;
#[cfg(feature = "train")]
pub mod train;
pub mod util;
