//! The trainer's data stages, before any weight exists: [`read`] the corpus and the pairs, [`split`] off a
//! validation slice held out by source (with the documents it is ranked against), [`encode`] every text the
//! training and validation need into token ids, and [`mine`] BM25 hard negatives among the training documents.
//! The test split is never read here.
//!
//! It may use [`crate::util`] (JSONL, the seeded [`Rng`]), [`crate::lexical`] (BM25) and the tokenizer.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::fit::Validation;
use super::{report, tokenizer, Progress, TrainConfig, TrainError, TrainOptions};
use crate::util::jsonl::{self, CorpusLine, PairLine};
use crate::util::rng::Rng;

/// The corpus and the pairs whose document it holds.
pub struct Data {
    pub corpus: Vec<CorpusLine>,
    /// `(query, corpus index)`, in file order.
    pub pairs: Vec<(String, usize)>,
    pub pairs_read: usize,
    /// Pairs dropped because the corpus has no document of their id.
    pub pairs_without_document: usize,
}

/// Reads `options.corpus` (document ids must be distinct) and `options.pairs`, keeping the pairs whose document
/// is in the corpus; fails when too few are left to make a batch.
pub fn read(options: &TrainOptions) -> Result<Data, TrainError> {
    let corpus: Vec<CorpusLine> = jsonl::read(&options.corpus)?;
    let mut doc_index: HashMap<&str, usize> = HashMap::with_capacity(corpus.len());
    for (i, d) in corpus.iter().enumerate() {
        if doc_index.insert(d.id.as_str(), i).is_some() {
            return Err(TrainError::Config(format!("{}: duplicate document id {:?}", options.corpus.display(), d.id)));
        }
    }
    let raw_pairs: Vec<PairLine> = jsonl::read(&options.pairs)?;
    let pairs_read = raw_pairs.len();
    let pairs: Vec<(String, usize)> =
        raw_pairs.into_iter().filter_map(|p| doc_index.get(p.doc_id.as_str()).map(|&d| (p.query, d))).collect();
    let pairs_without_document = pairs_read - pairs.len();
    if pairs.len() < options.config.batch_size.min(2) + 1 {
        return Err(TrainError::Config(format!(
            "{} pairs with a document in the corpus; at least a few are needed",
            pairs.len()
        )));
    }
    Ok(Data { corpus, pairs, pairs_read, pairs_without_document })
}

/// The source of a document id, the unit the validation slice holds out: the part before `::` (`pkg/file.py::func`
/// → `pkg/file.py`); else the part before `#` without its leading folders (`linux/tar#3` → `tar`, every platform
/// page of a command); else the whole id (one Debian package).
pub fn source_group(doc_id: &str) -> &str {
    if let Some((file, _)) = doc_id.split_once("::") {
        return file;
    }
    if let Some((page, _)) = doc_id.split_once('#') {
        return page.rsplit('/').next().unwrap_or(page);
    }
    doc_id
}

/// The training pairs, the validation pairs, and the documents validation ranks.
pub struct Split {
    pub train: Vec<(String, usize)>,
    pub validation: Vec<(String, usize)>,
    /// Corpus indexes of the validation candidates: every validation document (ascending), then a seeded sample
    /// of the rest of the corpus.
    pub candidates: Vec<usize>,
}

