//! Who may call the server, over HTTP: every keyed route (walked from the route table, so a new route is
//! covered as soon as it is added) refuses a missing or unknown key with 401 and a key without its scope with
//! 403; keys with the scope do the work; operational endpoints are open or keyed as configured; the Host check;
//! CORS preflights; a non-loopback listen without keys refuses to start; and the key `duet keys` prints
//! authenticates, from the config file and from `DUET_API_KEYS`; `duet simulate` sends its `--api-key`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{tiny_config, TestServer};
use duet::api::guard::Access;
use duet::auth::{keys, AuthSettings, KeyEntry, Scope, OPS_ENDPOINTS};
use duet::config::Config;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A key with these scopes: (the key, its entry).
fn key(name: &str, scopes: &[Scope]) -> (String, KeyEntry) {
    keys::generate(name, scopes.iter().copied().collect()).unwrap()
}

struct Keys {
    search: String,
    write: String,
    admin: String,
    search_and_write: String,
}

fn keyed(store: &std::path::Path, auth: AuthSettings) -> (Config, Keys) {
    let (search, e1) = key("reader", &[Scope::Search]);
    let (write, e2) = key("ingest", &[Scope::Write]);
    let (admin, e3) = key("root", &[Scope::Admin]);
    let (search_and_write, e4) = key("app", &[Scope::Search, Scope::Write]);
    let mut config = tiny_config(store);
    config.auth = AuthSettings { keys: vec![e1, e2, e3, e4], ..auth };
    (config, Keys { search, write, admin, search_and_write })
}

