//! The HTTP edge against a real server over raw TCP: slow-loris, idle and stalled-reader connections are closed
//! by their timeouts; the connection limit refuses beyond it; an oversize `Content-Length` is 413 before the body;
//! over-limit and unparsable heads are problem documents; made-up methods cannot grow `/metrics`; shutdown closes
//! idle and half-sent connections at once, writes the queued exposures, and cuts what still runs at its deadline.

mod common;

use std::time::{Duration, Instant};

use common::{metric, sample_corpus, tiny_config, TestServer};
use duet::config::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(dir: &tempfile::TempDir, edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = tiny_config(&dir.path().join("duet.db"));
    edit(&mut config);
    config
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.server.addr).await.expect("connects")
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn problem(&self) -> Value {
        assert!(self.head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{self:?}");
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("problem JSON: {self:?}"))
    }
}

/// Reads one response (head, then `content-length` bytes of body), failing after `within`.
async fn read_response(stream: &mut TcpStream, within: Duration) -> Raw {
    let read = async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.parse().unwrap()))
                    .unwrap_or(0usize);
                if bytes.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).to_string();
                    let status = head[9..12].parse().unwrap();
                    return Raw { status, head, body };
                }
            }
            let n = stream.read(&mut chunk).await.expect("reads");
            assert!(n > 0, "closed before a whole response: {:?}", String::from_utf8_lossy(&bytes));
            bytes.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(within, read).await.expect("a response in time")
}

