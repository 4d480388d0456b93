//! What `duet train` writes beside the model (`report.json`) and prints (the `Display` of its reports), and the
//! validation metrics it is built from.
//!
//! It may use the settings ([`TrainConfig`]) and the teacher's report, which the report repeats; nothing else of
//! the trainer.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::teacher::TeacherReport;
use super::{TrainConfig, TrainError};

/// One epoch's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub mean_loss: f64,
    pub validation_recall_at_10: f64,
    pub validation_mrr_at_10: f64,
    pub seconds: f64,
    /// With a teacher: the mean distillation term (KL, before its weight) over the batches that carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distill_loss: Option<f64>,
}

/// `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub name: String,
    pub pairs_file: String,
    pub corpus_file: String,
    /// Pairs read, pairs used for training, pairs held out for validation, pairs whose document is missing.
    pub pairs_read: usize,
    pub train_pairs: usize,
    pub validation_pairs: usize,
    pub pairs_without_document: usize,
    pub corpus_documents: usize,
    /// Documents searched by each validation query (every validation document plus a seeded sample).
    pub validation_candidates: usize,
    /// Recall@10 and MRR@10 of the selected (best) epoch on the validation pairs.
    pub validation_recall_at_10: f64,
    pub validation_mrr_at_10: f64,
    /// What random ranking would score: recall@10 = 10 / candidates.
    pub validation_recall_at_10_chance: f64,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub vocabulary: usize,
    /// Training pairs given a BM25 hard negative, and the seconds spent mining them (outside `training_seconds`).
    pub hard_negative_pairs: usize,
    pub mining_seconds: f64,
    /// Trained weights (both towers).
    pub parameters: usize,
    /// Fixed weights: the lexical channel's table (shared by the towers, never trained).
    pub fixed_parameters: usize,
    /// Whole command: tokenizer training, tokenization, training, validation and export.
    pub total_seconds: f64,
    pub tokenizer_seconds: f64,
    /// Optimisation steps only (validation excluded).
    pub training_seconds: f64,
    /// Training pairs processed per second of `training_seconds`.
    pub pairs_per_second: f64,
    pub threads: usize,
    pub mean_query_tokens: f64,
    pub mean_document_tokens: f64,
    pub epochs: Vec<EpochReport>,
    /// With a teacher: what it encoded (and what came from its cache) and mined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teacher: Option<TeacherReport>,
    pub config: TrainConfig,
}

impl TrainReport {
    /// Writes `report.json` (pretty JSON) into the folder `out`.
    pub fn write(&self, out: &Path) -> Result<(), TrainError> {
        let path = out.join("report.json");
        let json = serde_json::to_string_pretty(self)? + "\n";
        Ok(crate::util::fs::write(&path, json)?)
    }
}

/// The one-line summary `duet train` prints at the end.
impl fmt::Display for TrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "best epoch {} of {}, validation recall@10 {:.3} MRR@10 {:.3} (chance {:.4}), {} parameters (+ {} fixed), \
             {:.0} pairs/s, {:.1} s in all",
            self.best_epoch,
            self.epochs_run,
            self.validation_recall_at_10,
            self.validation_mrr_at_10,
            self.validation_recall_at_10_chance,
            self.parameters,
            self.fixed_parameters,
            self.pairs_per_second,
            self.total_seconds
        )?;
        if let Some(t) = &self.teacher {
            write!(
                f,
                "; teacher {}: {} pairs, {} texts encoded and {} from the cache in {:.1} s, {} hard negatives",
                t.model, t.pairs, t.texts_encoded, t.texts_cached, t.encode_seconds, t.hard_negative_pairs
            )?;
        }
        Ok(())
    }
}

/// The line `duet train` prints after each epoch.
impl fmt::Display for EpochReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "epoch {}: loss {:.3}, validation recall@10 {:.3} MRR@10 {:.3} ({:.1} s)",
            self.epoch, self.mean_loss, self.validation_recall_at_10, self.validation_mrr_at_10, self.seconds
        )?;
        match self.distill_loss {
            Some(kl) => write!(f, ", distillation KL {kl:.3}"),
            None => Ok(()),
        }
    }
}

/// Recall@10 and MRR@10 for queries given each query's relevant candidate indexes and the score matrix
/// `scores[q][c]`. Ties count against the relevant document (a constant model scores no better than chance).
pub fn recall_mrr_at_10(scores: &[Vec<f32>], relevant: &[Vec<usize>]) -> (f64, f64) {
    let mut recall = 0.0;
    let mut mrr = 0.0;
    for (row, rel) in scores.iter().zip(relevant) {
        if rel.is_empty() {
            continue;
        }
        let ranks: Vec<usize> = rel
            .iter()
            .map(|&r| {
                let s = row[r];
                1 + row.iter().enumerate().filter(|(c, &x)| *c != r && x >= s).count()
            })
            .collect();
        recall += ranks.iter().filter(|&&k| k <= 10).count() as f64 / rel.len() as f64;
        let best = ranks.iter().copied().min().unwrap_or(usize::MAX);
        if best <= 10 {
            mrr += 1.0 / best as f64;
        }
    }
    let n = relevant.len().max(1) as f64;
    (recall / n, mrr / n)
}

/// Groups pairs by query text: `(query, [candidate index of each relevant document])`.
pub fn group_by_query(pairs: &[(String, usize)]) -> Vec<(String, Vec<usize>)> {
    let mut grouped: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (q, c) in pairs {
        let entry = grouped.entry(q.as_str()).or_default();
        if !entry.contains(c) {
            entry.push(*c);
        }
    }
    grouped.into_iter().map(|(q, c)| (q.to_string(), c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_ties_against_the_relevant_document() {
        let scores = vec![vec![0.9, 0.1, 0.5], vec![0.2, 0.2, 0.2]];
        let (recall, mrr) = recall_mrr_at_10(&scores, &[vec![2], vec![0]]);
        assert_eq!(recall, 1.0);
        assert!((mrr - (0.5 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
        let far: Vec<f32> = (0..20).map(|i| i as f32).collect();
        assert_eq!(recall_mrr_at_10(&[far], &[vec![0]]), (0.0, 0.0));
        let grouped = group_by_query(&[("a".into(), 1), ("b".into(), 2), ("a".into(), 3)]);
        assert_eq!(grouped, [("a".to_string(), vec![1, 3]), ("b".to_string(), vec![2])]);
    }
}
