//! The per-model encoding queue, after TEI's (`core/src/queue.rs`, `core/src/infer.rs`): texts are tokenised on
//! the caller's side (tokio's blocking pool), queued with their lengths, and one thread per model owns the queue
//! and runs only networks. Batches are packed to a token budget — padded length × count at most
//! `max_batch_tokens`, and at most `max_batch` texts; a single text over the budget goes alone — taking each
//! request's texts shortest first, so padding stays small. The queue is bounded in texts (`capacity`) and in
//! tokens (`max_queued_tokens`): a request that does not fit is refused at once with
//! [`EncoderError::Overloaded`] (load shedding) instead of waiting without limit.
//!
//! Lanes, by [`Priority`] and side: live queries are always taken first, then live documents (upserts), then
//! background work (evaluation, back-fill, import). A big upsert holds a query back by one batch at most. With a
//! bulk session configured (`QueueOptions::bulk`), background work has a thread and an encoder of its own, built
//! with the bulk session options (every core, no memory arena) when bulk work first comes and dropped after
//! [`BULK_IDLE`] without any, so live traffic keeps its session and its lanes. Requests whose caller gave up
//! (dropped futures: timeouts, disconnects) are skipped before inference.
//!
//! Supervision: an inference call that panics, or [`FAILURES_BEFORE_RESTART`] inference failures in a row, restart
//! the encoder — rebuilt by the handle's [`Rebuild`] (the model reloaded from its manifest), or kept as it is when
//! there is none — counted in `duet_encoder_restarts_total{model}`. The requests of the failed call and every one
//! waiting then are answered [`EncoderError::Restarting`] at once (none hangs on a dead thread); later ones are
//! served by the rebuilt encoder. While it cannot encode, [`EncoderHandle::health`] says so (`/readyz` reports it);
//! a rebuild that fails is tried again every [`RETRY_REBUILD`], when a request comes.
//!
//! A query cache (`QueueOptions::query_cache` entries, per handle, so per model version) answers repeated search
//! queries without the network: [`EncoderHandle::encode_query`].
//!
//! Dropping every [`EncoderHandle`] closes the queue; the threads finish the jobs already queued and exit: a
//! replaced model version, once drained, lets its threads go this way.

mod cache;
mod worker;

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use super::onnx::SessionOptions;
use super::{Encoded, Encoder, EncoderError, ModelInfo, Side, Tokens};
use crate::metrics::Metrics;
use cache::QueryCache;
use worker::{Lane, Worker};

/// Queue settings for one model.
#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    /// Most texts one inference call takes.
    pub max_batch: usize,
    /// Most tokens one inference call takes, padding included (longest text × texts).
    pub max_batch_tokens: usize,
    /// Most texts waiting before new requests are refused.
    pub capacity: usize,
    /// Most tokens waiting before new requests are refused.
    pub max_queued_tokens: usize,
    /// The options the model's live session was built with (used when rebuilding it).
    pub session: SessionOptions,
    /// Background work's own session and thread, with these options; `None` runs it on the live thread.
    pub bulk: Option<SessionOptions>,
    /// Query vectors kept per model version; 0 keeps none.
    pub query_cache: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_batch_tokens: 8192,
            capacity: 4096,
            max_queued_tokens: 262_144,
            session: SessionOptions::default(),
            bulk: None,
            query_cache: 0,
        }
    }
}

/// Inference failures in a row (a session that keeps failing) after which the encoder is restarted.
pub const FAILURES_BEFORE_RESTART: usize = 3;

/// How long after a failed rebuild the next one is tried (when a request comes).
pub const RETRY_REBUILD: Duration = Duration::from_secs(10);

/// How long a bulk session is kept without bulk work before it is dropped (with its memory).
pub const BULK_IDLE: Duration = Duration::from_secs(30);

/// Builds the model's encoder again with the given session options (reloads it from its manifest): after a panic
/// or repeated failures, and for a bulk session.
pub type Rebuild = Arc<dyn Fn(SessionOptions) -> Result<Box<dyn Encoder>, EncoderError> + Send + Sync>;

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
    /// Evaluation jobs, back-fills and imports: served only when no live request waits (or on the bulk session).
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

