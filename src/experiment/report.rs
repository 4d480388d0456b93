//! The experiment report: per arm impressions, clicks, CTR, conversions and the MRR of the first click with
//! 95 % intervals, and the latency served; then, by mode, the two-proportion z-test of every arm against the
//! control (A/B), wins / losses / ties with the sign test (interleaving), or the overlap of the shadow arm with
//! the served one (shadow) — each with the sample size still needed for a stated minimum detectable effect.
//! Every part names the model versions that served it, and is split by version when an arm's model changed
//! mid-experiment (exposures logged before versions were recorded count as version `null`).

pub mod timeline;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stats::{self, Estimate};
use super::{Experiment, ExperimentError, Mode};
use crate::store::{ArmOutcome, ExposureLatency, InterleaveCounts, Store, Versions};
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
    /// The versions of the arm's model that served its impressions, first served first; `null` for impressions
    /// logged before versions were recorded.
    pub versions: Vec<Option<String>>,
    #[serde(flatten)]
    pub outcomes: Outcomes,
    /// The outcomes per version, when more than one served the arm.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_version: Vec<VersionOutcomes>,
}

/// The impressions one version of an arm's model served.
#[derive(Debug, Clone, Serialize)]
pub struct VersionOutcomes {
    pub version: Option<String>,
    #[serde(flatten)]
    pub outcomes: Outcomes,
}

/// The model version of each arm (by arm name) that served interleaved impressions.
pub type VersionPair = BTreeMap<String, Option<String>>;

/// The interleaved impressions one pair of versions served.
#[derive(Debug, Clone, Serialize)]
pub struct PairOutcomes {
    pub versions: VersionPair,
    #[serde(flatten)]
    pub outcomes: Outcomes,
    pub wins: BTreeMap<String, u64>,
    pub ties: u64,
    pub no_click: u64,
}

/// The shadow comparisons of one version of the shadow arm's model.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowVersion {
    pub version: Option<String>,
    pub compared: usize,
    pub jaccard: Estimate,
    pub rbo: Estimate,
    pub shadow_latency_ms: Latency,
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
    /// The version pairs that served, first served first.
    pub versions: Vec<VersionPair>,
    /// The outcomes per version pair, when more than one served.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_versions: Vec<PairOutcomes>,
    /// The impressions over time, in at most 24 equal buckets (see [`timeline`]); they sum to the totals.
    pub timeline: Vec<timeline::TimelineBucket>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    pub compared: usize,
    pub jaccard: Estimate,
    pub rbo: Estimate,
    pub primary_latency_ms: Latency,
    pub shadow_latency_ms: Latency,
    /// The versions of the shadow arm's model that ran, first first (`null`: logged before versions were).
    pub versions: Vec<Option<String>>,
    /// The comparisons per shadow version, when more than one ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_version: Vec<ShadowVersion>,
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

/// The distinct keys, first seen first.
fn in_order<K: PartialEq>(keys: impl Iterator<Item = K>) -> Vec<K> {
    let mut seen = Vec::new();
    for k in keys {
        if !seen.contains(&k) {
            seen.push(k);
        }
    }
    seen
}

fn add(into: &mut ArmOutcome, o: &ArmOutcome) {
    into.impressions += o.impressions;
    into.clicked += o.clicked;
    into.converted += o.converted;
    into.rr_sum += o.rr_sum;
    into.rr_squares += o.rr_squares;
}

/// Outcome rows (first served first) and latencies of one part of a report, split by the version key that `key`
/// reads from their versions: per key, first served first, the summed outcomes and the latencies.
fn split<'a, K: PartialEq + Clone>(
    rows: impl Iterator<Item = &'a ArmOutcome>,
    latencies: &[ExposureLatency],
    belongs: impl Fn(&ExposureLatency) -> bool,
    key: impl Fn(&Versions) -> K,
) -> Vec<(K, ArmOutcome, Vec<f64>)> {
    let mut parts: Vec<(K, ArmOutcome, Vec<f64>)> = Vec::new();
    for row in rows {
        let k = key(&row.versions);
        match parts.iter_mut().find(|p| p.0 == k) {
            Some(part) => add(&mut part.1, row),
            None => parts.push((k, row.clone(), Vec::new())),
        }
    }
    for l in latencies.iter().filter(|l| belongs(l)) {
        let k = key(&l.versions);
        if let Some(part) = parts.iter_mut().find(|p| p.0 == k) {
            part.2.push(l.latency_ms);
        }
    }
    parts
}

