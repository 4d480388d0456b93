//! The statistics of an experiment report: 95 % intervals (Wilson for proportions, normal for means), the
//! two-proportion z-test, the exact binomial sign test for interleaving preferences, sample sizes for a minimum
//! detectable effect, and the overlap of two rankings (Jaccard@k, rank-biased overlap).

use std::collections::HashSet;

use serde::Serialize;
use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal};

pub use crate::util::stats::Estimate;

fn standard_normal() -> Normal {
    Normal::new(0.0, 1.0).expect("valid normal")
}

/// The standard normal quantile.
pub fn z_quantile(p: f64) -> f64 {
    standard_normal().inverse_cdf(p)
}

const Z95: f64 = 1.959_963_984_540_054;

/// A proportion with its Wilson score interval (good at small counts and near 0 or 1, unlike the Wald
/// interval). With no trials the value is 0 and the interval is [0, 1].
pub fn proportion(successes: u64, trials: u64) -> Estimate {
    if trials == 0 {
        return Estimate { value: 0.0, ci95: [0.0, 1.0] };
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    let lower = if successes == 0 { 0.0 } else { (centre - half).max(0.0) };
    let upper = if successes == trials { 1.0 } else { (centre + half).min(1.0) };
    Estimate { value: p, ci95: [lower, upper] }
}

/// A mean from its sum and sum of squares, with a normal-approximation interval.
pub fn mean_estimate(sum: f64, sum_squares: f64, n: u64) -> Estimate {
    if n == 0 {
        return Estimate { value: 0.0, ci95: [0.0, 0.0] };
    }
    let nf = n as f64;
    let m = sum / nf;
    let variance = if n > 1 { ((sum_squares - nf * m * m) / (nf - 1.0)).max(0.0) } else { 0.0 };
    let half = Z95 * (variance / nf).sqrt();
    Estimate { value: m, ci95: [m - half, m + half] }
}

/// A two-sided test result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TestResult {
    pub statistic: f64,
    pub p_value: f64,
}

