//! The evaluation report: its structure (written as `report.json`) and its Markdown rendering (`report.md`) —
//! the side-by-side table with confidence intervals, the paired tests, embedding quality and costs.

use serde::Serialize;

use super::cost::ModelCost;
use super::quality::EmbeddingQuality;
use super::stats::{Interval, PairedComparison, Resampling};

/// Recall at one cut-off.
#[derive(Debug, Clone, Serialize)]
pub struct RecallAt {
    pub k: usize,
    pub recall: Interval,
}

/// One system (a model with one search method, or BM25) over the test queries.
#[derive(Debug, Clone, Serialize)]
pub struct SystemScores {
    /// Model name, or `bm25`.
    pub system: String,
    /// `exact`, `hnsw` (as served) or `lexical`.
    pub method: String,
    pub queries: usize,
    pub mrr_at_10: Interval,
    pub ndcg_at_10: Interval,
    pub recall: Vec<RecallAt>,
    /// Mean recall at every k from 1 (index 0) to the largest cut-off.
    pub recall_curve: Vec<f64>,
    /// Whole query as served (encode, search, fetch), milliseconds.
    pub query_ms_p50: f64,
    pub query_ms_p99: f64,
}

impl SystemScores {
    /// `model` or `model (hnsw)`: the name used in comparisons and plots.
    pub fn label(&self) -> String {
        label(&self.system, &self.method)
    }
}

pub fn label(system: &str, method: &str) -> String {
    if method == "hnsw" {
        format!("{system} (hnsw)")
    } else {
        system.to_string()
    }
}

/// A whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Data folder and its name.
    pub data: String,
    pub set: String,
    pub corpus_documents: usize,
    pub corpus_total: usize,
    pub queries: usize,
    pub seed: u64,
    /// Whether relevance came graded from a qrels file.
    pub graded: bool,
    pub ks: Vec<usize>,
    pub resampling: Resampling,
    pub scores: Vec<SystemScores>,
    /// Every pair of systems (models by exact search, and BM25), on MRR@10 and nDCG@10.
    pub comparisons: Vec<PairedComparison>,
    pub quality: Vec<EmbeddingQuality>,
    pub cost: Vec<ModelCost>,
    /// Wall time of the evaluation, seconds.
    pub seconds: f64,
}

fn ci(i: &Interval) -> String {
    format!("{:.3} [{:.3}, {:.3}]", i.mean, i.low, i.high)
}