/// A request as queued: its texts tokenised (or, when no encoder could tokenise them, as they came).
struct Job {
    tokens: Vec<Tokens>,
    /// Set when the caller found no encoder to tokenise with (it is being rebuilt): the thread tokenises them.
    texts: Option<Vec<String>>,
    side: Side,
    lane: Lane,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Encoded, EncoderError>>,
    /// The caller's span (a search's `encode`): the thread's `encode.inference` spans are its children.
    parent: tracing::Span,
    /// `encode.queue_wait`, open from queuing until the thread takes the request into a batch.
    wait: tracing::Span,
}

/// Texts and tokens admitted and not yet taken into a batch: the queue's bounds are on these.
#[derive(Debug, Default)]
struct Room {
    texts: usize,
    tokens: usize,
}

/// What the handles and the threads share.
struct Shared {
    /// The live encoder, for tokenising on the caller's side; none while it is rebuilt.
    encoder: RwLock<Option<Arc<dyn Encoder>>>,
    room: Mutex<Room>,
    capacity: usize,
    max_queued_tokens: usize,
    /// `duet_encode_queue_depth{model}`: texts waiting.
    depth: prometheus::IntGauge,
}

impl Shared {
    /// Takes room for `texts` texts of `tokens` tokens, or says which bound is reached. An empty queue takes any
    /// request, so that one bigger than a bound is served alone rather than never.
    fn admit(&self, model: &str, texts: usize, tokens: usize) -> Result<(), EncoderError> {
        let mut room = self.room.lock();
        if room.texts > 0 {
            if room.texts + texts > self.capacity {
                return Err(EncoderError::Overloaded { model: model.into(), capacity: self.capacity, unit: "texts" });
            }
            if room.tokens + tokens > self.max_queued_tokens {
                let capacity = self.max_queued_tokens;
                return Err(EncoderError::Overloaded { model: model.into(), capacity, unit: "tokens" });
            }
        }
        room.texts += texts;
        room.tokens += tokens;
        self.depth.set(room.texts as i64);
        Ok(())
    }

    fn release(&self, texts: usize, tokens: usize) {
        let mut room = self.room.lock();
        room.texts = room.texts.saturating_sub(texts);
        room.tokens = room.tokens.saturating_sub(tokens);
        self.depth.set(room.texts as i64);
    }

    fn waiting_texts(&self) -> usize {
        self.room.lock().texts
    }
}

/// A cheap, cloneable handle to a model's encoding threads.
#[derive(Clone)]
pub struct EncoderHandle {
    info: Arc<ModelInfo>,
    shared: Arc<Shared>,
    live: mpsc::Sender<Job>,
    bulk: Option<mpsc::Sender<Job>>,
    metrics: Arc<Metrics>,
    health: Arc<Mutex<EncoderHealth>>,
    cache: Option<Arc<QueryCache>>,
}

impl EncoderHandle {
    /// Starts the model's encoding thread; after a panic it goes on with the same encoder.
    pub fn spawn(encoder: Box<dyn Encoder>, options: QueueOptions, metrics: Arc<Metrics>) -> Self {
        Self::spawn_supervised(encoder, None, options, metrics)
    }

    /// Starts the model's encoding thread (and its bulk thread, when `options.bulk` is set and there is a
    /// `rebuild` to build its encoder with), which rebuilds its encoder with `rebuild` after a panic or repeated
    /// inference failures.
    pub fn spawn_supervised(
        encoder: Box<dyn Encoder>,
        rebuild: Option<Rebuild>,
        options: QueueOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let info = Arc::new(encoder.info().clone());
        metrics.init_model(&info.name);
        let encoder: Arc<dyn Encoder> = Arc::from(encoder);
        let shared = Arc::new(Shared {
            encoder: RwLock::new(Some(encoder.clone())),
            room: Mutex::default(),
            capacity: options.capacity.max(1),
            max_queued_tokens: options.max_queued_tokens.max(1),
            depth: metrics.encode_queue_depth.with_label_values(&[&info.name]),
        });
        let health = Arc::new(Mutex::new(EncoderHealth::Serving));
        let worker = |encoder, session, bulk, health| Worker {
            model: info.name.clone(),
            encoder,
            rebuild: rebuild.clone(),
            session,
            bulk,
            max_batch: options.max_batch.max(1),
            max_batch_tokens: options.max_batch_tokens.max(1),
            shared: shared.clone(),
            metrics: metrics.clone(),
            health: worker::StoppedOnExit(health),
            failures_in_a_row: 0,
            last_rebuild: None,
        };
        let start = |name: String, worker: Worker| {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new().name(name).spawn(move || worker.run(rx)).expect("spawning an encoder thread");
            tx
        };
        let live =
            start(format!("encode-{}", info.name), worker(Some(encoder), options.session, false, health.clone()));
        // The bulk thread's health is its own: a failing bulk session makes the model no less ready to serve.
        let bulk = match (options.bulk, &rebuild) {
            (Some(session), Some(_)) => Some(start(
                format!("bulk-{}", info.name),
                worker(None, session, true, Arc::new(Mutex::new(EncoderHealth::Serving))),
            )),
            _ => None,
        };
        let cache =
            (options.query_cache > 0).then(|| Arc::new(QueryCache::new(&info.name, options.query_cache, &metrics)));
        Self { info, shared, live, bulk, metrics, health, cache }
    }

