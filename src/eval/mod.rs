//! Evaluation: offline (`duet eval`, feature `offline-eval`), held-out (query, result) pairs run through the same
//! engine and search path the server uses, scored per model — and for a BM25 baseline — with confidence
//! intervals, paired significance tests, embedding-quality measures and compute costs, written as Markdown, JSON
//! and SVG plots; and live ([`live`]: `/v1/eval` and its jobs, always built).
//!
//! One file per concern: [`metrics`] (rank metrics of one query), [`stats`] (bootstrap intervals, paired tests),
//! [`live`] (the server's evaluation jobs); with `offline-eval`: `data` (reading a data folder, the graded
//! relevance of `qrels.tsv`, the seeded corpus and query samples), `quality` (alignment, uniformity, anisotropy,
//! score gaps), `cost` (speed, memory and size), `run` (one evaluation through the engine), `report` (the report's
//! structure and its Markdown), `plots` (SVG charts) and `curve` (learning curves and cross-domain runs, which
//! train two-tower models with `crate::train`). The BM25 baseline is [`crate::lexical`].
//!
//! # Data folder
//!
//! As written by `duet mine` and found in `../shared/data`: `corpus.jsonl` (`{"id","text"}` per line) and
//! `test.jsonl` (`{"query","doc_id"}` per line, optionally with a `"query_id"`; lines sharing a query are one
//! query with several relevant documents). A corpus sample (`max_docs`) always keeps every relevant document.
//!
//! # Graded relevance: `qrels.tsv`
//!
//! An optional `qrels.tsv` beside `test.jsonl` grades documents, one judgement a line, tab-separated:
//!
//! ```text
//! query-id<TAB>doc-id<TAB>grade
//! ```
//!
//! The query id is the line's `query_id` in `test.jsonl` when it has one, else the query text itself. The grade is
//! a non-negative number: 0 is "judged not relevant", higher is more relevant (e.g. 1 partly, 2 fully, 3
//! perfectly); nDCG uses gain 2^grade − 1. A first line whose grade is not a number is taken as a header (BEIR's
//! `query-id corpus-id score`); blank lines and lines starting with `#` are skipped; four columns are read as TREC
//! qrels (`query-id iteration doc-id grade`). A (query, document) of `test.jsonl` without a judgement has grade 1;
//! judgements for queries absent from `test.jsonl` are ignored. Recall and MRR count every grade above 0 as
//! relevant.

// The live evaluation the server offers, and what it shares with `duet eval`: always built.
pub mod live;
pub mod metrics;
pub mod stats;

// `duet eval` (feature `offline-eval`): it trains models for learning curves and draws plots.
#[cfg(feature = "offline-eval")]
pub mod cost;
#[cfg(feature = "offline-eval")]
pub mod curve;
#[cfg(feature = "offline-eval")]
mod data;
#[cfg(feature = "offline-eval")]
pub mod plots;
#[cfg(feature = "offline-eval")]
pub mod quality;
#[cfg(feature = "offline-eval")]
pub mod report;
#[cfg(feature = "offline-eval")]
pub mod run;

#[cfg(feature = "offline-eval")]
pub use data::*;
pub use metrics::Grades;
