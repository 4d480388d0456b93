//! Live evaluation (`/v1/eval`): score the served models on posted (query, relevant document) pairs, through the
//! same search path as `/v1/search` and against the live indexes. Small sets (up to [`SYNC_PAIRS`] pairs) are
//! answered at once; larger ones become a job to poll, kept in memory (the last [`KEPT_JOBS`]; a restart forgets
//! them). Uses [`crate::engine`] for the searches, [`super::metrics`] and [`super::stats`] for the scores.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::metrics::{ndcg_at, recall_at, reciprocal_rank};
use super::stats::bootstrap_ci;
use crate::engine::{Engine, EngineError, SearchQuery};
use crate::util::stats::{quantile, Estimate};

#[derive(Debug, thiserror::Error)]
pub enum LiveEvalError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("no evaluation job `{0}` (jobs are kept in memory)")]
    UnknownJob(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What a failed job tells its poller: the reason when the client can act on it, else only that the server log
/// has the details (which get logged here, with their sources).
fn failure_message(err: &EngineError) -> String {
    use crate::encoder::EncoderError;
    match err {
        EngineError::UnknownModel { .. }
        | EngineError::NotReady(_)
        | EngineError::Failed { .. }
        | EngineError::Busy { .. }
        | EngineError::Encoder(EncoderError::Overloaded { .. } | EncoderError::Stopped { .. }) => err.to_string(),
        EngineError::DuplicateModel(_)
        | EngineError::Encoder(
            EncoderError::Runtime { .. }
            | EncoderError::Manifest { .. }
            | EncoderError::Load { .. }
            | EncoderError::Tokenize { .. }
            | EncoderError::Inference { .. },
        )
        | EngineError::Store(_)
        | EngineError::Index(_)
        | EngineError::Task(_) => {
            tracing::error!(error = %crate::util::error_chain(err), "evaluation job failed");
            "internal error; the server log has the details".to_string()
        }
    }
}

/// What [`EvalJobs::submit`] did with a request.
#[derive(Debug)]
pub enum Submitted {
    /// A small request, answered at once.
    Done(EvalResult),
    /// A job that runs in the background; poll it by id.
    Accepted(JobView),
}

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
    /// Validates `request`, then answers it at once (up to [`SYNC_PAIRS`] pairs) or starts a job. A job runs in a
    /// spawned task, so the client going away does not stop it.
    pub async fn submit(&self, engine: &Arc<Engine>, request: EvalRequest) -> Result<Submitted, LiveEvalError> {
        let models = validate(engine, &request)?;
        if request.pairs.len() <= SYNC_PAIRS {
            return Ok(Submitted::Done(evaluate(engine.clone(), request, models, || {}).await?));
        }
        let job = Arc::new(Job {
            id: uuid::Uuid::new_v4().to_string(),
            total: judged(&request.pairs).len() * models.len(),
            done: AtomicUsize::new(0),
            outcome: Mutex::new(None),
        });
        self.add(job.clone());
        let engine = engine.clone();
        let running = job.clone();
        tokio::spawn(async move {
            let counter = running.clone();
            let outcome = evaluate(engine, request, models, move || {
                counter.done.fetch_add(1, Ordering::Relaxed);
            })
            .await
            .map_err(|e| failure_message(&e));
            *running.outcome.lock() = Some(outcome);
        });
        Ok(Submitted::Accepted(job.view()))
    }

    /// A job's progress, then its result.
    pub fn view(&self, id: &str) -> Result<JobView, LiveEvalError> {
        self.get(id).map(|job| job.view()).ok_or_else(|| LiveEvalError::UnknownJob(id.to_string()))
    }

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

/// Checks a request against the limits and the served models; returns the models to score.
fn validate(engine: &Engine, body: &EvalRequest) -> Result<Vec<String>, LiveEvalError> {
    let limits = &engine.limits;
    if body.pairs.is_empty() {
        return Err(LiveEvalError::Invalid("`pairs` must not be empty".into()));
    }
    if body.pairs.len() > MAX_PAIRS {
        return Err(LiveEvalError::TooLarge(format!("{} pairs; the limit is {MAX_PAIRS}", body.pairs.len())));
    }
    for (i, p) in body.pairs.iter().enumerate() {
        if p.query.trim().is_empty() || p.query.chars().count() > limits.max_query_chars {
            return Err(LiveEvalError::Invalid(format!(
                "pair {i}: `query` must be 1-{} characters and not blank",
                limits.max_query_chars
            )));
        }
        if p.doc_id.is_empty() {
            return Err(LiveEvalError::Invalid(format!("pair {i}: `doc_id` must not be empty")));
        }
        if let Some(g) = p.grade {
            if !(g.is_finite() && (0.0..=10.0).contains(&g)) {
                return Err(LiveEvalError::Invalid(format!("pair {i}: `grade` must be between 0 and 10")));
            }
        }
    }
    if body.k.is_empty() || body.k.iter().any(|&k| k == 0 || k > limits.max_k) {
        return Err(LiveEvalError::Invalid(format!("every `k` must be between 1 and {}", limits.max_k)));
    }
    let served = engine.models();
    let models = body.models.clone().unwrap_or_else(|| served.keys().cloned().collect());
    if models.is_empty() {
        return Err(LiveEvalError::Invalid("`models` must not be empty".into()));
    }
    for m in &models {
        engine.model(m)?;
    }
    Ok(models)
}

async fn evaluate(
    engine: Arc<Engine>,
    body: EvalRequest,
    models: Vec<String>,
    done: impl Fn() + Send,
) -> Result<EvalResult, EngineError> {
    let started = Instant::now();
    let queries = judged(&body.pairs);
    let depth = body.k.iter().copied().max().unwrap_or(10).max(10);
    let all_ids: Vec<String> =
        queries.iter().flat_map(|q| q.gains.keys().cloned()).collect::<HashSet<_>>().into_iter().collect();
    let known = engine.store().get_many(&all_ids).await?;
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
            query_ms_p50: quantile(&ms, 0.5),
            query_ms_p99: quantile(&ms, 0.99),
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
