//! What one load level measured: each request's outcome (answered, refused, failed) and latency, summarised as
//! quantiles (the project's one quantile, [`crate::util::stats`]) and a rate over the measured window. Pure
//! arithmetic, no I/O.

use serde::Serialize;

use crate::util::stats::{mean, quantile, sorted};

/// How one request ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Answered,
    /// A 503 or 429: the server refused it (load shedding).
    Refused,
    /// Another status.
    Error,
    /// No answer: the connection failed or the client's timeout ran out.
    Failed,
    /// Not sent: an open-loop arrival while the client already had its most requests in flight (the load
    /// generator, not the server, was the limit).
    Skipped,
}

impl Outcome {
    /// The outcome of an HTTP status.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Outcome::Answered,
            429 | 503 => Outcome::Refused,
            _ => Outcome::Error,
        }
    }
}

/// Requests recorded during one measured window: (outcome, latency in seconds).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub requests: Vec<(Outcome, f64)>,
}

impl Samples {
    pub fn push(&mut self, outcome: Outcome, seconds: f64) {
        self.requests.push((outcome, seconds));
    }

    pub fn extend(&mut self, other: Samples) {
        self.requests.extend(other.requests);
    }

    fn latencies_ms(&self, which: Outcome) -> Vec<f64> {
        sorted(self.requests.iter().filter(|(o, _)| *o == which).map(|(_, s)| s * 1000.0).collect())
    }

    fn count(&self, which: Outcome) -> usize {
        self.requests.iter().filter(|(o, _)| *o == which).count()
    }

    /// The summary over a window of `seconds`.
    pub fn summarize(&self, seconds: f64) -> LevelStats {
        let answered = self.latencies_ms(Outcome::Answered);
        let refused = self.latencies_ms(Outcome::Refused);
        let total = self.requests.len() - self.count(Outcome::Skipped);
        LevelStats {
            seconds,
            requests: total,
            answered: answered.len(),
            refused: refused.len(),
            errors: self.count(Outcome::Error),
            failed: self.count(Outcome::Failed),
            skipped: self.count(Outcome::Skipped),
            qps: if seconds > 0.0 { answered.len() as f64 / seconds } else { 0.0 },
            latency_ms: Latency::of(&answered),
            refused_ms: Latency::of(&refused),
            refused_fraction: if total == 0 { 0.0 } else { refused.len() as f64 / total as f64 },
        }
    }
}

/// Latency quantiles in milliseconds (all zero over no requests).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
    pub max: f64,
}

impl Latency {
    /// Of sorted latencies.
    pub fn of(sorted_ms: &[f64]) -> Self {
        Latency {
            p50: quantile(sorted_ms, 0.5),
            p90: quantile(sorted_ms, 0.9),
            p99: quantile(sorted_ms, 0.99),
            mean: mean(sorted_ms),
            max: sorted_ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// One level's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LevelStats {
    /// The measured window.
    pub seconds: f64,
    /// Requests sent.
    pub requests: usize,
    pub answered: usize,
    pub refused: usize,
    pub errors: usize,
    pub failed: usize,
    /// Arrivals the client could not send (not in `requests`).
    pub skipped: usize,
    /// Answered requests per second of the window.
    pub qps: f64,
    /// Latency of the answered requests.
    pub latency_ms: Latency,
    /// Latency of the refused ones.
    pub refused_ms: Latency,
    /// Refused over all requests sent.
    pub refused_fraction: f64,
}

/// `a / b`, or 0 when `b` is not positive (a ratio over nothing measured).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rate_count_only_answered_requests() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push(Outcome::Answered, i as f64 / 1000.0);
        }
        s.push(Outcome::Refused, 0.002);
        s.push(Outcome::Refused, 0.004);
        s.push(Outcome::Error, 9.0);
        s.push(Outcome::Failed, 9.0);
        s.push(Outcome::Skipped, 0.0);
        let stats = s.summarize(4.0);
        assert_eq!((stats.requests, stats.answered, stats.refused, stats.errors, stats.failed), (104, 100, 2, 1, 1));
        assert_eq!(stats.skipped, 1);
        assert!((stats.qps - 25.0).abs() < 1e-12);
        assert!((stats.latency_ms.p50 - 50.5).abs() < 1e-9);
        assert!((stats.latency_ms.p99 - 99.01).abs() < 1e-9);
        assert!((stats.latency_ms.max - 100.0).abs() < 1e-9);
        assert!((stats.latency_ms.mean - 50.5).abs() < 1e-9);
        assert!((stats.refused_ms.p50 - 3.0).abs() < 1e-9);
        assert!((stats.refused_fraction - 2.0 / 104.0).abs() < 1e-12);
    }

    #[test]
    fn nothing_measured_gives_zeros_not_nan() {
        let stats = Samples::default().summarize(0.0);
        assert_eq!(stats.qps, 0.0);
        assert_eq!(stats.latency_ms.p99, 0.0);
        assert_eq!(stats.refused_fraction, 0.0);
        assert_eq!(ratio(1.0, 0.0), 0.0);
        assert_eq!(ratio(3.0, 2.0), 1.5);
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(Outcome::of_status(200), Outcome::Answered);
        assert_eq!(Outcome::of_status(503), Outcome::Refused);
        assert_eq!(Outcome::of_status(429), Outcome::Refused);
        assert_eq!(Outcome::of_status(400), Outcome::Error);
        assert_eq!(Outcome::of_status(500), Outcome::Error);
    }
}
