//! The per-model encoding queue: one dedicated thread per model owns its [`Encoder`], so inference never runs on
//! the async runtime. Concurrent requests for the same side are merged into batches of up to `max_batch` texts
//! (sorted by length, so short texts are not padded to long ones). The queue is bounded: when it is full, callers
//! get [`EncoderError::Overloaded`] at once (load shedding) instead of waiting without limit.
//!
//! Requests come in two [`Priority`] lanes: live traffic (searches, upserts, embeds) is always taken before
//! background work (evaluation jobs), which only gets the thread when no live request waits.
//!
//! Dropping every [`EncoderHandle`] closes the queue; the thread finishes the jobs already queued and exits, which
//! is what a zero-downtime model swap needs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
}

impl EncoderHandle {
    /// Starts the model's encoding thread.
    pub fn spawn(encoder: Box<dyn Encoder>, options: QueueOptions, metrics: Arc<Metrics>) -> Self {
        let info = Arc::new(encoder.info().clone());
        let capacity = options.capacity.max(1);
        // Unbounded as a channel, bounded by `waiting`: the worker drains it into its two lanes to see live
        // requests queued behind background ones.
        let (tx, rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let worker =
            Worker { encoder, max_batch: options.max_batch.max(1), waiting: waiting.clone(), metrics: metrics.clone() };
        std::thread::Builder::new()
            .name(format!("encode-{}", info.name))
            .spawn(move || worker.run(rx))
            .expect("spawning an encoder thread");
        Self { info, tx, capacity, waiting, metrics }
    }

    pub fn info(&self) -> &Arc<ModelInfo> {
        &self.info
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
    encoder: Box<dyn Encoder>,
    max_batch: usize,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
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
    fn run(self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let model = self.encoder.info().name.clone();
        let depth = self.metrics.encode_queue_depth.with_label_values(&[&model]);
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
            self.encode(&model, jobs);
        }
        tracing::debug!(model, "encoder thread stopped");
    }

    /// Encodes one batch of requests and answers each.
    fn encode(&self, model: &str, jobs: Vec<Job>) {
        let side = jobs[0].side;
        for job in &jobs {
            self.metrics.encode_queue_wait.with_label_values(&[model]).observe(job.enqueued.elapsed().as_secs_f64());
        }
        let texts: Vec<&String> = jobs.iter().flat_map(|j| j.texts.iter()).collect();
        match encode_in_batches(self.encoder.as_ref(), &texts, side, self.max_batch, &self.metrics) {
            Ok(mut all) => {
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
            }
            Err(err) => {
                for job in jobs {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
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
mod tests {
    use super::*;
    use crate::encoder::{ModelKind, ModelRole, Pooling};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Encodes a text as [its length, call number]; records batch sizes; sleeps to let requests pile up.
    struct Recorder {
        info: ModelInfo,
        calls: Arc<AtomicUsize>,
        batches: Arc<parking_lot::Mutex<Vec<usize>>>,
        /// Held by a test to keep the thread busy in a call until it lets go.
        hold: Arc<parking_lot::Mutex<()>>,
    }

    impl Encoder for Recorder {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn encode(&self, texts: &[String], side: Side) -> Result<Encoded, EncoderError> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            self.batches.lock().push(texts.len());
            drop(self.hold.lock());
            std::thread::sleep(std::time::Duration::from_millis(20));
            let side_mark = if side == Side::Query { 1.0 } else { -1.0 };
            Ok(Encoded {
                vectors: texts.iter().map(|t| vec![t.len() as f32 * side_mark, call as f32]).collect(),
                truncated: texts.iter().map(|t| t.len() > 5).collect(),
            })
        }
    }

    fn recorder() -> (Recorder, Arc<parking_lot::Mutex<Vec<usize>>>) {
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let info = ModelInfo {
            name: "rec".into(),
            kind: ModelKind::Encoder,
            role: ModelRole::LlmEmbedding,
            dimension: 2,
            version: "v".into(),
            pooling: Pooling::Mean,
            normalize: false,
            max_tokens: 8,
            query_prefix: String::new(),
            document_prefix: String::new(),
            query_template: None,
            document_template: None,
        };
        let hold = Arc::new(parking_lot::Mutex::new(()));
        (Recorder { info, calls: Arc::new(AtomicUsize::new(0)), batches: batches.clone(), hold }, batches)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_are_batched_and_answered_in_order() {
        let (enc, batches) = recorder();
        let handle = EncoderHandle::spawn(
            Box::new(enc),
            QueueOptions { max_batch: 64, capacity: 100 },
            Arc::new(Metrics::new()),
        );
        // Occupy the thread, then queue many small requests: they must be merged into few calls.
        let first = tokio::spawn({
            let h = handle.clone();
            async move { h.encode(vec!["x".into()], Side::Query).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let h = handle.clone();
            tasks.push(tokio::spawn(async move {
                h.encode(vec!["a".repeat(i + 1), "b".repeat(30 - i)], Side::Query).await
            }));
        }
        first.await.unwrap().unwrap();
        for (i, task) in tasks.into_iter().enumerate() {
            let out = task.await.unwrap().unwrap();
            assert_eq!(out.vectors[0][0], (i + 1) as f32, "results go back to the right caller, in order");
            assert_eq!(out.vectors[1][0], (30 - i) as f32);
            assert_eq!(out.truncated, vec![i + 1 > 5, 30 - i > 5]);
        }
        let batches = batches.lock().clone();
        assert!(batches.len() <= 3, "20 queued requests should be merged, got batches {batches:?}");
        assert_eq!(batches.iter().sum::<usize>(), 41);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sides_are_never_mixed_and_a_full_queue_refuses_at_once() {
        let (enc, _) = recorder();
        let handle =
            EncoderHandle::spawn(Box::new(enc), QueueOptions { max_batch: 64, capacity: 2 }, Arc::new(Metrics::new()));
        let q = handle.clone();
        let d = handle.clone();
        let (a, b) =
            tokio::join!(q.encode(vec!["abc".into()], Side::Query), d.encode(vec!["abc".into()], Side::Document));
        assert_eq!(a.unwrap().vectors[0][0], 3.0);
        assert_eq!(b.unwrap().vectors[0][0], -3.0);

        let mut tasks = Vec::new();
        for _ in 0..12 {
            let h = handle.clone();
            tasks.push(tokio::spawn(async move { h.encode(vec!["abc".into()], Side::Query).await }));
        }
        let mut overloaded = 0;
        for t in tasks {
            if let Err(EncoderError::Overloaded { capacity, .. }) = t.await.unwrap() {
                assert_eq!(capacity, 2);
                overloaded += 1;
            }
        }
        assert!(overloaded > 0, "a queue of 2 cannot hold 12 requests");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_requests_overtake_background_ones() {
        let (enc, batches) = recorder();
        let hold = enc.hold.clone();
        let handle = EncoderHandle::spawn(
            Box::new(enc),
            QueueOptions { max_batch: 64, capacity: 100 },
            Arc::new(Metrics::new()),
        );
        // Occupy the thread, then queue background work first and live work after it.
        let busy = hold.lock();
        let first = tokio::spawn({
            let h = handle.clone();
            async move { h.encode(vec!["x".into()], Side::Query).await }
        });
        while batches.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        let background = tokio::spawn({
            let h = handle.clone();
            async move { h.encode_with(vec!["bb".into()], Side::Query, Priority::Background).await }
        });
        while handle.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let live = tokio::spawn({
            let h = handle.clone();
            async move { h.encode(vec!["lll".into()], Side::Query).await }
        });
        while handle.waiting.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        drop(busy);
        first.await.unwrap().unwrap();
        let (background, live) = (background.await.unwrap().unwrap(), live.await.unwrap().unwrap());
        // The second coordinate is the inference call that encoded the text.
        assert!(
            live.vectors[0][1] < background.vectors[0][1],
            "the live request must be encoded first (live call {}, background call {})",
            live.vectors[0][1],
            background.vectors[0][1]
        );
        assert_eq!(handle.waiting.load(Ordering::Acquire), 0, "nothing is left waiting");
    }
}
