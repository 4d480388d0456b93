//! Where models run (`[encoder] device`, `DUET_DEVICE`, `--device`): the CPU by default; `cuda` registers ONNX
//! Runtime's CUDA execution provider or refuses the model with an error naming the provider and ONNX Runtime's
//! reason (at start-up, or as a 4xx for a model added at run time) — never a panic; `auto` falls back to the CPU.
//! `GET /v1/models` says where each model runs.
//!
//! These machines have no GPU and a CPU-only onnxruntime: where the loaded library has CUDA built in (a GPU
//! machine), the tests that need it to be missing say so and check only that nothing panics.

mod common;

use std::process::Command;

use common::{repo, tiny_config, tiny_model, TestServer};
use duet::config::{Config, EncoderSettings};
use duet::encoder::Device;
use serde_json::{json, Value};

/// Whether the loaded ONNX Runtime has the CUDA provider built in (then `cuda` may load).
fn cuda_built_in() -> bool {
    duet::encoder::runtime::environment(None).expect("ONNX Runtime loads");
    duet::encoder::device::cuda_in_build()
}

fn devices(models: &Value) -> Vec<(String, String)> {
    models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["device"].as_str().unwrap().to_string()))
        .collect()
}

fn with_device(config: Config, device: Device) -> Config {
    Config { encoder: EncoderSettings { device, ..EncoderSettings::default() }, ..config }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_run_on_the_cpu_by_default_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(&dir.path().join("duet.db"));
    assert_eq!(config.encoder.device, Device::Cpu);
    let server = TestServer::start(config).await;
    let (status, models) = server.get("/v1/models").await;
    assert_eq!(status, 200);
    let found = devices(&models);
    assert_eq!(found.len(), 3);
    assert!(found.iter().all(|(_, device)| device == "cpu"), "{found:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_without_its_provider_refuses_to_start_naming_the_provider_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_device(tiny_config(&dir.path().join("duet.db")), Device::Cuda);
    let cuda = cuda_built_in();
    match duet::server::start(config).await {
        Ok(server) => {
            assert!(cuda, "a CPU-only ONNX Runtime cannot run a model on CUDA");
            server.shutdown().await.unwrap();
        }
        Err(err) => {
            let chain = format!("{err:#}");
            assert!(chain.contains("CUDAExecutionProvider") && chain.contains("device = \"cuda\""), "{chain}");
            assert!(chain.contains("onnxruntime-gpu"), "says what to install: {chain}");
            // ONNX Runtime's own reason follows Duet's message in the chain.
            let (_, reason) = chain.split_once("did not register").unwrap();
            assert!(reason.contains(": "), "{chain}");
            if !cuda {
                assert!(chain.to_lowercase().contains("cuda"), "{chain}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_serves_on_the_cpu_when_cuda_does_not_register() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_device(tiny_config(&dir.path().join("duet.db")), Device::Auto);
    let cuda = cuda_built_in();
    let server = TestServer::start(config).await;
    let (status, models) = server.get("/v1/models").await;
    assert_eq!(status, 200);
    for (name, device) in devices(&models) {
        assert!(device == "cpu" || (cuda && device == "cuda"), "{name} runs on {device}");
    }
    let (status, _) = server.post("/v1/documents", &json!({"documents": common::sample_corpus()})).await;
    assert_eq!(status, 200);
    let (status, found) = server.post("/v1/search", &json!({"model": "tiny-encoder", "query": "rust", "k": 2})).await;
    assert_eq!(status, 200, "{found}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_entry_overrides_the_device_and_a_model_added_on_cuda_is_a_client_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut encoder = tiny_model("tiny-encoder");
    encoder.encoder = Some(EncoderSettings { device: Device::Cpu, ..EncoderSettings::default() });
    let config = Config {
        models: vec![encoder],
        models_dir: repo().join("models"),
        ..with_device(tiny_config(&dir.path().join("duet.db")), Device::Cuda)
    };
    if cuda_built_in() {
        return; // on a GPU machine `cuda` may load: nothing to refuse
    }
    let server = TestServer::start(config).await;
    let (status, models) = server.get("/v1/models").await;
    assert_eq!((status, devices(&models)), (200, vec![("tiny-encoder".to_string(), "cpu".to_string())]));
    let (status, body) = server.post("/v1/models", &json!({"name": "llm-on-gpu", "path": "tiny-llm"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["type"].as_str().map(|t| t.ends_with("bad-model")), Some(true), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("CUDAExecutionProvider"), "{body}");
    let (_, models) = server.get("/v1/models").await;
    assert_eq!(devices(&models).len(), 1, "the model is not served");
    server.stop().await;
}

#[test]
fn serve_with_device_cuda_exits_with_the_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(["serve", "--listen", "127.0.0.1:0", "--model", "models/tiny-encoder", "--store"])
        .arg(dir.path().join("duet.db"))
        .env("DUET_DEVICE", "cuda")
        .env_remove("DUET_CONFIG")
        .current_dir(repo())
        .output()
        .unwrap();
    if cuda_built_in() {
        return; // `serve` would run until stopped
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("CUDAExecutionProvider"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bench_encode_frames_documents_with_the_models_prompt_and_reports_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("prompted");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(repo().join("models/tiny-encoder")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let manifest = std::fs::read_to_string(model.join("model.toml")).unwrap();
    let manifest: String =
        manifest.lines().filter(|l| !l.starts_with("document_prefix")).map(|l| format!("{l}\n")).collect();
    std::fs::write(model.join("model.toml"), format!("{manifest}document_template = \"passage: {{text}} .\"\n"))
        .unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    let texts = ["a much longer text about rust and tokio runtimes", "short", "a middling text"];
    let lines: Vec<String> =
        texts.iter().enumerate().map(|(i, t)| json!({"id": i.to_string(), "text": t}).to_string()).collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let framed = dir.path().join("framed.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(["bench-encode", "--json", "--latency-samples", "0", "--threads", "1", "--model"])
        .arg(&model)
        .arg("--corpus")
        .arg(&corpus)
        .arg("--dump-framed")
        .arg(&framed)
        .env("DUET_BENCH_DEVICE", "auto")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["texts"], 3);
    assert!(report["device"] == "cpu" || (cuda_built_in() && report["device"] == "cuda"), "{report}");
    let dumped: Vec<Value> =
        std::fs::read_to_string(&framed).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let framed_texts: Vec<&str> = dumped.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(
        framed_texts,
        ["passage: short .", "passage: a middling text .", format!("passage: {} .", texts[0]).as_str()]
    );
    let counts: Vec<u64> = dumped.iter().map(|l| l["tokens"].as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "in the order encoded, shortest first: {counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), report["tokens"].as_u64().unwrap());
}
