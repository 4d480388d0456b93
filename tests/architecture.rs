//! The layout the README's Architecture section promises: each top-level module uses only the modules listed for
//! it below (so an arrow back up, or a new dependency, is a decision made here and in the README), the module
//! graph has no cycle, and every source file opens with a `//!` comment saying what it owns.
//!
//! Dependencies are read from the source: every `crate::<module>` outside `#[cfg(test)]` code and comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the modules it may use. Leaves first, then each layer over the ones below it.
const ALLOWED: &[(&str, &[&str])] = &[
    ("util", &[]),
    ("lexical", &[]),
    ("metrics", &[]),
    ("auth", &[]),
    ("mine", &["util"]),
    ("store", &["util"]),
    ("index", &["util"]),
    ("encoder", &["metrics", "util"]),
    ("config", &["auth", "encoder", "index", "store", "util"]),
    ("engine", &["config", "encoder", "index", "metrics", "store", "util"]),
    ("corpus", &["engine", "store", "util"]),
    ("train", &["encoder", "lexical", "store", "util"]),
    ("experiment", &["config", "engine", "index", "metrics", "store", "util"]),
    ("eval", &["config", "corpus", "encoder", "engine", "index", "lexical", "metrics", "store", "train", "util"]),
    ("api", &["auth", "config", "encoder", "engine", "eval", "experiment", "index", "metrics", "store", "util"]),
    ("server", &["api", "config", "corpus", "encoder", "engine", "eval", "experiment", "store", "util"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its test module and without comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The `crate::<module>` names a piece of code uses.
fn used_modules(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .filter(|(i, _)| !code[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .map(|(i, m)| code[i + m.len()..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect())
        .filter(|m: &String| !m.is_empty())
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top =
            relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if ["lib", "main", "cli"].contains(&top.as_str()) {
            continue; // the crate root declares every module; the binary's command line may use them all
        }
        let uses = used_modules(&code(&std::fs::read_to_string(&file).unwrap()));
        graph.entry(top.clone()).or_default().extend(uses.into_iter().filter(|m| *m != top));
    }
    graph
}

#[test]
fn each_module_uses_only_the_layers_below_it() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(m, deps)| (*m, deps.iter().copied().collect())).collect();
    let graph = graph();
    for (module, uses) in &graph {
        let may = allowed.get(module.as_str()).unwrap_or_else(|| {
            panic!("module `{module}` is not in the architecture table; add it here and to the README")
        });
        for used in uses {
            assert!(
                may.contains(used.as_str()),
                "`{module}` uses `crate::{used}`, which the architecture does not allow (allowed: {may:?})"
            );
        }
    }
    assert!(graph.len() >= ALLOWED.len() - 1, "every module was found: {:?}", graph.keys());
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    // Repeatedly remove modules that use nothing left; whatever remains is on a cycle.
    let mut left = graph.clone();
    loop {
        let leaves: Vec<String> = left
            .iter()
            .filter(|(_, uses)| uses.iter().all(|u| !left.contains_key(u)))
            .map(|(m, _)| m.clone())
            .collect();
        if leaves.is_empty() {
            break;
        }
        for leaf in leaves {
            left.remove(&leaf);
        }
    }
    assert!(left.is_empty(), "these modules import each other in a cycle: {:?}", left.keys());
}

#[test]
fn the_checker_sees_imports_and_ignores_tests_and_comments() {
    let sample = "use crate::store::Store;\n// crate::api in a comment\nfn f() { crate::util::now(); }\n#[cfg(test)]\nmod tests { use crate::eval; }";
    let uses = used_modules(&code(sample));
    assert_eq!(uses, ["store", "util"].iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
}

#[test]
fn every_source_file_says_what_it_owns() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("//!"), "{} does not open with a `//!` comment", file.display());
    }
}
