//! Whether the store answers, as last seen: set by every check of the change feed (a few times a second) and by
//! calls that found it unreachable. While it is down, writes are refused at once (503 with `Retry-After`)
//! instead of each waiting for a connection, searches go on from memory, and `/readyz` says the store is
//! degraded. Uses only the metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::metrics::Metrics;
use crate::util::now;

/// The store's health as `/readyz` reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoreStatus {
    /// `ok`, or `degraded` while the store cannot be reached.
    pub status: &'static str,
    /// When it entered that status.
    pub since: String,
    /// Why it is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct StoreHealth {
    up: AtomicBool,
    status: Mutex<StoreStatus>,
    metrics: Arc<Metrics>,
}

impl StoreHealth {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.store_up.set(1);
        Self {
            up: AtomicBool::new(true),
            status: Mutex::new(StoreStatus { status: "ok", since: now(), error: None }),
            metrics,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn status(&self) -> StoreStatus {
        self.status.lock().clone()
    }

    /// The store answered.
    pub fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            *self.status.lock() = StoreStatus { status: "ok", since: now(), error: None };
            self.metrics.store_up.set(1);
            tracing::info!("the store answers again");
        }
    }

    /// The store could not be reached; `error` says how.
    pub fn mark_down(&self, error: String) {
        let was_up = self.up.swap(false, Ordering::AcqRel);
        let mut status = self.status.lock();
        if was_up {
            tracing::warn!(%error, "the store is unreachable: searches are answered from memory, writes refused until it is back");
            *status = StoreStatus { status: "degraded", since: now(), error: Some(error) };
            self.metrics.store_up.set(0);
        } else {
            status.error = Some(error);
        }
    }
}
