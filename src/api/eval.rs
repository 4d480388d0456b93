//! `/v1/eval`: score the live models on posted (query, relevant document) pairs, through the same search path
//! as `/v1/search` and against the live indexes. Small sets (up to [`SYNC_PAIRS`] pairs) are answered at once;
//! larger ones become a job: `202 Accepted` with a `Location` to poll (`GET /v1/eval/{id}`: progress, then the
//! result). Jobs live in memory (the last [`KEPT_JOBS`]); a restart forgets them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson, ApiPath};
use super::AppState;
use crate::engine::{Engine, SearchQuery};
use crate::eval::metrics::{ndcg_at, recall_at, reciprocal_rank};
use crate::eval::stats::bootstrap_ci;
use crate::experiment::stats::Estimate;

/// Pairs answered synchronously at most.
pub const SYNC_PAIRS: usize = 100;
/// Pairs in one request at most.
pub const MAX_PAIRS: usize = 20_000;
/// Finished or running jobs kept.
pub const KEPT_JOBS: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalPair {
    pub query: String,
    pub doc_id: String,
    /// Graded relevance for nDCG (default 1).
    #[serde(default)]
    pub grade: Option<f64>,
}

fn default_ks() -> Vec<usize> {
    vec![1, 10, 100]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalRequest {
    pub pairs: Vec<EvalPair>,
    /// Models to score (default: every served model).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Cut-offs for recall@k.
    #[serde(default = "default_ks")]
    pub k: Vec<usize>,
    /// Brute-force search instead of HNSW.
    #[serde(default)]
    pub exact: bool,
    /// Include each query's rank of its first relevant document per model.
    #[serde(default)]
    pub details: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelScores {
    pub model: String,
    pub model_version: String,
    pub queries: usize,
    /// With 95 % percentile-bootstrap intervals over queries (1,000 resamples, seeded), as in `duet eval`.
    pub mrr_at_10: Estimate,
    pub ndcg_at_10: Estimate,
    pub recall: BTreeMap<String, Estimate>,
    pub query_ms_p50: f64,
    pub query_ms_p99: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryDetail {
    pub query: String,
    /// Per model, the 1-based rank of the first relevant document within the searched depth (null: not found).
    pub first_relevant_rank: BTreeMap<String, Option<usize>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    pub queries: usize,
    pub pairs: usize,
    /// Relevant document ids that are not in the corpus (such queries can only score 0).
    pub unknown_documents: Vec<String>,
    pub exact: bool,
    pub models: Vec<ModelScores>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<QueryDetail>>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Done,
    Failed,
}

/// An evaluation job, as `GET /v1/eval/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    pub status: JobStatus,
    /// Searches done and to do (queries × models).
    pub done: usize,
    pub total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<EvalResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Job {
    id: String,
    total: usize,
    done: AtomicUsize,
    outcome: Mutex<Option<Result<EvalResult, String>>>,
}

impl Job {
    fn view(&self) -> JobView {
        let outcome = self.outcome.lock().clone();
        let (status, result, error) = match outcome {
            None => (JobStatus::Running, None, None),
            Some(Ok(result)) => (JobStatus::Done, Some(result), None),
            Some(Err(error)) => (JobStatus::Failed, None, Some(error)),
        };
        JobView {
            id: self.id.clone(),
            status,
            done: self.done.load(Ordering::Relaxed),
            total: self.total,
            result,
            error,
        }
    }
}

/// The evaluation jobs of this process.
#[derive(Default)]
pub struct EvalJobs {
    jobs: Mutex<VecDeque<Arc<Job>>>,
}

impl EvalJobs {
    fn add(&self, job: Arc<Job>) {
        let mut jobs = self.jobs.lock();
        if jobs.len() == KEPT_JOBS {
            jobs.pop_front();
        }
        jobs.push_back(job);
    }
    fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().iter().find(|j| j.id == id).cloned()
    }
}

/// A query with its graded relevant documents.
struct Judged {
    query: String,
    gains: HashMap<String, f64>,
}

fn judged(pairs: &[EvalPair]) -> Vec<Judged> {
    let mut order: Vec<Judged> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for p in pairs {
        let i = *index.entry(p.query.as_str()).or_insert_with(|| {
            order.push(Judged { query: p.query.clone(), gains: HashMap::new() });
            order.len() - 1
        });
        order[i].gains.insert(p.doc_id.clone(), p.grade.unwrap_or(1.0));
    }
    order
}

fn validate(state: &AppState, body: &EvalRequest) -> Result<Vec<String>, ApiError> {
    let limits = &state.engine.limits;
    if body.pairs.is_empty() {
        return Err(ApiError::invalid("`pairs` must not be empty"));
    }
    if body.pairs.len() > MAX_PAIRS {
        return Err(ApiError::too_large(format!("{} pairs; the limit is {MAX_PAIRS}", body.pairs.len())));
    }
    for (i, p) in body.pairs.iter().enumerate() {
        if p.query.trim().is_empty() || p.query.chars().count() > limits.max_query_chars {
            return Err(ApiError::invalid(format!(
                "pair {i}: `query` must be 1-{} characters and not blank",
                limits.max_query_chars
            )));
        }
        if p.doc_id.is_empty() {
            return Err(ApiError::invalid(format!("pair {i}: `doc_id` must not be empty")));
        }
        if let Some(g) = p.grade {
            if !(g.is_finite() && (0.0..=10.0).contains(&g)) {
                return Err(ApiError::invalid(format!("pair {i}: `grade` must be between 0 and 10")));
            }
        }
    }
    if body.k.is_empty() || body.k.iter().any(|&k| k == 0 || k > limits.max_k) {
        return Err(ApiError::invalid(format!("every `k` must be between 1 and {}", limits.max_k)));
    }
    let served = state.engine.models();
    let models = body.models.clone().unwrap_or_else(|| served.keys().cloned().collect());
    if models.is_empty() {
        return Err(ApiError::invalid("`models` must not be empty"));
    }
    for m in &models {
        state.engine.model(m)?;
    }
    Ok(models)
}

async fn evaluate(
    engine: Arc<Engine>,
    body: EvalRequest,
    models: Vec<String>,
    done: impl Fn() + Send,
) -> Result<EvalResult, ApiError> {
    let started = Instant::now();
    let queries = judged(&body.pairs);
    let depth = body.k.iter().copied().max().unwrap_or(10).max(10);
    let all_ids: Vec<String> =
        queries.iter().flat_map(|q| q.gains.keys().cloned()).collect::<HashSet<_>>().into_iter().collect();
    let known = engine.store().get_many(&all_ids).await.map_err(crate::engine::EngineError::from)?;
    let mut unknown: Vec<String> = all_ids.into_iter().filter(|id| !known.contains_key(id)).collect();
    unknown.sort();
    let mut scores = Vec::new();
    let mut ranks: Vec<BTreeMap<String, Option<usize>>> = vec![BTreeMap::new(); queries.len()];
    for model in &models {
        let (mut rr, mut nd) = (Vec::new(), Vec::new());
        let mut recalls: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        let mut ms = Vec::new();
        let mut version = String::new();
        for (qi, q) in queries.iter().enumerate() {
            let t = Instant::now();
            let result = engine
                .search(SearchQuery {
                    model: model.clone(),
                    query: q.query.clone(),
                    k: depth,
                    ef: None,
                    exact: body.exact,
                })
                .await?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            version = result.model.version.clone();
            let ranked: Vec<String> = result.hits.iter().map(|(_, d)| d.id.clone()).collect();
            rr.push(reciprocal_rank(&ranked, &q.gains, 10));
            nd.push(ndcg_at(&ranked, &q.gains, 10));
            for &k in &body.k {
                recalls.entry(k).or_default().push(recall_at(&ranked, &q.gains, k));
            }
            if body.details {
                let first = ranked.iter().position(|id| q.gains.get(id).is_some_and(|g| *g > 0.0)).map(|p| p + 1);
                ranks[qi].insert(model.clone(), first);
            }
            done();
        }
        let estimate = |v: &[f64]| {
            let ci = bootstrap_ci(v, 1000, 0.95, 42);
            Estimate { value: ci.mean, ci95: [ci.low, ci.high] }
        };
        ms.sort_by(f64::total_cmp);
        scores.push(ModelScores {
            model: model.clone(),
            model_version: version,
            queries: queries.len(),
            mrr_at_10: estimate(&rr),
            ndcg_at_10: estimate(&nd),
            recall: recalls.iter().map(|(k, v)| (format!("@{k}"), estimate(v))).collect(),
            query_ms_p50: crate::util::stats::quantile(&ms, 0.5),
            query_ms_p99: crate::util::stats::quantile(&ms, 0.99),
        });
    }
    let details = body.details.then(|| {
        queries.iter().zip(ranks).map(|(q, r)| QueryDetail { query: q.query.clone(), first_relevant_rank: r }).collect()
    });
    Ok(EvalResult {
        queries: queries.len(),
        pairs: body.pairs.len(),
        unknown_documents: unknown,
        exact: body.exact,
        models: scores,
        details,
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub async fn start(State(state): State<AppState>, ApiJson(body): ApiJson<EvalRequest>) -> Result<Response, ApiError> {
    let models = validate(&state, &body)?;
    let queries = judged(&body.pairs).len();
    if body.pairs.len() <= SYNC_PAIRS {
        let result = evaluate(state.engine.clone(), body, models, || {}).await?;
        return Ok(axum::Json(result).into_response());
    }
    let job = Arc::new(Job {
        id: uuid::Uuid::new_v4().to_string(),
        total: queries * models.len(),
        done: AtomicUsize::new(0),
        outcome: Mutex::new(None),
    });
    state.eval_jobs.add(job.clone());
    let engine = state.engine.clone();
    let running = job.clone();
    tokio::spawn(async move {
        let counter = running.clone();
        let outcome = evaluate(engine, body, models, move || {
            counter.done.fetch_add(1, Ordering::Relaxed);
        })
        .await
        .map_err(|e| e.detail);
        *running.outcome.lock() = Some(outcome);
    });
    let location = format!("/v1/eval/{}", job.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], axum::Json(job.view())).into_response())
}

pub async fn get_job(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    let job = state.eval_jobs.get(&id).ok_or_else(|| {
        ApiError::not_found("unknown-eval-job", format!("no evaluation job `{id}` (jobs are kept in memory)"))
    })?;
    Ok(axum::Json(job.view()).into_response())
}
