//! `duet simulate`: simulated users against a running server ([`duet::experiment::simulate`]) — a replay under
//! an experiment, or the impressions A/B and interleaving need — and the tables they print.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};
use duet::experiment::simulate::{self, ClickModel, PowerSettings};

use super::{progress_bar, write_json};

#[derive(Subcommand)]
pub enum Command {
    /// Replay test pairs as searches by simulated units under an experiment, send their clicks as feedback,
    /// and print the experiment's report with the latency of experiment searches next to explicit-model ones.
    Replay(ReplayArgs),
    /// Fetch two models' rankings for the test queries, then simulate many A/B tests and interleaving
    /// experiments offline and print the impressions each needs to pick the better model at p < alpha.
    Power(PowerArgs),
}

#[derive(ClapArgs)]
pub struct SimulationArgs {
    /// Base URL of the running server.
    #[arg(long, env = "DUET_SIMULATE_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API key sent as `Authorization: Bearer` (one with the `search` scope), for a server that needs keys.
    #[arg(long, env = "DUET_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Data folder with test.jsonl ({"query","doc_id"} per line); the relevant documents must be served.
    #[arg(long, env = "DUET_SIMULATE_DATA")]
    pub data: PathBuf,
    /// Use the first N distinct test queries.
    #[arg(long, env = "DUET_SIMULATE_QUERIES", default_value_t = 500)]
    pub queries: usize,
    /// Results shown per search.
    #[arg(long, env = "DUET_SIMULATE_K", default_value_t = 10)]
    pub k: usize,
    /// Position bias: a result at rank r is examined with probability 1 / r^eta.
    #[arg(long, env = "DUET_SIMULATE_ETA", default_value_t = 1.0)]
    pub eta: f64,
    /// Probability of clicking an examined relevant result.
    #[arg(long, env = "DUET_SIMULATE_CLICK_RELEVANT", default_value_t = 0.9)]
    pub click_relevant: f64,
    /// Probability of clicking an examined non-relevant result.
    #[arg(long, env = "DUET_SIMULATE_CLICK_NOISE", default_value_t = 0.05)]
    pub click_noise: f64,
    /// Seed of the simulated clicks (and, for power, of the assignment and the query draws).
    #[arg(long, env = "DUET_SIMULATE_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Also write the outcome as JSON here.
    #[arg(long, env = "DUET_SIMULATE_OUT")]
    pub out: Option<PathBuf>,
}

#[derive(ClapArgs)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: SimulationArgs,
    /// Experiment (id or name) to search under; it should be running.
    #[arg(long, env = "DUET_SIMULATE_EXPERIMENT")]
    pub experiment: String,
    /// Model searched explicitly (no experiment) after each interleaved search, to compare latency side by side
    /// (after an A/B or shadow search, the serving arm's model is searched explicitly).
    #[arg(long, env = "DUET_SIMULATE_BASELINE_MODEL")]
    pub baseline_model: String,
    /// Number of simulated units (queries are assigned to them round-robin).
    #[arg(long, env = "DUET_SIMULATE_USERS", default_value_t = 200)]
    pub users: usize,
}

#[derive(ClapArgs)]
pub struct PowerArgs {
    #[command(flatten)]
    pub common: SimulationArgs,
    /// The two models to compare, comma-separated.
    #[arg(long, env = "DUET_SIMULATE_MODELS", value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    /// Simulated experiments per design.
    #[arg(long, env = "DUET_SIMULATE_RUNS", default_value_t = 200)]
    pub runs: usize,
    /// Give up on a run after this many impressions.
    #[arg(long, env = "DUET_SIMULATE_MAX_IMPRESSIONS", default_value_t = 100_000)]
    pub max_impressions: usize,
    /// Test after every N impressions.
    #[arg(long, env = "DUET_SIMULATE_CHECK_EVERY", default_value_t = 50)]
    pub check_every: usize,
    /// Significance level.
    #[arg(long, env = "DUET_SIMULATE_ALPHA", default_value_t = 0.05)]
    pub alpha: f64,
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Replay(args) => replay(args).await,
        Command::Power(args) => power(args).await,
    }
}

fn click_model(args: &SimulationArgs) -> anyhow::Result<ClickModel> {
    let probability = |x: f64| (0.0..=1.0).contains(&x);
    anyhow::ensure!(
        probability(args.click_relevant) && probability(args.click_noise) && args.eta >= 0.0,
        "click probabilities must lie in [0, 1] and --eta must not be negative"
    );
    Ok(ClickModel { eta: args.eta, relevant: args.click_relevant, noise: args.click_noise })
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let clicks = click_model(c)?;
    let queries = simulate::load_queries(&c.data.join("test.jsonl"), c.queries)?;
    let bar = progress_bar(queries.len(), "searches");
    let server = simulate::Server::new(&c.server, c.api_key.as_deref())?;
    let outcome = simulate::replay(
        &server,
        &args.experiment,
        &args.baseline_model,
        &queries,
        args.users,
        c.k,
        clicks,
        c.seed,
        |n| bar.set_position(n as u64),
    )
    .await?;
    bar.finish_and_clear();
    let (e, b) = (&outcome.experiment_latency_ms, &outcome.baseline_latency_ms);
    println!("{} searches by {} units, {} clicks", outcome.searches, args.users, outcome.clicks);
    println!("| latency (ms, client side) | p50 | p90 | p99 | mean |");
    println!("|---|---|---|---|---|");
    println!("| experiment `{}` | {:.2} | {:.2} | {:.2} | {:.2} |", args.experiment, e.p50, e.p90, e.p99, e.mean);
    println!("| serving model alone (no experiment) | {:.2} | {:.2} | {:.2} | {:.2} |", b.p50, b.p90, b.p99, b.mean);
    println!("| ratio | {:.2} | {:.2} | {:.2} | {:.2} |", e.p50 / b.p50, e.p90 / b.p90, e.p99 / b.p99, e.mean / b.mean);
    let o = &outcome.overhead_ms;
    println!(
        "| paired difference (experiment − alone) | {:+.2} | {:+.2} | {:+.2} | {:+.2} |",
        o.p50, o.p90, o.p99, o.mean
    );
    print_report(&outcome.report);
    write_json(c.out.as_deref(), &outcome)
}

