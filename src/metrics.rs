//! Prometheus metrics: one registry per server (so tests can run several servers in one process), rendered in
//! the text format at `GET /metrics`. Times are in seconds. Label values are bounded: routes are route templates
//! (`/v1/documents/{id}`), models are the configured model names, experiments and arms are the names of
//! experiments created through the API (validated: at most 64 characters, at most 8 arms).

use prometheus::{
    exponential_buckets, linear_buckets, Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub encode_duration: HistogramVec,
    pub encode_batch_size: HistogramVec,
    pub encode_queue_wait: HistogramVec,
    pub encode_queue_depth: IntGaugeVec,
    pub encode_rejected: IntCounterVec,
    pub truncated_inputs: IntCounterVec,
    pub search_duration: HistogramVec,
    pub documents: IntGaugeVec,
    pub index_deleted: IntGaugeVec,
    pub exposures: IntCounterVec,
    pub exposures_dropped: IntCounterVec,
    pub exposure_queue_depth: IntGauge,
    pub exposure_write_errors: IntCounter,
    pub exposure_write_duration: Histogram,
    pub feedback_events: IntCounterVec,
    pub interleave_outcomes: IntGaugeVec,
    pub shadow_overlap: HistogramVec,
    pub shadow_skipped: IntCounterVec,
}

fn latency_buckets() -> Vec<f64> {
    // 100 µs .. ~26 s
    exponential_buckets(0.0001, 2.0, 19).expect("valid buckets")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("duet".into()), None).expect("valid registry");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h =
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let http_labels = &["route", "method", "model", "status"];
        Self {
            http_requests: counter("http_requests_total", "HTTP requests answered.", http_labels),
            http_duration: histogram(
                "http_request_duration_seconds",
                "Time from request to response head.",
                http_labels,
                latency_buckets(),
            ),
            encode_duration: histogram(
                "encode_duration_seconds",
                "Time of one inference call (one batch).",
                &["model", "side"],
                latency_buckets(),
            ),
            encode_batch_size: histogram(
                "encode_batch_size",
                "Texts per inference call.",
                &["model"],
                exponential_buckets(1.0, 2.0, 10).expect("valid buckets"),
            ),
            encode_queue_wait: histogram(
                "encode_queue_wait_seconds",
                "Time a request waited in the model's encoding queue.",
                &["model"],
                latency_buckets(),
            ),
            encode_queue_depth: gauge(
                "encode_queue_depth",
                "Requests waiting in the model's encoding queue.",
                &["model"],
            ),
            encode_rejected: counter(
                "encode_rejected_total",
                "Requests refused because the model's encoding queue was full.",
                &["model"],
            ),
            truncated_inputs: counter(
                "truncated_inputs_total",
                "Texts cut at the model's max_tokens.",
                &["model", "side"],
            ),
            search_duration: histogram(
                "search_duration_seconds",
                "Time of one index search.",
                &["model", "method"],
                latency_buckets(),
            ),
            documents: gauge("documents", "Documents searchable in the model's index.", &["model"]),
            index_deleted: gauge(
                "index_deleted_entries",
                "Deleted or replaced entries still in the model's HNSW graph (filtered out until a rebuild).",
                &["model"],
            ),
            exposures: counter(
                "experiment_exposures_total",
                "Searches served under a running experiment and queued for the exposure log, by serving arm \
                 (empty when interleaved).",
                &["experiment", "arm"],
            ),
            exposures_dropped: counter(
                "experiment_exposures_dropped_total",
                "Exposures (and shadow comparisons) dropped because the exposure queue was full.",
                &["experiment"],
            ),
            exposure_queue_depth: {
                let g = IntGauge::new("exposure_queue_depth", "Records waiting to be written to the exposure log.")
                    .expect("valid gauge");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            exposure_write_errors: {
                let c = IntCounter::new("exposure_write_errors_total", "Exposure records lost to store errors.")
                    .expect("valid counter");
                registry.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            exposure_write_duration: {
                let h = Histogram::with_opts(
                    HistogramOpts::new("exposure_write_duration_seconds", "Time to write one batch of exposures.")
                        .buckets(latency_buckets()),
                )
                .expect("valid histogram");
                registry.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            feedback_events: counter(
                "experiment_feedback_total",
                "Feedback events recorded (duplicates excluded), by the arm credited (the team, when interleaved).",
                &["experiment", "arm", "event"],
            ),
            interleave_outcomes: gauge(
                "experiment_interleave_outcomes",
                "Clicked interleaved impressions by current outcome: the name of the arm with more credited clicks, \
                 or `tie` (from the store at start-up, then updated on every click).",
                &["experiment", "outcome"],
            ),
            shadow_overlap: histogram(
                "experiment_shadow_overlap",
                "Overlap of the shadow arm's results with the served ones (jaccard@k, rank-biased overlap).",
                &["experiment", "measure"],
                linear_buckets(0.0, 0.1, 11).expect("valid buckets"),
            ),
            shadow_skipped: counter(
                "experiment_shadow_skipped_total",
                "Shadow searches not run (too many in flight) or failed.",
                &["experiment", "reason"],
            ),
            registry,
        }
    }

    /// The registry in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_series_with_the_duet_prefix() {
        let m = Metrics::new();
        m.http_requests.with_label_values(&["/v1/search", "POST", "minilm", "200"]).inc();
        m.search_duration.with_label_values(&["minilm", "hnsw"]).observe(0.002);
        let text = m.render();
        assert!(
            text.contains(
                r#"duet_http_requests_total{method="POST",model="minilm",route="/v1/search",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("duet_search_duration_seconds_bucket"), "{text}");
    }
}
