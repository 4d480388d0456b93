//! Distillation's teacher (the `teacher` setting): a served-model folder run through Duet's own encoder (its
//! manifest, prompts and tokenizer; a bulk session; length-sorted, token-budget batches) over a seeded subset of
//! the training pairs (`teacher_pairs`: their queries with the query prompt, their documents with the document
//! prompt) and a pool of training documents (those, plus a seeded sample of `teacher_docs` other training
//! documents, plus the BM25 negatives of the subset). Its vectors are kept in [`cache`], so a re-run encodes
//! nothing. [`prepare`] also mines the teacher's hard negatives: per pair of the subset, the pool's document the
//! teacher scores highest that is not one of the query's documents and scores below `teacher_negative_ceiling`
//! × the positive's score (closer ones are likely unlabelled positives). [`Teacher::scores`] gives the training
//! loop the teacher's cosines over a batch's candidates, for the distillation term ([`super::distill`]).
//!
//! Only training documents are encoded or mined (never the validation ones, nor documents of no training pair).
//!
//! It may use [`crate::encoder`] (manifest, runtime, sessions), [`crate::store`] (through [`cache`]) and
//! [`crate::util`]; of the trainer, the data it reads.

pub mod cache;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::{Progress, TrainConfig, TrainError};
use crate::encoder::onnx::{self, SessionOptions};
use crate::encoder::{runtime, Encoder, Manifest, Side, Tokens};
use crate::util::jsonl::CorpusLine;
use crate::util::rng::Rng;
use cache::TeacherCache;

/// The cache file when `--teacher-cache` is not given.
pub const DEFAULT_CACHE: &str = ".cache/teacher-embeddings.db";
/// Most texts, and most padded tokens, per inference call (the server's bulk defaults).
const MAX_BATCH: usize = 32;
const MAX_BATCH_TOKENS: usize = 8192;
/// Texts encoded between two writes to the cache (an interrupted run keeps what it encoded).
const WRITE_EVERY: usize = 256;
/// The subset and the pool draw from their own seeded stream, so they do not move the trainer's.
const STREAM: u64 = 0x0074_6561_6368_6572;

/// What the teacher did, in `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TeacherReport {
    pub model: String,
    pub version: String,
    pub folder: String,
    pub cache: String,
    /// Training pairs the teacher encoded (their batches carry the distillation term).
    pub pairs: usize,
    /// Distinct queries and pool documents encoded or read from the cache.
    pub queries: usize,
    pub documents: usize,
    /// Texts run through the teacher now, and texts found in the cache.
    pub texts_encoded: usize,
    pub texts_cached: usize,
    /// Loading the teacher (its version hash reads its files) and encoding what the cache lacked.
    pub encode_seconds: f64,
    /// Pairs given a teacher-mined hard negative, and candidates skipped as likely positives.
    pub hard_negative_pairs: usize,
    pub skipped_false_negatives: usize,
    pub mining_seconds: f64,
}

/// The teacher's vectors for the training loop.
pub struct Teacher {
    /// Per training pair: its query's row in `queries`, for the pairs of the subset.
    pub pair_query: Vec<Option<usize>>,
    queries: Vec<Vec<f32>>,
    /// Corpus index → row in `documents`.
    doc_row: HashMap<usize, usize>,
    documents: Vec<Vec<f32>>,
    /// Per training pair: its teacher-mined hard negative (a corpus index).
    pub hard: Vec<Option<usize>>,
    pub report: TeacherReport,
}

impl Teacher {
    /// Whether training pair `i` was encoded by the teacher.
    pub fn has_pair(&self, i: usize) -> bool {
        self.pair_query[i].is_some()
    }

