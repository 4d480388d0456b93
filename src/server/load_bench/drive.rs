//! The load itself: a stream of distinct queries, closed-loop HTTP clients (each sends its next search when the
//! last is answered), an open-loop arrival process (searches sent at a fixed rate whatever the answers), and the
//! in-process baselines (the engine's search at one caller, and the encoder's batch throughput). Every request is
//! timed by its caller and recorded in [`Samples`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::stats::{Outcome, Samples};
use crate::encoder::Side;
use crate::engine::{Engine, Priority, SearchQuery};

/// Distinct query texts: the pool in order, then the pool again with a round number appended, so that no text
/// repeats (a query-embedding cache never answers) while lengths stay those of real queries.
pub struct Queries {
    pool: Vec<String>,
    next: AtomicUsize,
}

impl Queries {
    pub fn new(pool: Vec<String>) -> Self {
        assert!(!pool.is_empty(), "at least one query");
        Self { pool, next: AtomicUsize::new(0) }
    }

    pub fn next(&self) -> String {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let (round, at) = (i / self.pool.len(), i % self.pool.len());
        if round == 0 {
            self.pool[at].clone()
        } else {
            format!("{} ({round})", self.pool[at])
        }
    }

    /// Texts handed out so far.
    pub fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

/// Where the HTTP load goes.
#[derive(Clone)]
pub struct Target {
    pub client: reqwest::Client,
    /// `http://host:port/v1/search`
    pub url: String,
    pub model: String,
    pub k: usize,
}

impl Target {
    /// One search; its outcome and latency.
    pub async fn search(&self, query: String) -> (Outcome, f64) {
        let started = Instant::now();
        let body = json!({"query": query, "k": self.k, "model": self.model});
        let outcome = match self.client.post(&self.url).json(&body).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                // The whole body is read: a client's latency ends with its last byte.
                match response.bytes().await {
                    Ok(_) => Outcome::of_status(status),
                    Err(_) => Outcome::Failed,
                }
            }
            Err(_) => Outcome::Failed,
        };
        (outcome, started.elapsed().as_secs_f64())
    }
}

/// `clients` closed-loop clients for `warmup` then `window`: a request counts when it started after the warmup
/// and was answered within the window. Returns the samples and the window's length.
pub async fn closed_loop(
    target: &Target,
    queries: &Arc<Queries>,
    clients: usize,
    warmup: Duration,
    window: Duration,
) -> (Samples, f64) {
    let start = Instant::now() + warmup;
    let end = start + window;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (target, queries) = (target.clone(), queries.clone());
            tokio::spawn(async move {
                let mut samples = Samples::default();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let (outcome, seconds) = target.search(queries.next()).await;
                    if sent >= start && Instant::now() <= end {
                        samples.push(outcome, seconds);
                    }
                }
                samples
            })
        })
        .collect();
    let mut all = Samples::default();
    for task in tasks {
        if let Ok(samples) = task.await {
            all.extend(samples);
        }
    }
    (all, window.as_secs_f64())
}

/// Searches sent at `rate` per second for `window`, each on its own task whatever the others' answers; at most
/// `max_in_flight` at once (arrivals beyond it are counted as skipped: the client could not send them). Waits
/// for the answers (up to `drain`) before returning.
pub async fn open_loop(
    target: &Target,
    queries: &Arc<Queries>,
    rate: f64,
    window: Duration,
    max_in_flight: usize,
    drain: Duration,
) -> Samples {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let started = Instant::now();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut samples = Samples::default();
    let mut sent = 0u64;
    loop {
        let due = started + interval.mul_f64(sent as f64);
        if due >= started + window {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        sent += 1;
        if in_flight.load(Ordering::Acquire) >= max_in_flight {
            samples.push(Outcome::Skipped, 0.0);
            continue;
        }
        in_flight.fetch_add(1, Ordering::AcqRel);
        let (target, query, tx, in_flight) = (target.clone(), queries.next(), tx.clone(), in_flight.clone());
        tokio::spawn(async move {
            let answer = target.search(query).await;
            in_flight.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send(answer);
        });
    }
    drop(tx);
    let deadline = tokio::time::Instant::now() + drain;
    while let Ok(Some((outcome, seconds))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        samples.push(outcome, seconds);
    }
    samples
}

/// The engine's own search (encode + index + documents, no HTTP) at one caller for `window`.
pub async fn in_process_search(
    engine: &Engine,
    model: &str,
    k: usize,
    queries: &Queries,
    window: Duration,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    let end = Instant::now() + window;
    while Instant::now() < end {
        let started = Instant::now();
        let q = SearchQuery {
            model: model.to_string(),
            query: queries.next(),
            k,
            ef: None,
            exact: false,
            priority: Priority::Live,
        };
        engine.search(q).await?;
        samples.push(Outcome::Answered, started.elapsed().as_secs_f64());
    }
    Ok(samples)
}

/// The model's encoder on batches of `batch` distinct queries, one batch after another, for `window`: texts per
/// second.
pub async fn encoder_throughput(
    engine: &Engine,
    model: &str,
    batch: usize,
    queries: &Queries,
    window: Duration,
) -> anyhow::Result<f64> {
    let served = engine.model(model)?;
    let started = Instant::now();
    let mut texts = 0usize;
    while started.elapsed() < window || texts == 0 {
        let batch: Vec<String> = (0..batch).map(|_| queries.next()).collect();
        texts += batch.len();
        served.encoder.encode(batch, Side::Query).await?;
    }
    Ok(texts as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_never_repeat() {
        let q = Queries::new(vec!["a".into(), "b".into()]);
        let texts: Vec<String> = (0..6).map(|_| q.next()).collect();
        assert_eq!(texts, ["a", "b", "a (1)", "b (1)", "a (2)", "b (2)"]);
        let distinct: std::collections::HashSet<_> = texts.iter().collect();
        assert_eq!(distinct.len(), 6);
        assert_eq!(q.used(), 6);
    }
}
