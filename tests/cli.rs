//! The `duet` binary as a user runs it: every flag and environment variable a command ever had is still
//! accepted (tests/fixtures/cli-flags.txt lists them as they were before the command line was split into
//! src/cli/), `--help` states defaults, and `import` runs end to end with a progress bar on stderr and its
//! report on stdout.

mod common;

use std::process::{Command, Output};

use serde_json::Value;

fn duet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(args)
        .current_dir(common::repo())
        .env_remove("DUET_LOG")
        .output()
        .expect("duet runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn every_flag_and_environment_variable_is_still_accepted() {
    let fixture = std::fs::read_to_string(common::repo().join("tests/fixtures/cli-flags.txt")).unwrap();
    let mut checked = 0;
    for line in fixture.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (command, flags) = line.split_once(':').expect("`command: --flag=ENV ...`");
        let mut args: Vec<&str> = command.split_whitespace().collect();
        args.push("--help");
        let output = duet(&args);
        assert!(output.status.success(), "duet {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        let help = stdout(&output);
        for pair in flags.split_whitespace() {
            let (flag, env) = pair.split_once('=').unwrap();
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "`duet {command}` lost {flag}:\n{help}"
            );
            // `[env: NAME]` alone where the value is a secret (keys, a store URL with its password) and hidden.
            let listed = help.contains(&format!("[env: {env}=")) || help.contains(&format!("[env: {env}]"));
            assert!(listed, "`duet {command}` lost {env} for {flag}:\n{help}");
            checked += 1;
        }
    }
    assert!(checked >= 142, "the fixture lists every flag of the eleven commands ({checked} checked)");
}

#[test]
fn help_states_defaults_and_bad_flags_are_refused() {
    let help = stdout(&duet(&["serve", "--help"]));
    assert!(help.contains("info,ort=warn"), "the log default is stated:\n{help}");
    let help = stdout(&duet(&["import", "--help"]));
    assert!(help.contains("[default: 64]"), "{help}");
    let output = duet(&["serve", "--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2), "clap refuses unknown flags with exit code 2");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--no-such-flag"));
    let output = duet(&["bench-encode", "--model", "m", "--corpus", "c", "--side", "left"]);
    assert_eq!(output.status.code(), Some(2), "--side is query or document");
}

