//! Pair mining: real "in the wild" (query, result) pairs from source code, without any hub — the way
//! CodeSearchNet was built. `duet mine python-docstrings` turns every documented Python function into a pair
//! (first paragraph of its docstring → the function's source with the docstring removed).
//!
//! Output folder: `corpus.jsonl` (`{"id","text","metadata"}`), `train.jsonl` and `test.jsonl`
//! (`{"query","doc_id"}`), `stats.json`. The split is by source file (no test function shares a file with a
//! training one), decided by a seeded hash of the file's path, so it is stable across runs and machines.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::util::fs::FileError;
use sha2::{Digest, Sha256};
use tree_sitter::{Node, Parser};

#[derive(Debug, thiserror::Error)]
pub enum MineError {
    #[error(transparent)]
    File(#[from] crate::util::fs::FileError),
    #[error("cannot load the Python grammar")]
    Parser(#[from] tree_sitter::LanguageError),
}

/// Filters and split settings.
#[derive(Debug, Clone)]
pub struct MineOptions {
    /// Share of source files whose pairs go to the test split.
    pub test_fraction: f64,
    pub seed: u64,
    /// Functions with fewer code lines (docstring removed) are skipped.
    pub min_code_lines: usize,
    /// Longest function kept, in lines.
    pub max_code_lines: usize,
    /// Docstring summaries with fewer words are skipped.
    pub min_query_words: usize,
    pub max_query_words: usize,
    /// Skip functions and files that look like tests.
    pub skip_tests: bool,
    /// Keep at most this many documents (a seeded sample, with their pairs).
    pub max_documents: Option<usize>,
}

impl Default for MineOptions {
    fn default() -> Self {
        Self {
            test_fraction: 0.1,
            seed: 42,
            min_code_lines: 3,
            max_code_lines: 200,
            min_query_words: 3,
            max_query_words: 64,
            skip_tests: true,
            max_documents: None,
        }
    }
}

/// One mined pair.
#[derive(Debug, Clone, PartialEq)]
pub struct MinedFunction {
    /// `<relative path>::<Class.>name`, with `@<line>` when a name repeats in a file.
    pub id: String,
    pub query: String,
    pub code: String,
    pub path: String,
    pub name: String,
    pub line: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MineStats {
    pub files: usize,
    pub files_unparsable: usize,
    pub functions: usize,
    pub with_docstring: usize,
    pub skipped_short_or_long: usize,
    pub skipped_tests: usize,
    pub duplicates: usize,
    pub documents: usize,
    pub train_pairs: usize,
    pub test_pairs: usize,
    pub train_files: usize,
    pub test_files: usize,
    pub seed: u64,
    pub test_fraction: f64,
}

/// The Python standard library of `python3` on this machine, the default source.
pub fn default_python_source() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    path.is_dir().then_some(path)
}

fn python_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            let name = entry.file_name().to_string_lossy().to_string();
            if kind.is_dir() && !name.starts_with('.') && name != "__pycache__" && name != "site-packages" {
                stack.push(path);
            } else if kind.is_file() && name.ends_with(".py") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The first paragraph of a docstring, on one line; `None` when it is not a plain summary.
pub fn summary(docstring: &str) -> Option<String> {
    let paragraph: Vec<&str> = docstring.trim().lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
    let text = paragraph.join(" ");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    // Parameter lists and doctests are not questions.
    if text.is_empty() || text.starts_with(">>>") || text.starts_with(':') {
        return None;
    }
    Some(text)
}

/// The string value of a Python string literal node's source (prefixes and quotes removed, not unescaped).
fn string_body(literal: &str) -> Option<&str> {
    let start = literal.find(['"', '\''])?;
    let prefix = &literal[..start];
    if prefix.chars().any(|c| !matches!(c.to_ascii_lowercase(), 'r' | 'u')) {
        return None; // f-strings and bytes are not docstrings
    }
    let quoted = &literal[start..];
    for q in ["\"\"\"", "'''", "\"", "'"] {
        if quoted.len() >= 2 * q.len() && quoted.starts_with(q) && quoted.ends_with(q) {
            return Some(&quoted[q.len()..quoted.len() - q.len()]);
        }
    }
    None
}

fn docstring_node<'t>(function: Node<'t>) -> Option<Node<'t>> {
    let body = function.child_by_field_name("body")?;
    let mut cursor = body.walk();
    let first = body.named_children(&mut cursor).find(|n| n.kind() != "comment")?;
    if first.kind() != "expression_statement" || first.named_child_count() != 1 {
        return None;
    }
    let string = first.named_child(0)?;
    (string.kind() == "string").then_some(first)
}