/// Two-proportion z-test with the pooled standard error: is `x2/n2` different from `x1/n1`?
/// The statistic is positive when the second proportion is higher.
pub fn two_proportion_z(x1: u64, n1: u64, x2: u64, n2: u64) -> TestResult {
    if n1 == 0 || n2 == 0 {
        return TestResult { statistic: 0.0, p_value: 1.0 };
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 {
        return TestResult { statistic: 0.0, p_value: 1.0 };
    }
    let z = (x2 as f64 / n2f - x1 as f64 / n1f) / se;
    TestResult { statistic: z, p_value: (2.0 * (1.0 - standard_normal().cdf(z.abs()))).min(1.0) }
}

/// Exact two-sided binomial sign test of `wins` against `losses` (ties left out) under p = 1/2.
pub fn sign_test(wins: u64, losses: u64) -> f64 {
    let n = wins + losses;
    if n == 0 {
        return 1.0;
    }
    let binomial = Binomial::new(0.5, n).expect("valid binomial");
    (2.0 * binomial.cdf(wins.min(losses))).min(1.0)
}

/// Units per arm that a two-sided two-proportion test at level `alpha` needs to detect `p1` → `p2` with
/// probability `power` (the usual normal-approximation formula).
pub fn sample_size_two_proportions(p1: f64, p2: f64, alpha: f64, power: f64) -> f64 {
    let delta = (p2 - p1).abs();
    if delta == 0.0 {
        return f64::INFINITY;
    }
    let (za, zb) = (z_quantile(1.0 - alpha / 2.0), z_quantile(power));
    let pbar = (p1 + p2) / 2.0;
    let root = za * (2.0 * pbar * (1.0 - pbar)).sqrt() + zb * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt();
    (root / delta).powi(2)
}

/// Decided impressions (wins + losses) a sign test at level `alpha` needs to detect a preference share of
/// `share` (≠ 0.5) with probability `power`.
pub fn sample_size_preference(share: f64, alpha: f64, power: f64) -> f64 {
    let delta = (share - 0.5).abs();
    if delta == 0.0 {
        return f64::INFINITY;
    }
    let (za, zb) = (z_quantile(1.0 - alpha / 2.0), z_quantile(power));
    ((za * 0.5 + zb * (share * (1.0 - share)).sqrt()) / delta).powi(2)
}

/// Jaccard similarity of the first `k` of two rankings (1 when both are empty).
pub fn jaccard_at(a: &[String], b: &[String], k: usize) -> f64 {
    let sa: HashSet<&String> = a.iter().take(k).collect();
    let sb: HashSet<&String> = b.iter().take(k).collect();
    let union = sa.union(&sb).count();
    if union == 0 {
        1.0
    } else {
        sa.intersection(&sb).count() as f64 / union as f64
    }
}

/// The persistence of every rank-biased overlap Duet reports (shadow comparisons, side-by-side compares).
pub const RBO_PERSISTENCE: f64 = 0.9;

/// Rank-biased overlap, extrapolated (Webber, Moffat & Zobel 2010, eq. 32) over the depth of the shorter list,
/// with persistence `p` (0.9: the top ~10 results carry most of the weight). 1 for identical rankings, 0 for
/// disjoint ones.
pub fn rbo(a: &[String], b: &[String], p: f64) -> f64 {
    let k = a.len().min(b.len());
    if k == 0 {
        return if a.is_empty() && b.is_empty() { 1.0 } else { 0.0 };
    }
    let (mut seen_a, mut seen_b) = (HashSet::new(), HashSet::new());
    let mut overlap = 0usize;
    let mut sum = 0.0;
    for d in 1..=k {
        let (x, y) = (&a[d - 1], &b[d - 1]);
        if x == y {
            overlap += 1;
        } else {
            if seen_b.contains(x) {
                overlap += 1;
            }
            if seen_a.contains(y) {
                overlap += 1;
            }
        }
        seen_a.insert(x);
        seen_b.insert(y);
        sum += overlap as f64 / d as f64 * p.powi(d as i32);
    }
    overlap as f64 / k as f64 * p.powi(k as i32) + (1.0 - p) / p * sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn ids(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn wilson_interval_matches_the_textbook_values() {
        // 5 of 10: centre 0.5, half-width 1.96·sqrt(0.025 + 0.0096)/1.3842 = 0.2634.
        let e = proportion(5, 10);
        assert!(close(e.ci95[0], 0.2366, 1e-4) && close(e.ci95[1], 0.7634, 1e-4), "{e:?}");
        // 0 of 20: [0, 0.1611] (z²/(n+z²) = 3.8415/23.8415).
        let e = proportion(0, 20);
        assert_eq!(e.value, 0.0);
        assert!(close(e.ci95[0], 0.0, 1e-12) && close(e.ci95[1], 0.1611, 1e-4), "{e:?}");
        assert_eq!(proportion(0, 0).ci95, [0.0, 1.0]);
    }

    #[test]
    fn mean_interval_uses_the_sample_variance() {
        // Values 1, 0, 0, 1: mean 0.5, sample variance 1/3, half-width 1.96·sqrt(1/12) = 0.5658.
        let e = mean_estimate(2.0, 2.0, 4);
        assert!(close(e.value, 0.5, 1e-12));
        assert!(close(e.ci95[0], 0.5 - 0.565_8, 1e-4) && close(e.ci95[1], 0.5 + 0.565_8, 1e-4), "{e:?}");
    }

    #[test]
    fn two_proportion_z_test_by_hand() {
        // 200/1000 vs 250/1000: pooled 0.225, SE sqrt(0.225·0.775·0.002) = 0.018675, z = 2.6774, p = 0.00742.
        let t = two_proportion_z(200, 1000, 250, 1000);
        assert!(close(t.statistic, 2.6774, 1e-3), "{t:?}");
        assert!(close(t.p_value, 0.00742, 1e-4), "{t:?}");
        assert_eq!(two_proportion_z(0, 10, 0, 10).p_value, 1.0);
        assert_eq!(two_proportion_z(3, 0, 1, 10).p_value, 1.0);
    }

    #[test]
    fn sign_test_is_the_exact_binomial() {
        // 9 wins, 1 loss: 2·(1 + 10)/1024 = 0.021484.
        assert!(close(sign_test(9, 1), 0.021_484_375, 1e-9));
        assert!(close(sign_test(1, 9), 0.021_484_375, 1e-9));
        assert_eq!(sign_test(5, 5), 1.0);
        assert_eq!(sign_test(0, 0), 1.0);
    }

    #[test]
    fn sample_sizes_by_hand() {
        // CTR 10 % → 11 %, alpha 0.05, power 0.8: (1.96·sqrt(2·.105·.895) + 0.8416·sqrt(.09 + .0979))² / .01²
        // = 14,750.8 per arm.
        let n = sample_size_two_proportions(0.10, 0.11, 0.05, 0.8);
        assert!(close(n, 14_750.8, 1.0), "{n}");
        // Preference 0.55: ((1.96·0.5 + 0.8416·sqrt(0.2475)) / 0.05)² = 782.5 decided impressions.
        let n = sample_size_preference(0.55, 0.05, 0.8);
        assert!(close(n, 782.5, 1.0), "{n}");
        assert!(sample_size_preference(0.5, 0.05, 0.8).is_infinite());
    }

    #[test]
    fn overlap_of_rankings() {
        assert_eq!(jaccard_at(&ids("1 2 3"), &ids("1 3 4"), 3), 0.5);
        assert_eq!(jaccard_at(&ids("1 2 3"), &ids("1 3 4"), 1), 1.0);
        assert!(close(rbo(&ids("a b c"), &ids("a b c"), 0.9), 1.0, 1e-12));
        assert_eq!(rbo(&ids("a b c"), &ids("d e f"), 0.9), 0.0);
        // [1 2 3] vs [1 3 2]: X = 1, 1, 3; 0.729 + (0.1/0.9)·(0.9 + 0.405 + 0.729) = 0.955.
        assert!(close(rbo(&ids("1 2 3"), &ids("1 3 2"), 0.9), 0.955, 1e-9));
    }
}
