//! `duet bench-encode`: one model's encoding throughput on the first documents of a JSONL corpus, outside the
//! server (no index): tokens/s and texts/s over the texts sorted by length (or in corpus order, to compare), and
//! batch-1 latency. Two paths: `direct` (the encoder in batches of `batch` texts, one session) and `queue` (the
//! whole set as one background request through the encoding queue and its bulk session: what an import gets).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::onnx::{self, SessionOptions};
use super::queue::{EncoderHandle, QueueOptions};
use super::{runtime, Device, EncoderError, Manifest, Priority, Side};
use crate::metrics::Metrics;
use crate::util::fs::{self, FileError};
use crate::util::jsonl::{self, JsonlError};

/// Which way texts reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchPath {
    /// The encoder itself, in batches of `batch` texts.
    Direct,
    /// One background request through the queue, packed to `max_batch_tokens`, on the bulk session.
    Queue,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: PathBuf,
    pub corpus: PathBuf,
    /// Documents encoded (the corpus's first).
    pub limit: usize,
    /// Most texts per inference call.
    pub batch: usize,
    /// Most padded tokens per inference call (the queue path).
    pub max_batch_tokens: usize,
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
    pub side: Side,
    /// Keep the corpus order instead of sorting by length.
    pub corpus_order: bool,
    pub path: BenchPath,
    /// Texts encoded one at a time for the batch-1 latency (0: not measured).
    pub latency_samples: usize,
    pub onnxruntime: Option<PathBuf>,
    /// Where the model runs (`auto` is resolved at load; the report says where it ran).
    pub device: Device,
    /// Writes the texts as framed for the network, in encoding order, with their token counts (JSONL).
    pub dump_framed: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Corpus(#[from] JsonlError),
    #[error("no documents in {}", .0.display())]
    Empty(PathBuf),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error(transparent)]
    File(#[from] FileError),
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub path: BenchPath,
    /// The device the model ran on.
    pub device: Device,
    pub sorted: bool,
    pub texts: usize,
    pub mean_chars: usize,
    /// Tokens of the texts (special tokens included, after truncation), padding not counted.
    pub tokens: usize,
    pub truncated: usize,
    pub max_tokens: usize,
    pub batch: usize,
    pub threads: usize,
    pub seconds: f64,
    pub texts_per_second: f64,
    pub tokens_per_second: f64,
    /// Batch-1 latency over `latency_samples` texts (median and 90th percentile), in ms.
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p90: Option<f64>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?} path, {}, {}): {} texts ({} chars and {:.1} tokens on average, {} truncated at {} tokens), batch {}, \
             {} threads: {:.1} texts/s, {:.0} tokens/s",
            self.model,
            self.path,
            self.device,
            if self.sorted { "sorted by length" } else { "corpus order" },
            self.texts,
            self.mean_chars,
            self.tokens as f64 / self.texts as f64,
            self.truncated,
            self.max_tokens,
            self.batch,
            self.threads,
            self.texts_per_second,
            self.tokens_per_second,
        )?;
        if let (Some(p50), Some(p90)) = (self.latency_ms_p50, self.latency_ms_p90) {
            write!(f, "; batch-1 latency p50 {p50:.1} ms, p90 {p90:.1} ms")?;
        }
        Ok(())
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

/// A text as the network sees it (`--dump-framed`), and its tokens (special tokens included, after truncation).
#[derive(Serialize)]
struct FramedLine {
    text: String,
    tokens: usize,
}