/// The whole of a split part: summed outcomes and every latency.
fn merge<K>(parts: &[(K, ArmOutcome, Vec<f64>)]) -> (ArmOutcome, Vec<f64>) {
    let mut total = ArmOutcome::default();
    let mut all = Vec::new();
    for (_, o, l) in parts {
        add(&mut total, o);
        all.extend_from_slice(l);
    }
    (total, all)
}

/// The per-version entries of a split, or none when a single version (or none) served.
fn by_part<K, T>(parts: Vec<(K, ArmOutcome, Vec<f64>)>, make: impl Fn(K, Outcomes) -> T) -> Vec<T> {
    if parts.len() < 2 {
        return Vec::new();
    }
    parts.into_iter().map(|(k, o, l)| make(k, outcomes(&o, l))).collect()
}

pub async fn build(
    store: &dyn Store,
    experiment: &Experiment,
    settings: ReportSettings,
) -> Result<Report, ExperimentError> {
    let rows = store.arm_outcomes(&experiment.id).await?;
    let latencies = store.latencies(&experiment.id).await?;
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
            let version = |v: &Versions| v.get(&arm.name).cloned();
            let parts = split(rows.iter().filter(|o| o.arm == key), &latencies, |l| l.arm == key, version);
            let (total, all_latencies) = merge(&parts);
            ArmReport {
                name: arm.name.clone(),
                model: arm.model.clone(),
                weight: arm.weight,
                versions: parts.iter().map(|p| p.0.clone()).collect(),
                outcomes: outcomes(&total, all_latencies),
                by_version: by_part(parts, |version, outcomes| VersionOutcomes { version, outcomes }),
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
        let by_pair = store.interleave_counts(&experiment.id, names).await?;
        let counts = InterleaveCounts::sum(&by_pair);
        let timeline = timeline::timeline(&store.interleave_impressions(&experiment.id, names).await?, names);
        let pair =
            |v: &Versions| -> VersionPair { names.iter().map(|n| (n.to_string(), v.get(*n).cloned())).collect() };
        let parts = split(rows.iter().filter(|o| o.arm.is_none()), &latencies, |l| l.arm.is_none(), pair);
        let (total, all_latencies) = merge(&parts);
        let merged = outcomes(&total, all_latencies);
        let wins = |c: &InterleaveCounts| names.iter().zip(c.wins).map(|(n, w)| (n.to_string(), w)).collect();
        let versions: Vec<VersionPair> = by_pair.iter().map(|c| pair(&c.versions)).collect();
        let by_versions = if by_pair.len() > 1 {
            by_pair
                .iter()
                .map(|c| {
                    let key = pair(&c.versions);
                    let (shown, ms) = match parts.iter().find(|p| p.0 == key) {
                        Some((_, o, l)) => (o.clone(), l.clone()),
                        None => (ArmOutcome::default(), Vec::new()),
                    };
                    let outcomes = outcomes(&shown, ms);
                    PairOutcomes { versions: key, outcomes, wins: wins(c), ties: c.ties, no_click: c.no_click }
                })
                .collect()
        } else {
            Vec::new()
        };
        let decided = counts.wins[0] + counts.wins[1];
        let p = stats::sign_test(counts.wins[0], counts.wins[1]);
        let significant = decided > 0 && p < settings.alpha;
        let needed =
            stats::sample_size_preference(settings.min_preference, settings.alpha, settings.power).ceil() as u64;
        let remaining = needed.saturating_sub(decided);
        let decided_rate = if counts.impressions > 0 { decided as f64 / counts.impressions as f64 } else { 0.0 };
        Some(InterleaveReport {
            outcomes: merged,
            wins: wins(&counts),
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
            versions,
            by_versions,
            timeline,
        })
    } else {
        None
    };

    let shadow = if experiment.mode == Mode::Shadow {
        let rows = store.shadow_rows(&experiment.id).await?;
        let versions = in_order(rows.iter().map(|r| r.version.clone()));
        let by_version = if versions.len() > 1 {
            versions
                .iter()
                .map(|version| {
                    let of = || rows.iter().filter(move |r| &r.version == version);
                    ShadowVersion {
                        version: version.clone(),
                        compared: of().count(),
                        jaccard: mean_of(of().map(|r| r.jaccard)),
                        rbo: mean_of(of().map(|r| r.rbo)),
                        shadow_latency_ms: Latency::of(of().map(|r| r.latency_ms).collect()),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Some(ShadowReport {
            compared: rows.len(),
            jaccard: mean_of(rows.iter().map(|r| r.jaccard)),
            rbo: mean_of(rows.iter().map(|r| r.rbo)),
            primary_latency_ms: arms[0].outcomes.latency_ms.clone(),
            shadow_latency_ms: Latency::of(rows.iter().map(|r| r.latency_ms).collect()),
            versions,
            by_version,
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

#[cfg(test)]
mod tests;