async fn call(server: &TestServer, method: &str, path: &str, key: Option<&str>) -> reqwest::Response {
    let url = server.url(&path.replace("{id}", "some-id"));
    let mut request = server.client.request(Method::from_bytes(method.as_bytes()).unwrap(), url);
    if matches!(method, "POST" | "PATCH") {
        request = request.json(&json!({}));
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

/// Status, `WWW-Authenticate` and the problem document of a refusal.
async fn refusal(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(response.headers()["content-type"], "application/problem+json", "status {status}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    (status, challenge.unwrap_or_default(), body)
}

fn keyed_routes() -> Vec<(&'static str, &'static str, Scope)> {
    duet::api::route_access()
        .into_iter()
        .filter_map(|(method, path, access)| match access {
            Access::Needs(scope) => Some((method, path, scope)),
            Access::Ops | Access::Public => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_keyed_route_refuses_a_missing_an_unknown_and_a_wrong_scope_key() {
    let dir = tempfile::tempdir().unwrap();
    let (config, keys) = keyed(&dir.path().join("duet.db"), AuthSettings::default());
    let server = TestServer::start(config).await;
    let routes = keyed_routes();
    assert!(routes.iter().filter(|r| r.2 == Scope::Write).count() >= 2, "{routes:?}");
    assert!(routes.iter().filter(|r| r.2 == Scope::Admin).count() >= 3, "{routes:?}");
    for (method, path, scope) in routes {
        let (status, challenge, body) = refusal(call(&server, method, path, None).await).await;
        assert_eq!((status, body["type"].as_str()), (401, Some("/problems/unauthorized")), "{method} {path}");
        assert!(challenge.starts_with("Bearer"), "{method} {path}: {challenge}");

        let unknown = "duet_0000000000000000000000000000000000000000000000000000000000000000";
        let (status, challenge, _) = refusal(call(&server, method, path, Some(unknown)).await).await;
        assert_eq!(status, 401, "{method} {path} with an unknown key");
        assert!(challenge.contains("invalid_token"), "{challenge}");

        // The strongest key that still lacks the scope.
        let wrong = match scope {
            Scope::Search => &keys.write,
            Scope::Write => &keys.search,
            Scope::Admin => &keys.search_and_write,
        };
        let (status, challenge, body) = refusal(call(&server, method, path, Some(wrong)).await).await;
        assert_eq!((status, body["type"].as_str()), (403, Some("/problems/forbidden")), "{method} {path}");
        assert_eq!(body["required_scope"], scope.as_str());
        assert!(challenge.contains("insufficient_scope"), "{challenge}");

        // The right scope, and admin (which implies every scope), pass the check; the handler then answers
        // (here mostly 404 or 422 for the placeholder id and empty body).
        let right = match scope {
            Scope::Search => &keys.search,
            Scope::Write => &keys.write,
            Scope::Admin => &keys.admin,
        };
        for key in [right, &keys.admin] {
            let status = call(&server, method, path, Some(key)).await.status().as_u16();
            assert!(![401, 403, 421].contains(&status), "{method} {path} with a `{scope}` key → {status}");
        }
    }
    server.stop().await;
}

#[test]
fn every_route_that_changes_state_needs_write_or_admin() {
    // The only non-GET routes a `search` key may call: they read, or record feedback on a search.
    let search_posts = [
        ("POST", "/v1/search"),
        ("POST", "/v1/compare"),
        ("POST", "/v1/embed"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/feedback"),
    ];
    let mut ops = BTreeSet::new();
    for (method, path, access) in duet::api::route_access() {
        match access {
            Access::Ops => {
                assert_eq!(method, "GET", "{path}");
                ops.insert(path);
            }
            Access::Public => assert!(method == "GET" && path.starts_with("/ui"), "{method} {path} is public"),
            Access::Needs(Scope::Search) if method != "GET" => {
                assert!(search_posts.contains(&(method, path)), "{method} {path} changes state: write or admin")
            }
            Access::Needs(_) => {}
        }
    }
    assert_eq!(ops, OPS_ENDPOINTS.into_iter().collect(), "the ops routes are those `auth.open_ops` names");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_the_right_scope_write_search_and_run_experiments() {
    let dir = tempfile::tempdir().unwrap();
    let (config, keys) = keyed(&dir.path().join("duet.db"), AuthSettings::default());
    let server = TestServer::start(config).await;
    let send = |method: Method, path: &str, key: &str, body: Option<Value>| {
        let mut request = server.client.request(method, server.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    let docs =
        json!({"documents": [{"id": "a", "text": "sort a list of numbers"}, {"id": "b", "text": "read a file"}]});
    let upsert = send(Method::POST, "/v1/documents", &keys.write, Some(docs.clone())).await.unwrap();
    assert_eq!(upsert.status(), 200);
    let found = send(Method::GET, "/v1/search?q=sort%20a%20list&k=1", &keys.search, None).await.unwrap();
    assert_eq!(found.status(), 200);
    assert_eq!(found.json::<Value>().await.unwrap()["results"][0]["id"], "a");
    let search_as_writer = send(Method::GET, "/v1/search?q=sort", &keys.write, None).await.unwrap();
    assert_eq!(search_as_writer.status(), 403, "write does not imply search");

    let experiment = json!({"name": "ab", "mode": "ab", "arms": [{"model": "tiny-encoder"}, {"model": "tiny-llm"}]});
    let refused = send(Method::POST, "/v1/experiments", &keys.search_and_write, Some(experiment.clone()));
    assert_eq!(refused.await.unwrap().status(), 403);
    let created = send(Method::POST, "/v1/experiments", &keys.admin, Some(experiment)).await.unwrap();
    assert_eq!(created.status(), 201);
    let listed = send(Method::GET, "/v1/experiments", &keys.search, None).await.unwrap();
    assert_eq!(listed.json::<Value>().await.unwrap()["experiments"].as_array().map(Vec::len), Some(1));
    let deleted = send(Method::DELETE, "/v1/documents/a", &keys.admin, None).await.unwrap();
    assert_eq!(deleted.status(), 204, "admin implies write");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints_are_open_by_default_and_keyed_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = keyed(&dir.path().join("open.db"), AuthSettings::default());
    let server = TestServer::start(config).await;
    for path in OPS_ENDPOINTS {
        assert_eq!(server.client.get(server.url(path)).send().await.unwrap().status(), 200, "{path}");
    }
    assert_eq!(server.client.get(server.url("/v1/models")).send().await.unwrap().status(), 401);
    server.stop().await;

    let only_health = AuthSettings { open_ops: vec!["/healthz".into()], ..AuthSettings::default() };
    let (config, keys) = keyed(&dir.path().join("keyed.db"), only_health);
    let server = duet::server::start(config).await.unwrap();
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    for path in ["/readyz", "/metrics", "/openapi.yaml"] {
        let (status, challenge, _) = refusal(client.get(format!("{base}{path}")).send().await.unwrap()).await;
        assert_eq!(status, 401, "{path}");
        assert!(challenge.starts_with("Bearer"));
    }
    // Any configured key reads them, whatever its scopes (a Prometheus key need not search).
    let metrics = client.get(format!("{base}/metrics")).bearer_auth(&keys.write).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("duet_http_requests_total"));
    server.shutdown().await.unwrap();
}

/// Status of `GET path` sent with exactly this Host header (none when `None`), over a raw HTTP/1.1 connection.
async fn status_with_host(addr: std::net::SocketAddr, path: &str, host: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_addressed_to_a_host_not_allowed_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("loopback.db"))).await;
    let addr = server.server.addr;
    let port = addr.port();
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "LOCALHOST".into()] {
        assert_eq!(status_with_host(addr, "/healthz", Some(&host)).await.0, 200, "{host}");
    }
    for host in [Some("rebound.attacker.example"), Some("localhost.attacker.example:8080"), None] {
        let (status, response) = status_with_host(addr, "/v1/models", host).await;
        assert_eq!(status, 421, "{host:?}: {response}");
        assert!(response.contains("application/problem+json") && response.contains("/problems/misdirected-host"));
    }
    server.stop().await;

    let mut config = tiny_config(&dir.path().join("named.db"));
    config.auth.allowed_hosts = Some(vec!["search.example.com".into(), "*.internal".into()]);
    // Not TestServer: its readiness poll addresses 127.0.0.1, which this list does not allow.
    let server = duet::server::start(config).await.unwrap();
    let addr = server.addr;
    assert_eq!(status_with_host(addr, "/healthz", Some("search.example.com:443")).await.0, 200);
    assert_eq!(status_with_host(addr, "/healthz", Some("duet.cluster.internal")).await.0, 200);
    assert_eq!(status_with_host(addr, "/healthz", Some("127.0.0.1")).await.0, 421, "the list replaces loopback");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_for_configured_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let origin = "https://app.example.com";
    let auth = AuthSettings { cors_origins: vec![origin.into()], ..AuthSettings::default() };
    let (config, keys) = keyed(&dir.path().join("cors.db"), auth);
    let server = TestServer::start(config).await;
    let preflight = |from: &str| {
        server
            .client
            .request(Method::OPTIONS, server.url("/v1/search"))
            .header("origin", from)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let answer = preflight(origin).await.unwrap();
    assert_eq!(answer.status(), 200, "a preflight needs no key");
    let headers = answer.headers();
    assert_eq!(headers["access-control-allow-origin"], origin);
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
    assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // The real request: its answer, a refusal included, is readable by the page.
    let get = |key: Option<&str>| {
        let request = server.client.get(server.url("/v1/search?q=sort")).header("origin", origin);
        match key {
            Some(key) => request.bearer_auth(key).send(),
            None => request.send(),
        }
    };
    let refused = get(None).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], origin);
    let served = get(Some(&keys.search)).await.unwrap();
    assert_eq!(served.status(), 200);
    let exposed = served.headers()["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    server.stop().await;

    // Off by default: no CORS headers, and OPTIONS is not a method of the route.
    let server = TestServer::start(tiny_config(&dir.path().join("plain.db"))).await;
    let answer = server
        .client
        .request(Method::OPTIONS, server.url("/v1/search"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 405);
    assert!(answer.headers().get("access-control-allow-origin").is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_listen_without_keys_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.listen = "0.0.0.0:0".parse().unwrap();
    let err = duet::server::start(config.clone()).await.err().expect("refused").to_string();
    assert!(err.contains("not a loopback address") && err.contains("duet keys"), "{err}");
    config.auth.allow_unauthenticated = true;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("allowed_hosts"), "the names must be listed too: {err}");
    config.auth.allowed_hosts = Some(vec!["duet".into()]);
    config.validate().unwrap();

    // The same from the command line, before any model is loaded.
    let output = duet_command()
        .args(["serve", "--listen", "0.0.0.0:0", "--model", "models/tiny-encoder"])
        .arg("--store")
        .arg(dir.path().join("cli.db"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no API keys are configured"), "{stderr}");
}

fn duet_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_duet"));
    command.current_dir(common::repo()).env_remove("DUET_LOG");
    for (name, _) in std::env::vars() {
        if name.starts_with("DUET_") {
            command.env_remove(name);
        }
    }
    command
}

/// What `duet keys` printed: the key, the `[[auth.keys]]` entry, and the `DUET_API_KEYS` entry.
fn made_key(name: &str, scopes: &str) -> (String, KeyEntry, String) {
    let output = duet_command().args(["keys", "--name", name, "--scope", scopes]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let key = text.lines().find_map(|l| l.strip_prefix("key = \"")?.strip_suffix('"')).expect("a key line");
    let toml_part: String = text.lines().skip_while(|l| !l.starts_with("[[auth.keys]]")).collect::<Vec<_>>().join("\n");
    let table: toml::Table = toml::from_str(&toml_part).expect("the config entry is TOML");
    let entry: KeyEntry = table["auth"]["keys"][0].clone().try_into().unwrap();
    let compact = text.lines().find_map(|l| l.strip_prefix("# DUET_API_KEYS=")).expect("an env line").to_string();
    assert_eq!(compact.parse::<KeyEntry>().unwrap(), entry, "both forms configure the same key");
    assert_eq!(text.matches(key).count(), 1, "the key is printed once, and never inside its entries");
    (key.to_string(), entry, compact)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_duet_keys_prints_authenticates_from_the_config_and_the_environment() {
    let (key, entry, _) = made_key("ingest", "write,search");
    assert_eq!(entry.scopes, [Scope::Search, Scope::Write].into_iter().collect());
    assert_eq!(key.len(), "duet_".len() + 64, "256 bits, hex");

    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    config.auth.keys = vec![entry];
    let server = TestServer::start(config).await;
    let docs = json!({"documents": [{"id": "a", "text": "sort a list"}]});
    let post = |key: Option<&str>| {
        let request = server.client.post(server.url("/v1/documents")).json(&docs);
        match key {
            Some(key) => request.bearer_auth(key).send(),
            None => request.send(),
        }
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(post(Some(&key)).await.unwrap().status(), 200);
    server.stop().await;

    // `duet serve` with the entry in DUET_API_KEYS.
    let (key, _, compact) = made_key("reader", "search");
    let mut child = duet_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--model", "models/tiny-encoder"])
        .arg("--store")
        .arg(dir.path().join("env.db"))
        .env("DUET_API_KEYS", &compact)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("duet listening on ").unwrap_or_else(|| panic!("{line}")).to_string();
    let client = reqwest::Client::new();
    let models = |key: Option<&str>| {
        let request = client.get(format!("{base}/v1/models"));
        match key {
            Some(key) => request.bearer_auth(key).send(),
            None => request.send(),
        }
    };
    let refused = models(None).await.unwrap().status().as_u16();
    let served = models(Some(&key)).await.unwrap().status().as_u16();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!((refused, served), (401, 200));
}

#[test]
fn the_spec_states_each_operations_scope_and_its_refusals() {
    let text = std::fs::read_to_string(common::repo().join("openapi.yaml")).unwrap();
    let spec: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(spec["components"]["securitySchemes"]["bearerAuth"]["scheme"].as_str(), Some("bearer"));
    for (method, path, access) in duet::api::route_access() {
        let operation = &spec["paths"][path][method.to_lowercase().as_str()];
        let security = serde_json::to_value(&operation["security"]).unwrap();
        let responses = &operation["responses"];
        let has = |code: &str| !responses[code].is_null();
        match access {
            Access::Needs(scope) => {
                assert_eq!(security, json!([{"bearerAuth": [scope.as_str()]}]), "{method} {path}");
                assert!(has("401") && has("403"), "{method} {path} lists 401 and 403");
            }
            Access::Ops => {
                assert_eq!(security, json!([{}, {"bearerAuth": []}]), "{method} {path}: open or any key");
                assert!(has("401"), "{method} {path} lists 401 (when keyed)");
            }
            Access::Public => assert_eq!(security, json!([{}]), "{method} {path}: open"),
        }
        assert!(has("421"), "{method} {path} lists the Host refusal");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duet_simulate_sends_its_api_key_to_a_keyed_server() {
    use duet::experiment::simulate::{fetch_rankings, Server};
    let dir = tempfile::tempdir().unwrap();
    let (config, keys) = keyed(&dir.path().join("duet.db"), AuthSettings::default());
    let server = TestServer::start(config).await;
    let corpus = common::sample_corpus();
    let upsert = server.client.post(server.url("/v1/documents")).bearer_auth(&keys.write);
    assert_eq!(upsert.json(&json!({ "documents": corpus })).send().await.unwrap().status(), 200);
    let relevant = [corpus[0]["id"].as_str().unwrap().to_string()].into_iter().collect();
    let queries = vec![(corpus[0]["text"].as_str().unwrap().to_string(), relevant)];
    let models = ["tiny-encoder", "tiny-llm"];

    let with_key = Server::new(&server.base, Some(&keys.search)).unwrap();
    let rankings = fetch_rankings(&with_key, models, &queries, 3, |_| {}).await.unwrap();
    assert!(rankings.iter().all(|r| r[0].len() == 3), "{rankings:?}");
    let without = Server::new(&server.base, None).unwrap();
    let err = format!("{:#}", fetch_rankings(&without, models, &queries, 3, |_| {}).await.unwrap_err());
    assert!(err.contains("401"), "{err}");
    server.stop().await;
}
