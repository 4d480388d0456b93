//! The Docker deployment (docker/): PostgreSQL, two Duet replicas behind an nginx load balancer, Prometheus and
//! Grafana. Compose cannot run on the build machine, so the files themselves are read and held to what the
//! deployment promises: every credential required (compose stops without it) and made by `docker/make-env`,
//! nothing anonymous or default, every port on the host's loopback; the replicas over the shared PostgreSQL,
//! started once it is healthy, only one importing the demo corpus; the load balancer naming both replicas,
//! passing a Host they accept and retrying only what is safe to retry; Prometheus scraping each replica with
//! its key, by a name it accepts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use duet::auth::{keys, KeyEntry, Scope};
use duet::config::{Config, ReplicationSettings};
use duet::store::{PostgresSettings, StoreLocation};
use serde_norway::Value;

fn docker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker")
}

fn text(name: &str) -> String {
    std::fs::read_to_string(docker().join(name)).unwrap_or_else(|e| panic!("docker/{name}: {e}"))
}

fn yaml(name: &str) -> Value {
    let mut value: Value = serde_norway::from_str(&text(name)).unwrap_or_else(|e| panic!("docker/{name}: {e}"));
    value.apply_merge().unwrap(); // compose's `<<: *anchor`
    value
}

/// The compose file, with `<<` merges applied as compose applies them.
fn compose() -> Value {
    yaml("compose.yaml")
}

/// The image's configuration, with a key (it refuses to start without one).
fn image_config() -> Config {
    let mut config = Config::from_file(&docker().join("duet.toml")).unwrap();
    config.auth.keys.push(keys::generate("prometheus", [Scope::Search].into_iter().collect()).unwrap().1);
    config.validate().unwrap();
    config
}

fn strings(value: &Value) -> Vec<String> {
    value.as_sequence().into_iter().flatten().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// The Duet replicas: the services built from the image.
fn replicas(compose: &Value) -> Vec<String> {
    let services = compose["services"].as_mapping().unwrap();
    let built = services.iter().filter(|(_, s)| s["build"]["dockerfile"].as_str() == Some("docker/Dockerfile"));
    built.map(|(name, _)| name.as_str().unwrap().to_string()).collect()
}

/// `${VAR:?message}`: compose stops with the message when the user has not set VAR.
fn assert_required(compose: &Value, service: &str, name: &str, var: &str) {
    let value = compose["services"][service]["environment"][name].as_str().unwrap_or_default().to_string();
    assert!(value.starts_with(&format!("${{{var}:?")), "{service}: {name} must come from {var}: {value}");
}

#[test]
fn the_docker_setup_needs_keys_and_uses_no_anonymous_or_default_credentials() {
    // The image's config binds every interface: without keys it refuses to start; with one it validates.
    let mut config = Config::from_file(&docker().join("duet.toml")).unwrap();
    assert!(!config.listen.ip().is_loopback());
    assert!(config.validate().unwrap_err().to_string().contains("no API keys"));
    config.auth.keys.push(keys::generate("prometheus", [Scope::Search].into_iter().collect()).unwrap().1);
    config.validate().unwrap();
    assert!(!config.auth.open_ops.contains(&"/metrics".to_string()), "/metrics is keyed");
    assert!(config.auth.open_ops.contains(&"/readyz".to_string()), "the health checks need no key");

    let compose = compose();
    let replicas = replicas(&compose);
    assert_eq!(replicas, ["duet-a", "duet-b"]);
    for replica in &replicas {
        assert_required(&compose, replica, "DUET_API_KEYS", "DUET_API_KEYS");
    }
    assert_required(&compose, "postgres", "POSTGRES_PASSWORD", "POSTGRES_PASSWORD");
    assert_required(&compose, "prometheus", "DUET_METRICS_KEY", "DUET_METRICS_KEY");
    assert_required(&compose, "grafana", "GF_SECURITY_ADMIN_PASSWORD", "GRAFANA_ADMIN_PASSWORD");
    let grafana = &compose["services"]["grafana"]["environment"];
    assert_eq!(grafana["GF_AUTH_ANONYMOUS_ENABLED"].as_str(), Some("false"));
    assert_eq!(grafana["GF_USERS_ALLOW_SIGN_UP"].as_str(), Some("false"));
    assert_ne!(grafana["GF_SECURITY_ADMIN_USER"].as_str(), Some("admin"));
    assert_eq!(compose["secrets"]["duet_metrics_key"]["environment"].as_str(), Some("DUET_METRICS_KEY"));

    // Every published port is on the host's loopback; PostgreSQL and the replicas publish none (only the
    // load balancer, Prometheus and Grafana do).
    let mut published = Vec::new();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for port in strings(&service["ports"]) {
            assert!(port.starts_with("127.0.0.1:"), "{name:?} publishes {port} beyond the host");
            published.push(name.as_str().unwrap().to_string());
        }
    }
    assert_eq!(published, ["lb", "prometheus", "grafana"]);

    let prometheus = yaml("prometheus/prometheus.yml");
    let scrape = &prometheus["scrape_configs"][0];
    assert_eq!(scrape["authorization"]["type"].as_str(), Some("Bearer"));
    assert_eq!(
        scrape["authorization"]["credentials_file"].as_str(),
        Some("/run/secrets/duet_metrics_key"),
        "the secret compose mounts"
    );
    assert_eq!(strings(&compose["services"]["prometheus"]["secrets"]), ["duet_metrics_key"]);
}

