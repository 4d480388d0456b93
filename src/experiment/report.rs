//! The experiment report: per arm impressions, clicks, CTR, conversions and the MRR of the first click with
//! 95 % intervals, and the latency served; then, by mode, the two-proportion z-test of every arm against the
//! control (A/B), wins / losses / ties with the sign test (interleaving), or the overlap of the shadow arm with
//! the served one (shadow) — each with the sample size still needed for a stated minimum detectable effect.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stats::{self, Estimate};
use super::{Experiment, ExperimentError, Mode};
use crate::store::{ArmOutcome, Store};
use crate::util::stats::{mean, quantile};

/// The decision thresholds of a report (query parameters of `GET /v1/experiments/{id}/report`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSettings {
    /// Significance level of the tests.
    pub alpha: f64,
    /// Power wanted for the sample-size estimate.
    pub power: f64,
    /// Minimum detectable effect for A/B: relative change of the control's CTR (0.1 = ±10 %).
    pub mde: f64,
    /// Minimum detectable preference for interleaving: the share of decided impressions won by one arm.
    pub min_preference: f64,
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self { alpha: 0.05, power: 0.8, mde: 0.1, min_preference: 0.55 }
    }
}

impl ReportSettings {
    pub fn validate(&self) -> Result<(), String> {
        let open = |x: f64| x > 0.0 && x < 1.0;
        if !open(self.alpha) || !open(self.power) {
            return Err("`alpha` and `power` must be between 0 and 1".into());
        }
        if !(self.mde > 0.0 && self.mde.is_finite()) {
            return Err("`mde` must be a positive relative change (0.1 = 10 %)".into());
        }
        if !(self.min_preference > 0.5 && self.min_preference < 1.0) {
            return Err("`min_preference` must be between 0.5 and 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Latency {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let count = values.len();
        Self {
            count,
            mean: mean(&values),
            p50: quantile(&values, 0.5),
            p95: quantile(&values, 0.95),
            p99: quantile(&values, 0.99),
        }
    }
}

/// One arm's (or, interleaved, the merged list's) outcomes.
#[derive(Debug, Clone, Serialize)]
pub struct Outcomes {
    pub impressions: u64,
    pub clicked_impressions: u64,
    /// Share of impressions with at least one click.
    pub ctr: Estimate,
    pub converted_impressions: u64,
    pub conversion_rate: Estimate,
    /// Mean over impressions of 1 / position of the first click (0 without a click).
    pub mrr_first_click: Estimate,
    pub latency_ms: Latency,
}

fn outcomes(o: &ArmOutcome, latencies: Vec<f64>) -> Outcomes {
    Outcomes {
        impressions: o.impressions,
        clicked_impressions: o.clicked,
        ctr: stats::proportion(o.clicked, o.impressions),
        converted_impressions: o.converted,
        conversion_rate: stats::proportion(o.converted, o.impressions),
        mrr_first_click: stats::mean_estimate(o.rr_sum, o.rr_squares, o.impressions),
        latency_ms: Latency::of(latencies),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ArmReport {
    pub name: String,
    pub model: String,
    pub weight: f64,
    #[serde(flatten)]
    pub outcomes: Outcomes,
}

/// One treatment arm against the control (the first arm), on CTR.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub control: String,
    pub treatment: String,
    /// Treatment CTR minus control CTR.
    pub ctr_difference: f64,
    pub z: f64,
    pub p_value: f64,
    pub significant: bool,
    /// Impressions per arm a test needs to detect the control's CTR changing by `mde` (relative); `null` while
    /// the control has no clicks to estimate it from.
    pub needed_per_arm: Option<u64>,
    pub remaining_per_arm: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InterleaveReport {
    /// The merged list's outcomes (all impressions).
    #[serde(flatten)]
    pub outcomes: Outcomes,
    /// Impressions won by each arm (more credited clicks), by arm name.
    pub wins: BTreeMap<String, u64>,
    pub ties: u64,
    pub no_click: u64,
    /// Clicks credited to each arm.
    pub credited_clicks: BTreeMap<String, u64>,
    /// Share of decided impressions (wins + losses) won by the second arm, with a Wilson interval.
    pub preference_for_second: Estimate,
    /// Exact binomial sign test of wins against losses, ties left out.
    pub sign_test_p: f64,
    pub significant: bool,
    /// The arm with more wins when the test is significant.
    pub preferred: Option<String>,
    /// Decided impressions needed to detect `min_preference`, and the impressions that implies at the observed
    /// rate of decided impressions (`null` until one impression was decided).
    pub needed_decided: u64,
    pub remaining_decided: u64,
    pub remaining_impressions: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    pub compared: usize,
    pub jaccard: Estimate,
    pub rbo: Estimate,
    pub primary_latency_ms: Latency,
    pub shadow_latency_ms: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub experiment: Experiment,
    pub generated_at: String,
    pub alpha: f64,
    pub power: f64,
    pub mde: f64,
    pub min_preference: f64,
    /// Per serving arm: every arm in A/B, the primary in shadow mode, none when interleaved.
    pub arms: Vec<ArmReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<Comparison>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interleave: Option<InterleaveReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowReport>,
}

fn mean_of(values: impl Iterator<Item = f64>) -> Estimate {
    let (mut sum, mut squares, mut n) = (0.0, 0.0, 0u64);
    for v in values {
        sum += v;
        squares += v * v;
        n += 1;
    }
    stats::mean_estimate(sum, squares, n)
}

pub async fn build(
    store: &dyn Store,
    experiment: &Experiment,
    settings: ReportSettings,
) -> Result<Report, ExperimentError> {
    let outcomes_by_arm: BTreeMap<Option<String>, ArmOutcome> =
        store.arm_outcomes(&experiment.id).await?.into_iter().map(|o| (o.arm.clone(), o)).collect();
    let mut latencies: BTreeMap<Option<String>, Vec<f64>> = BTreeMap::new();
    for (arm, ms) in store.latencies(&experiment.id).await? {
        latencies.entry(arm).or_default().push(ms);
    }
    // The arms that serve impressions: every arm in A/B, the primary in shadow mode; none when interleaved (each
    // impression shows both; see `interleave`).
    let serving = match experiment.mode {
        Mode::Ab => experiment.arms.len(),
        Mode::Shadow => 1,
        Mode::Interleave => 0,
    };
    let arms: Vec<ArmReport> = experiment
        .arms
        .iter()
        .take(serving)
        .map(|arm| {
            let key = Some(arm.name.clone());
            let empty = ArmOutcome { arm: key.clone(), ..Default::default() };
            let o = outcomes_by_arm.get(&key).unwrap_or(&empty);
            ArmReport {
                name: arm.name.clone(),
                model: arm.model.clone(),
                weight: arm.weight,
                outcomes: outcomes(o, latencies.remove(&key).unwrap_or_default()),
            }
        })
        .collect();

    let mut comparisons = Vec::new();
    if experiment.mode == Mode::Ab {
        let control = &arms[0];
        let p1 = control.outcomes.ctr.value;
        let needed = (control.outcomes.clicked_impressions > 0)
            .then(|| {
                stats::sample_size_two_proportions(
                    p1,
                    (p1 * (1.0 + settings.mde)).min(1.0),
                    settings.alpha,
                    settings.power,
                )
            })
            .filter(|n| n.is_finite())
            .map(|n| n.ceil() as u64);
        for treatment in &arms[1..] {
            let (c, t) = (&control.outcomes, &treatment.outcomes);
            let test =
                stats::two_proportion_z(c.clicked_impressions, c.impressions, t.clicked_impressions, t.impressions);
            let have = c.impressions.min(t.impressions);
            comparisons.push(Comparison {
                control: control.name.clone(),
                treatment: treatment.name.clone(),
                ctr_difference: t.ctr.value - c.ctr.value,
                z: test.statistic,
                p_value: test.p_value,
                significant: test.p_value < settings.alpha,
                needed_per_arm: needed,
                remaining_per_arm: needed.map(|n| n.saturating_sub(have)),
            });
        }
    }

    let interleave = if experiment.mode == Mode::Interleave {
        let names = [experiment.arms[0].name.as_str(), experiment.arms[1].name.as_str()];
        let counts = store.interleave_counts(&experiment.id, names).await?;
        let empty = ArmOutcome::default();
        let merged =
            outcomes(outcomes_by_arm.get(&None).unwrap_or(&empty), latencies.remove(&None).unwrap_or_default());
        let decided = counts.wins[0] + counts.wins[1];
        let p = stats::sign_test(counts.wins[0], counts.wins[1]);
        let significant = decided > 0 && p < settings.alpha;
        let needed =
            stats::sample_size_preference(settings.min_preference, settings.alpha, settings.power).ceil() as u64;
        let remaining = needed.saturating_sub(decided);
        let decided_rate = if counts.impressions > 0 { decided as f64 / counts.impressions as f64 } else { 0.0 };
        Some(InterleaveReport {
            outcomes: merged,
            wins: names.iter().zip(counts.wins).map(|(n, w)| (n.to_string(), w)).collect(),
            ties: counts.ties,
            no_click: counts.no_click,
            credited_clicks: names.iter().zip(counts.clicks).map(|(n, c)| (n.to_string(), c)).collect(),
            preference_for_second: stats::proportion(counts.wins[1], decided),
            sign_test_p: p,
            significant,
            preferred: significant.then(|| names[usize::from(counts.wins[1] > counts.wins[0])].to_string()),
            needed_decided: needed,
            remaining_decided: remaining,
            remaining_impressions: (decided_rate > 0.0).then(|| (remaining as f64 / decided_rate).ceil() as u64),
        })
    } else {
        None
    };

    let shadow = if experiment.mode == Mode::Shadow {
        let rows = store.shadow_rows(&experiment.id).await?;
        Some(ShadowReport {
            compared: rows.len(),
            jaccard: mean_of(rows.iter().map(|r| r.jaccard)),
            rbo: mean_of(rows.iter().map(|r| r.rbo)),
            primary_latency_ms: arms[0].outcomes.latency_ms.clone(),
            shadow_latency_ms: Latency::of(rows.iter().map(|r| r.latency_ms).collect()),
        })
    } else {
        None
    };

    Ok(Report {
        experiment: experiment.clone(),
        generated_at: crate::util::now(),
        alpha: settings.alpha,
        power: settings.power,
        mde: settings.mde,
        min_preference: settings.min_preference,
        arms,
        comparisons,
        interleave,
        shadow,
    })
}