/// Holds out a seeded slice of `pairs` by source (see [`source_group`]): no validation document, nor any document
/// from the same source file or command, is seen in training — as in the test splits, so early stopping tracks
/// test quality. Draws from `rng`: the order of the sources, then the sample of other candidates.
pub fn split(
    corpus: &[CorpusLine],
    pairs: Vec<(String, usize)>,
    config: &TrainConfig,
    rng: &mut Rng,
) -> Result<Split, TrainError> {
    let group_of = |d: usize| -> &str {
        if config.validation_by_source {
            source_group(&corpus[d].id)
        } else {
            &corpus[d].id
        }
    };
    let mut group_pairs: HashMap<&str, usize> = HashMap::new();
    for (_, d) in &pairs {
        *group_pairs.entry(group_of(*d)).or_default() += 1;
    }
    let mut groups: Vec<&str> = group_pairs.keys().copied().collect();
    groups.sort_unstable();
    rng.shuffle(&mut groups);
    let wanted = ((pairs.len() as f64 * config.validation_fraction) as usize).min(config.max_validation_pairs);
    let mut validation_groups = HashSet::new();
    let mut held = 0;
    for g in &groups {
        if held >= wanted {
            break;
        }
        // A source too big for what is left is skipped (one huge file must not take the whole slice).
        if held > 0 && held + group_pairs[g] > wanted + wanted / 4 {
            continue;
        }
        validation_groups.insert(*g);
        held += group_pairs[g];
    }
    let validation_docs: HashSet<usize> =
        pairs.iter().map(|(_, d)| *d).filter(|d| validation_groups.contains(group_of(*d))).collect();
    let (validation, train): (Vec<_>, Vec<_>) = pairs.into_iter().partition(|(_, d)| validation_docs.contains(d));
    if train.len() < 2 {
        return Err(TrainError::Config("fewer than 2 training pairs after the validation split".into()));
    }

    // Candidates for validation: every validation document plus a seeded sample of the rest of the corpus.
    let mut candidates: Vec<usize> = validation_docs.iter().copied().collect();
    candidates.sort_unstable();
    let mut others: Vec<usize> = (0..corpus.len()).filter(|i| !validation_docs.contains(i)).collect();
    rng.shuffle(&mut others);
    others.truncate(config.validation_candidates.saturating_sub(candidates.len()));
    candidates.extend(others);
    Ok(Split { train, validation, candidates })
}

/// The token ids training and validation read.
pub struct Encoded {
    /// Per corpus index: the document's token ids (empty for a document neither training nor validation uses).
    pub docs: Vec<Vec<u32>>,
    /// Per training pair: the query's token ids.
    pub queries: Vec<Vec<u32>>,
    pub validation: Validation,
    pub mean_query_tokens: f64,
    pub mean_document_tokens: f64,
}

/// Tokenizes the training queries, the documents of the training pairs and the validation candidates, and the
/// distinct validation queries with their relevant candidates.
pub fn encode(
    tok: &tokenizers::Tokenizer,
    corpus: &[CorpusLine],
    split: &Split,
    max_tokens: usize,
) -> Result<Encoded, TrainError> {
    let Split { train, validation: validation_pairs, candidates } = split;
    let mut needed: Vec<usize> =
        train.iter().map(|(_, d)| *d).chain(candidates.iter().copied()).collect::<HashSet<_>>().into_iter().collect();
    needed.sort_unstable();
    let needed_texts: Vec<&str> = needed.iter().map(|&i| corpus[i].text.as_str()).collect();
    let encoded = tokenizer::encode_all(tok, &needed_texts, max_tokens)?;
    let mut docs: Vec<Vec<u32>> = vec![Vec::new(); corpus.len()];
    for (i, ids) in needed.iter().zip(encoded) {
        docs[*i] = ids;
    }
    let train_queries: Vec<&str> = train.iter().map(|(q, _)| q.as_str()).collect();
    let queries = tokenizer::encode_all(tok, &train_queries, max_tokens)?;
    let candidate_position: HashMap<usize, usize> = candidates.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    let grouped = report::group_by_query(
        &validation_pairs.iter().map(|(q, d)| (q.clone(), candidate_position[d])).collect::<Vec<_>>(),
    );
    let grouped_texts: Vec<&str> = grouped.iter().map(|(q, _)| q.as_str()).collect();
    let validation = Validation {
        queries: tokenizer::encode_all(tok, &grouped_texts, max_tokens)?
            .into_iter()
            .zip(grouped.into_iter().map(|(_, r)| r))
            .collect(),
        candidates: candidates.clone(),
        pairs: validation_pairs.len(),
    };
    let mean_len = |v: &mut dyn Iterator<Item = usize>, n: usize| v.sum::<usize>() as f64 / n.max(1) as f64;
    let mean_query_tokens = mean_len(&mut queries.iter().map(Vec::len), queries.len());
    let mean_document_tokens = mean_len(&mut train.iter().map(|(_, d)| docs[*d].len()), train.len());
    Ok(Encoded { docs, queries, validation, mean_query_tokens, mean_document_tokens })
}

/// Per training pair, its hard negative, and each training query's documents (which are not negatives of it).
pub struct Negatives<'a> {
    /// Training query text → corpus indexes of its training documents.
    pub positives: HashMap<&'a str, HashSet<usize>>,
    /// Per training pair: the corpus index of its hard negative, if one was mined.
    pub hard: Vec<Option<usize>>,
    pub seconds: f64,
}

