//! Simulated users for experiments: held-out (query, relevant document) pairs replayed as searches, with a
//! position-biased click model on what is shown.
//!
//! - [`replay`] drives a running server: each pair is one search by a simulated unit under an experiment, its
//!   clicks are sent as feedback, and an explicit-model search of the same query measures the latency overhead
//!   of the experiment side by side. The experiment's own report then tells the outcome.
//! - [`power`] answers "how much traffic does each design need?": it fetches both models' rankings once, then
//!   runs many simulated A/B tests and interleaving experiments offline (with the server's own team-draft and
//!   tests) and counts the impressions until the first p < alpha, checking every `check_every` impressions.
//!
//! Both call the server through a [`Server`], which sends the API key (as `Authorization: Bearer`) when one is
//! given; a key with the `search` scope is enough.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use super::interleave::{outcome, team_draft, Outcome};
use super::stats;
use crate::util::jsonl::{self, JsonlError, PairLine};
use crate::util::rng::Rng;
use crate::util::stats::{mean, quantile};

/// Position-biased clicks: a result at 1-based rank r is examined with probability 1 / r^eta; an examined result
/// is clicked with probability `relevant` when it is the query's relevant document and `noise` otherwise.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClickModel {
    pub eta: f64,
    pub relevant: f64,
    pub noise: f64,
}

impl Default for ClickModel {
    fn default() -> Self {
        Self { eta: 1.0, relevant: 0.9, noise: 0.05 }
    }
}

impl ClickModel {
    /// The 0-based positions clicked in `shown`.
    pub fn clicks(&self, shown: &[String], relevant: &HashSet<String>, rng: &mut Rng) -> Vec<usize> {
        let mut clicked = Vec::new();
        for (i, id) in shown.iter().enumerate() {
            let examine = 1.0 / ((i + 1) as f64).powf(self.eta);
            let p = if relevant.contains(id) { self.relevant } else { self.noise };
            if rng.uniform() < examine * p {
                clicked.push(i);
            }
        }
        clicked
    }
}

/// Queries with their relevant documents, in file order (duplicated queries merged).
pub fn load_queries(path: &Path, limit: usize) -> Result<Vec<(String, HashSet<String>)>, JsonlError> {
    let mut order: Vec<String> = Vec::new();
    let mut relevant: HashMap<String, HashSet<String>> = HashMap::new();
    for pair in jsonl::read::<PairLine>(path)? {
        let entry = relevant.entry(pair.query.clone()).or_default();
        if entry.is_empty() {
            order.push(pair.query.clone());
        }
        entry.insert(pair.doc_id);
    }
    Ok(order
        .into_iter()
        .take(limit)
        .map(|q| {
            let r = relevant.remove(&q).unwrap_or_default();
            (q, r)
        })
        .collect())
}

/// A running server: its base URL, and a client that sends the API key, if any, with every request.
pub struct Server {
    base: String,
    pub(super) client: reqwest::Client,
}

