//! A model's encoding thread: it owns the queued requests (three lanes), packs batches to the token budget, runs
//! the network, answers each caller with its vectors, and supervises its encoder (restart after a panic or
//! repeated failures). Used by the queue's handle only.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use parking_lot::Mutex;

use super::{EncoderHealth, Job, Priority, Rebuild, Shared, BULK_IDLE, FAILURES_BEFORE_RESTART, RETRY_REBUILD};
use crate::encoder::onnx::SessionOptions;
use crate::encoder::{Encoded, Encoder, EncoderError, Side, Tokens};
use crate::metrics::Metrics;

/// Where a request waits, in the order they are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    Query,
    Document,
    Background,
}

impl Lane {
    pub(super) fn of(priority: Priority, side: Side) -> Self {
        match (priority, side) {
            (Priority::Background, _) => Lane::Background,
            (Priority::Live, Side::Query) => Lane::Query,
            (Priority::Live, Side::Document) => Lane::Document,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A queued request: its tokenised texts, the order they are taken in (shortest first), and its answer so far.
struct Pending {
    side: Side,
    tokens: Vec<Tokens>,
    /// Texts not yet taken into a batch, shortest first.
    order: VecDeque<usize>,
    /// Whether its tokens count against the queue's token bound (not when the thread tokenised them itself).
    counted: bool,
    enqueued: Instant,
    waited: bool,
    vectors: Vec<Vec<f32>>,
    done: usize,
    reply: tokio::sync::oneshot::Sender<Result<Encoded, EncoderError>>,
    parent: tracing::Span,
    /// The `encode.queue_wait` span, closed (dropped) when the request is first taken into a batch.
    wait: Option<tracing::Span>,
}

impl Pending {
    /// Texts and counted tokens not yet taken into a batch.
    fn untaken(&self) -> (usize, usize) {
        let tokens = if self.counted { self.order.iter().map(|&i| self.tokens[i].len()).sum() } else { 0 };
        (self.order.len(), tokens)
    }
}

/// One inference call: texts of one side, as (request, text) pairs.
pub(super) struct Batch {
    side: Side,
    entries: Vec<(u64, usize)>,
}

/// The queued requests, by lane.
#[derive(Default)]
struct Queue {
    jobs: HashMap<u64, Pending>,
    lanes: [VecDeque<u64>; 3],
    next_id: u64,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
    }

    fn push(&mut self, job: Job, counted: bool) {
        let id = self.next_id;
        self.next_id += 1;
        let mut order: Vec<usize> = (0..job.tokens.len()).collect();
        order.sort_by_key(|&i| job.tokens[i].len());
        let n = job.tokens.len();
        let pending = Pending {
            side: job.side,
            tokens: job.tokens,
            order: order.into(),
            counted,
            enqueued: job.enqueued,
            waited: false,
            vectors: vec![Vec::new(); n],
            done: 0,
            reply: job.reply,
            parent: job.parent,
            wait: Some(job.wait),
        };
        self.jobs.insert(id, pending);
        self.lanes[job.lane.index()].push_back(id);
    }

    /// Removes a request, returning it with what it had not had taken into a batch (to release).
    fn remove(&mut self, id: u64) -> Option<(Pending, (usize, usize))> {
        let pending = self.jobs.remove(&id)?;
        let untaken = pending.untaken();
        for lane in &mut self.lanes {
            lane.retain(|&j| j != id);
        }
        Some((pending, untaken))
    }

    /// The next batch: from the first lane with work, requests in arrival order (skipping those of another side
    /// than the first, and dropping those whose caller gave up), each one's texts shortest first, while the
    /// padded size (longest × count) stays within `max_tokens` and the count within `max_batch`. A text alone
    /// over the budget is taken alone. Returns the batch and the texts and tokens it takes out of the queue.
    fn next_batch(&mut self, max_batch: usize, max_tokens: usize, shared: &Shared) -> Option<Batch> {
        let lane = self.lanes.iter().position(|l| !l.is_empty())?;
        let mut entries = Vec::new();
        let mut side = None;
        let mut longest = 0;
        let mut position = 0;
        let (mut texts, mut tokens) = (0, 0);
        while position < self.lanes[lane].len() {
            let id = self.lanes[lane][position];
            let job = self.jobs.get_mut(&id).expect("a queued id has a request");
            if job.reply.is_closed() {
                // The caller gave up: never computed.
                let (_, (t, k)) = self.remove(id).expect("present");
                shared.release(t, k);
                continue;
            }
            if *side.get_or_insert(job.side) != job.side {
                position += 1;
                continue;
            }
            let mut full = false;
            while let Some(&i) = job.order.front() {
                let len = job.tokens[i].len().max(1);
                let padded = longest.max(len) * (entries.len() + 1);
                if !entries.is_empty() && padded > max_tokens {
                    full = true;
                    break;
                }
                job.order.pop_front();
                longest = longest.max(len);
                entries.push((id, i));
                texts += 1;
                if job.counted {
                    tokens += job.tokens[i].len();
                }
                if entries.len() >= max_batch || padded >= max_tokens {
                    full = true;
                    break;
                }
            }
            if job.order.is_empty() {
                self.lanes[lane].remove(position);
            }
            if full {
                break;
            }
        }
        shared.release(texts, tokens);
        let side = side?;
        (!entries.is_empty()).then_some(Batch { side, entries })
    }
}

/// The thread's health, marked stopped when the thread ends, however it ends.
pub(super) struct StoppedOnExit(pub(super) Arc<Mutex<EncoderHealth>>);

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

/// A batch whose failure restarts the encoder, with why and the error its requests get.
struct Failed {
    reason: String,
    batch: Batch,
    error: EncoderError,
}

/// A model's thread (the live one, or the bulk one) with its encoder.
pub(super) struct Worker {
    pub(super) model: String,
    /// None while rebuilding it fails, and for the bulk thread while it has no bulk work.
    pub(super) encoder: Option<Arc<dyn Encoder>>,
    pub(super) rebuild: Option<Rebuild>,
    /// The options its encoder is (re)built with.
    pub(super) session: SessionOptions,
    /// The bulk thread: builds its encoder when work comes, drops it when idle, publishes nothing.
    pub(super) bulk: bool,
    pub(super) max_batch: usize,
    pub(super) max_batch_tokens: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: StoppedOnExit,
    pub(super) failures_in_a_row: usize,
    pub(super) last_rebuild: Option<Instant>,
}

impl Worker {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut queue = Queue::default();
        loop {
            if queue.is_empty() {
                let job = match self.bulk && self.encoder.is_some() {
                    true => match rx.recv_timeout(BULK_IDLE) {
                        Ok(job) => Some(job),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            tracing::debug!(model = self.model, "bulk session idle: dropped");
                            self.encoder = None;
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => None,
                    },
                    false => rx.recv().ok(),
                };
                match job {
                    Some(job) => self.accept(job, &mut queue),
                    None => break,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.accept(job, &mut queue);
            }
            let Some(batch) = queue.next_batch(self.max_batch, self.max_batch_tokens, &self.shared) else { continue };
            if self.encoder.is_none() && self.rebuild_due() {
                self.rebuild();
            }
            let Some(encoder) = self.encoder.clone() else {
                let error = self.restarting(&self.health_reason());
                answer_batch(&mut queue, &batch, &error, &self.shared);
                continue;
            };
            if let Some(failed) = self.encode(encoder.as_ref(), batch, &mut queue) {
                drop(encoder);
                self.restart(failed, &mut queue, &rx);
            }
        }
        tracing::debug!(model = self.model, "encoder thread stopped");
    }

    fn rebuild_due(&self) -> bool {
        self.last_rebuild.is_none_or(|at| at.elapsed() >= RETRY_REBUILD)
    }

    fn health_reason(&self) -> String {
        match &*self.health.0.lock() {
            EncoderHealth::Stopped(reason) | EncoderHealth::Restarting(reason) => reason.clone(),
            EncoderHealth::Serving => "it has no encoder".to_string(),
        }
    }

    /// Queues a request; one that came untokenised (no encoder to tokenise with then) is tokenised here.
    fn accept(&mut self, mut job: Job, queue: &mut Queue) {
        let Some(texts) = job.texts.take() else {
            queue.push(job, true);
            return;
        };
        let release = |shared: &Shared| shared.release(texts.len(), 0);
        if self.encoder.is_none() && self.rebuild_due() {
            self.rebuild();
        }
        let Some(encoder) = self.encoder.clone() else {
            release(&self.shared);
            let _ = job.reply.send(Err(self.restarting(&self.health_reason())));
            return;
        };
        match catch_unwind(AssertUnwindSafe(|| encoder.tokenize(&texts, job.side))) {
            // Counted as texts since it was admitted, not as tokens (they were not known then).
            Ok(Ok(tokens)) if tokens.len() == texts.len() => {
                job.tokens = tokens;
                queue.push(job, false);
            }
            Ok(Ok(tokens)) => {
                release(&self.shared);
                let message = format!("{} tokenised texts for {}", tokens.len(), texts.len());
                let _ = job.reply.send(Err(EncoderError::inference(&self.model, message)));
            }
            Ok(Err(err)) => {
                release(&self.shared);
                let _ = job.reply.send(Err(err));
            }
            Err(panic) => {
                release(&self.shared);
                let _ = job.reply.send(Err(self.restarting(&panic_message(panic.as_ref()))));
            }
        }
    }

    fn restarting(&self, reason: &str) -> EncoderError {
        EncoderError::Restarting { model: self.model.clone(), reason: reason.to_string() }
    }

    /// Runs one batch and hands each request its vectors (answering those now complete), unless the encoder must
    /// be restarted: then the batch is returned, to be answered with the requests waiting behind it.
    fn encode(&mut self, encoder: &dyn Encoder, batch: Batch, queue: &mut Queue) -> Option<Failed> {
        let model = self.model.as_str();
        for &(id, _) in &batch.entries {
            if let Some(job) = queue.jobs.get_mut(&id).filter(|j| !j.waited) {
                job.waited = true;
                job.wait = None;
                self.metrics
                    .encode_queue_wait
                    .with_label_values(&[model])
                    .observe(job.enqueued.elapsed().as_secs_f64());
            }
        }
        // One `encode.inference` span per request in the batch, under that request's span, for the call.
        let mut requests: Vec<u64> = batch.entries.iter().map(|(id, _)| *id).collect();
        requests.dedup();
        let _inference: Vec<tracing::Span> = requests
            .iter()
            .filter_map(|id| queue.jobs.get(id))
            .map(|job| {
                let texts = batch.entries.len();
                tracing::info_span!(parent: &job.parent, "encode.inference", model = %model, side = batch.side.as_str(), batch = texts)
            })
            .collect();
        let inputs: Vec<&Tokens> = batch.entries.iter().map(|(id, i)| &queue.jobs[id].tokens[*i]).collect();
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| encoder.infer(&inputs, batch.side)));
        let side = batch.side.as_str();
        match outcome {
            Ok(Ok(vectors)) if vectors.len() == batch.entries.len() => {
                self.metrics.encode_duration.with_label_values(&[model, side]).observe(started.elapsed().as_secs_f64());
                self.metrics.encode_batch_size.with_label_values(&[model]).observe(batch.entries.len() as f64);
                self.failures_in_a_row = 0;
                for (&(id, i), vector) in batch.entries.iter().zip(vectors) {
                    let job = queue.jobs.get_mut(&id).expect("a batched request is kept until answered");
                    job.vectors[i] = vector;
                    job.done += 1;
                    if job.done == job.tokens.len() {
                        let (job, _) = queue.remove(id).expect("present");
                        let truncated: Vec<bool> = job.tokens.iter().map(|t| t.truncated).collect();
                        let cut = truncated.iter().filter(|&&t| t).count() as u64;
                        self.metrics.truncated_inputs.with_label_values(&[model, side]).inc_by(cut);
                        let tokens = job.tokens.iter().map(Tokens::len).collect();
                        let _ = job.reply.send(Ok(Encoded { vectors: job.vectors, truncated, tokens }));
                    }
                }
                None
            }
            Ok(Ok(vectors)) => {
                let message = format!("{} vectors for {} texts", vectors.len(), batch.entries.len());
                self.failed(EncoderError::inference(model, message), batch, queue)
            }
            Ok(Err(err)) => self.failed(err, batch, queue),
            Err(panic) => {
                let reason = panic_message(panic.as_ref());
                let error = self.restarting(&reason);
                Some(Failed { reason, batch, error })
            }
        }
    }