impl Negatives<'_> {
    /// Training pairs given a hard negative.
    pub fn pairs(&self) -> usize {
        self.hard.iter().filter(|h| h.is_some()).count()
    }
}

/// Hard negatives (with `config.hard_negatives`, or `negatives` bm25 or both): BM25 over the training documents, never the validation ones.
pub fn mine<'a>(
    corpus: &[CorpusLine],
    train: &'a [(String, usize)],
    config: &TrainConfig,
    progress: &mut dyn FnMut(Progress),
) -> Negatives<'a> {
    let started = Instant::now();
    let mut positives: HashMap<&str, HashSet<usize>> = HashMap::new();
    for (q, d) in train {
        positives.entry(q.as_str()).or_default().insert(*d);
    }
    let hard: Vec<Option<usize>> = if config.bm25_negatives() {
        progress(Progress::Phase("mining hard negatives"));
        let mut train_docs: Vec<usize> = train.iter().map(|(_, d)| *d).collect();
        train_docs.sort_unstable();
        train_docs.dedup();
        let all_texts: Vec<&str> = corpus.iter().map(|d| d.text.as_str()).collect();
        let train_queries: Vec<&str> = train.iter().map(|(q, _)| q.as_str()).collect();
        mine_hard_negatives(&train_queries, &positives, &train_docs, &all_texts, candle_core::utils::get_num_threads())
    } else {
        vec![None; train.len()]
    };
    Negatives { positives, hard, seconds: started.elapsed().as_secs_f64() }
}

/// Per training pair, the best BM25 document among `candidates` (corpus indexes) that is not a document of the
/// pair's query (`positives`, by query text), if any shares a word with the query. Queries are searched on
/// `threads` threads, each query on its own: the result does not depend on the thread count.
pub fn mine_hard_negatives(
    queries: &[&str],
    positives: &HashMap<&str, HashSet<usize>>,
    candidates: &[usize],
    texts: &[&str],
    threads: usize,
) -> Vec<Option<usize>> {
    use crate::lexical::{Bm25Index, Bm25Params};
    let ids: Vec<String> = candidates.iter().map(|c| c.to_string()).collect();
    let index =
        Bm25Index::build(ids.iter().zip(candidates).map(|(id, &c)| (id.as_str(), texts[c])), Bm25Params::default());
    let mine = |query: &str| -> Option<usize> {
        let own = positives.get(query);
        let wanted = own.map_or(0, HashSet::len) + 1;
        index
            .search(query, wanted)
            .into_iter()
            .map(|(id, _)| id.parse::<usize>().expect("ids are corpus indexes"))
            .find(|d| own.is_none_or(|p| !p.contains(d)))
    };
    let threads = threads.max(1);
    let chunk = queries.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = queries
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|q| mine(q)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("mining thread")).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_holds_out_whole_sources() {
        assert_eq!(source_group("numpy-1.26/numpy/linalg.py::norm"), "numpy-1.26/numpy/linalg.py");
        assert_eq!(source_group("linux/tar#3"), "tar");
        assert_eq!(source_group("common/tar#1"), "tar");
        assert_eq!(source_group("2048-qt"), "2048-qt");
    }

    #[test]
    fn hard_negatives_are_the_best_bm25_document_that_is_not_the_querys_own() {
        let texts = [
            "parse http header fields",      // 0: positive of q0
            "parse http header and cookies", // 1: the best other match for q0
            "write a csv file",              // 2: positive of q1
            "read a csv file quickly",       // 3
            "unrelated words only",          // 4: also a positive of q0 (the same query twice)
        ];
        let queries = ["parse the http header", "write csv file", "parse the http header", "zzz"];
        let mut positives: HashMap<&str, HashSet<usize>> = HashMap::new();
        positives.entry(queries[0]).or_default().extend([0, 4]);
        positives.entry(queries[1]).or_default().insert(2);
        positives.entry(queries[3]).or_default().insert(3);
        let candidates = [0, 1, 2, 3, 4];
        let one = mine_hard_negatives(&queries, &positives, &candidates, &texts, 1);
        assert_eq!(one, [Some(1), Some(3), Some(1), None]);
        assert_eq!(mine_hard_negatives(&queries, &positives, &candidates, &texts, 3), one, "thread count");
        // Only candidates are mined (the validation documents are never among them).
        let without = mine_hard_negatives(&queries, &positives, &[0, 2, 3], &texts, 2);
        assert_eq!(without, [None, Some(3), None, None], "no other candidate shares a word with q0");
    }
}