impl Server {
    pub fn new(base: &str, api_key: Option<&str>) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = api_key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .context("the API key is not a valid HTTP header value")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder().default_headers(headers).build()?;
        Ok(Self { base: base.trim_end_matches('/').to_string(), client })
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let response = client.post(url).json(body).send().await.with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("POST {url} → {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

fn result_ids(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .map_or_else(Vec::new, |r| r.iter().filter_map(|h| h["id"].as_str().map(str::to_string)).collect())
}

/// Client-side latency of searches, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

/// The summary of latencies in milliseconds (quantiles by [`quantile`]; all zero when there are none).
pub fn summarize(mut ms: Vec<f64>) -> LatencySummary {
    ms.sort_by(f64::total_cmp);
    LatencySummary {
        count: ms.len(),
        p50: quantile(&ms, 0.5),
        p90: quantile(&ms, 0.9),
        p99: quantile(&ms, 0.99),
        mean: mean(&ms),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayOutcome {
    pub searches: usize,
    pub clicks: usize,
    pub experiment_latency_ms: LatencySummary,
    /// The same queries searched with the serving arm's model named explicitly (no experiment), request by
    /// request right after the experiment search; `baseline_model` for interleaved searches.
    pub baseline_latency_ms: LatencySummary,
    /// Per request, experiment search minus its baseline search (paired, so robust to the mix of models).
    pub overhead_ms: LatencySummary,
    pub report: Value,
}

/// Replays `queries` against `server` under `experiment` as `users` simulated units (assigned round-robin), sends
/// their clicks as feedback, and returns the experiment's report.
#[allow(clippy::too_many_arguments)]
pub async fn replay(
    server: &Server,
    experiment: &str,
    baseline_model: &str,
    queries: &[(String, HashSet<String>)],
    users: usize,
    k: usize,
    clicks: ClickModel,
    seed: u64,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<ReplayOutcome> {
    let client = &server.client;
    let search_url = server.url("/v1/search");
    let mut rng = Rng::new(seed);
    let (mut exp_ms, mut base_ms, mut overhead_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut clicked = 0;
    for (i, (query, relevant)) in queries.iter().enumerate() {
        let unit = format!("sim-user-{}", i % users.max(1));
        let started = Instant::now();
        let body =
            post(client, &search_url, &json!({"query": query, "k": k, "experiment": experiment, "unit_id": unit}))
                .await?;
        exp_ms.push(started.elapsed().as_secs_f64() * 1e3);
        // The baseline: the same query with the model that served it, named explicitly (no experiment); the
        // first arm's model (`baseline_model`) when two arms were interleaved.
        let served_by = body["model"].as_str().unwrap_or(baseline_model);
        let started = Instant::now();
        post(client, &search_url, &json!({"query": query, "k": k, "model": served_by})).await?;
        base_ms.push(started.elapsed().as_secs_f64() * 1e3);
        overhead_ms.push(exp_ms[exp_ms.len() - 1] - base_ms[base_ms.len() - 1]);

        if body["experiment"]["logged"] == true {
            let shown = result_ids(&body);
            let request_id = body["request_id"].as_str().unwrap_or_default();
            for position in clicks.clicks(&shown, relevant, &mut rng) {
                post(
                    &client,
                    &server.url("/v1/feedback"),
                    &json!({"request_id": request_id, "doc_id": shown[position], "event": "click"}),
                )
                .await?;
                clicked += 1;
            }
        }
        progress(i + 1);
    }
    let url = server.url(&format!("/v1/experiments/{experiment}/report"));
    let response = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    let (status, text) = (response.status(), response.text().await?);
    if !status.is_success() {
        bail!("GET {url} → {status}: {text}");
    }
    let report = serde_json::from_str(&text)?;
    Ok(ReplayOutcome {
        searches: queries.len(),
        clicks: clicked,
        experiment_latency_ms: summarize(exp_ms),
        baseline_latency_ms: summarize(base_ms),
        overhead_ms: summarize(overhead_ms),
        report,
    })
}

/// Each model's top-k for every query, by explicit-model searches.
pub async fn fetch_rankings(
    server: &Server,
    models: [&str; 2],
    queries: &[(String, HashSet<String>)],
    k: usize,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<[Vec<Vec<String>>; 2]> {
    let client = &server.client;
    let url = server.url("/v1/search");
    let mut rankings = [Vec::new(), Vec::new()];
    for (i, (query, _)) in queries.iter().enumerate() {
        for (m, model) in models.iter().enumerate() {
            rankings[m].push(result_ids(&post(client, &url, &json!({"query": query, "k": k, "model": model})).await?));
        }
        progress(i + 1);
    }
    Ok(rankings)
}

/// Settings of the offline power simulation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PowerSettings {
    pub runs: usize,
    pub max_impressions: usize,
    pub check_every: usize,
    pub alpha: f64,
    pub k: usize,
    pub seed: u64,
    pub clicks: ClickModel,
}

/// How one design fared over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct DesignOutcome {
    pub design: &'static str,
    pub runs: usize,
    /// Sequential use (a test every `check_every` impressions, stop at the first p < alpha — what an impatient
    /// team does; it inflates false decisions): runs that decided, and decided for the better model.
    pub decided: usize,
    pub correct: usize,
    /// Impressions to that first decision over all runs (undecided runs count as never): median and 90th
    /// percentile; `null` when fewer than half (or 90 %) of the runs decided.
    pub median_impressions: Option<usize>,
    pub p90_impressions: Option<usize>,
    /// Fixed-horizon power: at each number of impressions, the share of runs whose single test at that point
    /// is significant and picks the better model.
    pub power_curve: Vec<(usize, f64)>,
    /// The fewest impressions on the curve with power ≥ 0.8 (`null`: not reached within `max_impressions`).
    pub impressions_for_80_percent_power: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PowerOutcome {
    pub queries: usize,
    /// Offline MRR@k of each model on these queries (the truth the designs should find).
    pub mrr: [f64; 2],
    pub better: usize,
    pub ab: DesignOutcome,
    pub interleave: DesignOutcome,
}

fn mrr(rankings: &[Vec<String>], queries: &[(String, HashSet<String>)], k: usize) -> f64 {
    let total: f64 = rankings
        .iter()
        .zip(queries)
        .map(|(r, (_, rel))| r.iter().take(k).position(|id| rel.contains(id)).map_or(0.0, |p| 1.0 / (p + 1) as f64))
        .sum();
    total / queries.len().max(1) as f64
}

/// The fixed horizons of the power curve: about 1.5× apart, from `check_every` to `max_impressions`.
pub fn horizons(check_every: usize, max_impressions: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut n = check_every.max(1) as f64;
    while (n as usize) < max_impressions {
        let rounded = (n as usize).div_ceil(check_every.max(1)) * check_every.max(1);
        if out.last() != Some(&rounded) {
            out.push(rounded);
        }
        n *= 1.5;
    }
    out.push(max_impressions);
    out
}

/// What one simulated experiment saw: its first sequential decision, and at each horizon the significant
/// direction (if any).
struct RunTrace {
    first: Option<(usize, usize)>,
    at_horizon: Vec<Option<usize>>,
}

/// One simulated experiment of either design: `step` shows one impression and returns the current test
/// (p-value, direction) when asked.
fn run_design(s: &PowerSettings, horizons: &[usize], mut step: impl FnMut(bool) -> Option<(f64, usize)>) -> RunTrace {
    let mut first = None;
    let mut at_horizon = Vec::with_capacity(horizons.len());
    let mut next = 0;
    for i in 1..=s.max_impressions {
        let check = i % s.check_every == 0;
        let at = next < horizons.len() && horizons[next] == i;
        let test = step(check || at);
        if let Some((p, direction)) = test {
            if check && first.is_none() && p < s.alpha {
                first = Some((i, direction));
            }
            if at {
                at_horizon.push((p < s.alpha).then_some(direction));
                next += 1;
            }
        }
    }
    RunTrace { first, at_horizon }
}

/// One simulated A/B test: units split 50/50, CTR (impressions with a click) compared by the two-proportion
/// z-test.
fn ab_run(
    rankings: &[Vec<Vec<String>>; 2],
    queries: &[(String, HashSet<String>)],
    s: &PowerSettings,
    horizons: &[usize],
    rng: &mut Rng,
) -> RunTrace {
    let (mut clicked, mut shown) = ([0u64; 2], [0u64; 2]);
    run_design(s, horizons, |test| {
        let arm = rng.below(2);
        let q = rng.below(queries.len());
        let list = &rankings[arm][q][..rankings[arm][q].len().min(s.k)];
        shown[arm] += 1;
        if !s.clicks.clicks(list, &queries[q].1, rng).is_empty() {
            clicked[arm] += 1;
        }
        test.then(|| {
            let t = stats::two_proportion_z(clicked[0], shown[0], clicked[1], shown[1]);
            (t.p_value, usize::from(t.statistic > 0.0))
        })
    })
}

/// One simulated interleaving experiment: team-draft lists, clicks credited to teams, sign test on wins.
fn interleave_run(
    rankings: &[Vec<Vec<String>>; 2],
    queries: &[(String, HashSet<String>)],
    s: &PowerSettings,
    horizons: &[usize],
    rng: &mut Rng,
) -> RunTrace {
    let mut wins = [0u64; 2];
    run_design(s, horizons, |test| {
        let q = rng.below(queries.len());
        let list = team_draft(&rankings[0][q], &rankings[1][q], s.k, rng.next_u64());
        let ids: Vec<String> = list.iter().map(|(id, _)| id.clone()).collect();
        let mut credit = [0usize; 2];
        for p in s.clicks.clicks(&ids, &queries[q].1, rng) {
            credit[list[p].1] += 1;
        }
        if let Outcome::Win(team) = outcome(credit) {
            wins[team] += 1;
        }
        test.then(|| (stats::sign_test(wins[0], wins[1]), usize::from(wins[1] > wins[0])))
    })
}

fn design(name: &'static str, traces: &[RunTrace], horizons: &[usize], better: usize) -> DesignOutcome {
    let mut needed: Vec<usize> = traces.iter().map(|t| t.first.map_or(usize::MAX, |(n, _)| n)).collect();
    needed.sort_unstable();
    // Nearest rank, not `util::stats::quantile`: an order statistic of censored counts, where runs that never
    // decided sort last (usize::MAX) and a quantile among them is "not reached", which interpolation cannot say.
    let at = |q: f64| {
        let i = ((q * needed.len() as f64).ceil() as usize).clamp(1, needed.len().max(1)) - 1;
        needed.get(i).copied().filter(|&n| n != usize::MAX)
    };
    let power_curve: Vec<(usize, f64)> = horizons
        .iter()
        .enumerate()
        .map(|(h, &n)| {
            let hits = traces.iter().filter(|t| t.at_horizon.get(h).copied().flatten() == Some(better)).count();
            (n, hits as f64 / traces.len().max(1) as f64)
        })
        .collect();
    DesignOutcome {
        design: name,
        runs: traces.len(),
        decided: traces.iter().filter(|t| t.first.is_some()).count(),
        correct: traces.iter().filter(|t| matches!(t.first, Some((_, w)) if w == better)).count(),
        median_impressions: at(0.5),
        p90_impressions: at(0.9),
        impressions_for_80_percent_power: power_curve.iter().find(|(_, p)| *p >= 0.8).map(|(n, _)| *n),
        power_curve,
    }
}

/// Runs the A/B and interleaving simulations on fixed rankings.
pub fn power(
    rankings: &[Vec<Vec<String>>; 2],
    queries: &[(String, HashSet<String>)],
    s: &PowerSettings,
) -> PowerOutcome {
    let m = [mrr(&rankings[0], queries, s.k), mrr(&rankings[1], queries, s.k)];
    let better = usize::from(m[1] > m[0]);
    let horizons = horizons(s.check_every, s.max_impressions);
    let mut rng = Rng::new(s.seed);
    let ab: Vec<_> = (0..s.runs).map(|_| ab_run(rankings, queries, s, &horizons, &mut rng)).collect();
    let il: Vec<_> = (0..s.runs).map(|_| interleave_run(rankings, queries, s, &horizons, &mut rng)).collect();
    PowerOutcome {
        queries: queries.len(),
        mrr: m,
        better,
        ab: design("ab", &ab, &horizons, better),
        interleave: design("interleave", &il, &horizons, better),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn clicks_follow_position_bias() {
        let model = ClickModel { eta: 1.0, relevant: 1.0, noise: 0.0 };
        let shown = ids("d", 5);
        let mut rng = Rng::new(1);
        let n = 20_000;
        for (rank, expected) in [(0usize, 1.0), (1, 0.5), (3, 0.25)] {
            let relevant: HashSet<String> = [shown[rank].clone()].into();
            let hits = (0..n).filter(|_| model.clicks(&shown, &relevant, &mut rng) == vec![rank]).count();
            let share = hits as f64 / n as f64;
            assert!((share - expected).abs() < 0.015, "rank {}: {share}", rank + 1);
        }
    }

    /// Model 0 puts the relevant document first, model 1 third: both designs must find model 0, and
    /// interleaving with less traffic.
    #[test]
    fn both_designs_find_the_better_model_and_interleaving_needs_less_traffic() {
        let nq = 50;
        let mut queries = Vec::new();
        let mut rankings = [Vec::new(), Vec::new()];
        for q in 0..nq {
            let rel = format!("rel{q}");
            let mut good = vec![rel.clone()];
            good.extend(ids(&format!("q{q}-x"), 9));
            let mut bad = ids(&format!("q{q}-x"), 2);
            bad.push(rel.clone());
            bad.extend(ids(&format!("q{q}-y"), 7));
            rankings[0].push(good);
            rankings[1].push(bad);
            queries.push((format!("query {q}"), [rel].into()));
        }
        let settings = PowerSettings {
            runs: 20,
            max_impressions: 5_000,
            check_every: 10,
            alpha: 0.05,
            k: 10,
            seed: 3,
            clicks: ClickModel::default(),
        };
        let out = power(&rankings, &queries, &settings);
        assert_eq!(out.better, 0);
        assert!(out.ab.correct >= 18 && out.interleave.correct >= 18, "{out:?}");
        let (ab, il) = (out.ab.median_impressions.unwrap(), out.interleave.median_impressions.unwrap());
        assert!(il < ab, "interleaving {il} vs A/B {ab}");
        let (pa, pi) = (
            out.ab.impressions_for_80_percent_power.unwrap(),
            out.interleave.impressions_for_80_percent_power.unwrap(),
        );
        assert!(pi <= pa, "fixed horizon: interleaving {pi} vs A/B {pa}");
        assert!(out.ab.power_curve.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn horizons_grow_geometrically_on_the_check_grid() {
        assert_eq!(horizons(10, 100), vec![10, 20, 30, 40, 50, 80, 100]);
        assert_eq!(*horizons(50, 100_000).last().unwrap(), 100_000);
    }
}
