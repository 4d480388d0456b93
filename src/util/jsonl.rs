//! Reading JSONL files (one JSON value per line, blank lines skipped) into typed rows, and the two row shapes
//! Duet's data folders use: corpus lines and (query, document) pairs.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: not a valid line", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// A (query, relevant document) pair, as in `train.jsonl` and `test.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PairLine {
    pub query: String,
    pub doc_id: String,
}

/// A corpus document, as in `corpus.jsonl` (other fields are ignored; `duet import` is stricter and refuses
/// them, see `corpus`).
#[derive(Debug, Clone, Deserialize)]
pub struct CorpusLine {
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

/// Every non-blank line of `path`, parsed; the first bad line fails the read with its line number.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, JsonlError> {
    read_up_to(path, usize::MAX)
}

/// The first `limit` non-blank lines of `path`, parsed (the rest of the file is not read).
pub fn read_up_to<T: DeserializeOwned>(path: &Path, limit: usize) -> Result<Vec<T>, JsonlError> {
    let read_err = |source| JsonlError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        if out.len() >= limit {
            break;
        }
        let line = line.map_err(read_err)?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line).map_err(|source| JsonlError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        out.push(row);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_skips_blank_lines_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.jsonl");
        std::fs::write(&path, "{\"query\":\"a\",\"doc_id\":\"1\"}\n\n{\"query\":\"b\",\"doc_id\":\"2\"}\n").unwrap();
        let pairs: Vec<PairLine> = read(&path).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1], PairLine { query: "b".into(), doc_id: "2".into() });
        assert_eq!(read_up_to::<PairLine>(&path, 1).unwrap().len(), 1);

        std::fs::write(&path, "{\"query\":\"a\",\"doc_id\":\"1\"}\n{\"query\":3}\n").unwrap();
        let err = read::<PairLine>(&path).unwrap_err();
        assert!(matches!(err, JsonlError::BadLine { line: 2, .. }), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        assert!(matches!(read::<PairLine>(&dir.path().join("absent")), Err(JsonlError::Read { .. })));
    }
}