    pub fn info(&self) -> &Arc<ModelInfo> {
        &self.info
    }

    /// Whether the model's thread can encode now.
    pub fn health(&self) -> EncoderHealth {
        self.health.lock().clone()
    }

    /// Texts admitted and not yet taken into a batch.
    pub fn waiting(&self) -> usize {
        self.shared.waiting_texts()
    }

    /// Encodes `texts` for `side` as live traffic, waiting for the model's thread.
    pub async fn encode(&self, texts: Vec<String>, side: Side) -> Result<Encoded, EncoderError> {
        self.encode_with(texts, side, Priority::Live).await
    }

    /// Encodes one search query, from the query cache when it holds it (the same vector as the network gave).
    pub async fn encode_query(&self, query: String, priority: Priority) -> Result<Encoded, EncoderError> {
        let Some(cache) = &self.cache else { return self.encode_with(vec![query], Side::Query, priority).await };
        let key = self.info.frame(Side::Query, &query);
        if let Some(hit) = cache.get(&key) {
            return Ok(hit);
        }
        let encoded = self.encode_with(vec![query], Side::Query, priority).await?;
        cache.put(key, &encoded);
        Ok(encoded)
    }

    /// Encodes `texts` for `side` in the lane of `priority`: tokenised here (on the blocking pool), then queued.
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
        let refused = |err: EncoderError| {
            self.metrics.encode_rejected.with_label_values(&[model]).inc();
            err
        };
        // A full queue refuses before any tokenising.
        self.shared.admit(model, texts.len(), 0).map_err(refused)?;
        self.shared.release(texts.len(), 0);
        let encoder = self.shared.encoder.read().clone();
        let (tokens, texts) = match encoder {
            Some(encoder) => {
                let tokenized = tokio::task::spawn_blocking(move || encoder.tokenize(&texts, side)).await;
                let tokens =
                    tokenized.map_err(|e| EncoderError::Tokenize { model: model.clone(), source: Arc::new(e) })??;
                (tokens, None)
            }
            None => (Vec::new(), Some(texts)),
        };
        let count = texts.as_ref().map_or(tokens.len(), Vec::len);
        let token_count: usize = tokens.iter().map(Tokens::len).sum();
        self.shared.admit(model, count, token_count).map_err(refused)?;
        self.metrics.encode_requests.with_label_values(&[model, priority.as_str()]).inc();
        let lane = Lane::of(priority, side);
        let (reply, response) = oneshot::channel();
        let wait = tracing::info_span!("encode.queue_wait", model = %model, texts = count, lane = priority.as_str());
        let parent = tracing::Span::current();
        let job = Job { tokens, texts, side, lane, enqueued: Instant::now(), reply, parent, wait };
        let tx = match (lane, &self.bulk) {
            (Lane::Background, Some(bulk)) => bulk,
            _ => &self.live,
        };
        if tx.send(job).is_err() {
            self.shared.release(count, token_count);
            return Err(EncoderError::Stopped { model: model.clone() });
        }
        response.await.unwrap_or_else(|_| Err(EncoderError::Stopped { model: model.clone() }))
    }
}

#[cfg(test)]
mod tests;