/// Source of `function` with its docstring statement removed, dedented to the `def` line's indentation.
fn code_without_docstring(source: &str, function: Node, docstring: Node) -> String {
    let start = function.start_byte();
    let line_start = source[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let indent = start - line_start;
    let doc_line_start = source[..docstring.start_byte()].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let doc_end =
        source[docstring.end_byte()..].find('\n').map(|i| docstring.end_byte() + i + 1).unwrap_or(source.len());
    let mut code = String::new();
    code.push_str(&source[line_start..doc_line_start]);
    code.push_str(&source[doc_end.min(function.end_byte())..function.end_byte()]);
    code.lines()
        .map(|l| if l.len() >= indent && l[..indent].trim().is_empty() { &l[indent..] } else { l.trim_start() })
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_string()
}

fn qualified_name(source: &str, function: Node) -> String {
    let mut parts =
        vec![function.child_by_field_name("name").map(|n| &source[n.byte_range()]).unwrap_or("?").to_string()];
    let mut parent = function.parent();
    while let Some(node) = parent {
        if node.kind() == "class_definition" || node.kind() == "function_definition" {
            if let Some(name) = node.child_by_field_name("name") {
                parts.push(source[name.byte_range()].to_string());
            }
        }
        parent = node.parent();
    }
    parts.reverse();
    parts.join(".")
}

fn looks_like_test(path: &str, name: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    path.split('/').any(|part| part == "test" || part == "tests" || part == "testing")
        || file.starts_with("test_")
        || name.rsplit('.').next().is_some_and(|n| n.starts_with("test"))
}

/// Mines the documented functions of one Python file (`rel` is its path relative to the source root).
pub fn mine_source(
    rel: &str,
    source: &str,
    options: &MineOptions,
    parser: &mut Parser,
    stats: &mut MineStats,
) -> Option<Vec<MinedFunction>> {
    let tree = parser.parse(source, None)?;
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        let mut cursor = node.walk();
        let children: Vec<Node> = node.named_children(&mut cursor).collect();
        stack.extend(children.into_iter().rev());
        if node.kind() != "function_definition" {
            continue;
        }
        stats.functions += 1;
        let Some(doc) = docstring_node(node) else { continue };
        let literal = &source[doc.named_child(0).expect("checked").byte_range()];
        let Some(query) = string_body(literal).and_then(summary) else { continue };
        stats.with_docstring += 1;
        let name = qualified_name(source, node);
        if options.skip_tests && looks_like_test(rel, &name) {
            stats.skipped_tests += 1;
            continue;
        }
        let code = code_without_docstring(source, node, doc);
        let code_lines = code.lines().filter(|l| !l.trim().is_empty()).count();
        let words = query.split_whitespace().count();
        if code_lines < options.min_code_lines
            || code_lines > options.max_code_lines
            || words < options.min_query_words
            || words > options.max_query_words
        {
            stats.skipped_short_or_long += 1;
            continue;
        }
        let line = node.start_position().row + 1;
        let id = if names.insert(name.clone()) { format!("{rel}::{name}") } else { format!("{rel}::{name}@{line}") };
        out.push(MinedFunction { id, query, code, path: rel.to_string(), name, line });
    }
    Some(out)
}

/// Whether a file goes to the test split: a seeded hash of its path.
pub fn is_test_file(rel: &str, seed: u64, test_fraction: f64) -> bool {
    let digest = Sha256::new().chain_update(seed.to_le_bytes()).chain_update(rel.as_bytes()).finalize();
    let x = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
    x < test_fraction
}

#[derive(Serialize)]
struct CorpusLine<'a> {
    id: &'a str,
    text: &'a str,
    metadata: serde_json::Value,
}

#[derive(Serialize)]
struct PairLine<'a> {
    query: &'a str,
    doc_id: &'a str,
}

