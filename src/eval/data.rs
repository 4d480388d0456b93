//! The data of `duet eval`: reading a data folder (corpus, test pairs, optional qrels), the seeded corpus and
//! query samples, and the module's error type. See the module documentation of [`crate::eval`] for the formats.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::metrics::Grades;
use crate::store::NewDocument;
use crate::util::fs::FileError;
use crate::util::jsonl::{self, CorpusLine};

/// Errors of `duet eval`.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] crate::util::jsonl::JsonlError),
    #[error("{path}:{line}: {message}")]
    BadLine { path: String, line: usize, message: String },
    #[error(transparent)]
    File(#[from] crate::util::fs::FileError),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot serialise the report")]
    Serialize(#[from] serde_json::Error),
    #[error("invalid evaluation settings")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Import(#[from] crate::corpus::ImportError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("plot {path}: {message}")]
    Plot { path: String, message: String },
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
}

/// One line of `test.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct Pair {
    pub query: String,
    pub doc_id: String,
    #[serde(default)]
    pub query_id: Option<String>,
}

/// A test query with the grades of its documents.
#[derive(Debug, Clone)]
pub struct Query {
    pub id: String,
    pub text: String,
    pub grades: Grades,
}

/// Evaluation settings of the data.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub data: PathBuf,
    /// Corpus sample size (every relevant document is kept); `None` for the whole corpus.
    pub max_docs: Option<usize>,
    /// Test queries used (a seeded sample); `None` for all.
    pub max_queries: Option<usize>,
    /// Recall cut-offs.
    pub ks: Vec<usize>,
    pub seed: u64,
    /// Graded judgements; `None` reads `data/qrels.tsv` when it exists.
    pub qrels: Option<PathBuf>,
}

/// A data folder, read and sampled.
#[derive(Debug, Clone)]
pub struct EvalData {
    pub documents: Vec<NewDocument>,
    pub corpus_total: usize,
    pub queries: Vec<Query>,
    /// Whether a qrels file graded the queries.
    pub graded: bool,
}

pub(crate) fn seeded_order(key: &str, seed: u64) -> [u8; 32] {
    Sha256::new().chain_update(seed.to_le_bytes()).chain_update(key.as_bytes()).finalize().into()
}

pub(crate) fn read_lines(path: &Path) -> Result<Vec<String>, EvalError> {
    let read_err = FileError::reading(path);
    let file = std::fs::File::open(path).map_err(&read_err)?;
    Ok(std::io::BufReader::new(file).lines().collect::<Result<Vec<_>, _>>().map_err(read_err)?)
}

/// Reads a qrels file (see the module documentation): `(query id, doc id, grade)`.
pub fn read_qrels(path: &Path) -> Result<Vec<(String, String, f64)>, EvalError> {
    let mut out = Vec::new();
    for (i, line) in read_lines(path)?.iter().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| EvalError::BadLine { path: path.display().to_string(), line: i + 1, message };
        let fields: Vec<&str> =
            if line.contains('\t') { line.split('\t').collect() } else { line.split(' ').collect() };
        let (query, doc, grade) = match fields.as_slice() {
            [q, d, g] => (*q, *d, *g),
            [q, _, d, g] => (*q, *d, *g),
            _ => return Err(bad(format!("expected query-id, doc-id and grade, tab-separated; got {line:?}"))),
        };
        match grade.trim().parse::<f64>() {
            Ok(g) if g.is_finite() && g >= 0.0 => out.push((query.to_string(), doc.trim().to_string(), g)),
            Ok(g) => return Err(bad(format!("a grade is a number >= 0, not {g}"))),
            Err(_) if out.is_empty() && i == 0 => {} // a header
            Err(_) => return Err(bad(format!("a grade is a number >= 0, not {grade:?}"))),
        }
    }
    Ok(out)
}