    /// The teacher's cosine of each pair of `pairs` (rows; all of the subset) with each corpus document of
    /// `columns` (all of the pool), row-major.
    pub fn scores(&self, pairs: &[usize], columns: &[u32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(pairs.len() * columns.len());
        for &i in pairs {
            let q = &self.queries[self.pair_query[i].expect("a pair of the teacher's subset")];
            for &c in columns {
                out.push(dot(q, &self.documents[self.doc_row[&(c as usize)]]));
            }
        }
        out
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// What [`prepare`] reads.
pub struct TeacherInputs<'a> {
    pub folder: &'a Path,
    pub cache: &'a Path,
    pub onnxruntime: Option<&'a Path>,
    pub corpus: &'a [CorpusLine],
    pub train: &'a [(String, usize)],
    /// Per training pair: its BM25 hard negative (added to the pool for the subset).
    pub bm25: &'a [Option<usize>],
    /// Training query → its training documents.
    pub positives: &'a HashMap<&'a str, HashSet<usize>>,
}

/// The subset of pairs (ascending indexes) and the pool of documents (ascending corpus indexes).
fn choose(inputs: &TeacherInputs, config: &TrainConfig) -> (Vec<usize>, Vec<usize>) {
    let mut rng = Rng::new(config.seed ^ STREAM);
    let train = inputs.train;
    let mut order: Vec<usize> = (0..train.len()).collect();
    rng.shuffle(&mut order);
    if config.teacher_pairs > 0 {
        order.truncate(config.teacher_pairs);
    }
    order.sort_unstable();
    let mut pool: HashSet<usize> = order.iter().map(|&i| train[i].1).collect();
    pool.extend(order.iter().filter_map(|&i| inputs.bm25.get(i).copied().flatten()));
    let mut others: Vec<usize> =
        train.iter().map(|(_, d)| *d).collect::<HashSet<_>>().into_iter().filter(|d| !pool.contains(d)).collect();
    others.sort_unstable();
    rng.shuffle(&mut others);
    pool.extend(others.into_iter().take(config.teacher_docs));
    let mut pool: Vec<usize> = pool.into_iter().collect();
    pool.sort_unstable();
    (order, pool)
}

/// Loads the teacher, encodes (or reads from the cache) the subset's queries and the pool, and mines the
/// teacher's hard negatives.
pub fn prepare(
    inputs: &TeacherInputs,
    config: &TrainConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<Teacher, TrainError> {
    progress(Progress::Phase("teacher: loading"));
    let started = Instant::now();
    let (subset, pool) = choose(inputs, config);
    let resolved = Manifest::load(inputs.folder)?;
    let env = runtime::environment(inputs.onnxruntime)?;
    let threads = candle_core::utils::get_num_threads();
    let encoder = onnx::load(&resolved, env, SessionOptions::bulk(threads))?;
    let cache = TeacherCache::open(inputs.cache)?;
    let mut query_texts: Vec<String> = Vec::new();
    let mut query_row: HashMap<&str, usize> = HashMap::new();
    let mut pair_query = vec![None; inputs.train.len()];
    for &i in &subset {
        let q = inputs.train[i].0.as_str();
        let row = *query_row.entry(q).or_insert_with(|| {
            query_texts.push(q.to_string());
            query_texts.len() - 1
        });
        pair_query[i] = Some(row);
    }
    let doc_texts: Vec<String> = pool.iter().map(|&d| inputs.corpus[d].text.clone()).collect();
    let mut counts = (0, 0);
    progress(Progress::Phase("teacher: encoding queries"));
    let queries = encode_cached(encoder.as_ref(), &cache, &query_texts, Side::Query, &mut counts)?;
    progress(Progress::Phase("teacher: encoding documents"));
    let documents = encode_cached(encoder.as_ref(), &cache, &doc_texts, Side::Document, &mut counts)?;
    let encode_seconds = started.elapsed().as_secs_f64();

    progress(Progress::Phase("teacher: mining hard negatives"));
    let mined = Instant::now();
    let doc_row: HashMap<usize, usize> = pool.iter().enumerate().map(|(row, &d)| (d, row)).collect();
    let mut hard = vec![None; inputs.train.len()];
    let mut skipped = 0;
    if config.teacher_negatives() && !pool.is_empty() {
        let ceiling = config.teacher_negative_ceiling as f32;
        let docs = matrix(&documents)?;
        for part in subset.chunks(512) {
            let rows: Vec<Vec<f32>> = part.iter().map(|&i| queries[pair_query[i].unwrap()].clone()).collect();
            let scores = matrix(&rows)?.matmul(&docs.t()?)?.to_vec2::<f32>()?;
            for (&i, row) in part.iter().zip(&scores) {
                let (query, positive) = (&inputs.train[i].0, inputs.train[i].1);
                let own = &inputs.positives[query.as_str()];
                let top = row[doc_row[&positive]];
                let limit = if top > 0.0 { ceiling * top } else { top };
                let mut best: Option<(f32, usize)> = None;
                for (col, &score) in row.iter().enumerate() {
                    let d = pool[col];
                    if own.contains(&d) {
                        continue;
                    }
                    if score >= limit {
                        skipped += 1;
                        continue;
                    }
                    if best.is_none_or(|(s, _)| score > s) {
                        best = Some((score, d));
                    }
                }
                hard[i] = best.map(|(_, d)| d);
            }
        }
    }
    let info = encoder.info();
    let report = TeacherReport {
        model: info.name.clone(),
        version: info.version.clone(),
        folder: inputs.folder.display().to_string(),
        cache: inputs.cache.display().to_string(),
        pairs: subset.len(),
        queries: queries.len(),
        documents: documents.len(),
        texts_encoded: counts.0,
        texts_cached: counts.1,
        encode_seconds,
        hard_negative_pairs: hard.iter().filter(|h| h.is_some()).count(),
        skipped_false_negatives: skipped,
        mining_seconds: mined.elapsed().as_secs_f64(),
    };
    Ok(Teacher { pair_query, queries, doc_row, documents, hard, report })
}

/// Rows as a `[n, dim]` tensor.
fn matrix(rows: &[Vec<f32>]) -> Result<Tensor, TrainError> {
    let dim = rows.first().map_or(0, Vec::len);
    Ok(Tensor::from_vec(rows.concat(), (rows.len(), dim), &Device::Cpu)?)
}

/// The teacher's vectors of `texts` on `side`, from the cache where it has them; the rest are encoded in
/// length-sorted batches of at most [`MAX_BATCH`] texts and [`MAX_BATCH_TOKENS`] padded tokens and written to the
/// cache as they come. Adds (encoded, cached) to `counts`.
fn encode_cached(
    encoder: &dyn Encoder,
    cache: &TeacherCache,
    texts: &[String],
    side: Side,
    counts: &mut (usize, usize),
) -> Result<Vec<Vec<f32>>, TrainError> {
    let info = encoder.info();
    let framed: Vec<String> = texts.iter().map(|t| info.frame(side, t)).collect();
    let keys: Vec<String> = framed.iter().map(|f| cache::key(side, f)).collect();
    let mut found = cache.get(&info.name, &info.version, &keys)?;
    found.retain(|_, v| v.len() == info.dimension && v.iter().all(|x| x.is_finite()));
    // One text per missing key (the same text twice is encoded once).
    let mut seen = HashSet::new();
    let missing: Vec<usize> =
        (0..texts.len()).filter(|&i| !found.contains_key(&keys[i]) && seen.insert(keys[i].as_str())).collect();
    counts.1 += texts.len() - missing.len();
    counts.0 += missing.len();
    let missing_texts: Vec<String> = missing.iter().map(|&i| texts[i].clone()).collect();
    let tokens = encoder.tokenize(&missing_texts, side)?;
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&k| tokens[k].len());
    let mut pending: Vec<(usize, Vec<f32>)> = Vec::new();
    for batch in batches(&order, &tokens) {
        let inputs: Vec<&Tokens> = batch.iter().map(|&k| &tokens[k]).collect();
        let vectors = encoder.infer(&inputs, side)?;
        pending.extend(batch.iter().map(|&k| missing[k]).zip(vectors));
        if pending.len() >= WRITE_EVERY {
            flush(cache, info, side, &framed, &keys, &mut pending, &mut found)?;
        }
    }
    flush(cache, info, side, &framed, &keys, &mut pending, &mut found)?;
    Ok(keys.iter().map(|k| found[k].clone()).collect())
}

/// Consecutive runs of `order` (sorted by length) within the batch limits.
fn batches<'a>(order: &'a [usize], tokens: &[Tokens]) -> Vec<&'a [usize]> {
    let mut out = Vec::new();
    let mut start = 0;
    for end in 1..=order.len() {
        let longest = tokens[order[end - 1]].len().max(1);
        let fits = end - start <= MAX_BATCH && (end - start) * longest <= MAX_BATCH_TOKENS;
        if !fits {
            out.push(&order[start..end - 1]);
            start = end - 1;
        }
    }
    if start < order.len() {
        out.push(&order[start..]);
    }
    out
}