#[test]
fn compose_runs_two_replicas_over_a_healthy_postgres() {
    let compose = compose();
    let services = &compose["services"];
    let postgres = &services["postgres"];
    assert!(postgres["image"].as_str().unwrap().starts_with("postgres:15"));
    assert!(postgres["ports"].is_null(), "PostgreSQL is reached on the compose network only");
    let health = strings(&postgres["healthcheck"]["test"]);
    assert!(health.iter().any(|w| w.contains("pg_isready")), "{health:?}");
    let (user, db) =
        (postgres["environment"]["POSTGRES_USER"].as_str(), postgres["environment"]["POSTGRES_DB"].as_str());
    let data = strings(&postgres["volumes"]);
    let volume = data.iter().find_map(|v| v.strip_suffix(":/var/lib/postgresql/data")).expect("a data volume");
    assert!(compose["volumes"].get(volume).is_some(), "{volume} is a named volume");

    let mut importing = Vec::new();
    let first = replicas(&compose)[0].clone();
    for replica in replicas(&compose) {
        let service = &services[replica.as_str()];
        assert_eq!(service["image"], services[first.as_str()]["image"], "{replica}: one image for all replicas");
        assert_eq!(service["environment"], services[first.as_str()]["environment"], "{replica}: same settings");
        // The store: PostgreSQL, as the user and database the postgres service creates, with its password.
        let store = service["environment"]["DUET_STORE"].as_str().unwrap();
        assert!(store.contains(":${POSTGRES_PASSWORD}@postgres:5432/"), "{replica}: {store}");
        assert!(store.starts_with(&format!("postgres://{}:", user.unwrap())), "{store}");
        assert!(store.ends_with(&format!("/{}", db.unwrap())), "{store}");
        let resolved = store.replace("${POSTGRES_PASSWORD}", "0123abcd");
        assert!(matches!(resolved.parse::<StoreLocation>().unwrap(), StoreLocation::Postgres(_)), "{store}");
        assert_eq!(service["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"), "{replica}");
        let health = strings(&service["healthcheck"]["test"]);
        assert!(health.contains(&"curl".to_string()), "{replica}: {health:?}");
        assert!(health.iter().any(|w| w.ends_with(":8080/readyz")), "{replica}: {health:?}");
        let command = strings(&service["command"]);
        if command.contains(&"--import".to_string()) || !service["environment"]["DUET_IMPORT"].is_null() {
            importing.push(replica.clone());
            let corpus = command.last().unwrap();
            assert!(strings(&service["volumes"]).iter().any(|v| v.contains(&format!(":{corpus}:ro"))), "{corpus}");
        }
        assert!(strings(&service["volumes"]).contains(&"../models:/srv/duet/models:ro".to_string()), "{replica}");
    }
    assert_eq!(importing, ["duet-a"], "one replica imports the demo corpus; the other follows the change feed");
    // The image has the tool the health checks run.
    let dockerfile = text("Dockerfile");
    assert!(dockerfile.lines().any(|l| l.contains("apt-get install") && l.contains(" curl")), "curl in the image");

    // The image's config: the listen port the health checks, the load balancer and Prometheus use, and the
    // [postgres] and [replication] tables spelled out with their defaults.
    let config = image_config();
    assert_eq!(config.listen.port(), 8080);
    assert_eq!(config.postgres, PostgresSettings::default());
    assert_eq!(config.replication, ReplicationSettings::default());
    let toml = text("duet.toml");
    assert!(toml.contains("\n[postgres]\n") && toml.contains("\n[replication]\n"), "both tables are in the file");
}

/// One nginx directive: its words (quotes removed) and, when it opens a block, the directives inside.
#[derive(Debug)]
struct Directive {
    words: Vec<String>,
    block: Vec<Directive>,
}

