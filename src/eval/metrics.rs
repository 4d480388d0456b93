//! Rank metrics of one query: reciprocal rank, recall@k and nDCG@k over graded relevance, and the rule for tied
//! scores (a relevant document tied with non-relevant ones is ranked after them, so ties never flatter a system).

use std::collections::HashMap;

/// Relevance grades of one query's documents: a grade above 0 is relevant; absent documents have grade 0.
pub type Grades = HashMap<String, f64>;

fn grade(grades: &Grades, id: &str) -> f64 {
    grades.get(id).copied().unwrap_or(0.0)
}

/// Orders scored hits for scoring: by score, highest first; within a group of equal scores, lower grades first
/// (the pessimistic tie rule), then by id so the result is deterministic.
pub fn rank_with_ties(hits: &[(String, f32)], grades: &Grades) -> Vec<String> {
    let mut sorted: Vec<&(String, f32)> = hits.iter().collect();
    sorted.sort_by(|a, b| {
        b.1.total_cmp(&a.1).then(grade(grades, &a.0).total_cmp(&grade(grades, &b.0))).then(a.0.cmp(&b.0))
    });
    sorted.into_iter().map(|(id, _)| id.clone()).collect()
}

/// Rank (1-based) of the first relevant id in `ranked`, if any.
pub fn first_relevant_rank(ranked: &[String], grades: &Grades) -> Option<usize> {
    ranked.iter().position(|id| grade(grades, id) > 0.0).map(|i| i + 1)
}

/// Reciprocal rank of the first relevant result within the first `k`.
pub fn reciprocal_rank(ranked: &[String], grades: &Grades, k: usize) -> f64 {
    match first_relevant_rank(ranked, grades) {
        Some(rank) if rank <= k => 1.0 / rank as f64,
        _ => 0.0,
    }
}

/// Share of the relevant documents (grade > 0) found in the first `k`.
pub fn recall_at(ranked: &[String], grades: &Grades, k: usize) -> f64 {
    let relevant = grades.values().filter(|g| **g > 0.0).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = ranked.iter().take(k).filter(|id| grade(grades, id) > 0.0).count();
    found as f64 / relevant as f64
}

/// nDCG@k with exponential gain 2^grade − 1 and discount 1/log2(rank + 1); the ideal ranking orders every graded
/// document of the query by grade. 0 when the query has no relevant document.
pub fn ndcg_at(ranked: &[String], grades: &Grades, k: usize) -> f64 {
    let gain = |g: f64| 2f64.powf(g) - 1.0;
    let discount = |i: usize| (i as f64 + 2.0).log2();
    let dcg: f64 = ranked.iter().take(k).enumerate().map(|(i, id)| gain(grade(grades, id)) / discount(i)).sum();
    let mut ideal: Vec<f64> = grades.values().copied().filter(|g| *g > 0.0).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal.iter().take(k).enumerate().map(|(i, g)| gain(*g) / discount(i)).sum();
    if idcg == 0.0 {
        0.0
    } else {
        dcg / idcg
    }
}

/// The metrics of one query for one system.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryMetrics {
    pub reciprocal_rank_at_10: f64,
    pub ndcg_at_10: f64,
    /// Recall at each cut-off of the evaluation's `ks`, in order.
    pub recall: Vec<f64>,
    /// Recall at every k from 1 to the number of hits, for the recall curve.
    pub recall_curve: Vec<f64>,
}