/// Mines every `.py` file under `src` into `out`; `on_file` is called after each file (for progress).
pub fn mine_python_docstrings(
    src: &Path,
    out: &Path,
    options: &MineOptions,
    mut on_file: impl FnMut(usize, usize),
) -> Result<MineStats, MineError> {
    let mut parser = Parser::new();
    parser.set_language(&tree_sitter_python::LANGUAGE.into())?;
    let files = python_files(src);
    let mut stats = MineStats { seed: options.seed, test_fraction: options.test_fraction, ..Default::default() };
    let mut seen_code = HashSet::new();
    let mut seen_pairs = HashSet::new();
    let mut kept: Vec<(MinedFunction, bool)> = Vec::new();
    let (mut train_files, mut test_files) = (HashSet::new(), HashSet::new());
    for (i, path) in files.iter().enumerate() {
        on_file(i + 1, files.len());
        let rel = path.strip_prefix(src).unwrap_or(path).to_string_lossy().replace('\\', "/");
        let Ok(bytes) = std::fs::read(path) else {
            stats.files_unparsable += 1;
            continue;
        };
        let Ok(source) = String::from_utf8(bytes) else {
            stats.files_unparsable += 1;
            continue;
        };
        stats.files += 1;
        let Some(functions) = mine_source(&rel, &source, options, &mut parser, &mut stats) else {
            stats.files_unparsable += 1;
            continue;
        };
        let test = is_test_file(&rel, options.seed, options.test_fraction);
        for f in functions {
            // The same code (copied helpers) or the same pair is kept once.
            if !seen_code.insert(Sha256::digest(f.code.as_bytes()))
                || !seen_pairs.insert((f.query.clone(), f.code.clone()))
            {
                stats.duplicates += 1;
                continue;
            }
            if test {
                test_files.insert(rel.clone());
            } else {
                train_files.insert(rel.clone());
            }
            kept.push((f, test));
        }
    }
    if let Some(max) = options.max_documents.filter(|&max| max < kept.len()) {
        let order =
            |id: &str| Sha256::new().chain_update(options.seed.to_le_bytes()).chain_update(id.as_bytes()).finalize();
        let mut sample: Vec<(Vec<u8>, usize)> =
            kept.iter().enumerate().map(|(i, (f, _))| (order(&f.id).to_vec(), i)).collect();
        sample.sort();
        let keep: HashSet<usize> = sample.into_iter().take(max).map(|(_, i)| i).collect();
        kept = kept.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, k)| k).collect();
        train_files = kept.iter().filter(|(_, t)| !t).map(|(f, _)| f.path.clone()).collect();
        test_files = kept.iter().filter(|(_, t)| *t).map(|(f, _)| f.path.clone()).collect();
    }
    crate::util::fs::create_dir_all(out)?;
    let open = |name: &str| {
        let path = out.join(name);
        std::fs::File::create(&path).map(std::io::BufWriter::new).map_err(|e| FileError::writing(&path)(e))
    };
    let (mut corpus, mut train, mut test) = (open("corpus.jsonl")?, open("train.jsonl")?, open("test.jsonl")?);
    let write_err = FileError::writing(out);
    for (f, is_test) in &kept {
        let line = CorpusLine {
            id: &f.id,
            text: &f.code,
            metadata: serde_json::json!({"path": f.path, "name": f.name, "line": f.line, "language": "python"}),
        };
        writeln!(corpus, "{}", serde_json::to_string(&line).expect("serialisable")).map_err(&write_err)?;
        let pair = serde_json::to_string(&PairLine { query: &f.query, doc_id: &f.id }).expect("serialisable");
        if *is_test {
            writeln!(test, "{pair}").map_err(&write_err)?;
            stats.test_pairs += 1;
        } else {
            writeln!(train, "{pair}").map_err(&write_err)?;
            stats.train_pairs += 1;
        }
    }
    for mut w in [corpus, train, test] {
        w.flush().map_err(&write_err)?;
    }
    stats.documents = kept.len();
    stats.train_files = train_files.len();
    stats.test_files = test_files.len();
    std::fs::write(out.join("stats.json"), serde_json::to_string_pretty(&stats).expect("serialisable") + "\n")
        .map_err(&write_err)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r#"
import os

def add(a, b):
    """Add two numbers and return the sum.

    Longer explanation that is not part of the query.
    """
    total = a + b
    # a comment
    return total

class Stack:
    '''A stack.'''

    def push(self, item):
        r"""Push an item onto the top of the stack."""
        self.items.append(item)
        self.size += 1
        return self

    def pop(self):
        return self.items.pop()

def tiny():
    """Too short to be a useful document."""
    return 1

def test_add():
    """Check that add adds two numbers."""
    assert add(1, 2) == 3
    assert add(2, 2) == 4
    assert add(0, 0) == 0

def fmt():
    f"""not a docstring {x}"""
    a = 1
    b = 2
    return a + b
