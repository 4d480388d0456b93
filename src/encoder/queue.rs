//! The per-model encoding queue: one dedicated thread per model owns its [`Encoder`], so inference never runs on
//! the async runtime. Concurrent requests for the same side are merged into batches of up to `max_batch` texts
//! (sorted by length, so short texts are not padded to long ones). The queue is bounded: when it is full, callers
//! get [`EncoderError::Overloaded`] at once (load shedding) instead of waiting without limit.
//!
//! Requests come in two [`Priority`] lanes: live traffic (searches, upserts, embeds) is always taken before
//! background work (evaluation jobs), which only gets the thread when no live request waits.
//!
//! Supervision: an inference call that panics, or [`FAILURES_BEFORE_RESTART`] inference failures in a row, restart
//! the encoder — rebuilt by the handle's [`Rebuild`] (the model reloaded from its manifest), or kept as it is when
//! there is none — counted in `duet_encoder_restarts_total{model}`. The requests of the failed call and every one
//! waiting then are answered [`EncoderError::Restarting`] at once (none hangs on a dead thread); later ones are
//! served by the rebuilt encoder. While it cannot encode, [`EncoderHandle::health`] says so (`/readyz` reports it);
//! a rebuild that fails is tried again every [`RETRY_REBUILD`], when a request comes.
//!
//! Dropping every [`EncoderHandle`] closes the queue; the thread finishes the jobs already queued and exits: a
//! replaced model version, once drained, lets its thread go this way.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use tokio::sync::{mpsc, oneshot};

use super::{Encoded, Encoder, EncoderError, ModelInfo, Side};
use crate::metrics::Metrics;

/// Queue settings for one model.
#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    /// Most texts one inference call takes.
    pub max_batch: usize,
    /// Most requests waiting before new ones are refused.
    pub capacity: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self { max_batch: 32, capacity: 1024 }
    }
}

/// Inference failures in a row (a session that keeps failing) after which the encoder is restarted.
pub const FAILURES_BEFORE_RESTART: usize = 3;

/// How long after a failed rebuild the next one is tried (when a request comes).
pub const RETRY_REBUILD: Duration = Duration::from_secs(10);

/// Builds the model's encoder again (reloads it from its manifest), after a panic or repeated failures.
pub type Rebuild = Box<dyn Fn() -> Result<Box<dyn Encoder>, EncoderError> + Send>;

/// Whether the model's thread can encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncoderHealth {
    Serving,
    /// It panicked or failed repeatedly (the reason) and is being rebuilt.
    Restarting(String),
    /// It cannot encode: rebuilding it failed (tried again every [`RETRY_REBUILD`]), or its thread is gone.
    Stopped(String),
}

/// Which lane a request waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// A client waits for it: searches, upserts, embeds.
    #[default]
    Live,
    /// Evaluation jobs: served only when no live request waits.
    Background,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Live => "live",
            Priority::Background => "background",
        }
    }
}

struct Job {
    texts: Vec<String>,
    side: Side,
    priority: Priority,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Encoded, EncoderError>>,
}

/// A cheap, cloneable handle to a model's encoding thread.
#[derive(Clone)]
pub struct EncoderHandle {
    info: Arc<ModelInfo>,
    tx: mpsc::UnboundedSender<Job>,
    capacity: usize,
    /// Requests sent and not yet taken into a batch: the queue's bound is on this count.
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    health: Arc<Mutex<EncoderHealth>>,
}

impl EncoderHandle {
    /// Starts the model's encoding thread; after a panic it goes on with the same encoder.
    pub fn spawn(encoder: Box<dyn Encoder>, options: QueueOptions, metrics: Arc<Metrics>) -> Self {
        Self::spawn_supervised(encoder, None, options, metrics)
    }

