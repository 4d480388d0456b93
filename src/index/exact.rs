//! Exact (brute-force) search over an index's live slots, wherever their vectors are held, and the recall of
//! one answer against another. Uses only the index.

use super::{Hit, Inner};

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(super) fn exact_top_k(inner: &Inner, dim: usize, query: &[f32], k: usize) -> Vec<Hit> {
    let live: Vec<usize> = inner.by_id.values().copied().collect();
    let mut scored: Vec<(f32, usize)> = Vec::with_capacity(live.len());
    inner.visit(&live, dim, &mut |slot, v| {
        let score = dot(query, v);
        if score.is_finite() {
            scored.push((score, slot));
        }
    });
    let k = k.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    let by_score_then_id =
        |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then_with(|| inner.ids[a.1].cmp(&inner.ids[b.1]));
    scored.select_nth_unstable_by(k - 1, by_score_then_id);
    scored.truncate(k);
    scored.sort_by(by_score_then_id);
    scored.into_iter().map(|(score, slot)| Hit { id: inner.ids[slot].clone(), score }).collect()
}

/// Fraction of `exact`'s ids that `approx` found (recall@k of one query).
pub fn recall(approx: &[Hit], exact: &[Hit]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let found = exact.iter().filter(|e| approx.iter().any(|a| a.id == e.id)).count();
    found as f64 / exact.len() as f64
}
