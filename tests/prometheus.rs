//! A real Prometheus (Debian's `prometheus` and `promtool`, which `scripts/setup --test` installs) against the
//! project's own files in docker/: promtool checks the config and the rules and runs the rule tests
//! (docker/prometheus/tests/), and a Prometheus process scrapes a test server every second with the shipped
//! alert and SLO rules, so that every query of the Grafana dashboard is run against live series and the alerts
//! are seen to pend. Uses the tiny models, tests/common and the two programs; fails with their output.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{repo, tiny_config, TestServer};
use duet::config::EncoderSettings;
use serde_json::{json, Value};

fn docker() -> PathBuf {
    repo().join("docker")
}

/// Runs a Prometheus tool; panics with its output when it cannot be run or fails.
fn tool(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).output().unwrap_or_else(|err| {
        panic!(
            "cannot run {program} ({err}): install Prometheus with `scripts/setup --test` (apt-get install prometheus)"
        )
    });
    assert!(
        out.status.success(),
        "{program} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn promtool_accepts_the_shipped_config_and_rules() {
    // The shipped config names the compose secret's path, absent here: its syntax is checked here, and the
    // whole of it (rule files included) with the scrape target and credentials replaced in the live test.
    tool("promtool", &["check", "config", "--syntax-only", path_str(&docker().join("prometheus/prometheus.yml"))]);
    let out = tool(
        "promtool",
        &[
            "check",
            "rules",
            path_str(&docker().join("prometheus/alerts.yml")),
            path_str(&docker().join("prometheus/slo.yml")),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS: 9 rules found") && text.contains("SUCCESS: 14 rules found"), "{text}");
}

#[test]
fn promtool_rule_tests_pass() {
    let dir = docker().join("prometheus/tests");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| path_str(&p).to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "rule tests in {}: {files:?}", dir.display());
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    tool("promtool", &args);
}

/// Compose runs the files these tests prove: Prometheus gets docker/prometheus/ (the config and every rule file
/// it names) and Grafana the dashboard folder its provisioning reads, behind a login.
#[test]
fn compose_mounts_the_rules_and_dashboard_the_tests_prove() {
    let read = |path: &str| -> Value {
        serde_norway::from_str(&std::fs::read_to_string(docker().join(path)).unwrap()).unwrap()
    };
    let compose = read("compose.yaml");
    let mounts = |service: &str| -> Vec<String> {
        let volumes = compose["services"][service]["volumes"].as_array().unwrap();
        volumes.iter().map(|v| v.as_str().unwrap().to_string()).collect()
    };
    assert!(mounts("prometheus").contains(&"./prometheus:/etc/prometheus:ro".to_string()));
    let command = compose["services"]["prometheus"]["command"].as_array().unwrap();
    assert!(command.contains(&json!("--config.file=/etc/prometheus/prometheus.yml")), "{command:?}");
    let config = read("prometheus/prometheus.yml");
    let rule_files: Vec<&str> = config["rule_files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(rule_files, ["alerts.yml", "slo.yml"]);
    for file in rule_files {
        assert!(docker().join("prometheus").join(file).is_file(), "{file}");
    }
    let grafana = mounts("grafana");
    assert!(grafana.contains(&"./grafana/dashboards:/var/lib/grafana/dashboards:ro".to_string()), "{grafana:?}");
    assert!(grafana.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro".to_string()), "{grafana:?}");
    let provider = read("grafana/provisioning/dashboards/duet.yml");
    assert_eq!(provider["providers"][0]["options"]["path"], "/var/lib/grafana/dashboards");
    let environment = &compose["services"]["grafana"]["environment"];
    assert_eq!(environment["GF_AUTH_ANONYMOUS_ENABLED"], "false");
    assert!(environment["GF_SECURITY_ADMIN_PASSWORD"].as_str().unwrap().starts_with("${GRAFANA_ADMIN_PASSWORD:?"));
}

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The shipped prometheus.yml with only the scrape target templated: `target` instead of the replicas, no
/// credentials (the test server has no keys), every second, and the shipped rule files by absolute path.
fn scrape_config(target: &str) -> String {
    let text = std::fs::read_to_string(docker().join("prometheus/prometheus.yml")).unwrap();
    let mut config: serde_json::Value = serde_norway::from_str(&text).unwrap();
    config["global"] = json!({"scrape_interval": "1s", "evaluation_interval": "1s"});
    let rules = config["rule_files"].as_array().expect("rule_files").clone();
    config["rule_files"] =
        rules.iter().map(|f| json!(path_str(&docker().join("prometheus").join(f.as_str().unwrap())))).collect();
    let scrape = &mut config["scrape_configs"][0];
    assert_eq!(scrape["job_name"], "duet");
    scrape.as_object_mut().unwrap().remove("authorization");
    scrape["static_configs"] = json!([{"targets": [target]}]);
    serde_norway::to_string(&config).unwrap()
}

async fn start_prometheus(dir: &Path, target: &str) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, scrape_config(target)).unwrap();
    tool("promtool", &["check", "config", path_str(&config)]);
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", path_str(&config)))
        .arg(format!("--storage.tsdb.path={}", path_str(&dir.join("data"))))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus runs (scripts/setup --test installs it)");
    Prometheus { child, base: format!("http://127.0.0.1:{port}") }
}

/// `GET /api/v1/<path>`'s `data`, or None while Prometheus is not answering yet.
async fn api(client: &reqwest::Client, prometheus: &Prometheus, path: &str, query: &[(&str, &str)]) -> Option<Value> {
    let response = client.get(format!("{}/api/v1/{path}", prometheus.base)).query(query).send().await.ok()?;
    let body: Value = response.json().await.ok()?;
    assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
    Some(body["data"].clone())
}

/// The instant query's series.
async fn query(client: &reqwest::Client, prometheus: &Prometheus, expr: &str) -> Vec<Value> {
    let data = api(client, prometheus, "query", &[("query", expr)]).await.unwrap_or(Value::Null);
    data["result"].as_array().cloned().unwrap_or_default()
}

/// Polls `check` every 200 ms until it holds or `deadline` passes; its last value.
async fn poll<T, F, Fut>(deadline: Instant, mut check: F) -> (bool, T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, T)>,
{
    loop {
        let (done, value) = check().await;
        if done || Instant::now() > deadline {
            return (done, value);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every panel query of the dashboard: (panel title, expression with the template variables filled in).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(docker().join("grafana/dashboards/duet.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                // Grafana's: at least four scrape intervals; a minute holds the whole test.
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1s")
                // The experiment variable's "All".
                .replace("$experiment", ".*")
                .replace("$model", ".*");
            assert!(!expr.contains('$'), "a template variable left in {expr}");
            queries.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    queries
}

const MODELS: [&str; 3] = ["tiny-two-tower", "tiny-llm", "tiny-encoder"];
const QUERIES: [&str; 4] = ["sort a list", "read a file", "parse a date", "open a socket"];

/// Running experiments of the three kinds, between tiny-encoder and tiny-two-tower.
async fn create_experiments(server: &TestServer) {
    let arms = json!([{"model": "tiny-encoder", "name": "a"}, {"model": "tiny-two-tower", "name": "b"}]);
    for (name, mode) in [("ab", "ab"), ("il", "interleave"), ("sh", "shadow")] {
        common::create(server, json!({"name": name, "mode": mode, "status": "running", "arms": arms})).await;
    }
}

/// Searches on every model (GET and POST), client mistakes, and searches under each experiment, with clicks.
async fn drive_traffic(server: &TestServer, round: usize) {
    // Queries new to each round: a cached query is not encoded, and the encoder panels would see no rate.
    let queries: Vec<String> = QUERIES.iter().map(|q| format!("{q} {round}")).collect();
    for (i, query) in queries.iter().enumerate() {
        for model in MODELS {
            let (status, body) = server.post("/v1/search", &json!({"query": query, "model": model, "k": 3})).await;
            assert_eq!(status, 200, "{body}");
            let response =
                server.client.get(server.url("/v1/search")).query(&[("q", query.as_str()), ("model", model)]);
            assert_eq!(response.send().await.unwrap().status(), 200);
        }
        let (status, _) = server.post("/v1/search", &json!({"query": query, "unit_id": format!("d{i}")})).await;
        assert_eq!(status, 200);
    }
    assert_eq!(server.post("/v1/search", &json!({"query": " "})).await.0, 422);
    assert_eq!(server.post("/v1/search", &json!({"query": "x", "model": "no-such-model"})).await.0, 404);
    assert_eq!(server.get("/v1/documents/no-such-document").await.0, 404);

    for (u, query) in queries.iter().enumerate() {
        for experiment in ["ab", "il", "sh"] {
            let body = json!({"query": query, "k": 4, "experiment": experiment, "unit_id": format!("u{u}")});
            let found = common::search(server, body).await;
            if experiment != "sh" {
                let shown = found["results"][0]["id"].as_str().unwrap();
                let click = json!({"request_id": found["request_id"], "doc_id": shown, "event": "click"});
                let (status, receipt) = server.post("/v1/feedback", &click).await;
                assert_eq!(status, 200, "{receipt}");
            }
        }
    }
}

/// Fills tiny-llm's one-text queue with concurrent embeddings and searches, until some searches answer 503
/// (a burst may shed only embeddings); how many searches were shed. Every query is new: a cached one would
/// not queue.
async fn shed_searches(server: &TestServer) -> usize {
    static BURSTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let texts: Vec<String> = (0..256).map(|i| format!("read a json file from disk number {i} ").repeat(8)).collect();
    for _ in 0..20 {
        let burst = BURSTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tasks = Vec::new();
        for i in 0..24 {
            let client = server.client.clone();
            let search = i % 2 == 1;
            let request = if search {
                let query = format!("{} burst {burst}", texts[i]);
                client.post(server.url("/v1/search")).json(&json!({"query": query, "model": "tiny-llm"}))
            } else {
                client.post(server.url("/v1/embed")).json(&json!({"texts": texts, "model": "tiny-llm"}))
            };
            tasks.push(tokio::spawn(async move { (search, request.send().await.unwrap().status().as_u16()) }));
        }
        let mut shed = 0;
        for task in tasks {
            match task.await.unwrap() {
                (_, 200) => {}
                (search, 503) => shed += usize::from(search),
                (_, other) => panic!("unexpected status {other}"),
            }
        }
        if shed > 0 {
            return shed;
        }
    }
    0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_server_and_every_dashboard_query_has_series() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.import = Some(repo().join("examples/corpus.jsonl"));
    // tiny-llm's queue holds one text, so that concurrent requests overflow it (load shedding).
    let llm = config.models.iter_mut().find(|m| m.path.ends_with("tiny-llm")).unwrap();
    llm.encoder = Some(EncoderSettings { queue_capacity: 1, max_batch: 4, ..config.encoder });
    let server = TestServer::start(config).await;
    let prometheus = start_prometheus(dir.path(), &server.server.addr.to_string()).await;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // The target is up (scraped at least once) before the traffic, so that every counter's 0 is on record.
    let (up, series) = poll(deadline, || async {
        let series = query(&client, &prometheus, r#"up{job="duet"}"#).await;
        (series.len() == 1 && series[0]["value"][1] == "1", series)
    })
    .await;
    assert!(up, "the duet target is not up: {series:?}\n{}", log());
    let (all_docs, _) = poll(deadline, || async {
        let text = server.metrics().await;
        let counts: Vec<f64> =
            MODELS.iter().map(|m| common::metric(&text, &format!("duet_documents{{model=\"{m}\"}}"))).collect();
        (counts.iter().all(|&c| c > 0.0), counts)
    })
    .await;
    assert!(all_docs, "the start-up import did not reach every model");

    create_experiments(&server).await;
    drive_traffic(&server, 1).await;
    assert!(shed_searches(&server).await > 0, "the full queue shed no search");
    // A series is born with the value of its first scrape, which `rate()` does not count as an increase: once
    // Prometheus holds every model's search series and tiny-llm's shed searches, a second round of both gives
    // them their rates.
    let (seen, _) = poll(deadline, || async {
        let series =
            query(&client, &prometheus, r#"sum by (model, status) (duet_http_requests_total{route="/v1/search"})"#)
                .await;
        let has = |model: &str, status: &str| {
            series.iter().any(|s| s["metric"]["model"] == model && s["metric"]["status"] == status)
        };
        (MODELS.iter().all(|m| has(m, "200")) && has("tiny-llm", "503"), ())
    })
    .await;
    assert!(seen, "Prometheus did not scrape the searches");
    drive_traffic(&server, 2).await;
    assert!(shed_searches(&server).await > 0, "the full queue shed no search the second time");

    // Every dashboard query returns at least one series (all polled together, until each has or time is up).
    let queries = dashboard_queries();
    // Per query: (series, series with a finite non-zero value). Only the first must be non-zero: counters of
    // paths this test does not take (replication, back-fills, swaps) are 0 and their quantiles NaN.
    let (all, counts) = poll(deadline, || async {
        let mut counts = Vec::new();
        for (_, expr) in &queries {
            let series = query(&client, &prometheus, expr).await;
            let value = |s: &Value| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
            let live = series.iter().filter(|s| value(s).is_finite() && value(s) != 0.0).count();
            counts.push((series.len(), live));
        }
        (counts.iter().all(|&(n, _)| n > 0), counts)
    })
    .await;
    for ((title, expr), (n, live)) in queries.iter().zip(&counts) {
        eprintln!("panel {title:?}: {n} series, {live} non-zero  [{expr}]");
    }
    let empty: Vec<&String> = queries.iter().zip(&counts).filter(|(_, &(n, _))| n == 0).map(|((_, e), _)| e).collect();
    assert!(all, "dashboard queries with no series: {empty:#?}");

    // The search latency quantile of every model is a number.
    let p99 = r#"histogram_quantile(0.99, sum by (le, model) (rate(duet_http_request_duration_seconds_bucket{route="/v1/search"}[1m])))"#;
    let (finite, series) = poll(deadline, || async {
        let series = query(&client, &prometheus, p99).await;
        let finite = MODELS.iter().all(|m| {
            series.iter().any(|s| {
                s["metric"]["model"] == *m
                    && s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(f64::is_finite)
            })
        });
        (finite, series)
    })
    .await;
    eprintln!("search p99 per model: {series:?}");
    assert!(finite, "a model's search p99 is not finite: {series:?}");

    // The load-shedding alert pends (its `for` is 5 minutes) for tiny-llm only; the server-errors alert stays
    // silent (503s are not counted in it); the SLO rules evaluate without errors.
    let (pending, alerts) = poll(deadline, || async {
        let alerts = api(&client, &prometheus, "alerts", &[]).await.unwrap_or(Value::Null)["alerts"].clone();
        let shedding = alerts.as_array().into_iter().flatten().any(|a| {
            a["labels"]["alertname"] == "DuetLoadShedding"
                && a["labels"]["model"] == "tiny-llm"
                && (a["state"] == "pending" || a["state"] == "firing")
        });
        (shedding, alerts)
    })
    .await;
    eprintln!("alerts: {alerts}");
    assert!(pending, "DuetLoadShedding is neither pending nor firing: {alerts}");
    let alerts = alerts.as_array().unwrap();
    assert!(alerts.iter().all(|a| a["labels"]["model"] != "tiny-two-tower" && a["labels"]["model"] != "tiny-encoder"));
    assert!(!alerts.iter().any(|a| a["labels"]["alertname"] == "DuetServerErrors"), "{alerts:?}");
    let rules = api(&client, &prometheus, "rules", &[]).await.unwrap();
    let groups = rules["groups"].as_array().unwrap();
    let mut names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["duet", "duet-slo-alerts", "duet-slo-recording"]);
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // The SLO recording rules have a ratio for tiny-llm, whose shed searches count against its budget.
    let (spent, errors) = poll(deadline, || async {
        let errors = query(&client, &prometheus, r#"slo:duet_search_errors:ratio_rate5m{model="tiny-llm"} > 0"#).await;
        (errors.len() == 1, errors)
    })
    .await;
    eprintln!("slo:duet_search_errors:ratio_rate5m of tiny-llm: {errors:?}");
    assert!(spent, "tiny-llm's shed searches are not in its availability SLO: {errors:?}");
    let others =
        query(&client, &prometheus, r#"slo:duet_search_errors:ratio_rate5m{model=~"tiny-encoder|tiny-two-tower"}"#);
    let others = others.await;
    assert_eq!(others.len(), 2, "{others:?}");
    assert!(others.iter().all(|s| s["value"][1] == "0"), "{others:?}");

    // Build info and the process collector (its CPU counter counts whole seconds: it may still be 0).
    let build = query(&client, &prometheus, "duet_build_info == 1").await;
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(build[0]["metric"]["git_sha"], duet::metrics::GIT_SHA);
    for (process, at_least) in [
        ("process_resident_memory_bytes", 1e6),
        ("process_open_fds", 3.0),
        ("process_start_time_seconds", 1e9),
        ("process_cpu_seconds_total", 0.0),
    ] {
        let series = query(&client, &prometheus, &format!("{process}{{job=\"duet\"}} >= {at_least}")).await;
        assert_eq!(series.len(), 1, "{process}: {series:?}");
    }
    drop(prometheus);
    server.stop().await;
}
