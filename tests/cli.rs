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
            assert!(help.contains(&format!("[env: {env}=")), "`duet {command}` lost {env} for {flag}:\n{help}");
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
