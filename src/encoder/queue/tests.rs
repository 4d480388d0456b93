//! Tests of the encoding queue: batching, lanes, load shedding, and supervision (a panicking or failing encoder is
//! restarted, the requests waiting then are answered, the next one is served).

use super::*;
use crate::encoder::onnx::SessionOptions;
use crate::encoder::Tokens;
use crate::encoder::{ModelKind, ModelRole, Pooling};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Texts on which the test encoder panics, or fails as a broken session would.
const PANIC: &str = "<panic>";
const FAIL: &str = "<fail>";

/// Tokenises a text as its bytes; encodes it as [its length, call number]; records each batch's size and padded
/// tokens; sleeps to let requests pile up.
struct Recorder {
    info: ModelInfo,
    calls: Arc<AtomicUsize>,
    batches: Arc<parking_lot::Mutex<Vec<usize>>>,
    /// Padded tokens (longest × count) of each batch, and the texts in it.
    padded: Arc<parking_lot::Mutex<Vec<(usize, Vec<String>)>>>,
    /// Held by a test to keep the thread busy in a call until it lets go.
    hold: Arc<parking_lot::Mutex<()>>,
}

fn text_of(tokens: &Tokens) -> String {
    tokens.ids.iter().map(|&b| b as u8 as char).collect()
}

impl Encoder for Recorder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn tokenize(&self, texts: &[String], _side: Side) -> Result<Vec<Tokens>, EncoderError> {
        Ok(texts
            .iter()
            .map(|t| Tokens {
                ids: t.bytes().map(u32::from).collect(),
                type_ids: vec![0; t.len()],
                truncated: t.len() > 5,
            })
            .collect())
    }
    fn infer(&self, inputs: &[&Tokens], side: Side) -> Result<Vec<Vec<f32>>, EncoderError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.batches.lock().push(inputs.len());
        let texts: Vec<String> = inputs.iter().map(|t| text_of(t)).collect();
        let longest = inputs.iter().map(|t| t.len()).max().unwrap_or(0);
        self.padded.lock().push((longest * inputs.len(), texts.clone()));
        drop(self.hold.lock());
        if texts.iter().any(|t| t == PANIC) {
            panic!("the test encoder was told to panic");
        }
        if texts.iter().any(|t| t == FAIL) {
            return Err(EncoderError::inference(&self.info.name, "the test session failed".into()));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let side_mark = if side == Side::Query { 1.0 } else { -1.0 };
        Ok(inputs.iter().map(|t| vec![t.len() as f32 * side_mark, call as f32]).collect())
    }
}