#[test]
fn bench_swap_refuses_bad_flags_before_calling_a_server() {
    let output = duet(&["bench-swap", "--queries", "q.jsonl"]);
    assert_eq!(output.status.code(), Some(2), "--add-path is required");
    let output = duet(&["bench-swap", "--add-path", "b", "--queries", "q.jsonl", "--swap-only"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--swap-only needs --replace-path"));
    let help = stdout(&duet(&["bench-swap", "--help"]));
    assert!(help.contains("[default: 20]") && help.contains("[default: minilm]"), "{help}");
}

#[test]
fn import_encodes_a_corpus_and_prints_its_report_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    std::fs::write(&corpus, "{\"id\":\"a\",\"text\":\"sort a list\"}\n{bad\n{\"id\":\"b\",\"text\":\"read a file\"}\n")
        .unwrap();
    let store = dir.path().join("duet.db");
    let (corpus, store) = (corpus.to_str().unwrap(), store.to_str().unwrap());
    let args = ["import", "--corpus", corpus, "--store", store, "--model", "models/tiny-encoder", "--log", "warn"];
    let output = duet(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: Value = serde_json::from_str(stdout(&output).trim()).expect("stdout is the JSON report alone");
    assert_eq!(report["upserted"], 2, "{report}");
    assert_eq!(report["bad_lines"][0]["line"], 2, "{report}");
    assert!(stderr.contains(":2: "), "bad lines are named on stderr: {stderr}");

    let again = duet(&args);
    let report: Value = serde_json::from_str(stdout(&again).trim()).unwrap();
    assert_eq!((report["upserted"].as_u64(), report["unchanged"].as_u64()), (Some(0), Some(2)), "{report}");
}

#[test]
fn a_missing_config_file_fails_with_the_reason() {
    let output = duet(&["import", "--corpus", "x.jsonl", "--config", "no/such/duet.toml"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no/such/duet.toml") && stderr.contains("No such file"), "the cause is shown: {stderr}");
}

/// A small data folder (corpus, train and test pairs) from the example corpus: the first words of a document
/// are its query.
fn data_folder(dir: &std::path::Path) {
    let corpus = std::fs::read_to_string(common::repo().join("examples/corpus.jsonl")).unwrap();
    std::fs::write(dir.join("corpus.jsonl"), &corpus).unwrap();
    let pairs: Vec<String> = corpus
        .lines()
        .map(|line| {
            let doc: Value = serde_json::from_str(line).unwrap();
            let query: Vec<&str> = doc["text"].as_str().unwrap().split_whitespace().take(6).collect();
            serde_json::json!({"query": query.join(" "), "doc_id": doc["id"]}).to_string()
        })
        .collect();
    std::fs::write(dir.join("test.jsonl"), pairs[..20].join("\n")).unwrap();
    std::fs::write(dir.join("train.jsonl"), pairs[20..].join("\n")).unwrap();
}

#[test]
fn train_then_eval_then_bench_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (train, corpus, model, out) = (path("train.jsonl"), path("corpus.jsonl"), path("two-tower"), path("out"));

    let small = ["--epochs", "1", "--vocab-size", "200", "--batch-size", "8", "--lexical-dim", "64"];
    let mut args = vec!["train", "--pairs", &train, "--corpus", &corpus, "--out", &model];
    args.extend(small);
    let output = duet(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("validation recall@10"), "the summary line: {stderr}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("two-tower/report.json")).unwrap()).unwrap();
    assert_eq!(report["config"]["epochs"], 1, "flags reach the trainer");

    // `duet eval --data` (the plain evaluation, not a subcommand) scores the trained folder beside a tiny model.
    let models = format!("tiny-encoder,{model}");
    let quick = ["--bootstrap", "50", "--permutations", "50", "--cost-docs", "4", "--quality-queries", "5"];
    let mut args = vec!["eval", "--data", dir.path().to_str().unwrap(), "--models", &models, "--out", &out];
    args.extend(quick);
    let output = duet(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let markdown = stdout(&output);
    assert!(
        markdown.contains("tiny-encoder") && markdown.contains("two-tower") && markdown.contains("bm25"),
        "{markdown}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/report.json")).unwrap()).unwrap();
    assert!(report["scores"].as_array().is_some_and(|s| s.len() == 5), "2 models × (exact, hnsw) + bm25: {report}");

    let output = duet(&["bench-encode", "--model", &model, "--corpus", &corpus, "--limit", "16", "--batch", "4"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout(&output).contains("16 texts") && stdout(&output).contains("texts/s"), "{}", stdout(&output));
}

#[test]
fn mine_writes_the_pair_files_and_prints_their_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let function =
        "def add(a, b):\n    \"\"\"Add two numbers and return the sum.\"\"\"\n    c = a + b\n    d = c\n    return d\n";
    std::fs::write(src.join("arith.py"), function).unwrap();
    let out = dir.path().join("pairs");
    let output = duet(&["mine", "python-docstrings", "--src", src.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stats: Value = serde_json::from_str(&stdout(&output)).expect("the statistics as JSON on stdout");
    assert_eq!(stats["seed"], 42, "{stats}");
    let corpus = std::fs::read_to_string(out.join("corpus.jsonl")).unwrap();
    assert!(corpus.contains("return d") && !corpus.contains("Add two numbers"), "code without its docstring: {corpus}");
    assert!(out.join("train.jsonl").exists() && out.join("test.jsonl").exists());
}

/// `duet serve` as an orchestrator runs it: flags and environment variables over the example config, the
/// address on stdout, the start-up import served, and a clean exit on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_from_flags_serves_its_import_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("duet.db");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(["serve", "--config", "examples/tiny.toml", "--listen", "127.0.0.1:0", "--log", "warn"])
        .env("DUET_STORE", &store)
        .current_dir(common::repo())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("a first line on stdout");
    let base = first.strip_prefix("duet listening on ").expect("the address is announced").to_string();

    // Ready once every index is built; the example config imports its 50-document corpus after that.
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let body: Value =
            client.get(format!("{base}/v1/documents/py-sort-list")).send().await.unwrap().json().await.unwrap();
        if body["id"] == "py-sort-list" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the start-up import did not land within 60 s: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let models: Value = client.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["default_model"], "tiny-two-tower", "the config's default model: {models}");
    assert!(store.exists(), "DUET_STORE overrides the config's store");

    let pid = child.id().expect("running").to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "SIGTERM is a graceful shutdown: {status}");
}

#[test]
fn a_store_url_of_an_unsupported_scheme_is_refused_and_creates_nothing() {
    // It used to be taken for a file path, silently creating an SQLite file under `./mysql:/`.
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(["serve", "--store", "mysql://duet:secret@db/duet", "--model"])
        .arg(common::repo().join("models/tiny-encoder"))
        .current_dir(dir.path())
        .env_remove("DUET_LOG")
        .output()
        .expect("duet runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`mysql://` stores are not supported"), "{stderr}");
    assert!(stderr.contains("postgres://"), "the message names what works: {stderr}");
    assert!(!stderr.contains("secret"), "the password is not repeated: {stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing was created");
}