/// The `q`-quantile of sorted `values`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Loads the model, encodes one warm-up batch, then times one pass over the texts (and the batch-1 latency).
pub fn bench_encode(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let mut texts = texts(&options.corpus, options.limit)?;
    let batch = options.batch.max(1);
    let resolved = Manifest::load(&options.model)?;
    let env = runtime::environment(options.onnxruntime.as_deref())?;
    let session =
        SessionOptions { intra_threads: options.threads, device: options.device, ..SessionOptions::default() };
    let encoder = onnx::load(&resolved, env, session)?;
    let device = encoder.info().device;
    let session = SessionOptions { device, ..session };
    let tokens = encoder.tokenize(&texts, options.side)?;
    let token_count: usize = tokens.iter().map(|t| t.len()).sum();
    let truncated = tokens.iter().filter(|t| t.truncated).count();
    let mut order: Vec<usize> = (0..texts.len()).collect();
    if !options.corpus_order {
        order.sort_by_key(|&i| tokens[i].len());
    }
    if let Some(path) = &options.dump_framed {
        let mut lines = String::new();
        for &i in &order {
            let line = FramedLine { text: encoder.info().frame(options.side, &texts[i]), tokens: tokens[i].len() };
            lines.push_str(&serde_json::to_string(&line).expect("a string and a number serialise"));
            lines.push('\n');
        }
        fs::write(path, lines)?;
    }
    texts = order.into_iter().map(|i| std::mem::take(&mut texts[i])).collect();
    let (name, max_tokens) = (encoder.info().name.clone(), encoder.info().max_tokens);
    let latencies = batch_one_latency(encoder.as_ref(), &texts, options)?;
    let seconds = match options.path {
        BenchPath::Direct => {
            encoder.encode(&texts[..texts.len().min(batch)], options.side)?;
            let started = Instant::now();
            for chunk in texts.chunks(batch) {
                encoder.encode(chunk, options.side)?;
            }
            started.elapsed().as_secs_f64()
        }
        BenchPath::Queue => {
            let rebuild = onnx::reloader(resolved, env, encoder.info().version.clone());
            let queue = QueueOptions {
                max_batch: batch,
                max_batch_tokens: options.max_batch_tokens.max(1),
                capacity: texts.len().max(1),
                max_queued_tokens: usize::MAX,
                session,
                bulk: Some(SessionOptions { device, ..SessionOptions::bulk(options.threads) }),
                query_cache: 0,
            };
            let handle = EncoderHandle::spawn_supervised(encoder, Some(rebuild), queue, Arc::new(Metrics::new()));
            // A runtime of its own, on a thread of its own (the command may run inside another runtime).
            let timed = std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let runtime =
                            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                        runtime.block_on(async {
                            let warm: Vec<String> = texts[..texts.len().min(batch)].to_vec();
                            handle.encode_with(warm, options.side, Priority::Background).await?;
                            let started = Instant::now();
                            handle.encode_with(texts.clone(), options.side, Priority::Background).await?;
                            Ok::<_, EncoderError>(started.elapsed().as_secs_f64())
                        })
                    })
                    .join()
                    .expect("the benchmark thread does not panic")
            });
            timed?
        }
    };
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    Ok(BenchReport {
        model: name,
        path: options.path,
        device,
        sorted: !options.corpus_order,
        texts: texts.len(),
        mean_chars: chars / texts.len(),
        tokens: token_count,
        truncated,
        max_tokens,
        batch,
        threads: options.threads,
        seconds,
        texts_per_second: texts.len() as f64 / seconds,
        tokens_per_second: token_count as f64 / seconds,
        latency_ms_p50: latencies.as_deref().map(|l| quantile(l, 0.5)),
        latency_ms_p90: latencies.as_deref().map(|l| quantile(l, 0.9)),
    })
}

/// Batch-1 latencies (sorted, in ms) over texts spread across the set, after one warm-up call.
fn batch_one_latency(
    encoder: &dyn super::Encoder,
    texts: &[String],
    options: &BenchOptions,
) -> Result<Option<Vec<f64>>, BenchError> {
    if options.latency_samples == 0 {
        return Ok(None);
    }
    let step = (texts.len() / options.latency_samples).max(1);
    encoder.encode(std::slice::from_ref(&texts[0]), options.side)?;
    let mut latencies = Vec::new();
    for text in texts.iter().step_by(step).take(options.latency_samples) {
        let started = Instant::now();
        encoder.encode(std::slice::from_ref(text), options.side)?;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Some(latencies))
}
