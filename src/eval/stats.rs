//! Statistics over per-query scores: percentile bootstrap confidence intervals of a mean (resampling queries),
//! the paired randomisation (sign-flip) test and paired bootstrap interval of a difference between two systems,
//! per-query win / tie / loss counts, and Holm's adjustment for testing every pair of systems. Every draw comes
//! from a seeded [`Rng`], so a report is reproducible.

use serde::Serialize;

use crate::util::rng::Rng;
use crate::util::stats::{mean, quantile};

/// A mean with its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

/// Percentile bootstrap interval of the mean of `values`: `resamples` resamples of the queries with
/// replacement, the interval between the (1 − confidence)/2 and (1 + confidence)/2 quantiles of their means.
pub fn bootstrap_ci(values: &[f64], resamples: usize, confidence: f64, seed: u64) -> Interval {
    let m = mean(values);
    if values.len() < 2 || resamples == 0 {
        return Interval { mean: m, low: m, high: m };
    }
    let mut rng = Rng::new(seed);
    let n = values.len();
    let mut means: Vec<f64> =
        (0..resamples).map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    let alpha = (1.0 - confidence) / 2.0;
    Interval { mean: m, low: quantile(&means, alpha), high: quantile(&means, 1.0 - alpha) }
}

/// Two-sided p-value of the paired randomisation test of "no difference" between two systems' per-query scores:
/// under the null each query's difference is as likely to have either sign, so the observed |mean difference| is
/// compared with those of `permutations` random sign flips; p = (extreme + 1) / (permutations + 1).
pub fn randomisation_test(a: &[f64], b: &[f64], permutations: usize, seed: u64) -> f64 {
    assert_eq!(a.len(), b.len(), "paired scores");
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let observed = diffs.iter().sum::<f64>().abs();
    if diffs.iter().all(|d| *d == 0.0) {
        return 1.0;
    }
    let mut rng = Rng::new(seed);
    // Sums are compared with a small tolerance so that flips giving the observed value exactly count as extreme.
    let tolerance = 1e-9 * (1.0 + observed);
    let mut extreme = 0;
    for _ in 0..permutations {
        let mut sum = 0.0;
        for chunk in diffs.chunks(64) {
            let bits = rng.next_u64();
            for (i, d) in chunk.iter().enumerate() {
                sum += if bits >> i & 1 == 1 { *d } else { -*d };
            }
        }
        if sum.abs() >= observed - tolerance {
            extreme += 1;
        }
    }
    (extreme + 1) as f64 / (permutations + 1) as f64
}

/// The comparison of two systems on one metric, query by query.
#[derive(Debug, Clone, Serialize)]
pub struct PairedComparison {
    pub a: String,
    pub b: String,
    pub metric: String,
    pub queries: usize,
    pub mean_a: f64,
    pub mean_b: f64,
    /// Mean of a − b with its paired bootstrap interval.
    pub difference: Interval,
    /// Randomisation test, two-sided.
    pub p_value: f64,
    /// After Holm's adjustment over every comparison of the report.
    pub p_holm: f64,
    /// Queries where a scores higher, equal, lower than b.
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
}

/// Settings of the resampling procedures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Resampling {
    pub bootstrap_resamples: usize,
    pub permutations: usize,
    pub confidence: f64,
    pub seed: u64,
}

impl Default for Resampling {
    fn default() -> Self {
        Self { bootstrap_resamples: 1000, permutations: 5000, confidence: 0.95, seed: 7 }
    }
}

/// Compares two systems' per-query scores (same queries, same order). `p_holm` is left equal to `p_value`;
/// [`holm`] adjusts a whole family.
pub fn compare(a: (&str, &[f64]), b: (&str, &[f64]), metric: &str, settings: &Resampling) -> PairedComparison {
    let (a_name, a_scores) = a;
    let (b_name, b_scores) = b;
    assert_eq!(a_scores.len(), b_scores.len(), "paired scores");
    let diffs: Vec<f64> = a_scores.iter().zip(b_scores).map(|(x, y)| x - y).collect();
    let eps = 1e-12;
    let wins = diffs.iter().filter(|d| **d > eps).count();
    let losses = diffs.iter().filter(|d| **d < -eps).count();
    let p = randomisation_test(a_scores, b_scores, settings.permutations, settings.seed);
    PairedComparison {
        a: a_name.to_string(),
        b: b_name.to_string(),
        metric: metric.to_string(),
        queries: diffs.len(),
        mean_a: mean(a_scores),
        mean_b: mean(b_scores),
        difference: bootstrap_ci(&diffs, settings.bootstrap_resamples, settings.confidence, settings.seed),
        p_value: p,
        p_holm: p,
        wins,
        ties: diffs.len() - wins - losses,
        losses,
    }
}

