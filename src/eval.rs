//! Offline evaluation: held-out (query, result) pairs run through the same engine and search path the server
//! uses, scored per model with recall@k, MRR@10 and nDCG@10, by exact search and by HNSW as served (so index
//! error is told apart from embedding quality). Embeddings are cached in the evaluation's store, so a re-run
//! only encodes what it has not seen.
//!
//! Data folder layout (as in `duet mine` output and `../shared/data`): `corpus.jsonl` (`{"id","text"}`) and
//! `test.jsonl` (`{"query","doc_id"}`). A corpus sample (`max_docs`) always keeps every relevant document.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::{Engine, SearchQuery};
use crate::store::NewDocument;

#[derive(Debug, Deserialize)]
struct CorpusLine {
    id: String,
    text: String,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pair {
    pub query: String,
    pub doc_id: String,
}

/// Rank (1-based) of the first relevant id in `ranked`, if any.
pub fn first_relevant_rank(ranked: &[String], relevant: &HashSet<String>) -> Option<usize> {
    ranked.iter().position(|id| relevant.contains(id)).map(|i| i + 1)
}

/// Reciprocal rank of the first relevant result within the first `k`.
pub fn reciprocal_rank(ranked: &[String], relevant: &HashSet<String>, k: usize) -> f64 {
    match first_relevant_rank(ranked, relevant) {
        Some(rank) if rank <= k => 1.0 / rank as f64,
        _ => 0.0,
    }
}

/// Share of the relevant ids found in the first `k`.
pub fn recall_at(ranked: &[String], relevant: &HashSet<String>, k: usize) -> f64 {
    if relevant.is_empty() {
        return 0.0;
    }
    let found = ranked.iter().take(k).filter(|id| relevant.contains(*id)).count();
    found as f64 / relevant.len() as f64
}

/// nDCG@k with graded gains (`gain` of an id, 0 when absent), exponential gain 2^g - 1.
pub fn ndcg_at(ranked: &[String], gains: &HashMap<String, f64>, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, id)| (2f64.powf(*gains.get(id).unwrap_or(&0.0)) - 1.0) / (i as f64 + 2.0).log2())
        .sum();
    let mut ideal: Vec<f64> = gains.values().copied().filter(|g| *g > 0.0).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 =
        ideal.iter().take(k).enumerate().map(|(i, g)| (2f64.powf(*g) - 1.0) / (i as f64 + 2.0).log2()).sum();
    if idcg == 0.0 {
        0.0
    } else {
        dcg / idcg
    }
}

fn seeded_order(key: &str, seed: u64) -> [u8; 32] {
    Sha256::new().chain_update(seed.to_le_bytes()).chain_update(key.as_bytes()).finalize().into()
}

/// Evaluation settings.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub data: PathBuf,
    /// Corpus sample size (every relevant document is kept); `None` for the whole corpus.
    pub max_docs: Option<usize>,
    /// Test queries used (a seeded sample); `None` for all.
    pub max_queries: Option<usize>,
    pub ks: Vec<usize>,
    pub seed: u64,
}

/// Scores of one model with one search method.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub model: String,
    pub method: String,
    pub queries: usize,
    pub mrr_at_10: f64,
    pub ndcg_at_10: f64,
    pub recall: BTreeMap<String, f64>,
    pub query_ms_p50: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub data: String,
    pub corpus_documents: usize,
    pub corpus_total: usize,
    pub queries: usize,
    pub seed: u64,
    pub scores: Vec<Scores>,
}

