//! Loading checks a model's manifest against its network: a manifest whose `dimension` or `pooling` does not fit
//! what the network emits is refused at start-up with an error naming the model, what the manifest says and what
//! the network gave; the unmodified model starts and serves.

mod common;

use std::path::Path;

use common::{repo, TestServer};
use duet::config::{Config, ModelEntry};
use duet::index::IndexParams;
use serde_json::json;

/// A copy of the tiny model `name` in `dir`, with `edit` applied to its manifest.
fn copy_model(name: &str, dir: &Path, edit: impl Fn(String) -> String) -> ModelEntry {
    let from = repo().join("models").join(name);
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let manifest = to.join("model.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let edited = edit(text.clone());
    std::fs::write(&manifest, &edited).unwrap();
    ModelEntry { path: to, index: IndexParams::default(), encoder: None, task: None }
}

fn config(dir: &Path, model: ModelEntry) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: dir.join("duet.db").into(),
        models: vec![model],
        ..Config::default()
    }
}

/// Starting with `model` fails; the whole error chain is returned.
async fn refused(dir: &Path, model: ModelEntry) -> String {
    match duet::server::start(config(dir, model)).await {
        Ok(server) => {
            server.shutdown().await.unwrap();
            panic!("the server started with a manifest that does not fit its network")
        }
        Err(err) => format!("{err:#}"),
    }
}

fn replace(from: &'static str, to: &'static str) -> impl Fn(String) -> String {
    move |text: String| {
        assert!(text.contains(from), "the tiny manifest holds {from:?}");
        text.replace(from, to)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_with_the_wrong_dimension_is_refused_at_start_up() {
    for name in ["tiny-encoder", "tiny-two-tower"] {
        let dir = tempfile::tempdir().unwrap();
        let err = refused(dir.path(), copy_model(name, dir.path(), replace("dimension = 32", "dimension = 16"))).await;
        assert!(err.contains(name), "the error names the model: {err}");
        assert!(err.contains("dimension 16"), "the error says what the manifest says: {err}");
        assert!(err.contains("32]"), "the error says what the network gave: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooling_the_network_cannot_give_is_refused_at_start_up() {
    // The two-tower graphs emit one vector per text: there are no token states to take a mean over.
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model("tiny-two-tower", dir.path(), replace("pooling = \"output\"", "pooling = \"mean\""));
    let err = refused(dir.path(), model).await;
    assert!(err.contains("tiny-two-tower"), "{err}");
    assert!(err.contains("pooling mean"), "the error says what the manifest says: {err}");
    assert!(err.contains("sentence_embedding") && err.contains("[1, 32]"), "and what the network gave: {err}");

    // The encoder emits token states, not one vector per text: its `last_hidden_state` is no sentence vector.
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model("tiny-encoder", dir.path(), |text| {
        replace("pooling = \"mean\"", "pooling = \"output\"\noutput = \"last_hidden_state\"")(text)
    });
    let err = refused(dir.path(), model).await;
    assert!(err.contains("tiny-encoder") && err.contains("pooling output"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unmodified_copies_start_and_serve() {
    for name in ["tiny-encoder", "tiny-two-tower"] {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(config(dir.path(), copy_model(name, dir.path(), |text| text))).await;
        let (status, body) = server.post("/v1/embed", &json!({"texts": ["a probe"], "side": "query"})).await;
        assert_eq!(status, 200, "{body}");
        server.stop().await;
    }
}