fn p_value(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".to_string()
    } else {
        format!("{p:.3}")
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// The side-by-side table alone (what the README quotes).
pub fn scores_table(report: &EvalReport) -> String {
    let ks: Vec<String> =
        report.scores.first().map(|s| s.recall.iter().map(|r| format!("R@{}", r.k)).collect()).unwrap_or_default();
    let mut out = format!(
        "| system | search | MRR@10 [95 % CI] | nDCG@10 [95 % CI] | {} | query p50 / p99 ms |\n",
        ks.join(" | ")
    );
    out += &format!("|---|---|---|---|{}---|\n", "---|".repeat(ks.len()));
    for s in &report.scores {
        let recalls: Vec<String> = s.recall.iter().map(|r| format!("{:.3}", r.recall.mean)).collect();
        out += &format!(
            "| {} | {} | {} | {} | {} | {:.2} / {:.2} |\n",
            s.system,
            s.method,
            ci(&s.mrr_at_10),
            ci(&s.ndcg_at_10),
            recalls.join(" | "),
            s.query_ms_p50,
            s.query_ms_p99
        );
    }
    out
}

/// The paired comparisons on one metric.
pub fn comparisons_table(report: &EvalReport, metric: &str) -> String {
    let mut out = format!(
        "| A vs B | {metric} A | {metric} B | A − B [95 % CI] | p | p (Holm) | A wins / ties / B wins |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for c in report.comparisons.iter().filter(|c| c.metric == metric) {
        out += &format!(
            "| {} vs {} | {:.3} | {:.3} | {:+.3} [{:+.3}, {:+.3}] | {} | {} | {} / {} / {} |\n",
            c.a,
            c.b,
            c.mean_a,
            c.mean_b,
            c.difference.mean,
            c.difference.low,
            c.difference.high,
            p_value(c.p_value),
            p_value(c.p_holm),
            c.wins,
            c.ties,
            c.losses
        );
    }
    out
}

/// The report as Markdown.
pub fn markdown(report: &EvalReport) -> String {
    let r = &report.resampling;
    let mut out = format!(
        "# Evaluation: {}\n\n`{}`: {} of {} documents (a seeded sample keeping every relevant document), {} test \
         queries, seed {}; relevance {}. Intervals: percentile bootstrap over queries ({} resamples, {:.0} %). \
         Paired tests: randomisation (sign-flip) test with {} permutations, two-sided, Holm-adjusted over all \
         comparisons; wins / ties / losses count queries. {:.0} s in all.\n\n",
        report.set,
        report.data,
        report.corpus_documents,
        report.corpus_total,
        report.queries,
        report.seed,
        if report.graded { "graded by qrels.tsv" } else { "binary, from test.jsonl" },
        r.bootstrap_resamples,
        r.confidence * 100.0,
        r.permutations,
        report.seconds
    );
    out += "## Retrieval quality\n\n`exact` is brute-force search over the model's vectors (embedding quality alone); \
            `hnsw` is the index as served (the gap between the two is index error). Query times include encoding \
            the query.\n\n";
    out += &scores_table(report);
    if !report.comparisons.is_empty() {
        out += "\n## Paired comparisons (exact search and BM25)\n\n";
        out += &comparisons_table(report, "MRR@10");
        out += "\n";
        out += &comparisons_table(report, "nDCG@10");
    }
    if !report.quality.is_empty() {
        out += "\n## Embedding quality beyond ranks\n\nOn unit vectors. Alignment: mean ‖q − d‖² of positive pairs \
                (lower is better). Uniformity: log E exp(−2‖x − y‖²) over random document pairs (lower is more \
                spread). Anisotropy: mean cosine of random document pairs. Gap: positive score − best negative \
                score, per query; \"first\": share of queries whose positive beats every other document.\n\n";
        out += "| model | queries | alignment | uniformity | anisotropy | positive | best negative | random negative \
                | gap | first |\n|---|---|---|---|---|---|---|---|---|---|\n";
        for q in &report.quality {
            out += &format!(
                "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {:.3} |\n",
                q.model,
                q.queries,
                q.alignment,
                q.uniformity,
                q.anisotropy,
                q.positive_mean,
                q.best_negative_mean,
                q.random_negative_mean,
                q.score_gap_mean,
                q.positive_first
            );
        }
    }
    if !report.cost.is_empty() {
        out += "\n## Compute cost\n\nEncoding: documents per second on this machine (BM25: documents indexed per \
                second). Query: encode + search + fetch through the engine, HNSW as served (BM25: tokenise + score). \
                Index memory: an estimate (flat vectors + the graph's copy + links; BM25: postings).\n\n";
        out += "| model | dimension | encode docs/s (sample) | query p50 ms | query p99 ms | index MB | model MB |\n\
                |---|---|---|---|---|---|---|\n";
        for c in &report.cost {
            out += &format!(
                "| {} | {} | {:.1} ({}) | {:.2} | {:.2} | {} | {} |\n",
                c.model,
                c.dimension,
                c.encode_docs_per_second,
                c.encode_sample,
                c.query_ms_p50,
                c.query_ms_p99,
                megabytes(c.index_bytes),
                megabytes(c.model_bytes)
            );
        }
    }
    out += "\n## Plots\n\n![recall@k](recall_at_k.svg)\n";
    if !report.quality.is_empty() {
        out += "\n![score distributions](scores.svg)\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(mean: f64) -> Interval {
        Interval { mean, low: mean - 0.01, high: mean + 0.01 }
    }

    #[test]
    fn markdown_has_every_table() {
        let scores = SystemScores {
            system: "m".into(),
            method: "exact".into(),
            queries: 3,
            mrr_at_10: interval(0.5),
            ndcg_at_10: interval(0.6),
            recall: vec![RecallAt { k: 10, recall: interval(0.7) }],
            recall_curve: vec![0.5, 0.7],
            query_ms_p50: 1.0,
            query_ms_p99: 2.0,
        };
        let comparison = PairedComparison {
            a: "m".into(),
            b: "bm25".into(),
            metric: "MRR@10".into(),
            queries: 3,
            mean_a: 0.5,
            mean_b: 0.4,
            difference: interval(0.1),
            p_value: 0.0004,
            p_holm: 0.0008,
            wins: 2,
            ties: 1,
            losses: 0,
        };
        let report = EvalReport {
            data: "d".into(),
            set: "s".into(),
            corpus_documents: 10,
            corpus_total: 20,
            queries: 3,
            seed: 1,
            graded: false,
            ks: vec![10],
            resampling: Resampling::default(),
            scores: vec![scores],
            comparisons: vec![comparison],
            quality: vec![],
            cost: vec![],
            seconds: 1.0,
        };
        let md = markdown(&report);
        assert!(
            md.contains("| m | exact | 0.500 [0.490, 0.510] | 0.600 [0.590, 0.610] | 0.700 | 1.00 / 2.00 |"),
            "{md}"
        );
        assert!(md.contains("| m vs bm25 | 0.500 | 0.400 | +0.100 [+0.090, +0.110] | < 0.001 | < 0.001 | 2 / 1 / 0 |"));
        assert!(md.contains("10 of 20 documents"));
        assert_eq!(label("m", "hnsw"), "m (hnsw)");
    }
}
