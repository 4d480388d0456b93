//! Duet: serve a two-tower model and an LLM-embedding model side by side over one corpus, and compare them.
//!
//! A request reads top to bottom through the modules:
//! [`api`] (HTTP: validation, problem+json, the one mapping of errors to statuses) → [`experiment`] (which arm
//! serves a unit, interleaving, exposures, feedback, reports) → [`engine`] (which model, consistency of writes) →
//! [`encoder`] (tokenize, ONNX, pool; one batching queue per model on its own thread) / [`index`] (HNSW or exact
//! search per model) → [`store`] (documents, embeddings and experiments in SQL, as [`store::records`]).
//!
//! Around it: [`server`] wires it all to a listening socket, [`config`] reads `duet.toml`, [`auth`] decides who may
//! call (API keys and scopes, the Host allow-list, CORS origins; a leaf the API enforces), [`metrics`] owns the
//! Prometheus registry, [`corpus`] imports JSONL corpora, [`eval`] scores models on held-out pairs (offline, and
//! live through `/v1/eval`), `train` trains a two-tower model and exports it to ONNX (feature `train`), `mine`
//! mines (query, result) pairs from source code (feature `mine`). [`lexical`] (BM25) and [`util`] are leaves that
//! use nothing of Duet's. The README's Architecture section lists what each module may use;
//! `tests/architecture.rs` checks it.

pub mod api;
pub mod auth;
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
