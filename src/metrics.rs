//! Prometheus metrics: one registry per server (so tests can run several servers in one process), rendered in
//! the text format at `GET /metrics`. Times are in seconds. Label values are bounded: routes are route templates
//! (`/v1/documents/{id}`, `unmatched`, or `unparsed` for what hyper could not parse), methods are the standard
//! ones or `other`, models are the configured model names, experiments and arms are the names of
//! experiments created through the API (validated: at most 64 characters, at most 8 arms). `status` keeps the
//! raw code rather than a class: the server answers a fixed, small set of codes, and the alerts and SLOs tell
//! 503 (shedding, warm-up, store down) apart from 500 (a bug) and 429 from 422. Counters of a model's label
//! set start at 0 when its queue starts ([`Metrics::init_model`]), so that `rate()` sees the first refusal
//! (a series born at 1 has no increase) and panels show 0 rather than nothing. Beside the `duet_` families,
//! [`Metrics::render`] adds the standard `process_*` collector (resident memory, CPU seconds, open and maximum
//! file descriptors, start time, threads) from /proc on Linux, unprefixed as Prometheus names them.

use std::cell::RefCell;

use prometheus::core::Collector;
use prometheus::{
    exponential_buckets, linear_buckets, Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The git commit the binary was built from (build.rs: `DUET_GIT_SHA`, else `git rev-parse`, else "unknown").
pub const GIT_SHA: &str = env!("DUET_GIT_SHA");

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_connections_open: IntGauge,
    pub http_connections_refused: IntCounter,
    pub http_connections_timed_out: IntCounterVec,
    pub encode_duration: HistogramVec,
    pub encode_batch_size: HistogramVec,
    pub encode_queue_wait: HistogramVec,
    pub encode_queue_depth: IntGaugeVec,
    pub encode_rejected: IntCounterVec,
    pub encoder_restarts: IntCounterVec,
    pub model_state: IntGaugeVec,
    pub model_backfill_documents: IntCounterVec,
    pub model_backfill_remaining: IntGaugeVec,
    pub model_swaps: IntCounterVec,
    pub model_rollbacks: IntCounterVec,
    pub encode_requests: IntCounterVec,
    pub truncated_inputs: IntCounterVec,
    pub query_cache_hits: IntCounterVec,
    pub query_cache_misses: IntCounterVec,
    pub search_duration: HistogramVec,
    pub documents: IntGaugeVec,
    pub index_deleted: IntGaugeVec,
    pub index_slots: IntGaugeVec,
    pub corrupt_embeddings: IntCounterVec,
    pub index_snapshots: IntCounterVec,
    pub heavy_searches_refused: IntCounterVec,
    pub exposures: IntCounterVec,
    pub exposures_dropped: IntCounterVec,
    pub exposure_queue_depth: IntGauge,
    pub exposure_write_errors: IntCounter,
    pub exposure_write_duration: Histogram,
    pub feedback_events: IntCounterVec,
    pub interleave_outcomes: IntGaugeVec,
    pub shadow_overlap: HistogramVec,
    pub shadow_skipped: IntCounterVec,
    pub eval_jobs: IntGaugeVec,
    pub eval_jobs_ended: IntCounterVec,
    pub store_up: IntGauge,
    pub replication_lag: Histogram,
    pub replication_applied: IntCounterVec,
    /// 1, labelled with the version and git commit of the binary.
    pub build_info: IntGaugeVec,
    /// The process's own series (`process_*`), kept apart from `registry` so that they are not prefixed.
    process: Registry,
    /// Every metric family registered, with its label names — also those with no series yet (Prometheus' text
    /// format omits a labelled family until it has one). Dashboards and alert rules are checked against it.
    pub families: Vec<Family>,
}

/// A metric family as exported: its full name (`duet_…`), kind and label names.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub histogram: bool,
    pub labels: Vec<String>,
}

/// Latency buckets, 100 µs .. 60 s: sub-millisecond two-tower searches and index lookups up to LLM inference
/// batches of tens of seconds (an EmbeddingGemma import batch of 32 takes ~30 s on 2 cores). The 1-2.5-5 steps
/// put the thresholds the alerts and SLOs use (0.5 s) on a bucket boundary, so those shares are counted exactly
/// rather than interpolated.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0,
        60.0,
    ]
}