    /// A batch failed with `err`: its requests are answered, or, after too many inference failures in a row, the
    /// encoder is to be restarted.
    fn failed(&mut self, err: EncoderError, batch: Batch, queue: &mut Queue) -> Option<Failed> {
        if !matches!(err, EncoderError::Inference { .. }) {
            self.failures_in_a_row = 0;
            answer_batch(queue, &batch, &err, &self.shared);
            return None;
        }
        self.failures_in_a_row += 1;
        if self.failures_in_a_row < FAILURES_BEFORE_RESTART {
            answer_batch(queue, &batch, &err, &self.shared);
            return None;
        }
        let reason = format!("inference failed {} times in a row: {err}", self.failures_in_a_row);
        Some(Failed { reason, batch, error: err })
    }

    /// Counts the restart and reports it, answers the failed batch and every waiting request (none learns of the
    /// restart before it is counted, and none sent after the answers is refused), then rebuilds the encoder (or
    /// keeps it, without a rebuild).
    fn restart(&mut self, failed: Failed, queue: &mut Queue, rx: &mpsc::Receiver<Job>) {
        let Failed { reason, batch, error } = failed;
        tracing::error!(model = self.model, reason, bulk = self.bulk, "restarting the encoder");
        self.metrics.encoder_restarts.with_label_values(&[&self.model]).inc();
        self.health.set(EncoderHealth::Restarting(reason.clone()));
        while let Ok(job) = rx.try_recv() {
            self.accept(job, queue);
        }
        answer_batch(queue, &batch, &error, &self.shared);
        let waiting = self.restarting(&reason);
        for id in queue.jobs.keys().copied().collect::<Vec<_>>() {
            let (job, (texts, tokens)) = queue.remove(id).expect("present");
            self.shared.release(texts, tokens);
            let _ = job.reply.send(Err(waiting.clone()));
        }
        self.failures_in_a_row = 0;
        if self.rebuild.is_none() {
            self.health.set(EncoderHealth::Serving);
            return;
        }
        // The old encoder goes first: a model may not fit in memory twice.
        if !self.bulk {
            *self.shared.encoder.write() = None;
        }
        if let Some(old) = self.encoder.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(old)));
        }
        match self.bulk {
            false => self.rebuild(),
            // Built again when bulk work next comes.
            true => self.last_rebuild = None,
        }
    }

    fn rebuild(&mut self) {
        let Some(rebuild) = &self.rebuild else { return };
        self.last_rebuild = Some(Instant::now());
        let session = self.session;
        match catch_unwind(AssertUnwindSafe(|| rebuild(session))) {
            Ok(Ok(encoder)) => {
                tracing::info!(model = self.model, bulk = self.bulk, "encoder built");
                let encoder: Arc<dyn Encoder> = Arc::from(encoder);
                if !self.bulk {
                    *self.shared.encoder.write() = Some(encoder.clone());
                }
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

/// Answers every request with a text in `batch` with `err`, and drops them (with their texts not yet batched).
fn answer_batch(queue: &mut Queue, batch: &Batch, err: &EncoderError, shared: &Shared) {
    for &(id, _) in &batch.entries {
        if let Some((job, (texts, tokens))) = queue.remove(id) {
            shared.release(texts, tokens);
            let _ = job.reply.send(Err(err.clone()));
        }
    }
}
