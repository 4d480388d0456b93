//! Live evaluation (`/v1/eval`): score the served models on posted (query, relevant document) pairs, through the
//! same search path as `/v1/search` and against the live indexes, below live traffic. Small sets (up to
//! [`SYNC_PAIRS`] pairs) are answered at once; larger ones become a job to poll or cancel, kept in memory within
//! the bounds of `[eval]` (a restart forgets them). Uses [`crate::engine`] for the searches, [`super::metrics`] and [`super::stats`] for the scores.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::metrics::{ndcg_at, recall_at, reciprocal_rank};
use super::stats::bootstrap_ci;
use crate::config::EvalSettings;
use crate::engine::{Engine, EngineError, Priority, SearchQuery};
use crate::metrics::Metrics;
use crate::util::stats::{quantile, Estimate};

#[derive(Debug, thiserror::Error)]
pub enum LiveEvalError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("no evaluation job `{0}` (jobs are kept in memory, finished ones for a while)")]
    UnknownJob(String),
    #[error("{limit} evaluation jobs are already queued or running; retry when one has finished, or cancel one")]
    TooManyJobs { limit: usize },
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
        | EngineError::BadDimensions { .. }
        | EngineError::StoreDown { .. }
        | EngineError::Encoder(
            EncoderError::Overloaded { .. } | EncoderError::Stopped { .. } | EncoderError::Restarting { .. },
        ) => err.to_string(),
        EngineError::DuplicateModel(_)
        | EngineError::ModelExists(_)
        | EngineError::OutsideModelRoot { .. }
        | EngineError::BadModelPath { .. }
        | EngineError::BadModelName(_)
        | EngineError::BadModel { .. }
        | EngineError::SameVersion { .. }
        | EngineError::ChangeInProgress { .. }
        | EngineError::NoPrevious { .. }
        | EngineError::RetireDefault(_)
        | EngineError::Cancelled(_)
        | EngineError::Encoder(
            EncoderError::Runtime { .. }
            | EncoderError::Manifest { .. }
            | EncoderError::Load { .. }
            | EncoderError::Tokenize { .. }
            | EncoderError::Inference { .. }
            | EncoderError::Mismatch { .. },
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalPair {
    pub query: String,
    pub doc_id: String,
    /// Graded relevance for nDCG (default 1).
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
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
    #[serde(default, deserialize_with = "crate::util::json::non_null")]
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
    /// Waiting for one of the `concurrency` slots.
    Queued,
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

enum JobState {
    Queued,
    Running,
    Finished { outcome: Result<EvalResult, String>, at: Instant },
}

struct Job {
    id: String,
    total: usize,
    done: AtomicUsize,
    state: Mutex<JobState>,
    /// Aborted (and waited for) to cancel the job: its pending searches are dropped, and the encoders skip them.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Job {
    fn finished_at(&self) -> Option<Instant> {
        match &*self.state.lock() {
            JobState::Finished { at, .. } => Some(*at),
            JobState::Queued | JobState::Running => None,
        }
    }

    fn view(&self) -> JobView {
        let (status, result, error) = match &*self.state.lock() {
            JobState::Queued => (JobStatus::Queued, None, None),
            JobState::Running => (JobStatus::Running, None, None),
            JobState::Finished { outcome: Ok(result), .. } => (JobStatus::Done, Some(result.clone()), None),
            JobState::Finished { outcome: Err(error), .. } => (JobStatus::Failed, None, Some(error.clone())),
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

/// The evaluation jobs of this process, kept in memory: at most `max_jobs` queued or running, `concurrency` of
/// them running, each finished one kept for `job_ttl_secs` (and at most `kept_jobs` of them). Their searches
/// wait behind live traffic in the encoders' queues ([`Priority::Background`]).
pub struct EvalJobs {
    settings: EvalSettings,
    metrics: Arc<Metrics>,
    jobs: Mutex<VecDeque<Arc<Job>>>,
    slots: Arc<Semaphore>,
}

impl EvalJobs {
    pub fn new(settings: EvalSettings, metrics: Arc<Metrics>) -> Self {
        let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        Self { settings, metrics, jobs: Mutex::new(VecDeque::new()), slots }
    }

    /// Validates `request`, then answers it at once (up to [`SYNC_PAIRS`] pairs) or starts a job. A job runs in a
    /// spawned task, so the client going away does not stop it; [`EvalJobs::cancel`] does.
    pub async fn submit(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        request: EvalRequest,
    ) -> Result<Submitted, LiveEvalError> {
        let models = validate(engine, &request)?;
        if request.pairs.len() <= SYNC_PAIRS {
            return Ok(Submitted::Done(evaluate(engine.clone(), request, models, || {}).await?));
        }
        let job = Arc::new(Job {
            id: uuid::Uuid::new_v4().to_string(),
            total: judged(&request.pairs).len() * models.len(),
            done: AtomicUsize::new(0),
            state: Mutex::new(JobState::Queued),
            task: Mutex::new(None),
        });
        self.admit(job.clone())?;
        let (jobs, engine, running) = (self.clone(), engine.clone(), job.clone());
        let task = tokio::spawn(async move {
            let Ok(_slot) = jobs.slots.clone().acquire_owned().await else { return };
            *running.state.lock() = JobState::Running;
            jobs.update_gauges();
            let counter = running.clone();
            let outcome = evaluate(engine, request, models, move || {
                counter.done.fetch_add(1, Ordering::Relaxed);
            })
            .await
            .map_err(|e| failure_message(&e));
            let ended = if outcome.is_ok() { "done" } else { "failed" };
            *running.state.lock() = JobState::Finished { outcome, at: Instant::now() };
            jobs.metrics.eval_jobs_ended.with_label_values(&[ended]).inc();
            jobs.update_gauges();
        });
        *job.task.lock() = Some(task);
        Ok(Submitted::Accepted(job.view()))
    }

    /// A job's progress, then its result.
    pub fn view(&self, id: &str) -> Result<JobView, LiveEvalError> {
        let mut jobs = self.jobs.lock();
        self.expire(&mut jobs);
        jobs.iter().find(|j| j.id == id).map(|job| job.view()).ok_or_else(|| LiveEvalError::UnknownJob(id.to_string()))
    }

    /// Stops a queued or running job at once, or forgets a finished one; either way the job is gone. Returns once
    /// its task has stopped: no search of it starts afterwards.
    pub async fn cancel(&self, id: &str) -> Result<(), LiveEvalError> {
        let job = {
            let mut jobs = self.jobs.lock();
            self.expire(&mut jobs);
            let position =
                jobs.iter().position(|j| j.id == id).ok_or_else(|| LiveEvalError::UnknownJob(id.to_string()))?;
            jobs.remove(position).expect("position found above")
        };
        if job.finished_at().is_none() {
            let task = job.task.lock().take();
            if let Some(task) = task {
                task.abort();
                // Err(cancelled), or the job's own end if it finished meanwhile: either way it has stopped.
                let _ = task.await;
            }
            self.metrics.eval_jobs_ended.with_label_values(&["cancelled"]).inc();
        }
        self.update_gauges();
        Ok(())
    }

    /// Adds a job unless `max_jobs` are already queued or running.
    fn admit(&self, job: Arc<Job>) -> Result<(), LiveEvalError> {
        let mut jobs = self.jobs.lock();
        self.expire(&mut jobs);
        let active = jobs.iter().filter(|j| j.finished_at().is_none()).count();
        if active >= self.settings.max_jobs {
            self.metrics.eval_jobs_ended.with_label_values(&["refused"]).inc();
            return Err(LiveEvalError::TooManyJobs { limit: self.settings.max_jobs });
        }
        jobs.push_back(job);
        drop(jobs);
        self.update_gauges();
        Ok(())
    }

    /// Forgets finished jobs older than the TTL, then the oldest finished ones beyond `kept_jobs`.
    fn expire(&self, jobs: &mut VecDeque<Arc<Job>>) {
        let ttl = Duration::from_secs(self.settings.job_ttl_secs);
        let before = jobs.len();
        jobs.retain(|j| j.finished_at().is_none_or(|at| at.elapsed() < ttl));
        let mut finished = jobs.iter().filter(|j| j.finished_at().is_some()).count();
        while finished > self.settings.kept_jobs {
            let oldest = jobs.iter().position(|j| j.finished_at().is_some()).expect("a finished job is counted");
            jobs.remove(oldest);
            finished -= 1;
        }
        let expired = before - jobs.len();
        self.metrics.eval_jobs_ended.with_label_values(&["expired"]).inc_by(expired as u64);
    }

    fn update_gauges(&self) {
        let (mut queued, mut running) = (0, 0);
        for job in self.jobs.lock().iter() {
            match &*job.state.lock() {
                JobState::Queued => queued += 1,
                JobState::Running => running += 1,
                JobState::Finished { .. } => {}
            }
        }
        self.metrics.eval_jobs.with_label_values(&["queued"]).set(queued);
        self.metrics.eval_jobs.with_label_values(&["running"]).set(running);
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
        if crate::util::json::is_blank(&p.query) || p.query.chars().count() > limits.max_query_chars {
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
                    priority: Priority::Background,
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