/// Reads the data folder and samples it.
pub fn load(options: &EvalOptions) -> anyhow::Result<(Vec<NewDocument>, usize, Vec<Pair>)> {
    let read_lines = |name: &str| -> anyhow::Result<Vec<String>> {
        let path = options.data.join(name);
        let file = std::fs::File::open(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(std::io::BufReader::new(file).lines().collect::<Result<Vec<_>, _>>()?)
    };
    let mut pairs: Vec<Pair> = read_lines("test.jsonl")?
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    pairs.sort_by_key(|p| seeded_order(&format!("{}\u{0}{}", p.query, p.doc_id), options.seed));
    if let Some(n) = options.max_queries {
        pairs.truncate(n);
    }
    let relevant: HashSet<&str> = pairs.iter().map(|p| p.doc_id.as_str()).collect();
    let mut documents: Vec<NewDocument> = Vec::new();
    for line in read_lines("corpus.jsonl")?.iter().filter(|l| !l.trim().is_empty()) {
        let c: CorpusLine = serde_json::from_str(line)?;
        documents.push(NewDocument {
            id: c.id,
            text: c.text,
            metadata: c.metadata.unwrap_or_else(|| serde_json::json!({})),
        });
    }
    let total = documents.len();
    if let Some(max) = options.max_docs {
        // Relevant documents first, then the rest in a seeded order.
        documents.sort_by_key(|d| (!relevant.contains(d.id.as_str()), seeded_order(&d.id, options.seed)));
        documents.truncate(max.max(relevant.len()));
    }
    let kept: HashSet<&str> = documents.iter().map(|d| d.id.as_str()).collect();
    pairs.retain(|p| kept.contains(p.doc_id.as_str()));
    documents.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((documents, total, pairs))
}

/// Runs every query of `pairs` against every model of `engine`, exact and as served.
pub async fn score(
    engine: &Engine,
    pairs: &[Pair],
    ks: &[usize],
    mut on_query: impl FnMut(&str, usize),
) -> anyhow::Result<Vec<Scores>> {
    // A query may have several relevant documents.
    let mut relevant: BTreeMap<&str, HashSet<String>> = BTreeMap::new();
    for p in pairs {
        relevant.entry(p.query.as_str()).or_default().insert(p.doc_id.clone());
    }
    let k_max = ks.iter().copied().max().unwrap_or(10).max(10);
    let mut out = Vec::new();
    for model in engine.models().keys() {
        for exact in [true, false] {
            let mut rr = 0.0;
            let mut ndcg = 0.0;
            let mut recall: BTreeMap<usize, f64> = ks.iter().map(|k| (*k, 0.0)).collect();
            let mut times = Vec::with_capacity(relevant.len());
            let mut method = String::new();
            for (i, (query, rel)) in relevant.iter().enumerate() {
                let started = Instant::now();
                let result = engine
                    .search(SearchQuery { model: model.clone(), query: query.to_string(), k: k_max, ef: None, exact })
                    .await?;
                times.push(started.elapsed().as_secs_f64() * 1e3);
                method = result.method.as_str().to_string();
                let ranked: Vec<String> = result.hits.iter().map(|(h, _)| h.id.to_string()).collect();
                rr += reciprocal_rank(&ranked, rel, 10);
                let gains: HashMap<String, f64> = rel.iter().map(|id| (id.clone(), 1.0)).collect();
                ndcg += ndcg_at(&ranked, &gains, 10);
                for (k, r) in recall.iter_mut() {
                    *r += recall_at(&ranked, rel, *k);
                }
                on_query(model, i + 1);
            }
            let n = relevant.len().max(1) as f64;
            times.sort_by(f64::total_cmp);
            out.push(Scores {
                model: model.clone(),
                method,
                queries: relevant.len(),
                mrr_at_10: rr / n,
                ndcg_at_10: ndcg / n,
                recall: recall.into_iter().map(|(k, r)| (format!("@{k}"), r / n)).collect(),
                query_ms_p50: times.get(times.len() / 2).copied().unwrap_or(0.0),
            });
        }
    }
    Ok(out)
}

/// The report as a Markdown table.
pub fn markdown(report: &EvalReport) -> String {
    let mut out = format!(
        "Data: `{}` — {} of {} documents, {} queries (seed {}).\n\n",
        report.data, report.corpus_documents, report.corpus_total, report.queries, report.seed
    );
    let ks: Vec<String> = report.scores.first().map(|s| s.recall.keys().cloned().collect()).unwrap_or_default();
    out += &format!(
        "| model | search | MRR@10 | nDCG@10 | {} | p50 ms |\n",
        ks.iter().map(|k| format!("R{k}")).collect::<Vec<_>>().join(" | ")
    );
    out += &format!("|---|---|---|---|{}---|\n", "---|".repeat(ks.len()));
    for s in &report.scores {
        let recalls: Vec<String> = s.recall.values().map(|r| format!("{r:.3}")).collect();
        out += &format!(
            "| {} | {} | {:.3} | {:.3} | {} | {:.1} |\n",
            s.model,
            s.method,
            s.mrr_at_10,
            s.ndcg_at_10,
            recalls.join(" | "),
            s.query_ms_p50
        );
    }
    out
}

/// Where a named model lives: a folder path as given, else `models/<name>`.
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

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn set(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reciprocal_rank_and_recall_by_hand() {
        let ranked = ids(&["a", "b", "c", "d"]);
        assert_eq!(reciprocal_rank(&ranked, &set(&["c"]), 10), 1.0 / 3.0);
        assert_eq!(reciprocal_rank(&ranked, &set(&["c"]), 2), 0.0, "beyond the cut-off counts nothing");
        assert_eq!(reciprocal_rank(&ranked, &set(&["z"]), 10), 0.0);
        assert_eq!(reciprocal_rank(&ranked, &set(&["d", "b"]), 10), 0.5, "the first relevant counts");
        assert_eq!(recall_at(&ranked, &set(&["b", "d", "z"]), 2), 1.0 / 3.0);
        assert_eq!(recall_at(&ranked, &set(&["b", "d", "z"]), 4), 2.0 / 3.0);
    }

    #[test]
    fn samples_keep_every_relevant_document_and_are_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let corpus: String = (0..100).map(|i| format!("{{\"id\":\"d{i}\",\"text\":\"t{i}\"}}\n")).collect();
        std::fs::write(dir.path().join("corpus.jsonl"), corpus).unwrap();
        let test: String = (0..30).map(|i| format!("{{\"query\":\"q{i}\",\"doc_id\":\"d{}\"}}\n", i * 3)).collect();
        std::fs::write(dir.path().join("test.jsonl"), test).unwrap();
        let options =
            EvalOptions { data: dir.path().into(), max_docs: Some(40), max_queries: Some(20), ks: vec![10], seed: 1 };
        let (docs, total, pairs) = load(&options).unwrap();
        assert_eq!((docs.len(), total, pairs.len()), (40, 100, 20));
        let ids: HashSet<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        assert!(pairs.iter().all(|p| ids.contains(p.doc_id.as_str())), "relevant documents are always kept");
        let (again, _, pairs_again) = load(&options).unwrap();
        assert_eq!(again.iter().map(|d| &d.id).collect::<Vec<_>>(), docs.iter().map(|d| &d.id).collect::<Vec<_>>());
        assert_eq!(pairs_again.len(), 20);
        let other = load(&EvalOptions { seed: 2, ..options }).unwrap().0;
        assert_ne!(other.iter().map(|d| &d.id).collect::<Vec<_>>(), docs.iter().map(|d| &d.id).collect::<Vec<_>>());
    }

    #[test]
    fn ndcg_by_hand_binary_and_graded() {
        let ranked = ids(&["a", "b", "c"]);
        // One relevant at rank 2: DCG = 1/log2(3), IDCG = 1.
        let gains: HashMap<String, f64> = [("b".to_string(), 1.0)].into();
        assert!((ndcg_at(&ranked, &gains, 10) - 1.0 / 3f64.log2()).abs() < 1e-12);
        // Graded: a=1, c=2. DCG = 1/1 + 3/2 = 2.5; ideal order c,a: 3/1 + 1/log2(3).
        let gains: HashMap<String, f64> = [("a".to_string(), 1.0), ("c".to_string(), 2.0)].into();
        let expected = 2.5 / (3.0 + 1.0 / 3f64.log2());
        assert!((ndcg_at(&ranked, &gains, 10) - expected).abs() < 1e-12);
        assert_eq!(ndcg_at(&ranked, &HashMap::new(), 10), 0.0);
    }
}
