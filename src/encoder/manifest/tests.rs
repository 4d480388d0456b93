//! Unit tests of the manifest: defaults by kind, file and key checks, prompts (top-level and per task),
//! Matryoshka widths, and what changes the version.

use super::*;

fn write(dir: &Path, manifest: &str, files: &[&str]) {
    std::fs::write(dir.join("model.toml"), manifest).unwrap();
    for f in files {
        std::fs::write(dir.join(f), b"x").unwrap();
    }
}

#[test]
fn defaults_follow_the_kind() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "name='m'\nkind='llm'\ndimension=8\nonnx='m.onnx'\ntokenizer='t.json'\n", &["m.onnx", "t.json"]);
    let m = Manifest::load(dir.path()).unwrap();
    assert_eq!(m.manifest.pooling(), Pooling::LastToken);
    assert_eq!(m.manifest.role(), ModelRole::RawLlm);
    write(dir.path(), "name='m'\nkind='encoder'\ndimension=8\nonnx='m.onnx'\ntokenizer='t.json'\n", &[]);
    assert_eq!(Manifest::load(dir.path()).unwrap().manifest.role(), ModelRole::Encoder, "a baseline by default");
    write(
        dir.path(),
        "name='m'\nkind='encoder'\nrole='llm-embedding'\ndimension=8\nonnx='m.onnx'\ntokenizer='t.json'\n",
        &[],
    );
    assert_eq!(Manifest::load(dir.path()).unwrap().manifest.role(), ModelRole::LlmEmbedding);
    assert_eq!(m.query_onnx, m.document_onnx);
    assert_eq!(m.files().len(), 2);
}

#[test]
fn two_tower_needs_both_towers_and_rejects_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "name='m'\nkind='two-tower'\ndimension=8\nquery_onnx='q.onnx'\ntokenizer='t.json'\n",
        &["q.onnx", "t.json"],
    );
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("query_onnx"), "{err}");
    write(dir.path(), "name='m'\nkind='encoder'\ndimension=8\nonnx='q.onnx'\ntokenizer='t.json'\npoolng='cls'\n", &[]);
    let err = crate::util::error_chain(&Manifest::load(dir.path()).unwrap_err());
    assert!(err.contains("poolng"), "{err}");
}

#[test]
fn templates_hold_the_text_once_and_exclude_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let base = "name='m'\nkind='llm'\ndimension=8\nonnx='m.onnx'\ntokenizer='t.json'\n";
    write(dir.path(), &format!("{base}query_template='no placeholder'\n"), &["m.onnx", "t.json"]);
    assert!(Manifest::load(dir.path()).unwrap_err().to_string().contains("exactly once"));
    write(dir.path(), &format!("{base}query_template='Q: {{text}}'\nquery_prefix='x'\n"), &[]);
    assert!(Manifest::load(dir.path()).unwrap_err().to_string().contains("not both"));
    write(dir.path(), &format!("{base}document_template='This sentence: \"{{text}}\" means in one word: \"'\n"), &[]);
    assert!(Manifest::load(dir.path()).is_ok());
}

#[test]
fn missing_files_and_version_changes_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "name='m'\nkind='encoder'\ndimension=8\nonnx='m.onnx'\ntokenizer='t.json'\n", &["m.onnx"]);
    assert!(Manifest::load(dir.path()).unwrap_err().to_string().contains("t.json"));
    std::fs::write(dir.path().join("t.json"), b"{}").unwrap();
    let v1 = Manifest::load(dir.path()).unwrap().version().unwrap();
    std::fs::write(dir.path().join("m.onnx"), b"other weights").unwrap();
    let v2 = Manifest::load(dir.path()).unwrap().version().unwrap();
    assert_ne!(v1, v2);
    assert_eq!(v1.len(), 12);
}

const BASE: &str = "name='m'\nkind='encoder'\ndimension=8\nonnx='m.onnx'\ntokenizer='t.json'\n";

const TASKS: &str = r#"
task = "search-result"
[tasks.search-result]
query_template = "task: search result | query: {text}"
document_template = "title: none | text: {text}"
[tasks.code-retrieval]
query_template = "task: code retrieval | query: {text}"
document_template = "title: none | text: {text}"
"#;

