//! Searching under the experiments: which arm (or arms) answer a search, how their rankings become the list the
//! user is shown (one arm, team-draft interleaving, or a primary with a shadow run off the request path), and
//! what is logged about it (the exposure, the shadow comparison). Transport-neutral: the HTTP handler validates
//! the request and calls [`search`].
//!
//! Which model answers, top to bottom: an explicit `model` bypasses experiments; otherwise a request with a unit
//! id goes through the named `experiment`, or the default experiment if one is set — A/B assigns the unit's arm,
//! interleaving merges both arms' rankings (team-draft), shadow serves the first arm and runs the second off the
//! request path; anything else is served by the default model. Searches under a running experiment are logged
//! (exposures) without waiting for the store, with the model version that served each arm shown.
//!
//! Uses [`crate::engine`] for the searches and the experiment module's own routing, interleaving, exposure log and
//! overlap statistics.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::interleave::team_draft;
use super::{stats, Experiment, ExperimentError, Experiments, Mode, Plan, Route, Status};
use crate::engine::{Engine, Priority, SearchQuery, SearchResult};
use crate::index::SearchMethod;
use crate::store::{ExposureItem, ExposureRecord, ShadowRecord, Versions};
use crate::util::error_chain;

pub(super) fn default_k() -> usize {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The query text (`q` in a query string).
    #[serde(alias = "q")]
    pub query: String,
    #[serde(default = "default_k")]
    pub k: usize,
    /// Model to search with; bypasses experiments. When absent: the experiment's choice, else the default model.
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub model: Option<String>,
    /// HNSW candidate list size for this request (default: the model's `ef_search`).
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub ef: Option<usize>,
    /// Brute-force search, bypassing the HNSW graph (the reference for recall).
    #[serde(default)]
    pub exact: bool,
    /// Who is searching (user, session): the unit experiments assign. Also read from `X-Duet-Unit`.
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub unit_id: Option<String>,
    /// Experiment (id or name) to search under; the default experiment when absent.
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
    pub experiment: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SearchHit {
    pub id: String,
    pub score: f32,
    pub snippet: String,
    pub metadata: serde_json::Value,
    /// The arm that contributed this result (under an experiment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Timings {
    pub encode_ms: f64,
    pub search_ms: f64,
    pub fetch_ms: f64,
    pub total_ms: f64,
}

/// The experiment a search went through.
#[derive(Debug, Serialize)]
pub struct ExperimentTag {
    pub id: String,
    pub name: String,
    pub mode: Mode,
    pub status: Status,
    /// Whether the search was logged as an exposure (feedback can refer to it): false when the experiment is not
    /// running or the exposure queue was full.
    pub logged: bool,
}

#[derive(Debug, Serialize)]
pub struct SearchResponse {
    /// The server-made id of this search (its exposure, under an experiment), which feedback refers to.
    pub request_id: String,
    /// The request's `X-Request-Id`: the client's when valid, else a generated one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The model that ranked the results; `null` when two arms were interleaved (see `arms`).
    pub model: Option<String>,
    pub model_version: Option<String>,
    pub method: SearchMethod,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ef: Option<usize>,
    /// Whether the query was cut at the model's `max_tokens`.
    pub query_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_id: Option<String>,
    pub experiment: Option<ExperimentTag>,
    /// The serving arm (A/B, shadow's primary); `null` without an experiment or when interleaved.
    pub arm: Option<String>,
    /// Every arm whose ranking is in the results.
    pub arms: Vec<String>,
    pub results: Vec<SearchHit>,
    pub timings_ms: Timings,
}

/// A search's response, and the model that served it (`a+b` when two were interleaved), for the metrics.
#[derive(Debug)]
pub struct Served {
    pub response: SearchResponse,
    pub served_by: String,
}

/// The first `chars` characters of `text`, with an ellipsis when cut.
pub fn snippet(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

pub(super) fn ms(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e3
}

pub(super) fn hits(result: &SearchResult, arm: Option<&str>, snippet_chars: usize) -> Vec<SearchHit> {
    result
        .hits
        .iter()
        .map(|(hit, doc)| SearchHit {
            id: doc.id.clone(),
            score: hit.score,
            snippet: snippet(&doc.text, snippet_chars),
            metadata: doc.metadata.clone(),
            arm: arm.map(str::to_string),
        })
        .collect()
}

pub(super) fn ranked_ids(result: &SearchResult) -> Vec<String> {
    result.hits.iter().map(|(_, doc)| doc.id.clone()).collect()
}

/// A seed for the interleaving coin from the server-made request id: random per search, and reproducible from
/// the logged exposure.
fn seed_of(request_id: &str) -> u64 {
    let digest = Sha256::digest(request_id.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Answers one search: routes it (an explicit model, else the experiment for the unit, else the default model),
/// runs the plan's searches through the engine, builds the list shown, and queues its exposure (and the shadow
/// arm's search) without waiting for the store. `request_id` (made by the server) keys the exposure that feedback
/// refers to;
/// `started` is when the request arrived, for the response's `total_ms` and the exposure's latency.
pub async fn search(
    engine: &Arc<Engine>,
    experiments: &Arc<Experiments>,
    request_id: String,
    unit: Option<String>,
    body: SearchRequest,
    started: Instant,
) -> Result<Served, ExperimentError> {
    let route = {
        let span =
            tracing::info_span!("experiment.route", experiment = tracing::field::Empty, plan = tracing::field::Empty)
                .entered();
        let route = match &body.model {
            // An explicit model bypasses experiments.
            Some(_) => Route::Direct,
            None => experiments.route(body.experiment.as_deref(), unit.as_deref())?,
        };
        match &route {
            Route::Direct => span.record("plan", "direct"),
            Route::Experiment { experiment, plan, .. } => {
                let plan = match plan {
                    Plan::Arm { .. } => "arm",
                    Plan::Interleave => "interleave",
                    Plan::Shadow => "shadow",
                };
                span.record("experiment", experiment.name.as_str()).record("plan", plan)
            }
        };
        route
    };
    let Route::Experiment { experiment, unit_id, plan } = route else {
        let model = body.model.clone().unwrap_or_else(|| engine.default_model());
        let result = engine.search(query(&body, &model)).await?;
        let shown = hits(&result, None, engine.limits.snippet_chars);
        let response = response(&request_id, &result, shown, started, unit);
        return Ok(Served { served_by: result.model.name.clone(), response });
    };
    let searching = Searching { engine, experiments, experiment, unit_id, request_id, body: &body, started };
    match plan {
        Plan::Arm { index, logged } => searching.one_arm(index, logged).await,
        Plan::Shadow => searching.shadowed().await,
        Plan::Interleave => searching.interleaved().await,
    }
}

fn query(body: &SearchRequest, model: &str) -> SearchQuery {
    SearchQuery {
        model: model.to_string(),
        query: body.query.clone(),
        k: body.k,
        ef: body.ef,
        exact: body.exact,
        priority: Priority::Live,
    }
}

/// A search under an experiment, with what each plan needs.
struct Searching<'a> {
    engine: &'a Arc<Engine>,
    experiments: &'a Arc<Experiments>,
    experiment: Arc<Experiment>,
    unit_id: String,
    request_id: String,
    body: &'a SearchRequest,
    started: Instant,
}

impl Searching<'_> {
    fn query(&self, model: &str) -> SearchQuery {
        query(self.body, model)
    }

    fn hits(&self, result: &SearchResult, arm: &str) -> Vec<SearchHit> {
        hits(result, Some(arm), self.engine.limits.snippet_chars)
    }

    fn response(&self, result: &SearchResult, shown: Vec<SearchHit>) -> SearchResponse {
        response(&self.request_id, result, shown, self.started, Some(self.unit_id.clone()))
    }

    /// Queues the exposure (never waits); false when the queue was full. `served` is every (arm, result) shown.
    fn log(&self, arm: Option<&str>, response: &SearchResponse, served: &[(&str, &SearchResult)]) -> bool {
        let versions: Versions =
            served.iter().map(|(arm, result)| (arm.to_string(), result.model.version.clone())).collect();
        let exposure = Exposure { arm, query: &self.body.query, response, versions };
        log_exposure(self.experiments, &self.experiment, &self.request_id, &self.unit_id, exposure)
    }

    /// One arm serves: the unit's A/B arm, or the control of an experiment that is not running (not logged).
    async fn one_arm(self, index: usize, logged: bool) -> Result<Served, ExperimentError> {
        let arm = &self.experiment.arms[index];
        let result = self.engine.search(self.query(&arm.model)).await?;
        let mut response = self.response(&result, self.hits(&result, &arm.name));
        let logged = logged && self.log(Some(&arm.name), &response, &[(&arm.name, &result)]);
        tag(&mut response, &self.experiment, Some(&arm.name), vec![arm.name.clone()], logged);
        Ok(Served { served_by: result.model.name.clone(), response })
    }

    /// The first arm serves; once its exposure is logged, the second searches off the request path.
    async fn shadowed(self) -> Result<Served, ExperimentError> {
        let (primary, shadow) = (&self.experiment.arms[0], &self.experiment.arms[1]);
        let result = self.engine.search(self.query(&primary.model)).await?;
        let mut response = self.response(&result, self.hits(&result, &primary.name));
        let logged = self.log(Some(&primary.name), &response, &[(&primary.name, &result)]);
        tag(&mut response, &self.experiment, Some(&primary.name), vec![primary.name.clone()], logged);
        if logged {
            spawn_shadow(
                self.engine,
                self.experiments,
                self.experiment.clone(),
                shadow.name.clone(),
                self.query(&shadow.model),
                self.request_id.clone(),
                ranked_ids(&result),
            );
        }
        Ok(Served { served_by: result.model.name.clone(), response })
    }

    /// Both arms search concurrently; their rankings are merged by team-draft, seeded by the request id.
    async fn interleaved(self) -> Result<Served, ExperimentError> {
        let (a, b) = (&self.experiment.arms[0], &self.experiment.arms[1]);
        let (ra, rb) = tokio::join!(self.engine.search(self.query(&a.model)), self.engine.search(self.query(&b.model)));
        let (ra, rb) = (ra?, rb?);
        let merged = team_draft(&ranked_ids(&ra), &ranked_ids(&rb), self.body.k, seed_of(&self.request_id));
        let mut pool: std::collections::HashMap<(usize, String), SearchHit> = self
            .hits(&ra, &a.name)
            .into_iter()
            .map(|h| ((0, h.id.clone()), h))
            .chain(self.hits(&rb, &b.name).into_iter().map(|h| ((1, h.id.clone()), h)))
            .collect();
        let shown: Vec<SearchHit> = merged.into_iter().filter_map(|(id, team)| pool.remove(&(team, id))).collect();
        let mut response = self.response(&ra, shown);
        response.model = None;
        response.model_version = None;
        response.query_truncated = ra.query_truncated || rb.query_truncated;
        response.timings_ms.encode_ms = ms(ra.encode_seconds.max(rb.encode_seconds));
        response.timings_ms.search_ms = ms(ra.search_seconds.max(rb.search_seconds));
        response.timings_ms.fetch_ms = ms(ra.fetch_seconds.max(rb.fetch_seconds));
        let logged = self.log(None, &response, &[(&a.name, &ra), (&b.name, &rb)]);
        tag(&mut response, &self.experiment, None, vec![a.name.clone(), b.name.clone()], logged);
        Ok(Served { served_by: format!("{}+{}", a.model, b.model), response })
    }
}

fn response(
    request_id: &str,
    result: &SearchResult,
    results: Vec<SearchHit>,
    started: Instant,
    unit_id: Option<String>,
) -> SearchResponse {
    SearchResponse {
        request_id: request_id.to_string(),
        correlation_id: None,
        model: Some(result.model.name.clone()),
        model_version: Some(result.model.version.clone()),
        method: result.method,
        ef: result.ef,
        query_truncated: result.query_truncated,
        unit_id,
        experiment: None,
        arm: None,
        arms: Vec::new(),
        results,
        timings_ms: Timings {
            encode_ms: ms(result.encode_seconds),
            search_ms: ms(result.search_seconds),
            fetch_ms: ms(result.fetch_seconds),
            total_ms: ms(started.elapsed().as_secs_f64()),
        },
    }
}

fn tag(response: &mut SearchResponse, experiment: &Experiment, arm: Option<&str>, arms: Vec<String>, logged: bool) {
    response.experiment = Some(ExperimentTag {
        id: experiment.id.clone(),
        name: experiment.name.clone(),
        mode: experiment.mode,
        status: experiment.status,
        logged,
    });
    response.arm = arm.map(str::to_string);
    response.arms = arms;
}

/// What a search under an experiment showed, for its exposure.
struct Exposure<'a> {
    arm: Option<&'a str>,
    query: &'a str,
    response: &'a SearchResponse,
    versions: Versions,
}

/// Queues the exposure (never waits); false when the queue was full.
fn log_exposure(
    experiments: &Experiments,
    experiment: &Experiment,
    request_id: &str,
    unit_id: &str,
    exposure: Exposure<'_>,
) -> bool {
    let Exposure { arm, query, response, versions } = exposure;
    let items = response
        .results
        .iter()
        .enumerate()
        .map(|(i, hit)| ExposureItem {
            position: i as u32 + 1,
            doc_id: hit.id.clone(),
            team: hit.arm.clone().unwrap_or_default(),
        })
        .collect();
    experiments.log.record(ExposureRecord {
        request_id: request_id.to_string(),
        experiment_id: experiment.id.clone(),
        experiment_name: experiment.name.clone(),
        unit_id: loggable(unit_id),
        arm: arm.map(str::to_string),
        query: loggable(query),
        latency_ms: response.timings_ms.total_ms,
        items,
        versions,
    })
}

/// Runs the shadow arm off the request path (when a slot is free) and logs its overlap with the served list.
fn spawn_shadow(
    engine: &Arc<Engine>,
    experiments: &Arc<Experiments>,
    experiment: Arc<Experiment>,
    arm: String,
    query: SearchQuery,
    request_id: String,
    served: Vec<String>,
) {
    let experiments = experiments.clone();
    let Ok(permit) = experiments.shadow_slots.clone().try_acquire_owned() else {
        experiments.metrics.shadow_skipped.with_label_values(&[&experiment.name, "busy"]).inc();
        return;
    };
    let engine = engine.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let started = Instant::now();
        let k = query.k;
        match engine.search(query).await {
            Ok(result) => {
                let ids = ranked_ids(&result);
                let (jaccard, rbo) =
                    (stats::jaccard_at(&served, &ids, k), stats::rbo(&served, &ids, stats::RBO_PERSISTENCE));
                let overlap = &experiments.metrics.shadow_overlap;
                overlap.with_label_values(&[&experiment.name, "jaccard"]).observe(jaccard);
                overlap.with_label_values(&[&experiment.name, "rbo"]).observe(rbo);
                experiments.log.record_shadow(ShadowRecord {
                    request_id,
                    experiment_id: experiment.id.clone(),
                    experiment_name: experiment.name.clone(),
                    arm,
                    version: result.model.version.clone(),
                    doc_ids: ids,
                    jaccard,
                    rbo,
                    latency_ms: ms(started.elapsed().as_secs_f64()),
                });
            }
            Err(err) => {
                tracing::warn!(experiment = %experiment.name, error = %error_chain(&err), "shadow search failed");
                experiments.metrics.shadow_skipped.with_label_values(&[&experiment.name, "failed"]).inc();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::snippet;

    #[test]
    fn snippets_cut_on_character_boundaries() {
        assert_eq!(snippet("héllo wörld", 4), "héll…");
        assert_eq!(snippet("short", 10), "short");
        assert_eq!(snippet("exact", 5), "exact");
    }
}

/// Text as the exposure log keeps it: a NUL character (which PostgreSQL's text cannot hold) becomes U+FFFD, so
/// that one odd query cannot fail the batch it is written in.
fn loggable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}