/// The latency SLO's threshold in seconds (docker/prometheus/slo.yml): one of [`latency_buckets`].
pub const SEARCH_LATENCY_SLO_SECONDS: f64 = 0.5;

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("duet".into()), None).expect("valid registry");
        let families = RefCell::new(Vec::new());
        let register = |collector: Box<dyn Collector>, histogram: bool| {
            families.borrow_mut().extend(collector.desc().into_iter().map(|d| Family {
                name: format!("duet_{}", d.fq_name),
                histogram,
                labels: d.variable_labels.clone(),
            }));
            registry.register(collector).expect("unique metric");
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            register(Box::new(c.clone()), false);
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            register(Box::new(g.clone()), false);
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h =
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid histogram");
            register(Box::new(h.clone()), true);
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
            http_connections_open: {
                let g = IntGauge::new("http_connections_open", "HTTP connections open now.").expect("valid gauge");
                register(Box::new(g.clone()), false);
                g
            },
            http_connections_refused: {
                let c = IntCounter::new(
                    "http_connections_refused_total",
                    "Connections refused (503, then closed) because `max_connections` were open.",
                )
                .expect("valid counter");
                register(Box::new(c.clone()), false);
                c
            },
            http_connections_timed_out: counter(
                "http_connections_timed_out_total",
                "Connections closed by a timeout: `header` (a request head not complete in time), `idle` (no \
                 request begun in time) or `write` (a response write that made no progress).",
                &["reason"],
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
                "Texts waiting in the model's encoding queue (tokenised, not yet in a batch).",
                &["model"],
            ),
            encode_requests: counter(
                "encode_requests_total",
                "Requests admitted to a model's encoding queue, by lane: live (searches, upserts, embeds) or \
                 background (evaluation jobs).",
                &["model", "priority"],
            ),
            encoder_restarts: counter(
                "encoder_restarts_total",
                "Times a model's encoder was restarted after a panic or repeated session failures.",
                &["model"],
            ),
            model_state: gauge(
                "model_state",
                "1 for the life-cycle state each model version is in (loading, backfilling, ready, draining, \
                 retired, failed), 0 for the others.",
                &["model", "version", "state"],
            ),
            model_backfill_documents: counter(
                "model_backfill_documents_total",
                "Documents encoded by back-fills of a model's new versions.",
                &["model"],
            ),
            model_backfill_remaining: gauge(
                "model_backfill_remaining",
                "Documents a model's running back-fill still has to encode.",
                &["model"],
            ),
            model_swaps: counter(
                "model_swaps_total",
                "Times a new version of a model took over from the serving one.",
                &["model"],
            ),
            model_rollbacks: counter(
                "model_rollbacks_total",
                "Times a model was rolled back to its previous version.",
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
            query_cache_hits: counter(
                "query_cache_hits_total",
                "Search queries answered from the model version's query cache (no network run).",
                &["model"],
            ),
            query_cache_misses: counter(
                "query_cache_misses_total",
                "Search queries not in the model version's query cache (encoded, then cached).",
                &["model"],
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
            index_slots: gauge(
                "index_slots",
                "Vector slots the model's index holds, live or dead: what its memory is proportional to (dead ones are \
                 dropped when the graph is rebuilt, or once they pile up without a graph).",
                &["model"],
            ),
            corrupt_embeddings: counter(
                "corrupt_embeddings_total",
                "Stored embeddings found unusable at start-up (`problem`: non-finite, wrong-length) and encoded again.",
                &["model", "problem"],
            ),
            index_snapshots: counter(
                "index_snapshots_total",
                "Graph snapshots at start-up, by outcome: loaded, or rebuilt from the stored vectors because there \
                 was none (rebuilt), it failed its checks (corrupt) or it no longer matched the store (stale).",
                &["model", "outcome"],
            ),
            heavy_searches_refused: counter(
                "heavy_searches_refused_total",
                "Exact or high-ef searches refused because max_heavy_searches were already running.",
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
                register(Box::new(g.clone()), false);
                g
            },
            exposure_write_errors: {
                let c = IntCounter::new("exposure_write_errors_total", "Exposure records lost to store errors.")
                    .expect("valid counter");
                register(Box::new(c.clone()), false);
                c
            },
            exposure_write_duration: {
                let h = Histogram::with_opts(
                    HistogramOpts::new("exposure_write_duration_seconds", "Time to write one batch of exposures.")
                        .buckets(latency_buckets()),
                )
                .expect("valid histogram");
                register(Box::new(h.clone()), true);
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
            eval_jobs: gauge("eval_jobs", "Evaluation jobs now, by state (queued, running).", &["state"]),
            eval_jobs_ended: counter(
                "eval_jobs_total",
                "Evaluation jobs by how they ended: done, failed, cancelled, refused (over `max_jobs`), expired \
                 (forgotten after `job_ttl_secs` or beyond `kept_jobs`).",
                &["outcome"],
            ),
            store_up: {
                let g = IntGauge::new(
                    "store_up",
                    "1 while the store answers, 0 while it cannot be reached (searches go on from memory, writes get 503).",
                )
                .expect("valid gauge");
                register(Box::new(g.clone()), false);
                g
            },
            replication_lag: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "replication_lag_seconds",
                        "Time from another server's commit of a change to this server applying it (from the change feed).",
                    )
                    .buckets(latency_buckets()),
                )
                .expect("valid histogram");
                register(Box::new(h.clone()), true);
                h
            },
            replication_applied: counter(
                "replication_applied_total",
                "Changes made by other servers over the same store and applied here, by kind (document, experiment, \
                 setting, model).",
                &["kind"],
            ),
            build_info: {
                let g = gauge("build_info", "1, labelled with the version and git commit Duet was built from.", &[
                    "version", "git_sha",
                ]);
                g.with_label_values(&[env!("CARGO_PKG_VERSION"), GIT_SHA]).set(1);
                g
            },
            process: process_registry(),
            families: families.into_inner(),
            registry,
        }
    }

    /// Starts a model's counters at 0 (every label set the model can have), so that its first refusal,
    /// truncation or swap is an increase `rate()` sees and its panels show 0 rather than no data.
    pub fn init_model(&self, model: &str) {
        for counter in [
            &self.encode_rejected,
            &self.encoder_restarts,
            &self.model_backfill_documents,
            &self.model_swaps,
            &self.model_rollbacks,
            &self.heavy_searches_refused,
        ] {
            counter.with_label_values(&[model]);
        }
        for side in ["query", "document"] {
            self.truncated_inputs.with_label_values(&[model, side]);
        }
        self.model_backfill_remaining.with_label_values(&[model]);
    }

    /// Starts an experiment's loss counters at 0 (called as it serves), for the same reason as [`Self::init_model`].
    pub fn init_experiment(&self, experiment: &str) {
        self.exposures_dropped.with_label_values(&[experiment]);
        for reason in ["busy", "failed"] {
            self.shadow_skipped.with_label_values(&[experiment, reason]);
        }
    }

    /// The registry in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&families, &mut buffer).expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

