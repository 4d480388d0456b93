//! Corpus import: a JSONL file of `{"id", "text", "metadata"?}` lines into the engine, in batches.
//!
//! Safe to interrupt and re-run: documents whose text and metadata are already stored are skipped, so a re-run
//! only encodes what is new or changed. Bad lines are reported with their line numbers; the good ones still land.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::{validate_document, Engine, EngineError, Priority};
use crate::store::{content_hash, NewDocument};
use crate::util::fs::FileError;

/// One corpus line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusLine {
    id: String,
    text: String,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub lines: usize,
    pub upserted: usize,
    pub unchanged: usize,
    pub bad_lines: Vec<BadLine>,
}

impl ImportReport {
    /// One line of progress so far: `12 upserted, 3 unchanged, 0 bad`.
    pub fn progress(&self) -> String {
        format!("{} upserted, {} unchanged, {} bad", self.upserted, self.unchanged, self.bad_lines.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Imports a JSONL corpus; `on_batch` is called after each batch with the report so far and the bytes read
/// (for a progress bar).
pub async fn import_jsonl(
    engine: &Arc<Engine>,
    path: &Path,
    batch_size: usize,
    mut on_batch: impl FnMut(&ImportReport, u64),
) -> Result<ImportReport, ImportError> {
    let read_err = FileError::reading(path);
    let file = std::fs::File::open(path).map_err(&read_err)?;
    let mut reader = std::io::BufReader::new(file);
    let mut report = ImportReport::default();
    let mut batch: Vec<NewDocument> = Vec::new();
    let mut bytes = 0u64;
    let mut line = String::new();
    let batch_size = batch_size.clamp(1, engine.limits.max_batch);
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(&read_err)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        report.lines += 1;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line) {
            Ok(doc) => match validate_document(&doc, &engine.limits) {
                Ok(()) => batch.push(doc),
                Err(message) => report.bad_lines.push(BadLine { line: report.lines, message }),
            },
            Err(message) => report.bad_lines.push(BadLine { line: report.lines, message }),
        }
        if batch.len() >= batch_size {
            write_batch(engine, std::mem::take(&mut batch), &mut report).await?;
            on_batch(&report, bytes);
        }
    }
    if !batch.is_empty() {
        write_batch(engine, batch, &mut report).await?;
    }
    on_batch(&report, bytes);
    Ok(report)
}

fn parse_line(line: &str) -> Result<NewDocument, String> {
    let parsed: CorpusLine = serde_json::from_str(line).map_err(|e| format!("not a corpus line: {e}"))?;
    Ok(NewDocument {
        id: parsed.id,
        text: parsed.text,
        metadata: parsed.metadata.unwrap_or_else(|| serde_json::json!({})),
    })
}

/// Upserts the documents of `batch` whose text or metadata differ from the stored ones (later duplicates win).
pub async fn write_batch(
    engine: &Arc<Engine>,
    batch: Vec<NewDocument>,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    // Later lines win over earlier ones with the same id.
    let mut by_id: HashMap<String, NewDocument> = HashMap::with_capacity(batch.len());
    for doc in batch {
        by_id.insert(doc.id.clone(), doc);
    }
    let ids: Vec<String> = by_id.keys().cloned().collect();
    let stored = engine.store().fingerprints(&ids).await.map_err(EngineError::from)?;
    let mut changed: Vec<NewDocument> = Vec::with_capacity(by_id.len());
    for (id, doc) in by_id {
        match stored.get(&id) {
            Some(fp) if fp.content_hash == content_hash(&doc.text) && fp.metadata == doc.metadata => {
                report.unchanged += 1
            }
            _ => changed.push(doc),
        }
    }
    changed.sort_by(|a, b| a.id.cmp(&b.id));
    if !changed.is_empty() {
        report.upserted += engine.upsert_with(changed, Priority::Background).await?.upserted;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_optional_metadata_and_unknown_fields_are_errors() {
        let doc = parse_line(r#"{"id":"a","text":"hello"}"#).unwrap();
        assert_eq!(doc.metadata, serde_json::json!({}));
        let doc = parse_line(r#"{"id":"a","text":"hello","metadata":{"x":1}}"#).unwrap();
        assert_eq!(doc.metadata["x"], 1);
        assert!(parse_line(r#"{"id":"a","txt":"hello"}"#).unwrap_err().contains("txt"));
        assert!(parse_line("{not json").is_err());
    }
}
