//! The exposure log: what each search under a running experiment showed (and, in shadow mode, what the shadow
//! arm would have shown), written to the store by one background task, in batches, through a bounded queue.
//!
//! The search path only ever calls [`ExposureLog::record`], which never waits: when the queue is full the
//! record is dropped and `duet_experiment_exposures_dropped_total` rises. Feedback, which must find the exposure, first
//! asks the writer to [`flush`](ExposureLog::flush) what it holds. While the store is unavailable the writer holds
//! its batch and writes it again (backing off up to two seconds) until it is back; the queue fills meanwhile, and
//! once it is full new records are dropped and counted.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::{ExposureRecord, ShadowRecord, Store};

/// The first wait before writing a batch again while the store is unavailable; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

enum Message {
    Exposure(ExposureRecord),
    Shadow(ShadowRecord),
    Flush(oneshot::Sender<()>),
}

/// Settings of the exposure log.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// Records waiting to be written; beyond it, records are dropped.
    pub capacity: usize,
    /// Most records written in one transaction.
    pub batch: usize,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct ExposureLog {
    tx: mpsc::Sender<Message>,
    metrics: Arc<Metrics>,
}

impl ExposureLog {
    /// Starts the writer task (it ends when the last sender is dropped). At shutdown, [`ExposureLog::flush`]
    /// writes everything queued.
    pub fn spawn(store: Arc<dyn Store>, options: LogOptions, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(options.capacity.max(1));
        tokio::spawn(write_loop(rx, store, options.batch.max(1), metrics.clone()));
        Self { tx, metrics }
    }

    /// Queues an exposure without waiting; returns false (and counts it) when it was dropped.
    pub fn record(&self, record: ExposureRecord) -> bool {
        let (experiment, arm) = (record.experiment_name.clone(), record.arm.clone().unwrap_or_default());
        match self.tx.try_send(Message::Exposure(record)) {
            Ok(()) => {
                self.metrics.exposures.with_label_values(&[&experiment, &arm]).inc();
                self.metrics.init_experiment(&experiment);
                self.metrics.exposure_queue_depth.inc();
                true
            }
            Err(_) => {
                self.metrics.exposures_dropped.with_label_values(&[&experiment]).inc();
                false
            }
        }
    }

    /// Queues a shadow comparison without waiting; returns false when it was dropped.
    pub fn record_shadow(&self, record: ShadowRecord) -> bool {
        let experiment = record.experiment_name.clone();
        match self.tx.try_send(Message::Shadow(record)) {
            Ok(()) => {
                self.metrics.init_experiment(&experiment);
                self.metrics.exposure_queue_depth.inc();
                true
            }
            Err(_) => {
                self.metrics.exposures_dropped.with_label_values(&[&experiment]).inc();
                false
            }
        }
    }

    /// Waits until everything queued before this call is written (or failed).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_loop(mut rx: mpsc::Receiver<Message>, store: Arc<dyn Store>, batch: usize, metrics: Arc<Metrics>) {
    let mut exposures = Vec::with_capacity(batch);
    let mut shadows = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Take whatever is queued, up to a batch: one transaction per batch under load, no wait when idle.
        while let Some(message) = next.take() {
            match message {
                Message::Exposure(e) => exposures.push(e),
                Message::Shadow(s) => shadows.push(s),
                Message::Flush(done) => flushes.push(done),
            }
            if exposures.len() + shadows.len() >= batch {
                break;
            }
            next = rx.try_recv().ok();
        }
        let written = exposures.len() + shadows.len();
        if written > 0 {
            let started = Instant::now();
            let mut retry_in = RETRY_FIRST;
            loop {
                match store.write_exposures(&exposures, &shadows).await {
                    Ok(()) => break,
                    // The store is away: the batch is kept and written once it is back. Meanwhile new records
                    // wait in the queue, and beyond its bound they are dropped and counted.
                    Err(err) if err.is_unavailable() => {
                        if retry_in == RETRY_FIRST {
                            tracing::warn!(error = %crate::util::error_chain(&err), records = written,
                                "the store is unavailable; holding the exposure batch until it is back");
                        }
                        tokio::time::sleep(retry_in).await;
                        retry_in = (retry_in * 2).min(RETRY_MAX);
                    }
                    Err(err) => {
                        tracing::error!(error = %crate::util::error_chain(&err), records = written, "writing exposures failed; the batch is lost");
                        metrics.exposure_write_errors.inc_by(written as u64);
                        break;
                    }
                }
            }
            metrics.exposure_write_duration.observe(started.elapsed().as_secs_f64());
            metrics.exposure_queue_depth.sub(written as i64);
            exposures.clear();
            shadows.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}