fn recorder() -> (Recorder, Arc<parking_lot::Mutex<Vec<usize>>>) {
    let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let info = ModelInfo {
        name: "rec".into(),
        kind: ModelKind::Encoder,
        role: ModelRole::Encoder,
        dimension: 2,
        network_dimension: 2,
        matryoshka_dimensions: None,
        version: "v".into(),
        pooling: Pooling::Mean,
        normalize: false,
        max_tokens: 8,
        query_prefix: String::new(),
        document_prefix: String::new(),
        query_template: None,
        document_template: None,
        task: None,
        tasks: Vec::new(),
        device: crate::encoder::Device::Cpu,
    };
    let hold = Arc::new(parking_lot::Mutex::new(()));
    let padded = Arc::new(parking_lot::Mutex::new(Vec::new()));
    (Recorder { info, calls: Arc::new(AtomicUsize::new(0)), batches: batches.clone(), padded, hold }, batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_answered_in_order() {
    let (enc, batches) = recorder();
    let handle = EncoderHandle::spawn(
        Box::new(enc),
        QueueOptions { max_batch: 64, capacity: 100, ..Default::default() },
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
        tasks.push(tokio::spawn(
            async move { h.encode(vec!["a".repeat(i + 1), "b".repeat(30 - i)], Side::Query).await },
        ));
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
    let handle = EncoderHandle::spawn(
        Box::new(enc),
        QueueOptions { max_batch: 64, capacity: 2, ..Default::default() },
        Arc::new(Metrics::new()),
    );
    let q = handle.clone();
    let d = handle.clone();
    let (a, b) = tokio::join!(q.encode(vec!["abc".into()], Side::Query), d.encode(vec!["abc".into()], Side::Document));
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
        QueueOptions { max_batch: 64, capacity: 100, ..Default::default() },
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
    while handle.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    let live = tokio::spawn({
        let h = handle.clone();
        async move { h.encode(vec!["lll".into()], Side::Query).await }
    });
    while handle.waiting() < 2 {
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
    assert_eq!(handle.waiting(), 0, "nothing is left waiting");
}

type Supervised = (EncoderHandle, Arc<parking_lot::Mutex<()>>, Arc<parking_lot::Mutex<Vec<usize>>>, Arc<AtomicUsize>);

/// A handle whose encoder is rebuilt with a fresh [`Recorder`] (or fails to be, when `rebuild_fails`); the number
/// of rebuilds so far; the first encoder's hold and batches.
fn supervised(rebuild_fails: bool, metrics: &Arc<Metrics>) -> Supervised {
    let (enc, batches) = recorder();
    let hold = enc.hold.clone();
    let rebuilds = Arc::new(AtomicUsize::new(0));
    let counter = rebuilds.clone();
    let rebuild: Rebuild = Arc::new(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        if rebuild_fails {
            return Err(EncoderError::inference("rec", "the model files are gone".into()));
        }
        Ok(Box::new(recorder().0) as Box<dyn Encoder>)
    });
    let options = QueueOptions { max_batch: 64, capacity: 100, ..Default::default() };
    (EncoderHandle::spawn_supervised(Box::new(enc), Some(rebuild), options, metrics.clone()), hold, batches, rebuilds)
}

fn restarts(metrics: &Metrics) -> u64 {
    metrics.encoder_restarts.with_label_values(&["rec"]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_answers_the_waiting_requests_restarts_the_encoder_and_the_next_request_is_served() {
    let metrics = Arc::new(Metrics::new());
    let (handle, hold, batches, rebuilds) = supervised(false, &metrics);
    // The panicking call is held until three more requests wait behind it, in both lanes.
    let busy = hold.lock();
    let panicking = tokio::spawn({
        let h = handle.clone();
        async move { h.encode(vec![PANIC.into()], Side::Query).await }
    });
    while batches.lock().is_empty() {
        tokio::task::yield_now().await;
    }
    let mut queued = Vec::new();
    for (text, priority) in [("a", Priority::Live), ("b", Priority::Background), ("c", Priority::Live)] {
        let h = handle.clone();
        queued.push(tokio::spawn(async move { h.encode_with(vec![text.into()], Side::Query, priority).await }));
    }
    while handle.waiting() < 3 {
        tokio::task::yield_now().await;
    }
    drop(busy);
    for task in std::iter::once(panicking).chain(queued) {
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, EncoderError::Restarting { .. }), "{err}");
        assert!(err.to_string().contains("panicked"), "{err}");
    }
    assert_eq!(restarts(&metrics), 1);
    // Sent while the encoder may still be rebuilt: it waits for it, and is served.
    let served = handle.encode(vec!["abcd".into()], Side::Query).await.unwrap();
    assert_eq!(served.vectors[0], vec![4.0, 0.0], "the first call of the rebuilt encoder");
    assert_eq!(rebuilds.load(Ordering::SeqCst), 1, "the encoder was rebuilt once");
    assert_eq!(handle.health(), EncoderHealth::Serving);
    assert_eq!(handle.waiting(), 0, "nothing is left waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_failing_repeatedly_is_restarted_and_a_failed_rebuild_is_reported_without_hanging() {
    let metrics = Arc::new(Metrics::new());
    let (handle, _, _, rebuilds) = supervised(false, &metrics);
    for _ in 0..FAILURES_BEFORE_RESTART - 1 {
        assert!(handle.encode(vec![FAIL.into()], Side::Query).await.is_err());
    }
    assert!(handle.encode(vec!["ok".into()], Side::Query).await.is_ok(), "a success resets the count");
    for _ in 0..FAILURES_BEFORE_RESTART {
        let err = handle.encode(vec![FAIL.into()], Side::Query).await.unwrap_err();
        assert!(matches!(err, EncoderError::Inference { .. }), "{err}");
    }
    assert_eq!(restarts(&metrics), 1);
    assert!(handle.encode(vec!["ok".into()], Side::Query).await.is_ok());
    assert_eq!(rebuilds.load(Ordering::SeqCst), 1, "served by the rebuilt encoder");

    // A model that cannot be rebuilt says so, and answers at once instead of hanging.
    let metrics = Arc::new(Metrics::new());
    let (handle, _, _, _) = supervised(true, &metrics);
    assert!(handle.encode(vec![PANIC.into()], Side::Query).await.is_err());
    // Answered after the failed rebuild, within RETRY_REBUILD of it.
    let err = handle.encode(vec!["ok".into()], Side::Query).await.unwrap_err();
    assert!(matches!(err, EncoderError::Restarting { .. }) && err.to_string().contains("gone"), "{err}");
    let EncoderHealth::Stopped(reason) = handle.health() else { panic!("{:?}", handle.health()) };
    assert!(reason.contains("the model files are gone"), "{reason}");
    assert_eq!(restarts(&metrics), 1);
}

/// A handle over a [`Recorder`] with `options`; its hold, and the padded size and texts of each batch.
#[allow(clippy::type_complexity)]
fn recorded(
    options: QueueOptions,
) -> (EncoderHandle, Arc<parking_lot::Mutex<()>>, Arc<parking_lot::Mutex<Vec<(usize, Vec<String>)>>>) {
    let (enc, _) = recorder();
    let (hold, padded) = (enc.hold.clone(), enc.padded.clone());
    (EncoderHandle::spawn(Box::new(enc), options, Arc::new(Metrics::new())), hold, padded)
}

/// Occupies the thread with one query call (held by the returned guard until dropped).
async fn occupy<'a>(
    handle: &EncoderHandle,
    hold: &'a parking_lot::Mutex<()>,
    padded: &parking_lot::Mutex<Vec<(usize, Vec<String>)>>,
) -> (parking_lot::MutexGuard<'a, ()>, tokio::task::JoinHandle<Result<Encoded, EncoderError>>) {
    let busy = hold.lock();
    let first = tokio::spawn({
        let h = handle.clone();
        async move { h.encode(vec!["x".into()], Side::Query).await }
    });
    while padded.lock().is_empty() {
        tokio::task::yield_now().await;
    }
    (busy, first)
}

fn spawn_encode(
    handle: &EncoderHandle,
    texts: Vec<String>,
    side: Side,
    priority: Priority,
) -> tokio::task::JoinHandle<Result<Encoded, EncoderError>> {
    let h = handle.clone();
    tokio::spawn(async move { h.encode_with(texts, side, priority).await })
}

async fn until_waiting(handle: &EncoderHandle, texts: usize) {
    while handle.waiting() < texts {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_overtakes_queued_bulk_work() {
    let options = QueueOptions { max_batch: 8, ..Default::default() };
    let (handle, hold, padded) = recorded(options);
    let (busy, first) = occupy(&handle, &hold, &padded).await;
    // A 100-document upsert and a background job are queued before a one-word query.
    let documents: Vec<String> = (0..100).map(|i| format!("document {i}")).collect();
    let upsert = spawn_encode(&handle, documents, Side::Document, Priority::Live);
    until_waiting(&handle, 100).await;
    let background = spawn_encode(&handle, vec!["eval query".into()], Side::Query, Priority::Background);
    until_waiting(&handle, 101).await;
    let query = spawn_encode(&handle, vec!["word".into()], Side::Query, Priority::Live);
    until_waiting(&handle, 102).await;
    drop(busy);
    first.await.unwrap().unwrap();
    let query = query.await.unwrap().unwrap();
    let upsert = upsert.await.unwrap().unwrap();
    let background = background.await.unwrap().unwrap();
    // The second coordinate is the inference call that encoded the text.
    assert_eq!(query.vectors[0][1], 1.0, "the query is the first call after the one in flight");
    let upsert_calls: Vec<f32> = upsert.vectors.iter().map(|v| v[1]).collect();
    assert!(upsert_calls.iter().all(|&c| c > 1.0), "{upsert_calls:?}");
    assert_eq!(upsert.vectors.len(), 100, "every document is answered, in order");
    assert!(upsert.vectors.iter().enumerate().all(|(i, v)| v[0] == -(format!("document {i}").len() as f32)));
    let last_upsert = upsert_calls.iter().copied().fold(0.0, f32::max);
    assert!(background.vectors[0][1] > last_upsert, "background work waits for live documents");
    assert!(padded.lock().iter().all(|(_, texts)| texts.len() <= 8), "no batch over max_batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keep_to_the_token_budget_and_a_longer_text_goes_alone() {
    let options = QueueOptions { max_batch: 64, max_batch_tokens: 40, ..Default::default() };
    let (handle, hold, padded) = recorded(options);
    let (busy, first) = occupy(&handle, &hold, &padded).await;
    let mut sent = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let texts: Vec<String> = (0..3).map(|j| "t".repeat(1 + (i * 7 + j * 5) % 25)).collect();
        sent.extend(texts.clone());
        tasks.push(spawn_encode(&handle, texts, Side::Document, Priority::Live));
    }
    let long = "L".repeat(100);
    sent.push(long.clone());
    tasks.push(spawn_encode(&handle, vec![long.clone()], Side::Document, Priority::Live));
    until_waiting(&handle, sent.len()).await;
    drop(busy);
    first.await.unwrap().unwrap();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let batches: Vec<(usize, Vec<String>)> = padded.lock()[1..].to_vec();
    for (tokens, texts) in &batches {
        assert!(*tokens <= 40 || texts.len() == 1, "a batch of {tokens} padded tokens: {texts:?}");
    }
    assert!(batches.iter().any(|(_, texts)| texts == &[long.clone()]), "the long text went alone");
    let mut encoded: Vec<String> = batches.into_iter().flat_map(|(_, texts)| texts).collect();
    encoded.sort();
    sent.sort();
    assert_eq!(encoded, sent, "every text encoded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_gave_up_never_reach_the_network() {
    let (handle, hold, padded) = recorded(QueueOptions::default());
    let (busy, first) = occupy(&handle, &hold, &padded).await;
    let gone = spawn_encode(&handle, vec!["gone".into(), "away".into()], Side::Query, Priority::Live);
    until_waiting(&handle, 2).await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    let kept = spawn_encode(&handle, vec!["kept".into()], Side::Query, Priority::Live);
    drop(busy);
    first.await.unwrap().unwrap();
    assert_eq!(kept.await.unwrap().unwrap().vectors[0][0], 4.0);
    let seen: Vec<String> = padded.lock().iter().flat_map(|(_, texts)| texts.clone()).collect();
    assert_eq!(seen, ["x", "kept"], "the abandoned request was skipped");
    assert_eq!(handle.waiting(), 0, "its room was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_full_of_tokens_refuses_the_excess_at_once() {
    let metrics = Arc::new(Metrics::new());
    let (enc, _) = recorder();
    let (hold, padded) = (enc.hold.clone(), enc.padded.clone());
    let options = QueueOptions { capacity: 100, max_queued_tokens: 10, ..Default::default() };
    let handle = EncoderHandle::spawn(Box::new(enc), options, metrics.clone());
    let (busy, first) = occupy(&handle, &hold, &padded).await;
    let six = spawn_encode(&handle, vec!["aaaaaa".into()], Side::Document, Priority::Live);
    until_waiting(&handle, 1).await;
    // Answered while the thread is still held: refused without waiting for it.
    let err = handle.encode(vec!["bbbbb".into()], Side::Document).await.unwrap_err();
    let EncoderError::Overloaded { capacity, unit, .. } = err else { panic!("{err}") };
    assert_eq!((capacity, unit), (10, "tokens"));
    assert_eq!(metrics.encode_rejected.with_label_values(&["rec"]).get(), 1);
    let four = spawn_encode(&handle, vec!["cccc".into()], Side::Document, Priority::Live);
    until_waiting(&handle, 2).await;
    drop(busy);
    first.await.unwrap().unwrap();
    assert_eq!(six.await.unwrap().unwrap().vectors[0][0], -6.0);
    assert_eq!(four.await.unwrap().unwrap().vectors[0][0], -4.0, "what fits is admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_runs_on_a_bulk_session_built_when_it_comes() {
    let (enc, _) = recorder();
    let built = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = built.clone();
    let rebuild: Rebuild = Arc::new(move |options| {
        log.lock().push(options);
        Ok(Box::new(recorder().0) as Box<dyn Encoder>)
    });
    let bulk = SessionOptions { intra_threads: 7, cpu_arena: false, device: crate::encoder::Device::Cpu };
    let options = QueueOptions { bulk: Some(bulk), ..Default::default() };
    let handle = EncoderHandle::spawn_supervised(Box::new(enc), Some(rebuild), options, Arc::new(Metrics::new()));
    assert!(built.lock().is_empty(), "no bulk session before bulk work");
    let live = handle.encode(vec!["live".into()], Side::Query).await.unwrap();
    let background = handle.encode_with(vec!["bulk".into()], Side::Document, Priority::Background).await.unwrap();
    assert_eq!((live.vectors[0][1], background.vectors[0][1]), (0.0, 0.0), "each the first call of its encoder");
    assert_eq!(*built.lock(), [bulk], "one bulk encoder, with the bulk options");
}

fn cached(version: &str, size: usize, metrics: &Arc<Metrics>) -> EncoderHandle {
    let (mut enc, _) = recorder();
    enc.info.version = version.into();
    EncoderHandle::spawn(Box::new(enc), QueueOptions { query_cache: size, ..Default::default() }, metrics.clone())
}

fn cache_counts(metrics: &Metrics) -> (u64, u64) {
    let hits = metrics.query_cache_hits.with_label_values(&["rec"]).get();
    (hits, metrics.query_cache_misses.with_label_values(&["rec"]).get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_query_returns_the_same_vector_without_the_encoder() {
    let metrics = Arc::new(Metrics::new());
    let handle = cached("v1", 8, &metrics);
    let first = handle.encode_query("abc".into(), Priority::Live).await.unwrap();
    let again = handle.encode_query("abc".into(), Priority::Live).await.unwrap();
    // The second coordinate is the call number: a second network call would differ.
    assert_eq!(first.vectors, again.vectors);
    assert_eq!(first.truncated, again.truncated);
    assert_eq!(cache_counts(&metrics), (1, 1));
    let other = handle.encode_query("abcd".into(), Priority::Live).await.unwrap();
    assert_eq!(other.vectors[0], vec![4.0, 1.0], "another query reaches the network");

    // A new model version is served by a new handle, with an empty cache of its own.
    let next = cached("v2", 8, &metrics);
    let fresh = next.encode_query("abc".into(), Priority::Live).await.unwrap();
    assert_eq!(fresh.vectors[0], vec![3.0, 0.0], "encoded by the new version's network");
    assert_eq!(cache_counts(&metrics), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_cache_keeps_at_most_its_size() {
    let metrics = Arc::new(Metrics::new());
    let handle = cached("v1", 2, &metrics);
    for query in ["a", "bb", "ccc", "a"] {
        handle.encode_query(query.into(), Priority::Live).await.unwrap();
    }
    assert_eq!(handle.cache.as_ref().unwrap().len(), 2);
    assert_eq!(cache_counts(&metrics), (0, 4), "the oldest entry was dropped");
    let off = cached("v1", 0, &metrics);
    assert!(off.cache.is_none(), "size 0 caches nothing");
}