    /// Starts the model's encoding thread, which rebuilds its encoder with `rebuild` after a panic or repeated
    /// inference failures.
    pub fn spawn_supervised(
        encoder: Box<dyn Encoder>,
        rebuild: Option<Rebuild>,
        options: QueueOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let info = Arc::new(encoder.info().clone());
        let capacity = options.capacity.max(1);
        // Unbounded as a channel, bounded by `waiting`: the worker drains it into its two lanes to see live
        // requests queued behind background ones.
        let (tx, rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(Mutex::new(EncoderHealth::Serving));
        let worker = Worker {
            model: info.name.clone(),
            encoder: Some(encoder),
            rebuild,
            max_batch: options.max_batch.max(1),
            waiting: waiting.clone(),
            metrics: metrics.clone(),
            health: StoppedOnExit(health.clone()),
            failures_in_a_row: 0,
            last_rebuild: None,
        };
        std::thread::Builder::new()
            .name(format!("encode-{}", info.name))
            .spawn(move || worker.run(rx))
            .expect("spawning an encoder thread");
        Self { info, tx, capacity, waiting, metrics, health }
    }

    pub fn info(&self) -> &Arc<ModelInfo> {
        &self.info
    }

    /// Whether the model's thread can encode now.
    pub fn health(&self) -> EncoderHealth {
        self.health.lock().clone()
    }

    /// Encodes `texts` for `side` as live traffic, waiting for the model's thread.
    pub async fn encode(&self, texts: Vec<String>, side: Side) -> Result<Encoded, EncoderError> {
        self.encode_with(texts, side, Priority::Live).await
    }

    /// Encodes `texts` for `side` in the lane of `priority`.
    pub async fn encode_with(
        &self,
        texts: Vec<String>,
        side: Side,
        priority: Priority,
    ) -> Result<Encoded, EncoderError> {
        if texts.is_empty() {
            return Ok(Encoded::default());
        }
        let model = &self.info.name;
        let admitted = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.capacity).then_some(n + 1))
            .is_ok();
        if !admitted {
            self.metrics.encode_rejected.with_label_values(&[model]).inc();
            return Err(EncoderError::Overloaded { model: model.clone(), capacity: self.capacity });
        }
        self.metrics.encode_requests.with_label_values(&[model, priority.as_str()]).inc();
        let (reply, response) = oneshot::channel();
        let job = Job { texts, side, priority, enqueued: Instant::now(), reply };
        let depth = self.metrics.encode_queue_depth.with_label_values(&[model]);
        depth.inc();
        if self.tx.send(job).is_err() {
            depth.dec();
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(EncoderError::Stopped { model: model.clone() });
        }
        response.await.unwrap_or_else(|_| Err(EncoderError::Stopped { model: model.clone() }))
    }
}

/// The model's thread: its encoder and the two lanes of waiting requests.
struct Worker {
    model: String,
    /// None while rebuilding it fails.
    encoder: Option<Box<dyn Encoder>>,
    rebuild: Option<Rebuild>,
    max_batch: usize,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    health: StoppedOnExit,
    failures_in_a_row: usize,
    last_rebuild: Option<Instant>,
}

/// A batch whose failure restarts the encoder, with why and the error its requests get.
struct Failed {
    reason: String,
    jobs: Vec<Job>,
    error: EncoderError,
}

/// The thread's health, marked stopped when the thread ends, however it ends.
struct StoppedOnExit(Arc<Mutex<EncoderHealth>>);

impl StoppedOnExit {
    fn set(&self, health: EncoderHealth) {
        *self.0.lock() = health;
    }
}

impl Drop for StoppedOnExit {
    fn drop(&mut self) {
        self.set(EncoderHealth::Stopped("its encoder thread has ended".into()));
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    format!("it panicked: {}", text.unwrap_or("(no message)"))
}

/// Requests received from the channel and not yet encoded, by priority.
#[derive(Default)]
struct Lanes {
    live: VecDeque<Job>,
    background: VecDeque<Job>,
}

impl Lanes {
    fn push(&mut self, job: Job) {
        match job.priority {
            Priority::Live => self.live.push_back(job),
            Priority::Background => self.background.push_back(job),
        }
    }

    fn is_empty(&self) -> bool {
        self.live.is_empty() && self.background.is_empty()
    }

