//! `duet bench-encode`: one model's encoding throughput on the first documents of a JSONL corpus, at a given
//! batch size and thread count, outside the server (no queue, no index).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::onnx::{self, SessionOptions};
use super::{runtime, EncoderError, Manifest, Side};
use crate::util::jsonl::{self, JsonlError};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: PathBuf,
    pub corpus: PathBuf,
    /// Documents encoded (the corpus's first).
    pub limit: usize,
    /// Texts per inference call.
    pub batch: usize,
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
    pub side: Side,
    pub onnxruntime: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Corpus(#[from] JsonlError),
    #[error("no documents in {}", .0.display())]
    Empty(PathBuf),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub texts: usize,
    pub mean_chars: usize,
    pub truncated: usize,
    pub max_tokens: usize,
    pub batch: usize,
    pub threads: usize,
    pub texts_per_second: f64,
    pub ms_per_batch: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} texts ({} chars on average, {} truncated at {} tokens), batch {}, {} threads: {:.1} texts/s, \
             {:.0} ms per batch",
            self.model,
            self.texts,
            self.mean_chars,
            self.truncated,
            self.max_tokens,
            self.batch,
            self.threads,
            self.texts_per_second,
            self.ms_per_batch
        )
    }
}

/// A corpus line as the benchmark reads it: only its text (an absent one is empty).
#[derive(serde::Deserialize)]
struct TextLine {
    #[serde(default)]
    text: String,
}

fn texts(corpus: &Path, limit: usize) -> Result<Vec<String>, BenchError> {
    let lines: Vec<TextLine> = jsonl::read_up_to(corpus, limit)?;
    if lines.is_empty() {
        return Err(BenchError::Empty(corpus.to_path_buf()));
    }
    Ok(lines.into_iter().map(|l| l.text).collect())
}

/// Loads the model, encodes one warm-up batch, then times one pass over the texts.
pub fn bench_encode(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let texts = texts(&options.corpus, options.limit)?;
    let batch = options.batch.max(1);
    let resolved = Manifest::load(&options.model)?;
    let env = runtime::environment(options.onnxruntime.as_deref())?;
    let encoder = onnx::load(&resolved, env, SessionOptions { intra_threads: options.threads })?;
    encoder.encode(&texts[..texts.len().min(batch)], options.side)?;
    let started = Instant::now();
    let mut truncated = 0;
    for chunk in texts.chunks(batch) {
        truncated += encoder.encode(chunk, options.side)?.truncated_count();
    }
    let seconds = started.elapsed().as_secs_f64();
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    Ok(BenchReport {
        model: encoder.info().name.clone(),
        texts: texts.len(),
        mean_chars: chars / texts.len(),
        truncated,
        max_tokens: encoder.info().max_tokens,
        batch,
        threads: options.threads,
        texts_per_second: texts.len() as f64 / seconds,
        ms_per_batch: seconds * 1e3 / texts.len().div_ceil(batch) as f64,
    })
}