/// Scores one query's hits (any order; ties are ranked by [`rank_with_ties`]).
pub fn query_metrics(hits: &[(String, f32)], grades: &Grades, ks: &[usize], curve_to: usize) -> QueryMetrics {
    let ranked = rank_with_ties(hits, grades);
    QueryMetrics {
        reciprocal_rank_at_10: reciprocal_rank(&ranked, grades, 10),
        ndcg_at_10: ndcg_at(&ranked, grades, 10),
        recall: ks.iter().map(|k| recall_at(&ranked, grades, *k)).collect(),
        recall_curve: (1..=curve_to).map(|k| recall_at(&ranked, grades, k)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn binary(v: &[&str]) -> Grades {
        v.iter().map(|s| (s.to_string(), 1.0)).collect()
    }

    fn hits(v: &[(&str, f32)]) -> Vec<(String, f32)> {
        v.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    }

    #[test]
    fn reciprocal_rank_and_recall_by_hand() {
        let ranked = ids(&["a", "b", "c", "d"]);
        assert_eq!(reciprocal_rank(&ranked, &binary(&["c"]), 10), 1.0 / 3.0);
        assert_eq!(reciprocal_rank(&ranked, &binary(&["c"]), 2), 0.0, "beyond the cut-off counts nothing");
        assert_eq!(reciprocal_rank(&ranked, &binary(&["z"]), 10), 0.0);
        assert_eq!(reciprocal_rank(&ranked, &binary(&["d", "b"]), 10), 0.5, "the first relevant counts");
        assert_eq!(recall_at(&ranked, &binary(&["b", "d", "z"]), 2), 1.0 / 3.0);
        assert_eq!(recall_at(&ranked, &binary(&["b", "d", "z"]), 4), 2.0 / 3.0);
        assert_eq!(recall_at(&ranked, &Grades::new(), 4), 0.0, "no relevant document: 0, not NaN");
        // A grade of 0 is an explicit "not relevant".
        let grades: Grades = [("a".to_string(), 0.0), ("c".to_string(), 2.0)].into();
        assert_eq!(reciprocal_rank(&ranked, &grades, 10), 1.0 / 3.0);
        assert_eq!(recall_at(&ranked, &grades, 3), 1.0);
    }

    #[test]
    fn ndcg_by_hand_binary_and_graded() {
        let ranked = ids(&["a", "b", "c"]);
        // One relevant at rank 2: DCG = 1/log2(3), IDCG = 1.
        assert!((ndcg_at(&ranked, &binary(&["b"]), 10) - 1.0 / 3f64.log2()).abs() < 1e-12);
        // Graded: a=1, c=2. DCG = 1/1 + 3/2 = 2.5; ideal order c,a: 3/1 + 1/log2(3).
        let grades: Grades = [("a".to_string(), 1.0), ("c".to_string(), 2.0)].into();
        let expected = 2.5 / (3.0 + 1.0 / 3f64.log2());
        assert!((ndcg_at(&ranked, &grades, 10) - expected).abs() < 1e-12);
        // The cut-off applies to the ideal ranking too: at k=1, DCG = 1 (a), IDCG = 3 (c).
        assert!((ndcg_at(&ranked, &grades, 1) - 1.0 / 3.0).abs() < 1e-12);
        // A relevant document that was not retrieved still counts in the ideal: a=1 only retrieved, z=3 missing.
        let grades: Grades = [("a".to_string(), 1.0), ("z".to_string(), 3.0)].into();
        let expected = 1.0 / (7.0 + 1.0 / 3f64.log2());
        assert!((ndcg_at(&ranked, &grades, 10) - expected).abs() < 1e-12);
        assert_eq!(ndcg_at(&ranked, &Grades::new(), 10), 0.0);
        assert_eq!(ndcg_at(&ids(&["a", "b", "c"]), &binary(&["a"]), 10), 1.0, "perfect ranking is 1");
    }

    #[test]
    fn ties_rank_relevant_documents_last_within_the_tie() {
        // b (relevant) ties with a and c at 0.5: pessimistically it comes after both, at rank 3.
        let h = hits(&[("a", 0.5), ("b", 0.5), ("c", 0.5), ("d", 0.1)]);
        let grades = binary(&["b"]);
        assert_eq!(rank_with_ties(&h, &grades), ids(&["a", "c", "b", "d"]));
        let m = query_metrics(&h, &grades, &[1, 2, 3], 4);
        assert_eq!(m.reciprocal_rank_at_10, 1.0 / 3.0);
        assert_eq!(m.recall, vec![0.0, 0.0, 1.0]);
        assert_eq!(m.recall_curve, vec![0.0, 0.0, 1.0, 1.0]);
        assert!((m.ndcg_at_10 - 0.5).abs() < 1e-12, "1/log2(4) = 0.5");
        // Graded ties: the lower grade goes first, so nDCG takes the worse order (g1 before g2).
        let h = hits(&[("x", 0.9), ("y", 0.9)]);
        let grades: Grades = [("x".to_string(), 2.0), ("y".to_string(), 1.0)].into();
        assert_eq!(rank_with_ties(&h, &grades), ids(&["y", "x"]));
        let m = query_metrics(&h, &grades, &[10], 2);
        let expected = (1.0 + 3.0 / 3f64.log2()) / (3.0 + 1.0 / 3f64.log2());
        assert!((m.ndcg_at_10 - expected).abs() < 1e-12);
        assert_eq!(m.reciprocal_rank_at_10, 1.0, "both are relevant");
        // Scores order hits whatever the input order; equal non-relevant ties are ordered by id.
        let h = hits(&[("z", 0.1), ("b", 0.7), ("a", 0.7), ("r", 0.9)]);
        assert_eq!(rank_with_ties(&h, &binary(&["r"])), ids(&["r", "a", "b", "z"]));
    }
}