    /// The next batch: the oldest request of the first non-empty lane, with the later requests of that lane for
    /// the same side, up to `max_batch` texts.
    fn next_batch(&mut self, max_batch: usize) -> Vec<Job> {
        let lane = if self.live.is_empty() { &mut self.background } else { &mut self.live };
        let Some(first) = lane.pop_front() else { return Vec::new() };
        let side = first.side;
        let mut texts_taken = first.texts.len();
        let mut batch = vec![first];
        let mut i = 0;
        while texts_taken < max_batch && i < lane.len() {
            if lane[i].side == side {
                let job = lane.remove(i).expect("index checked");
                texts_taken += job.texts.len();
                batch.push(job);
            } else {
                i += 1;
            }
        }
        batch
    }
}

impl Worker {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let depth = self.metrics.encode_queue_depth.with_label_values(&[&self.model]);
        let mut lanes = Lanes::default();
        loop {
            if lanes.is_empty() {
                match rx.blocking_recv() {
                    Some(job) => lanes.push(job),
                    None => break,
                }
            }
            while let Ok(job) = rx.try_recv() {
                lanes.push(job);
            }
            let mut jobs = lanes.next_batch(self.max_batch);
            self.waiting.fetch_sub(jobs.len(), Ordering::AcqRel);
            depth.sub(jobs.len() as i64);
            // Callers that gave up (timeout, disconnect, cancelled job) are not worth computing for.
            jobs.retain(|job| !job.reply.is_closed());
            if jobs.is_empty() {
                continue;
            }
            if self.encoder.is_none() && self.last_rebuild.is_none_or(|at| at.elapsed() >= RETRY_REBUILD) {
                self.rebuild();
            }
            let Some(encoder) = self.encoder.take() else {
                let reason = match &*self.health.0.lock() {
                    EncoderHealth::Stopped(reason) | EncoderHealth::Restarting(reason) => reason.clone(),
                    EncoderHealth::Serving => String::new(),
                };
                answer_all(jobs, &self.restarting(&reason));
                continue;
            };
            let restart = self.encode(encoder.as_ref(), jobs);
            self.encoder = Some(encoder);
            if let Some(failed) = restart {
                self.restart(failed, &mut lanes, &mut rx);
            }
        }
        tracing::debug!(model = self.model, "encoder thread stopped");
    }

    fn restarting(&self, reason: &str) -> EncoderError {
        EncoderError::Restarting { model: self.model.clone(), reason: reason.to_string() }
    }

    /// Encodes one batch of requests and answers each, unless the encoder must be restarted: then the batch is
    /// returned unanswered, to be answered with the requests waiting behind it.
    fn encode(&mut self, encoder: &dyn Encoder, jobs: Vec<Job>) -> Option<Failed> {
        let (model, side) = (self.model.as_str(), jobs[0].side);
        for job in &jobs {
            self.metrics.encode_queue_wait.with_label_values(&[model]).observe(job.enqueued.elapsed().as_secs_f64());
        }
        let texts: Vec<&String> = jobs.iter().flat_map(|j| j.texts.iter()).collect();
        let outcome =
            catch_unwind(AssertUnwindSafe(|| encode_in_batches(encoder, &texts, side, self.max_batch, &self.metrics)));
        match outcome {
            Ok(Ok(mut all)) => {
                self.failures_in_a_row = 0;
                let truncated = all.truncated.iter().filter(|&&t| t).count() as u64;
                self.metrics.truncated_inputs.with_label_values(&[model, side.as_str()]).inc_by(truncated);
                // Hand each job its slice, in order.
                let mut vectors = all.vectors.drain(..);
                let mut flags = all.truncated.drain(..);
                for job in jobs {
                    let n = job.texts.len();
                    let part = Encoded {
                        vectors: vectors.by_ref().take(n).collect(),
                        truncated: flags.by_ref().take(n).collect(),
                    };
                    let _ = job.reply.send(Ok(part));
                }
                None
            }
            Ok(Err(err)) => {
                if !matches!(err, EncoderError::Inference { .. }) {
                    self.failures_in_a_row = 0;
                    answer_all(jobs, &err);
                    return None;
                }
                self.failures_in_a_row += 1;
                if self.failures_in_a_row < FAILURES_BEFORE_RESTART {
                    answer_all(jobs, &err);
                    return None;
                }
                let reason = format!("inference failed {} times in a row: {err}", self.failures_in_a_row);
                Some(Failed { reason, jobs, error: err })
            }
            Err(panic) => {
                let reason = panic_message(panic.as_ref());
                let error = self.restarting(&reason);
                Some(Failed { reason, jobs, error })
            }
        }
    }