/// The headline of an experiment report (the whole report is in --out).
fn print_report(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let ci =
        |v: &serde_json::Value| format!("{:.3} [{:.3}, {:.3}]", f(&v["value"]), f(&v["ci95"][0]), f(&v["ci95"][1]));
    for arm in r["arms"].as_array().into_iter().flatten() {
        println!(
            "arm {}: {} impressions, CTR {}, MRR of the first click {}",
            arm["name"].as_str().unwrap_or("?"),
            arm["impressions"],
            ci(&arm["ctr"]),
            ci(&arm["mrr_first_click"])
        );
    }
    for c in r["comparisons"].as_array().into_iter().flatten() {
        println!(
            "{} vs {}: CTR difference {:+.3}, z {:.2}, p {:.2e}, needed per arm for mde {}: {}",
            c["treatment"].as_str().unwrap_or("?"),
            c["control"].as_str().unwrap_or("?"),
            f(&c["ctr_difference"]),
            f(&c["z"]),
            f(&c["p_value"]),
            r["mde"],
            c["needed_per_arm"]
        );
    }
    let i = &r["interleave"];
    if i.is_object() {
        println!(
            "interleaving: {} impressions, wins {}, ties {}, no click {}, preference for the second arm {}, sign test p {:.2e}, preferred {}",
            i["impressions"], i["wins"], i["ties"], i["no_click"], ci(&i["preference_for_second"]), f(&i["sign_test_p"]), i["preferred"]
        );
    }
    let s = &r["shadow"];
    if s.is_object() {
        println!(
            "shadow: {} compared, jaccard@k {}, RBO {}, latency p50 primary {:.2} ms / shadow {:.2} ms",
            s["compared"],
            ci(&s["jaccard"]),
            ci(&s["rbo"]),
            f(&s["primary_latency_ms"]["p50"]),
            f(&s["shadow_latency_ms"]["p50"])
        );
    }
}

async fn power(args: PowerArgs) -> anyhow::Result<()> {
    let c = &args.common;
    anyhow::ensure!(args.models.len() == 2, "--models takes exactly two models");
    anyhow::ensure!(
        args.runs > 0 && args.check_every > 0 && args.max_impressions > 0,
        "runs, check-every and max-impressions must be positive"
    );
    let settings = PowerSettings {
        runs: args.runs,
        max_impressions: args.max_impressions,
        check_every: args.check_every,
        alpha: args.alpha,
        k: c.k,
        seed: c.seed,
        clicks: click_model(c)?,
    };
    let queries = simulate::load_queries(&c.data.join("test.jsonl"), c.queries)?;
    let bar = progress_bar(queries.len(), "queries");
    let models = [args.models[0].as_str(), args.models[1].as_str()];
    let server = simulate::Server::new(&c.server, c.api_key.as_deref())?;
    let rankings = simulate::fetch_rankings(&server, models, &queries, c.k, |n| bar.set_position(n as u64)).await?;
    bar.finish_and_clear();
    let started = std::time::Instant::now();
    let outcome = simulate::power(&rankings, &queries, &settings);
    println!(
        "{} queries; offline MRR@{}: {} {:.3}, {} {:.3} (better: {}); {} runs per design, a test every {} impressions, alpha {}",
        outcome.queries, c.k, models[0], outcome.mrr[0], models[1], outcome.mrr[1], models[outcome.better],
        settings.runs, settings.check_every, settings.alpha
    );
    let show = |x: Option<usize>| x.map_or_else(|| format!("> {}", settings.max_impressions), |n| n.to_string());
    println!("| design | impressions for 80 % power (one test at a fixed horizon) | sequential: decided | correct | median impressions | p90 impressions |");
    println!("|---|---|---|---|---|---|");
    for d in [&outcome.ab, &outcome.interleave] {
        println!(
            "| {} | {} | {}/{} | {}/{} | {} | {} |",
            d.design,
            show(d.impressions_for_80_percent_power),
            d.decided,
            d.runs,
            d.correct,
            d.runs,
            show(d.median_impressions),
            show(d.p90_impressions)
        );
    }
    println!("power by impressions (A/B, interleaving):");
    for ((n, a), (_, i)) in outcome.ab.power_curve.iter().zip(&outcome.interleave.power_curve) {
        println!("  {n:>7}: {a:.2} {i:.2}");
    }
    eprintln!("simulated in {:.1} s", started.elapsed().as_secs_f64());
    write_json(c.out.as_deref(), &serde_json::json!({"settings": settings, "models": models, "outcome": outcome}))
}