#[test]
fn tasks_give_the_prompts_and_the_default_task_is_used_unless_another_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &format!("{BASE}{TASKS}"), &["m.onnx", "t.json"]);
    let mut m = Manifest::load(dir.path()).unwrap();
    assert_eq!(m.task.as_deref(), Some("search-result"));
    assert_eq!(m.prompts().query_template.as_deref(), Some("task: search result | query: {text}"));
    assert_eq!(m.prompts().document_template.as_deref(), Some("title: none | text: {text}"));
    let default_version = m.version().unwrap();
    m.select_task(None).unwrap();
    assert_eq!(m.version().unwrap(), default_version, "no choice keeps the default");
    m.select_task(Some("code-retrieval")).unwrap();
    assert_eq!(m.prompts().query_template.as_deref(), Some("task: code retrieval | query: {text}"));
    assert_ne!(m.version().unwrap(), default_version, "another task frames texts otherwise: another version");
    let err = m.select_task(Some("clustering")).unwrap_err().to_string();
    assert!(err.contains("\"clustering\"") && err.contains("code-retrieval, search-result"), "{err}");
    assert_eq!(m.task.as_deref(), Some("code-retrieval"), "a refused choice changes nothing");

    // Prefixes per task are allowed too; a model without tasks refuses any.
    write(dir.path(), &format!("{BASE}task='a'\n[tasks.a]\nquery_prefix='q: '\n"), &[]);
    assert_eq!(Manifest::load(dir.path()).unwrap().prompts().query_prefix, "q: ");
    write(dir.path(), BASE, &[]);
    let err = Manifest::load(dir.path()).unwrap().select_task(Some("a")).unwrap_err().to_string();
    assert!(err.contains("no [tasks]"), "{err}");
}

#[test]
fn task_tables_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &format!("{BASE}query_prefix='q: '\n{TASKS}"), &["m.onnx", "t.json"]);
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("top level or per task"), "{err}");
    write(dir.path(), &format!("{BASE}{}", TASKS.replace("task = \"search-result\"", "task = \"nope\"")), &[]);
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("\"nope\"") && err.contains("code-retrieval, search-result"), "{err}");
    write(dir.path(), &format!("{BASE}{}", TASKS.replace("task = \"search-result\"", "")), &[]);
    assert!(Manifest::load(dir.path()).unwrap_err().to_string().contains("default task"));
    write(dir.path(), &format!("{BASE}task='a'\n"), &[]);
    assert!(Manifest::load(dir.path()).unwrap_err().to_string().contains("no [tasks] table"));
    write(dir.path(), &format!("{BASE}task='a'\n[tasks.a]\nquery_template='no text'\n"), &[]);
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("[tasks.a]") && err.contains("exactly once"), "{err}");
    write(dir.path(), &format!("{BASE}task='a'\n[tasks.a]\nquery_templat='{{text}}'\n"), &[]);
    let err = crate::util::error_chain(&Manifest::load(dir.path()).unwrap_err());
    assert!(err.contains("query_templat"), "unknown keys in a task are refused: {err}");
}

#[test]
fn matryoshka_widths_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let files = ["m.onnx", "t.json"];
    write(dir.path(), BASE, &files);
    assert_eq!(Manifest::load(dir.path()).unwrap().manifest.network_dimension(), 8, "defaults to dimension");
    write(dir.path(), &BASE.replace("dimension=8", "dimension=4\nnetwork_dimension=8"), &[]);
    let m = Manifest::load(dir.path()).unwrap();
    assert_eq!((m.manifest.dimension, m.manifest.network_dimension()), (4, 8));
    write(dir.path(), &BASE.replace("dimension=8", "dimension=16\nnetwork_dimension=8"), &[]);
    assert!(Manifest::load(dir.path()).unwrap_err().to_string().contains("wider than"));
    let widths = "dimension=4\nnetwork_dimension=8\nmatryoshka_dimensions=[8, 4, 2]";
    write(dir.path(), &BASE.replace("dimension=8", widths), &[]);
    assert_eq!(Manifest::load(dir.path()).unwrap().manifest.matryoshka_dimensions, Some(vec![8, 4, 2]));
    write(dir.path(), &BASE.replace("dimension=8", &widths.replace("[8, 4, 2]", "[8, 2]")), &[]);
    assert!(Manifest::load(dir.path()).unwrap_err().to_string().contains("not one of matryoshka_dimensions"));
    write(dir.path(), &BASE.replace("dimension=8", &widths.replace("[8, 4, 2]", "[16, 4]")), &[]);
    assert!(Manifest::load(dir.path()).unwrap_err().to_string().contains("outside 1..=8"));
}