/// Holm–Bonferroni adjusted p-values (same order as the input).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let values: Vec<f64> = (0..200).map(|i| (i % 7) as f64 / 7.0).collect();
        let a = bootstrap_ci(&values, 500, 0.95, 3);
        assert_eq!(a, bootstrap_ci(&values, 500, 0.95, 3), "same seed, same interval");
        assert!(a.low < a.mean && a.mean < a.high);
        // Roughly mean ± 1.96 × sd / sqrt(n).
        let sd = (values.iter().map(|v| (v - a.mean).powi(2)).sum::<f64>() / 199.0).sqrt();
        let half = 1.96 * sd / 200f64.sqrt();
        assert!(((a.high - a.low) / 2.0 - half).abs() < 0.25 * half, "{a:?} vs ±{half}");
        let constant = bootstrap_ci(&[0.5; 10], 100, 0.95, 1);
        assert_eq!((constant.low, constant.high), (0.5, 0.5));
    }

    #[test]
    fn bootstrap_intervals_cover_the_true_mean_about_95_percent_of_the_time() {
        // Bernoulli(0.3) "reciprocal ranks" of 100 queries, 400 independent data sets.
        let truth = 0.3;
        let trials = 400;
        let mut covered = 0;
        let mut data_rng = Rng::new(99);
        for t in 0..trials {
            let values: Vec<f64> = (0..100).map(|_| if data_rng.uniform() < truth { 1.0 } else { 0.0 }).collect();
            let ci = bootstrap_ci(&values, 400, 0.95, t as u64);
            if ci.low <= truth && truth <= ci.high {
                covered += 1;
            }
        }
        let coverage = covered as f64 / trials as f64;
        // Binomial sd at 0.95 over 400 trials is 0.011; the percentile bootstrap runs slightly narrow at n = 100.
        assert!((0.90..=0.985).contains(&coverage), "coverage {coverage}");
    }

    #[test]
    fn randomisation_test_separates_clear_differences_from_identical_systems() {
        let mut rng = Rng::new(5);
        let a: Vec<f64> = (0..200).map(|_| rng.uniform()).collect();
        let better: Vec<f64> = a.iter().map(|x| (x + 0.2 + 0.05 * rng.normal()).min(1.0)).collect();
        let settings = Resampling { permutations: 2000, ..Default::default() };
        let clear = compare(("better", &better), ("a", &a), "rr", &settings);
        assert!(clear.p_value < 0.001, "{clear:?}");
        assert!(clear.difference.low > 0.1 && clear.wins > 150, "{clear:?}");
        let same = compare(("a", &a), ("a2", &a), "rr", &settings);
        assert_eq!(same.p_value, 1.0);
        assert_eq!((same.wins, same.ties, same.losses), (0, 200, 0));
        // Pure noise around the same mean: a large p.
        let noisy: Vec<f64> = a.iter().enumerate().map(|(i, x)| if i % 2 == 0 { x + 0.1 } else { x - 0.1 }).collect();
        let noise = compare(("noisy", &noisy), ("a", &a), "rr", &settings);
        assert!(noise.p_value > 0.5, "{noise:?}");
        assert_eq!((noise.wins, noise.losses), (100, 100));
        // Deterministic for a seed.
        assert_eq!(randomisation_test(&better, &a, 500, 1), randomisation_test(&better, &a, 500, 1));
    }

    #[test]
    fn holm_by_hand() {
        // Sorted 0.01, 0.02, 0.04 × (3, 2, 1) = 0.03, 0.04, 0.04 (running maximum).
        let adjusted = holm(&[0.04, 0.01, 0.02]);
        let expected = [0.04, 0.03, 0.04];
        for (a, e) in adjusted.iter().zip(expected) {
            assert!((a - e).abs() < 1e-12, "{adjusted:?}");
        }
        assert_eq!(holm(&[0.6, 0.9]), vec![1.0, 1.0], "capped at 1, never below an earlier one");
    }
}
