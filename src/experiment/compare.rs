//! Side by side: one query searched with 2 to 4 served models at once, each model's ranking as `/v1/search` gives
//! it, and how much every pair of rankings overlaps (Jaccard@k and rank-biased overlap, with the definitions and
//! the persistence the shadow report uses). Experiments are bypassed and nothing is logged. Transport-neutral:
//! the HTTP handler validates the request and calls [`compare`].
//!
//! Uses [`crate::engine`] for the searches, and the experiment module's search hits and overlap statistics.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::serve::{default_k, hits, ms, ranked_ids, SearchHit, Timings};
use super::stats;
use crate::engine::{Engine, EngineError, Priority, SearchQuery};
use crate::index::SearchMethod;

/// The fewest and the most models a comparison takes.
pub const MODELS: std::ops::RangeInclusive<usize> = 2..=4;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareRequest {
    pub query: String,
    /// Served model names, distinct, in the order of the columns.
    pub models: Vec<String>,
    #[serde(default = "default_k")]
    pub k: usize,
    /// Brute-force search for every model (heavy: one heavy-search slot per model).
    #[serde(default)]
    pub exact: bool,
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub ef: Option<usize>,
}

impl CompareRequest {
    /// Whether the model list is usable: 2 to 4 names, none repeated.
    pub fn check_models(&self) -> Result<(), String> {
        let n = self.models.len();
        if !MODELS.contains(&n) {
            return Err(format!("`models` must name {} to {} served models; got {n}", MODELS.start(), MODELS.end()));
        }
        for (i, model) in self.models.iter().enumerate() {
            if self.models[..i].contains(model) {
                return Err(format!("`models` names `{model}` twice; a comparison needs distinct models"));
            }
        }
        Ok(())
    }
}

/// One model's ranking.
#[derive(Debug, Serialize)]
pub struct Column {
    pub model: String,
    pub model_version: String,
    pub method: SearchMethod,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ef: Option<usize>,
    pub query_truncated: bool,
    pub results: Vec<SearchHit>,
    /// This model's own times; `total_ms` is from the comparison's start to this model's ranking being ready.
    pub timings_ms: Timings,
}

/// The overlap of two columns' rankings (`a` before `b` in the request's order).
#[derive(Debug, Serialize, PartialEq)]
pub struct Overlap {
    pub a: String,
    pub b: String,
    pub jaccard: f64,
    pub rbo: f64,
}

#[derive(Debug, Serialize)]
pub struct CompareResponse {
    pub query: String,
    pub k: usize,
    pub columns: Vec<Column>,
    pub overlaps: Vec<Overlap>,
}

/// The overlap of every pair of rankings, `i < j` in the given order.
pub fn overlaps(rankings: &[(String, Vec<String>)], k: usize) -> Vec<Overlap> {
    let mut out = Vec::new();
    for (i, (a, ra)) in rankings.iter().enumerate() {
        for (b, rb) in &rankings[i + 1..] {
            out.push(Overlap {
                a: a.clone(),
                b: b.clone(),
                jaccard: stats::jaccard_at(ra, rb, k),
                rbo: stats::rbo(ra, rb, stats::RBO_PERSISTENCE),
            });
        }
    }
    out
}

/// Searches every model of a validated request concurrently. Every model is looked up before any search starts,
/// so an unknown model is reported as such whatever the others are doing; any model's failure fails the whole.
pub async fn compare(engine: &Arc<Engine>, request: CompareRequest) -> Result<CompareResponse, EngineError> {
    for model in &request.models {
        engine.model(model)?;
    }
    let started = Instant::now();
    let searches = request.models.iter().map(|model| {
        let query = SearchQuery {
            model: model.clone(),
            query: request.query.clone(),
            k: request.k,
            ef: request.ef,
            exact: request.exact,
            priority: Priority::Live,
        };
        async move {
            let result = engine.search(query).await?;
            Ok::<_, EngineError>((result, ms(started.elapsed().as_secs_f64())))
        }
    });
    let results = futures::future::try_join_all(searches).await?;
    let rankings: Vec<(String, Vec<String>)> =
        results.iter().map(|(r, _)| (r.model.name.clone(), ranked_ids(r))).collect();
    let overlaps = overlaps(&rankings, request.k);
    let snippet_chars = engine.limits.snippet_chars;
    let columns = results
        .into_iter()
        .map(|(result, total_ms)| Column {
            model: result.model.name.clone(),
            model_version: result.model.version.clone(),
            method: result.method,
            ef: result.ef,
            query_truncated: result.query_truncated,
            results: hits(&result, None, snippet_chars),
            timings_ms: Timings {
                encode_ms: ms(result.encode_seconds),
                search_ms: ms(result.search_seconds),
                fetch_ms: ms(result.fetch_seconds),
                total_ms,
            },
        })
        .collect();
    Ok(CompareResponse { query: request.query, k: request.k, columns, overlaps })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn every_pair_overlaps_once_in_request_order() {
        let rankings = vec![("a".into(), ids("1 2 3")), ("b".into(), ids("1 3 4")), ("c".into(), ids("1 2 3"))];
        let got = overlaps(&rankings, 3);
        let pairs: Vec<(&str, &str)> = got.iter().map(|o| (o.a.as_str(), o.b.as_str())).collect();
        assert_eq!(pairs, [("a", "b"), ("a", "c"), ("b", "c")]);
        assert_eq!(got[0].jaccard, 0.5);
        assert_eq!(got[1].jaccard, 1.0);
        assert!((got[1].rbo - 1.0).abs() < 1e-12);
    }

    #[test]
    fn model_lists_need_two_to_four_distinct_names() {
        let request = |models: &[&str]| CompareRequest {
            query: "q".into(),
            models: models.iter().map(|m| m.to_string()).collect(),
            k: 10,
            exact: false,
            ef: None,
        };
        assert!(request(&["a"]).check_models().unwrap_err().contains("got 1"));
        assert!(request(&["a", "b", "c", "d", "e"]).check_models().unwrap_err().contains("got 5"));
        assert!(request(&["a", "b", "a"]).check_models().unwrap_err().contains("twice"));
        assert!(request(&["a", "b"]).check_models().is_ok());
    }
}