    /// Counts the restart and reports it, answers the failed batch and every waiting request (none learns of the
    /// restart before it is counted, and none sent after the answers is refused), then rebuilds the encoder (or
    /// keeps it, without a rebuild).
    fn restart(&mut self, failed: Failed, lanes: &mut Lanes, rx: &mut mpsc::UnboundedReceiver<Job>) {
        let Failed { reason, jobs, error } = failed;
        tracing::error!(model = self.model, reason, "restarting the encoder");
        self.metrics.encoder_restarts.with_label_values(&[&self.model]).inc();
        self.health.set(EncoderHealth::Restarting(reason.clone()));
        while let Ok(job) = rx.try_recv() {
            lanes.push(job);
        }
        let waiting: Vec<Job> = lanes.live.drain(..).chain(lanes.background.drain(..)).collect();
        self.waiting.fetch_sub(waiting.len(), Ordering::AcqRel);
        self.metrics.encode_queue_depth.with_label_values(&[&self.model]).sub(waiting.len() as i64);
        answer_all(jobs, &error);
        answer_all(waiting, &self.restarting(&reason));
        self.failures_in_a_row = 0;
        if self.rebuild.is_none() {
            self.health.set(EncoderHealth::Serving);
            return;
        }
        // The old encoder goes first: a model may not fit in memory twice.
        if let Some(old) = self.encoder.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(old)));
        }
        self.rebuild();
    }

    fn rebuild(&mut self) {
        let Some(rebuild) = &self.rebuild else { return };
        self.last_rebuild = Some(Instant::now());
        match catch_unwind(AssertUnwindSafe(rebuild)) {
            Ok(Ok(encoder)) => {
                tracing::info!(model = self.model, "encoder restarted");
                self.encoder = Some(encoder);
                self.health.set(EncoderHealth::Serving);
            }
            Ok(Err(err)) => {
                let reason = format!("restarting it failed: {}", crate::util::error_chain(&err));
                tracing::error!(model = self.model, reason, "the encoder cannot encode");
                self.health.set(EncoderHealth::Stopped(reason));
            }
            Err(panic) => {
                let reason = format!("restarting it failed: {}", panic_message(panic.as_ref()));
                self.health.set(EncoderHealth::Stopped(reason));
            }
        }
    }
}

fn answer_all(jobs: Vec<Job>, err: &EncoderError) {
    for job in jobs {
        let _ = job.reply.send(Err(err.clone()));
    }
}

/// Encodes `texts` in inference calls of at most `max_batch`, grouping texts of similar length, and returns the
/// results in input order.
fn encode_in_batches(
    encoder: &dyn Encoder,
    texts: &[&String],
    side: Side,
    max_batch: usize,
    metrics: &Metrics,
) -> Result<Encoded, EncoderError> {
    let model = &encoder.info().name;
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut vectors = vec![Vec::new(); texts.len()];
    let mut truncated = vec![false; texts.len()];
    for chunk in order.chunks(max_batch) {
        let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
        let started = Instant::now();
        let encoded = encoder.encode(&batch, side)?;
        metrics.encode_duration.with_label_values(&[model, side.as_str()]).observe(started.elapsed().as_secs_f64());
        metrics.encode_batch_size.with_label_values(&[model]).observe(batch.len() as f64);
        if encoded.vectors.len() != chunk.len() {
            return Err(EncoderError::inference(
                model,
                format!("{} vectors for {} texts", encoded.vectors.len(), chunk.len()),
            ));
        }
        for ((&i, v), t) in chunk.iter().zip(encoded.vectors).zip(encoded.truncated) {
            vectors[i] = v;
            truncated[i] = t;
        }
    }
    Ok(Encoded { vectors, truncated })
}

#[cfg(test)]
mod tests;