"#;

    fn mine(source: &str) -> (Vec<MinedFunction>, MineStats) {
        let mut parser = Parser::new();
        parser.set_language(&tree_sitter_python::LANGUAGE.into()).unwrap();
        let mut stats = MineStats::default();
        let found = mine_source("pkg/mod.py", source, &MineOptions::default(), &mut parser, &mut stats).unwrap();
        (found, stats)
    }

    #[test]
    fn documented_functions_become_summary_to_code_pairs() {
        let (found, stats) = mine(SOURCE);
        let ids: Vec<&str> = found.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["pkg/mod.py::add", "pkg/mod.py::Stack.push"]);
        assert_eq!(found[0].query, "Add two numbers and return the sum.");
        assert_eq!(found[0].code, "def add(a, b):\n    total = a + b\n    # a comment\n    return total");
        assert_eq!(found[1].query, "Push an item onto the top of the stack.");
        assert!(found[1].code.starts_with("def push(self, item):\n    self.items.append(item)"), "{}", found[1].code);
        assert!(!found[1].code.contains("Push an item"), "the docstring is removed from the document");
        assert_eq!(found[1].line, 16);
        assert_eq!(stats.skipped_tests, 1);
        assert_eq!(stats.skipped_short_or_long, 1, "tiny() has too little code");
        assert_eq!(stats.functions, 6);
    }

    #[test]
    fn summaries_are_first_paragraphs_and_literals_are_unquoted() {
        assert_eq!(summary("  Return the\n   value.\n\n  More.").as_deref(), Some("Return the value."));
        assert_eq!(summary(">>> f(1)\n2"), None);
        assert_eq!(string_body(r#"r"""raw""""#), Some("raw"));
        assert_eq!(string_body("'x'"), Some("x"));
        assert_eq!(string_body("b'bytes'"), None);
    }

    #[test]
    fn the_split_is_by_file_stable_and_near_the_fraction() {
        let paths: Vec<String> = (0..2000).map(|i| format!("lib/m{i}.py")).collect();
        let test = paths.iter().filter(|p| is_test_file(p, 42, 0.1)).count();
        assert!((150..250).contains(&test), "{test} of 2000 files in test");
        assert_eq!(is_test_file("a/b.py", 42, 0.1), is_test_file("a/b.py", 42, 0.1));
        let other_seed = paths.iter().filter(|p| is_test_file(p, 42, 0.1) != is_test_file(p, 7, 0.1)).count();
        assert!(other_seed > 100, "the seed changes the split");
    }

    #[test]
    fn a_source_tree_is_written_as_corpus_and_disjoint_splits() {
        let src = tempfile::tempdir().unwrap();
        for i in 0..40 {
            std::fs::write(
                src.path().join(format!("m{i}.py")),
                SOURCE.replace("def add", &format!("def add{i}")).replace("def push", &format!("def push{i}")),
            )
            .unwrap();
        }
        std::fs::write(src.path().join("broken.py"), [0xff, 0xfe, 0x00]).unwrap();
        let out = tempfile::tempdir().unwrap();
        let stats = mine_python_docstrings(src.path(), out.path(), &MineOptions::default(), |_, _| {}).unwrap();
        assert_eq!(stats.files, 40);
        assert_eq!(stats.files_unparsable, 1);
        assert_eq!(stats.documents, 80);
        assert_eq!(stats.train_pairs + stats.test_pairs, 80);
        assert!(stats.test_pairs > 0 && stats.train_pairs > 0);
        let read = |name: &str| -> Vec<serde_json::Value> {
            std::fs::read_to_string(out.path().join(name))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let corpus = read("corpus.jsonl");
        let file_of = |id: &str| id.split("::").next().unwrap().to_string();
        let train_files: HashSet<String> =
            read("train.jsonl").iter().map(|p| file_of(p["doc_id"].as_str().unwrap())).collect();
        let test_files: HashSet<String> =
            read("test.jsonl").iter().map(|p| file_of(p["doc_id"].as_str().unwrap())).collect();
        assert!(train_files.is_disjoint(&test_files), "no file has pairs on both sides");
        let ids: HashSet<&str> = corpus.iter().map(|d| d["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 80, "ids are unique");
        assert_eq!(corpus[0]["metadata"]["language"], "python");

        let small = tempfile::tempdir().unwrap();
        let options = MineOptions { max_documents: Some(10), ..MineOptions::default() };
        let stats = mine_python_docstrings(src.path(), small.path(), &options, |_, _| {}).unwrap();
        assert_eq!((stats.documents, stats.train_pairs + stats.test_pairs), (10, 10));
    }
}