/// Waits until the server closes `stream` (EOF or reset), failing after `within`; returns how long it took.
async fn wait_closed(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let closed = async {
        let mut chunk = [0u8; 65536];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(within, closed).await.expect("closed in time");
    started.elapsed()
}

/// Polls `/metrics` until `series` reaches `at_least`, failing after 10 s. Each poll is a fresh connection (a
/// pooled one may just have been closed by the server's idle timeout).
async fn wait_metric(server: &TestServer, series: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (response, _) = get_on_new_connection(server.server.addr, "/metrics").await;
        let value = metric(&response.body, series);
        if value >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {value}, expected at least {at_least}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sum_series(text: &str, family: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_are_counted_as_other_and_metrics_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;
    let methods: Vec<String> = (0..5000).map(|i| format!("MADEUP{i}")).collect();
    let before = server.metrics().await;
    let mut tasks = Vec::new();
    for chunk in methods.chunks(1250) {
        let (client, urls) = (server.client.clone(), [server.url("/v1/search"), server.url("/nowhere")]);
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for (i, method) in chunk.iter().enumerate() {
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let status = client.request(method, &urls[i % 2]).send().await.unwrap().status().as_u16();
                assert!(status == 404 || status == 405, "{status}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let after = server.metrics().await;
    assert_eq!(sum_series(&after, "duet_http_requests_total", r#"method="other""#), 5000.0);
    assert!(!after.contains("MADEUP"), "no made-up method is a label value");
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series(&after) <= series(&before) + 200, "{} series before, {} after", series(&before), series(&after));
    assert!(after.len() < before.len() + 64 * 1024, "{} bytes before, {} after", before.len(), after.len());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_connection_is_closed_after_the_header_timeout_however_it_trickles() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(&dir, |c| {
        c.http.header_read_timeout_secs = 1;
        c.http.idle_timeout_secs = 60;
    }))
    .await;
    let mut stream = connect(&server).await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One more header byte every 100 ms does not keep it open.
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let read = async {
        let mut chunk = [0u8; 1024];
        let mut got = Vec::new();
        while let Ok(n) = reader.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(5), read).await.expect("closed within 5 s");
    let took = started.elapsed();
    assert!(got.is_empty(), "no response to a head that never completed");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "closed after {took:?}");
    trickle.abort();
    wait_metric(&server, r#"duet_http_connections_timed_out_total{reason="header"}"#, 1.0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_clients_that_stop_reading_are_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(&dir, |c| {
        c.http.header_read_timeout_secs = 30;
        c.http.idle_timeout_secs = 1;
    }))
    .await;
    // Keep-alive after one request: closed once idle for 1 s (not after the 30 s header timeout).
    let mut idle = connect(&server).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut idle, Duration::from_secs(5)).await.status, 200);
    let took = wait_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "closed after {took:?}");
    wait_metric(&server, r#"duet_http_connections_timed_out_total{reason="idle"}"#, 1.0).await;

    // A client that pipelines requests for a large answer and never reads: the server's writes stall.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(server.server.addr).await.unwrap();
    let requests = "GET /openapi.yaml HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(200);
    stalled.write_all(requests.as_bytes()).await.unwrap();
    wait_metric(&server, r#"duet_http_connections_timed_out_total{reason="write"}"#, 1.0).await;
    drop(stalled);
    server.stop().await;
}

/// One request on a fresh connection: the response, and the connection (kept alive).
async fn get_on_new_connection(addr: std::net::SocketAddr, path: &str) -> (Raw, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    (read_response(&mut stream, Duration::from_secs(5)).await, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_with_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    // Started without the test client, whose pooled connection would take a slot.
    let server = duet::server::start(config(&dir, |c| c.http.max_connections = 2)).await.unwrap();
    let addr = server.addr;
    // Hold two connections, each answered once (a slot still held by a closing one answers 503: try again).
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 2 {
        let (response, stream) = get_on_new_connection(addr, "/healthz").await;
        match response.status {
            200 => held.push(stream),
            status => assert_eq!(status, 503, "{response:?}"),
        }
        assert!(Instant::now() < deadline, "two connections held");
    }
    let mut refused = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let response = read_response(&mut refused, Duration::from_secs(5)).await;
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.problem()["type"], "/problems/too-many-connections");
    assert!(response.head.to_ascii_lowercase().contains("retry-after: 1"), "{response:?}");
    wait_closed(&mut refused, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once");

    // Freeing one makes room again; the refusal was counted.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (response, _stream) = get_on_new_connection(addr, "/metrics").await;
        if response.status == 200 {
            assert!(metric(&response.body, "duet_http_connections_refused_total") >= 1.0, "{}", response.body);
            assert_eq!(metric(&response.body, "duet_http_connections_open"), 2.0, "{}", response.body);
            break;
        }
        assert!(Instant::now() < deadline, "a slot frees up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_content_length_is_answered_413_before_the_body_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;
    let mut stream = connect(&server).await;
    let started = Instant::now();
    stream
        .write_all(
            b"POST /v1/documents HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{\"documents\": [",
        )
        .await
        .unwrap();
    let response = read_response(&mut stream, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    assert_eq!(response.status, 413, "{response:?}");
    let problem = response.problem();
    assert_eq!(problem["type"], "/problems/too-large");
    assert!(problem["detail"].as_str().unwrap().contains("1000000000"), "{problem}");
    assert!(response.head.to_ascii_lowercase().contains("x-request-id: "), "{response:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_targets_large_heads_and_unparsable_requests_are_problems() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;
    let ask = |request: String| {
        let addr = server.server.addr;
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            read_response(&mut stream, Duration::from_secs(5)).await
        }
    };
    // Over the configured limits (8 KiB target, 32 KiB headers): the router's checks.
    let long = format!("GET /v1/search?q={} HTTP/1.1\r\nHost: localhost\r\n\r\n", "a".repeat(9000));
    let response = ask(long).await;
    assert_eq!((response.status, &response.problem()["type"]), (414, &json!("/problems/uri-too-long")));
    let big = format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "b".repeat(40_000));
    let response = ask(big).await;
    assert_eq!((response.status, &response.problem()["type"]), (431, &json!("/problems/headers-too-large")));

    // Beyond what hyper parses (a 64 KiB target, 100 headers) and plain malformed requests: hyper's own answers,
    // sent as problems.
    let huge = format!("GET /healthz?q={} HTTP/1.1\r\nHost: localhost\r\n\r\n", "a".repeat(70_000));
    let response = ask(huge).await;
    assert_eq!((response.status, &response.problem()["type"]), (414, &json!("/problems/uri-too-long")));
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = ask(format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\n{many}\r\n")).await;
    assert_eq!((response.status, &response.problem()["type"]), (431, &json!("/problems/headers-too-large")));
    for bad in [
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n",
        "G(T /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /healthz HTTP/9.9\r\nHost: localhost\r\n\r\n",
        "POST /v1/search HTTP/1.1\r\nHost: localhost\r\nContent-Length: ten\r\n\r\n",
    ] {
        let response = ask(bad.to_string()).await;
        assert_eq!(response.status, 400, "{bad:?} → {response:?}");
        let problem = response.problem();
        assert_eq!(problem["type"], "/problems/malformed-request", "{bad:?}");
        assert_eq!(problem["status"], 400);
        assert!(response.head.to_ascii_lowercase().contains("x-request-id: "), "{response:?}");
    }
    let text = server.metrics().await;
    assert_eq!(sum_series(&text, "duet_http_requests_total", r#"route="unparsed""#), 6.0, "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_and_half_sent_connections_at_once_and_writes_queued_exposures() {
    let dir = tempfile::tempdir().unwrap();
    let edge = |c: &mut Config| {
        c.http.header_read_timeout_secs = 60;
        c.http.idle_timeout_secs = 60;
        c.http.shutdown_grace_secs = 20;
    };
    let server = TestServer::start(config(&dir, edge)).await;
    let (status, body) = server.post("/v1/documents", &json!({"documents": sample_corpus()})).await;
    assert_eq!(status, 200, "{body}");
    let (status, exp) = server
        .post(
            "/v1/experiments",
            &json!({"name": "drain", "mode": "ab", "status": "running",
                    "arms": [{"model": "tiny-encoder"}, {"model": "tiny-two-tower"}]}),
        )
        .await;
    assert_eq!(status, 201, "{exp}");
    for u in 0..30 {
        let (status, body) = server
            .post("/v1/search", &json!({"query": "sort a list", "experiment": "drain", "unit_id": format!("u{u}")}))
            .await;
        assert_eq!((status, &body["experiment"]["logged"]), (200, &json!(true)), "{body}");
    }
    // A slow-loris connection and an idle keep-alive connection stay open.
    let mut slow = connect(&server).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").await.unwrap();
    let mut idle = connect(&server).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut idle, Duration::from_secs(5)).await.status, 200);
    wait_metric(&server, "duet_http_connections_open", 2.0).await;

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), server.stop()).await.expect("shutdown completes");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}; it must not wait for idle or slow clients");
    wait_closed(&mut slow, Duration::from_secs(1)).await;
    wait_closed(&mut idle, Duration::from_secs(1)).await;

    // Every exposure queued before shutdown was written.
    let server = TestServer::start(config(&dir, edge)).await;
    let (_, report) = server.get(&format!("/v1/experiments/{}/report", exp["id"].as_str().unwrap())).await;
    let impressions: u64 = report["arms"].as_array().unwrap().iter().map(|a| a["impressions"].as_u64().unwrap()).sum();
    assert_eq!(impressions, 30, "{report}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish_and_cuts_those_past_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(&dir, |c| c.http.shutdown_grace_secs = 4)).await;
    let addr = server.server.addr;
    // Two searches in flight: their handlers wait for the bodies (hyper's `100 Continue` says they are reading).
    let body = br#"{"query": "sort a list", "model": "tiny-encoder"}"#;
    let mut in_flight = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut continued = [0u8; 25];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut continued)).await.unwrap().unwrap();
        assert_eq!(&continued, b"HTTP/1.1 100 Continue\r\n\r\n");
        in_flight.push(stream);
    }
    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    // Once the listener is closed, shutdown has begun; one search then sends its body and is answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the listener closes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut finishing, mut outliving) = (in_flight.remove(0), in_flight.remove(0));
    finishing.write_all(body).await.unwrap();
    let response = read_response(&mut finishing, Duration::from_secs(5)).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.head.to_ascii_lowercase().contains("connection: close"), "{response:?}");
    assert!(serde_json::from_str::<Value>(&response.body).unwrap()["results"].is_array());
    // The other never sends its body: cut at three quarters of the 4 s grace, and shutdown returns.
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("shutdown completes").unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2900) && took < Duration::from_secs(6), "shutdown took {took:?}");
    wait_closed(&mut outliving, Duration::from_secs(1)).await;
}