/// Writes the vectors of `pending` (text indexes) to the cache and into `found`.
fn flush(
    cache: &TeacherCache,
    info: &crate::encoder::ModelInfo,
    side: Side,
    framed: &[String],
    keys: &[String],
    pending: &mut Vec<(usize, Vec<f32>)>,
    found: &mut HashMap<String, Vec<f32>>,
) -> Result<(), TrainError> {
    if pending.is_empty() {
        return Ok(());
    }
    let entries: Vec<(Side, &str, &[f32])> =
        pending.iter().map(|(i, v)| (side, framed[*i].as_str(), v.as_slice())).collect();
    cache.put(&info.name, &info.version, &entries)?;
    for (i, v) in pending.drain(..) {
        found.insert(keys[i].clone(), v);
    }
    Ok(())
}

/// The cache path of a run: the one given, else [`DEFAULT_CACHE`].
pub fn cache_path(given: Option<&Path>) -> PathBuf {
    given.map_or_else(|| PathBuf::from(DEFAULT_CACHE), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_to_the_limits_in_length_order() {
        let tokens: Vec<Tokens> = [3usize, 3000, 3000, 5, 9000, 2]
            .iter()
            .map(|&n| Tokens { ids: vec![1; n], type_ids: vec![0; n], truncated: false })
            .collect();
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&k| tokens[k].len());
        let got = batches(&order, &tokens);
        // Three short texts; two of 3000 tokens (a third would pass 8192); one longer than the budget goes alone.
        assert_eq!(got, [&[5, 0, 3][..], &[1, 2][..], &[4][..]]);
        let many: Vec<Tokens> = (0..70).map(|_| Tokens { ids: vec![1; 4], ..Default::default() }).collect();
        let order: Vec<usize> = (0..70).collect();
        assert_eq!(batches(&order, &many).iter().map(|b| b.len()).collect::<Vec<_>>(), [32, 32, 6]);
    }
}