/// The process collector in a registry of its own (no prefix). It reads /proc, so it exists on Linux only.
fn process_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        .expect("one process collector");
    registry
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

    #[test]
    fn families_list_every_metric_with_its_labels_before_it_has_series() {
        let m = Metrics::new();
        let feedback = m.families.iter().find(|f| f.name == "duet_experiment_feedback_total").expect("registered");
        assert_eq!(feedback.labels, ["experiment", "arm", "event"]);
        assert!(!feedback.histogram);
        assert!(m.families.iter().any(|f| f.name == "duet_exposure_write_duration_seconds" && f.histogram));
        // Everything rendered once every family has a series is in `families`, and nothing else.
        m.http_requests.with_label_values(&["/", "GET", "", "200"]).inc();
        let rendered: std::collections::BTreeSet<String> =
            m.registry.gather().iter().map(|f| f.name().to_string()).collect();
        assert!(rendered.iter().all(|name| m.families.iter().any(|f| &f.name == name)), "{rendered:?}");
        assert_eq!(m.families.len(), 42, "one per metric field of Metrics");
    }

    /// Metric names, and the label names each expression uses, in a PromQL expression: `duet_x{a="1"}` and
    /// `by (a, b)` clauses. Returns (metric names, labels named in matchers per metric, labels in by-clauses).
    fn promql_references(expr: &str) -> (Vec<String>, Vec<(String, String)>, Vec<String>) {
        let bytes = expr.as_bytes();
        // `:` too: `slo:duet_x:ratio_rate5m` is a recorded series (checked by the rules test), not `duet_x`.
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
        let (mut names, mut matchers, mut grouping) = (Vec::new(), Vec::new(), Vec::new());
        let mut i = 0;
        while i < bytes.len() {
            if expr[i..].starts_with("duet_") && (i == 0 || !ident(bytes[i - 1])) {
                let end = (i..bytes.len()).find(|&j| !ident(bytes[j])).unwrap_or(bytes.len());
                let name = expr[i..end].to_string();
                names.push(name.clone());
                i = end;
                if bytes.get(i) == Some(&b'{') {
                    let close = i + expr[i..].find('}').expect("closed matcher");
                    for matcher in expr[i + 1..close].split(',') {
                        let key = matcher.split(['=', '!']).next().unwrap_or("").trim();
                        if !key.is_empty() {
                            matchers.push((name.clone(), key.to_string()));
                        }
                    }
                    i = close;
                }
            } else if expr[i..].starts_with("by (") && (i == 0 || !ident(bytes[i - 1])) {
                let close = i + expr[i..].find(')').expect("closed by clause");
                grouping.extend(expr[i + 4..close].split(',').map(|l| l.trim().to_string()));
                i = close;
            }
            i += 1;
        }
        (names, matchers, grouping)
    }

    /// Checks one dashboard or alert expression against the registry's families.
    fn check_expression(m: &Metrics, origin: &str, expr: &str) -> Vec<String> {
        let family = |name: &str| {
            m.families.iter().find(|f| {
                f.name == name
                    || (f.histogram
                        && ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s) == Some(f.name.as_str())))
            })
        };
        let (names, matchers, grouping) = promql_references(expr);
        let mut problems = Vec::new();
        let mut labels: Vec<String> = vec!["le".into(), "job".into(), "instance".into()];
        for name in &names {
            match family(name) {
                Some(f) => labels.extend(f.labels.iter().cloned()),
                None => problems.push(format!("{origin}: unknown metric {name} in `{expr}`")),
            }
        }
        for (name, label) in matchers {
            if let Some(f) = family(&name) {
                if label != "le" && !f.labels.contains(&label) {
                    problems.push(format!("{origin}: {name} has no label {label} in `{expr}`"));
                }
            }
        }
        for label in grouping.iter().filter(|l| !labels.contains(l)) {
            problems.push(format!("{origin}: no metric of `{expr}` has the label {label} it groups by"));
        }
        problems
    }

    #[test]
    fn promql_references_finds_names_matchers_and_grouping() {
        let (names, matchers, grouping) = promql_references(
            r#"histogram_quantile(0.99, sum by (le, model) (rate(duet_a_bucket{route="/x", status=~"5.."}[5m]))) / duet_b"#,
        );
        assert_eq!(names, ["duet_a_bucket", "duet_b"]);
        assert_eq!(
            matchers,
            [("duet_a_bucket".to_string(), "route".to_string()), ("duet_a_bucket".into(), "status".into())]
        );
        assert_eq!(grouping, ["le", "model"]);
        let m = Metrics::new();
        assert!(check_expression(&m, "t", "sum by (model) (rate(duet_http_requests_total[1m]))").is_empty());
        assert_eq!(check_expression(&m, "t", "rate(duet_http_request_total[1m])").len(), 1, "misspelt metric");
        assert_eq!(check_expression(&m, "t", "sum by (arm) (duet_documents)").len(), 1, "label it lacks");
        assert_eq!(check_expression(&m, "t", r#"duet_documents{arm="a"}"#).len(), 1, "matcher it lacks");
    }

    /// The shipped Grafana dashboard and Prometheus alert and SLO rules (docker/) name only metrics and labels the
    /// server exports: renaming a metric fails here instead of blanking a panel or silencing an alert.
    #[test]
    fn shipped_dashboard_and_alert_rules_match_the_exported_metrics() {
        let m = Metrics::new();
        let mut problems = Vec::new();
        let mut checked = 0;

        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../docker/grafana/dashboards/duet.json")).expect("dashboard is JSON");
        let panels = dashboard["panels"].as_array().expect("panels");
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a PromQL expr per target");
                problems.extend(check_expression(&m, panel["title"].as_str().unwrap_or("?"), expr));
                checked += 1;
            }
        }
        for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            let query = variable["definition"].as_str().expect("variable query");
            problems.extend(check_expression(&m, "template variable", query));
        }

        // Recorded series (`slo:…`) an expression uses must be recorded by some rule.
        let (mut recorded, mut used) = (Vec::new(), Vec::new());
        for rules in [include_str!("../docker/prometheus/alerts.yml"), include_str!("../docker/prometheus/slo.yml")] {
            let rules: serde_json::Value = serde_norway::from_str(rules).expect("rules are YAML");
            for group in rules["groups"].as_array().expect("groups") {
                for rule in group["rules"].as_array().expect("rules") {
                    let expr = rule["expr"].as_str().expect("rule expr");
                    let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or("?");
                    problems.extend(check_expression(&m, name, expr));
                    recorded.extend(rule["record"].as_str().map(str::to_string));
                    used.extend(
                        expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).filter_map(
                            |token| token.starts_with("slo:").then(|| (name.to_string(), token.to_string())),
                        ),
                    );
                    checked += 1;
                }
            }
        }
        assert!(used.len() >= 12, "{used:?}");
        for (rule, series) in used {
            if !recorded.contains(&series) {
                problems.push(format!("{rule}: {series} is recorded by no rule"));
            }
        }
        assert!(checked >= 45, "only {checked} expressions found");
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