impl Directive {
    /// The directives named `name` directly inside this block.
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Directive> + 'a {
        self.block.iter().filter(move |d| d.words[0] == name)
    }

    fn one(&self, name: &str) -> &Directive {
        let found: Vec<&Directive> = self.block.iter().filter(|d| d.words[0] == name).collect();
        assert_eq!(found.len(), 1, "one `{name}` in `{}`", self.words.join(" "));
        found[0]
    }

    /// The arguments of the `name` directive directly inside this block.
    fn args(&self, name: &str) -> Vec<&str> {
        self.one(name).words[1..].iter().map(String::as_str).collect()
    }
}

/// nginx's configuration syntax: words, quoted strings, `;`, blocks in braces, `#` comments.
fn parse_nginx(text: &str) -> Directive {
    let mut tokens: Vec<String> = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            '{' | '}' | ';' => tokens.push(c.to_string()),
            '"' | '\'' => {
                let quoted: String = chars.by_ref().take_while(|&q| q != c).collect();
                tokens.push(quoted);
            }
            c => {
                let mut word = c.to_string();
                while let Some(next) = chars.next_if(|&n| !n.is_whitespace() && !"{};".contains(n)) {
                    word.push(next);
                }
                tokens.push(word);
            }
        }
    }
    fn block(tokens: &mut std::vec::IntoIter<String>) -> Vec<Directive> {
        let mut directives = Vec::new();
        let mut words = Vec::new();
        while let Some(token) = tokens.next() {
            match token.as_str() {
                ";" => directives.push(Directive { words: std::mem::take(&mut words), block: Vec::new() }),
                "{" => directives.push(Directive { words: std::mem::take(&mut words), block: block(tokens) }),
                "}" => break,
                _ => words.push(token),
            }
        }
        assert!(words.is_empty(), "unterminated directive {words:?}");
        directives
    }
    Directive { words: vec!["main".into()], block: block(&mut tokens.into_iter()) }
}

/// nginx's size syntax: `16m`, `512k`, `1024`.
fn nginx_size(size: &str) -> usize {
    let (digits, unit) = size.split_at(size.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: usize = digits.parse().unwrap();
    n * match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1024,
        "m" => 1024 * 1024,
        "g" => 1024 * 1024 * 1024,
        other => panic!("unit {other}"),
    }
}

/// nginx's time syntax: `75s`, `2m`, `500ms`, in milliseconds.
fn nginx_millis(time: &str) -> u64 {
    let (digits, unit) = time.split_at(time.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: u64 = digits.parse().unwrap();
    n * match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        other => panic!("unit {other}"),
    }
}

