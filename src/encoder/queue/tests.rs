//! Tests of the encoding queue: batching, lanes, load shedding, and supervision (a panicking or failing encoder is
//! restarted, the requests waiting then are answered, the next one is served).

use super::*;
use crate::encoder::{ModelKind, ModelRole, Pooling};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Texts on which the test encoder panics, or fails as a broken session would.
const PANIC: &str = "<panic>";
const FAIL: &str = "<fail>";

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
        if texts.iter().any(|t| t == PANIC) {
            panic!("the test encoder was told to panic");
        }
        if texts.iter().any(|t| t == FAIL) {
            return Err(EncoderError::inference(&self.info.name, "the test session failed".into()));
        }
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
    let handle =
        EncoderHandle::spawn(Box::new(enc), QueueOptions { max_batch: 64, capacity: 100 }, Arc::new(Metrics::new()));
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
    let handle =
        EncoderHandle::spawn(Box::new(enc), QueueOptions { max_batch: 64, capacity: 2 }, Arc::new(Metrics::new()));
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
    let handle =
        EncoderHandle::spawn(Box::new(enc), QueueOptions { max_batch: 64, capacity: 100 }, Arc::new(Metrics::new()));
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

type Supervised = (EncoderHandle, Arc<parking_lot::Mutex<()>>, Arc<parking_lot::Mutex<Vec<usize>>>, Arc<AtomicUsize>);

/// A handle whose encoder is rebuilt with a fresh [`Recorder`] (or fails to be, when `rebuild_fails`); the number
/// of rebuilds so far; the first encoder's hold and batches.
fn supervised(rebuild_fails: bool, metrics: &Arc<Metrics>) -> Supervised {
    let (enc, batches) = recorder();
    let hold = enc.hold.clone();
    let rebuilds = Arc::new(AtomicUsize::new(0));
    let counter = rebuilds.clone();
    let rebuild: Rebuild = Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        if rebuild_fails {
            return Err(EncoderError::inference("rec", "the model files are gone".into()));
        }
        Ok(Box::new(recorder().0) as Box<dyn Encoder>)
    });
    let options = QueueOptions { max_batch: 64, capacity: 100 };
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
    while handle.waiting.load(Ordering::Acquire) < 3 {
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
    assert_eq!(handle.waiting.load(Ordering::Acquire), 0, "nothing is left waiting");
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