/// Reads the data folder and samples it: queries in a seeded order (the first `max_queries`), then the corpus
/// (every relevant document of those queries, then a seeded sample of the rest up to `max_docs`).
pub fn load(options: &EvalOptions) -> Result<EvalData, EvalError> {
    let pairs: Vec<Pair> = jsonl::read(&options.data.join("test.jsonl"))?;
    let mut by_id: BTreeMap<String, Query> = BTreeMap::new();
    for p in pairs {
        let id = p.query_id.clone().unwrap_or_else(|| p.query.clone());
        by_id
            .entry(id.clone())
            .or_insert_with(|| Query { id, text: p.query.clone(), grades: Grades::new() })
            .grades
            .insert(p.doc_id, 1.0);
    }
    let qrels_path = options.qrels.clone().unwrap_or_else(|| options.data.join("qrels.tsv"));
    let graded = options.qrels.is_some() || qrels_path.is_file();
    if graded {
        for (query, doc, grade) in read_qrels(&qrels_path)? {
            if let Some(q) = by_id.get_mut(&query) {
                q.grades.insert(doc, grade);
            }
        }
    }
    let mut queries: Vec<Query> = by_id.into_values().collect();
    queries.sort_by_key(|q| seeded_order(&q.id, options.seed));
    if let Some(n) = options.max_queries {
        queries.truncate(n);
    }
    let relevant: HashSet<&str> =
        queries.iter().flat_map(|q| q.grades.iter().filter(|(_, g)| **g > 0.0).map(|(d, _)| d.as_str())).collect();
    let mut documents: Vec<NewDocument> = jsonl::read::<CorpusLine>(&options.data.join("corpus.jsonl"))?
        .into_iter()
        .map(|c| NewDocument { id: c.id, text: c.text, metadata: c.metadata.unwrap_or_else(|| serde_json::json!({})) })
        .collect();
    let corpus_total = documents.len();
    if let Some(max) = options.max_docs {
        // Relevant documents first, then the rest in a seeded order.
        documents.sort_by_cached_key(|d| (!relevant.contains(d.id.as_str()), seeded_order(&d.id, options.seed)));
        documents.truncate(max.max(relevant.len()));
    }
    let kept: HashSet<&str> = documents.iter().map(|d| d.id.as_str()).collect();
    for q in &mut queries {
        q.grades.retain(|d, _| kept.contains(d.as_str()));
    }
    queries.retain(|q| q.grades.values().any(|g| *g > 0.0));
    documents.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(EvalData { documents, corpus_total, queries, graded })
}

/// Where a named model lives: a folder path as given, else `<models_root>/<name>`.
pub fn model_dir(name: &str, models_root: &Path) -> PathBuf {
    let as_path = PathBuf::from(name);
    if as_path.join("model.toml").is_file() {
        as_path
    } else {
        models_root.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_set(dir: &Path) {
        let corpus: String = (0..100).map(|i| format!("{{\"id\":\"d{i}\",\"text\":\"t{i}\"}}\n")).collect();
        std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
        let test: String = (0..30).map(|i| format!("{{\"query\":\"q{i}\",\"doc_id\":\"d{}\"}}\n", i * 3)).collect();
        std::fs::write(dir.join("test.jsonl"), test).unwrap();
    }

    fn options(dir: &Path) -> EvalOptions {
        EvalOptions { data: dir.into(), max_docs: Some(40), max_queries: Some(20), ks: vec![10], seed: 1, qrels: None }
    }

    #[test]
    fn samples_keep_every_relevant_document_and_are_seeded() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path());
        let options = options(dir.path());
        let data = load(&options).unwrap();
        assert_eq!((data.documents.len(), data.corpus_total, data.queries.len()), (40, 100, 20));
        assert!(!data.graded);
        let ids: HashSet<&str> = data.documents.iter().map(|d| d.id.as_str()).collect();
        assert!(
            data.queries.iter().all(|q| q.grades.keys().all(|d| ids.contains(d.as_str()))),
            "relevant documents are always kept"
        );
        let again = load(&options).unwrap();
        let doc_ids = |d: &EvalData| d.documents.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
        assert_eq!(doc_ids(&again), doc_ids(&data));
        let other = load(&EvalOptions { seed: 2, ..options }).unwrap();
        assert_ne!(doc_ids(&other), doc_ids(&data));
    }

    #[test]
    fn qrels_grade_documents_and_add_relevant_ones_to_the_sample() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path());
        // Header, comment, a regrade of a test pair, a new graded document, a 0 and an unknown query.
        std::fs::write(
            dir.path().join("qrels.tsv"),
            "query-id\tcorpus-id\tscore\n# comment\nq1\td3\t3\nq1\td99\t2\nq2\td6\t0\nnobody\td1\t1\n",
        )
        .unwrap();
        let data = load(&EvalOptions { max_queries: None, ..options(dir.path()) }).unwrap();
        assert!(data.graded);
        let q1 = data.queries.iter().find(|q| q.id == "q1").unwrap();
        assert_eq!(q1.grades.get("d3"), Some(&3.0));
        assert_eq!(q1.grades.get("d99"), Some(&2.0), "a judged document is kept in the sample");
        assert!(data.documents.iter().any(|d| d.id == "d99"));
        assert!(!data.queries.iter().any(|q| q.id == "q2"), "q2 has no relevant document left");
        assert_eq!(data.queries.len(), 29);
        std::fs::write(dir.path().join("qrels.tsv"), "q1\td3\tvery\nq1\td3\tx\n").unwrap();
        assert!(matches!(load(&options(dir.path())), Err(EvalError::BadLine { line: 2, .. })));
        let trec = dir.path().join("trec.txt");
        std::fs::write(&trec, "q1 0 d3 2\n").unwrap();
        assert_eq!(read_qrels(&trec).unwrap(), vec![("q1".into(), "d3".into(), 2.0)]);
    }
}