#[test]
fn the_load_balancer_names_both_replicas_passes_a_host_they_accept_and_retries_only_reads() {
    let compose = compose();
    let config = image_config();
    let replicas = replicas(&compose);
    let lb = &compose["services"]["lb"];
    assert!(lb["image"].as_str().unwrap().starts_with("nginx:"), "nginx from its official image");
    assert!(strings(&lb["volumes"]).contains(&"./nginx.conf:/etc/nginx/nginx.conf:ro".to_string()));
    for replica in &replicas {
        assert_eq!(lb["depends_on"][replica.as_str()]["condition"].as_str(), Some("service_healthy"), "{replica}");
    }
    let ports = strings(&lb["ports"]);
    assert_eq!(ports.len(), 1, "{ports:?}");
    let container_port = ports[0].rsplit(':').next().unwrap().to_string();

    let nginx = parse_nginx(&text("nginx.conf"));
    let http = nginx.one("http");
    // Every upstream (one for searches, one for the rest) names every replica at its listen port, with
    // passive health checks.
    let upstreams: Vec<&Directive> = http.all("upstream").collect();
    let names: Vec<&str> = upstreams.iter().map(|u| u.words[1].as_str()).collect();
    assert_eq!(names, ["duet", "duet_search"]);
    let expected: Vec<String> = replicas.iter().map(|r| format!("{r}:{}", config.listen.port())).collect();
    for upstream in &upstreams {
        let servers: Vec<&str> = upstream.all("server").map(|s| s.words[1].as_str()).collect();
        assert_eq!(servers, expected, "upstream {}", upstream.words[1]);
        for server in upstream.all("server") {
            let params = &server.words[2..];
            assert!(params.iter().any(|p| p.starts_with("max_fails=")), "{params:?}");
            assert!(params.iter().any(|p| p.starts_with("fail_timeout=")), "{params:?}");
        }
    }

    let server = http.one("server");
    assert_eq!(server.args("listen"), [container_port.as_str()], "nginx listens on the port compose publishes");
    // nginx refuses an oversized body itself, at Duet's limit: Duet would refuse it by closing the connection
    // mid-body, which nginx takes for a broken replica (502).
    let body_limit = nginx_size(server.args("client_max_body_size")[0]);
    assert_eq!(body_limit, config.limits.max_body_bytes, "nginx's body limit is Duet's");
    // Duet answers a slow request itself (503 after request_timeout_secs) before nginx gives up on it.
    let read_timeout = nginx_millis(server.args("proxy_read_timeout")[0]);
    assert!(read_timeout > config.limits.request_timeout_secs * 1000, "proxy_read_timeout {read_timeout} ms");

    let headers: Vec<Vec<&str>> = server.all("proxy_set_header").map(|d| vec![&*d.words[1], &*d.words[2]]).collect();
    assert!(headers.contains(&vec!["Host", "$host"]), "{headers:?}");
    let request_id = headers.iter().find(|h| h[0] == "X-Request-Id").expect("X-Request-Id is forwarded")[1];
    let map = http.all("map").find(|m| m.words[2] == request_id).expect("the request id's map");
    assert_eq!(map.words[1], "$http_x_request_id", "the client's id when it sends one");

    // The Host a request carries reaches the replicas as it came ($host): the names clients use on the
    // published loopback port, and the load balancer's name on the compose network, are all accepted.
    let hosts = config.auth.host_allow_list();
    let aliases = strings(&lb["networks"]["default"]["aliases"]);
    for host in ["localhost:8080", "127.0.0.1:8080"].iter().copied().chain(aliases.iter().map(String::as_str)) {
        assert!(hosts.allows(Some(host)), "the replicas refuse Host {host}");
    }

    // Writes are never retried on the other replica once sent (nginx retries no POST or PATCH unless told
    // to), nor is a 503 outside searches (PostgreSQL unavailable, which both replicas share); searches and
    // embeddings, read-only, are retried also after a 503 (a busy or loading replica) and when sent as POST.
    let retry = server.args("proxy_next_upstream");
    assert!(!retry.contains(&"non_idempotent") && !retry.contains(&"http_503"), "{retry:?}");
    let mut pages: Vec<(&str, &str)> =
        server.all("error_page").map(|d| (d.words[1].as_str(), d.words.last().unwrap().as_str())).collect();
    pages.sort();
    assert_eq!(pages, [("413", "@too_large"), ("502", "@busy")], "nginx's own refusals are problem documents");
    let mut paths = Vec::new();
    for location in server.all("location") {
        let path = location.words.last().unwrap().as_str();
        paths.push(path);
        let retry = location.all("proxy_next_upstream").next().map(|d| &d.words[1..]);
        match path {
            "/" => {
                assert_eq!(location.args("proxy_pass"), ["http://duet"]);
                assert!(retry.is_none(), "the server's proxy_next_upstream applies");
            }
            "/v1/search" | "/v1/embed" => {
                assert_eq!(location.words[1], "=", "exactly {path}");
                assert_eq!(location.args("proxy_pass"), ["http://duet_search"], "{path}: failures of its own");
                let retry = retry.expect("searches are retried");
                for condition in ["error", "timeout", "http_503", "non_idempotent"] {
                    assert!(retry.iter().any(|r| r == condition), "{path}: {retry:?}");
                }
                let timeout = nginx_millis(location.args("proxy_next_upstream_timeout")[0]);
                assert!(timeout < config.limits.request_timeout_secs * 1000, "a timed-out search is not rerun");
            }
            "@busy" | "@too_large" => {
                let answer = location.args("return");
                let status = if path == "@busy" { "503" } else { "413" };
                assert_eq!(answer[0], status, "{path}");
                let problem: serde_json::Value = serde_json::from_str(answer[1]).unwrap();
                assert_eq!(problem["status"].to_string(), status, "{path}: {problem}");
                assert!(problem["type"].as_str().unwrap().starts_with("/problems/"), "{path}: {problem}");
                assert_eq!(location.args("default_type"), ["application/problem+json"], "{path}");
                let added: Vec<&str> = location.all("add_header").map(|d| d.words[1].as_str()).collect();
                assert!(added.contains(&"X-Request-Id"), "{path}: {added:?}");
                assert_eq!(added.contains(&"Retry-After"), path == "@busy", "{path}: {added:?}");
            }
            other => panic!("a location nobody asked for: {other}"),
        }
    }
    assert_eq!(paths, ["/", "/v1/search", "/v1/embed", "@busy", "@too_large"]);
}

