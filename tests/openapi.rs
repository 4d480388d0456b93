//! `openapi.yaml` describes exactly the routes the router serves, and the server serves it.

mod common;

use std::collections::BTreeSet;

use common::{tiny_config, TestServer};

fn spec_routes() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(common::repo().join("openapi.yaml")).unwrap();
    let spec: serde_norway::Value = serde_norway::from_str(&text).expect("openapi.yaml is YAML");
    assert_eq!(spec["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let methods = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];
    let mut routes = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().expect("paths") {
        for (method, _) in item.as_mapping().expect("path item") {
            let method = method.as_str().unwrap();
            if methods.contains(&method) {
                routes.insert((method.to_uppercase(), path.as_str().unwrap().to_string()));
            }
        }
    }
    routes
}

#[test]
fn every_served_route_is_in_the_spec_and_vice_versa() {
    let served: BTreeSet<(String, String)> =
        duet::api::route_table().into_iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    let spec = spec_routes();
    let missing: Vec<_> = served.difference(&spec).collect();
    let extra: Vec<_> = spec.difference(&served).collect();
    assert!(missing.is_empty(), "served but not in openapi.yaml: {missing:?}");
    assert!(extra.is_empty(), "in openapi.yaml but not served: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spec_route_answers_and_the_spec_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tiny_config(&dir.path().join("duet.db"))).await;
    let response = server.client.get(server.url("/openapi.yaml")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    assert_eq!(response.text().await.unwrap(), std::fs::read_to_string(common::repo().join("openapi.yaml")).unwrap());

    // No spec route falls through to the router's 404 / 405 fallbacks.
    for (method, path) in spec_routes() {
        let url = server.url(&path.replace("{id}", "some-id").replace("{name}", "some-model"));
        let request = match method.as_str() {
            "GET" => server.client.get(url),
            "POST" => server.client.post(url).json(&serde_json::json!({})),
            "PATCH" => server.client.patch(url).json(&serde_json::json!({})),
            "PUT" => server.client.put(url).json(&serde_json::json!({})),
            "DELETE" => server.client.delete(url),
            other => panic!("unexpected method {other}"),
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(!body.contains("/problems/no-such-route") && status != 405, "{method} {path} → {status} {body}");
    }
    server.stop().await;
}