#[test]
fn prometheus_scrapes_each_replica_directly_by_a_name_it_accepts() {
    let compose = compose();
    let config = image_config();
    let prometheus = yaml("prometheus/prometheus.yml");
    let scrape = &prometheus["scrape_configs"][0];
    assert_eq!(scrape["metrics_path"].as_str(), Some("/metrics"));
    let targets: Vec<String> =
        scrape["static_configs"].as_sequence().unwrap().iter().flat_map(|c| strings(&c["targets"])).collect();
    let expected: Vec<String> = replicas(&compose).iter().map(|r| format!("{r}:{}", config.listen.port())).collect();
    assert_eq!(targets, expected, "each replica, not the load balancer");
    let hosts = config.auth.host_allow_list();
    for target in &targets {
        assert!(hosts.allows(Some(target)), "the replica refuses Prometheus's Host {target}");
    }
    // The alert rules page when a replica loses its store.
    let alerts = yaml("prometheus/alerts.yml");
    let rules = alerts["groups"][0]["rules"].as_sequence().unwrap();
    let store_down = rules.iter().find(|r| r["alert"].as_str() == Some("DuetStoreDown")).expect("DuetStoreDown");
    assert_eq!(store_down["expr"].as_str(), Some("duet_store_up == 0"));
    assert_eq!(store_down["for"].as_str(), Some("1m"));
}

/// Runs a copy of docker/make-env in `root` (it writes `root/docker/.env`) with the test build's binary.
fn make_env(root: &Path) -> std::process::Output {
    std::fs::create_dir_all(root.join("docker")).unwrap();
    std::fs::copy(docker().join("make-env"), root.join("docker/make-env")).unwrap();
    Command::new("bash").arg(root.join("docker/make-env")).env("DUET_BIN", env!("CARGO_BIN_EXE_duet")).output().unwrap()
}

fn env_file(root: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root.join("docker/.env")).unwrap();
    let lines = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    lines.map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap()).collect()
}

#[test]
fn make_env_writes_every_credential_compose_requires() {
    let dir = tempfile::tempdir().unwrap();
    let out = make_env(dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = env_file(dir.path());
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mode = std::fs::metadata(dir.path().join("docker/.env")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the credentials are private");

    // Every variable compose substitutes is written (those it requires, and the rest too).
    let compose = text("compose.yaml");
    let used: Vec<&str> =
        compose.split("${").skip(1).map(|s| s.split(|c| c == '}' || c == ':').next().unwrap()).collect();
    assert!(used.contains(&"POSTGRES_PASSWORD"), "{used:?}");
    for var in &used {
        assert!(get(var).is_some_and(|v| !v.is_empty()), "docker/.env lacks {var}");
    }
    // Random hex: safe in the postgres:// URL as it is.
    for secret in ["POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"] {
        let value = get(secret).unwrap();
        assert!(value.len() >= 32 && value.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}={value}");
    }
    assert_ne!(get("POSTGRES_PASSWORD"), get("GRAFANA_ADMIN_PASSWORD"));
    // The API key entries are ones Duet accepts, and Prometheus's key is one of them.
    let entries: Vec<KeyEntry> = get("DUET_API_KEYS").unwrap().split(',').map(|e| e.parse().unwrap()).collect();
    assert_eq!(entries.len(), 2);
    let ring = duet::auth::KeyRing::new(entries);
    let bearer = format!("Bearer {}", get("DUET_METRICS_KEY").unwrap());
    assert!(matches!(ring.check(Some(bearer.as_bytes()), Some(Scope::Search)), duet::auth::Verdict::Allowed(_)));

    // An existing file is kept; one made before PostgreSQL gets only its password added.
    let again = make_env(dir.path());
    assert!(!again.status.success(), "refuses to overwrite docker/.env");
    let before: String = std::fs::read_to_string(dir.path().join("docker/.env"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("POSTGRES_PASSWORD="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.path().join("docker/.env"), &before).unwrap();
    let upgrade = make_env(dir.path());
    assert!(upgrade.status.success(), "{}", String::from_utf8_lossy(&upgrade.stderr));
    let after = std::fs::read_to_string(dir.path().join("docker/.env")).unwrap();
    assert!(after.starts_with(&before), "the other credentials stay");
    let added = after[before.len()..].trim_end().strip_prefix("POSTGRES_PASSWORD=").expect("a password added");
    assert!(added.len() >= 32 && added.bytes().all(|b| b.is_ascii_hexdigit()), "{added}");
}
