//! `duet bench-swap`: live search latency idle, during another model's back-fill, and across a replacement of
//! the searched model, against a running server ([`duet::experiment::swap_bench`]); prints the table and fails
//! when a search failed during the swap or a client saw versions mixed.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;
use duet::experiment::simulate::Server;
use duet::experiment::swap_bench::{self, PhaseOutcome, SwapBenchOutcome, SwapBenchSettings};

use super::write_json;

#[derive(ClapArgs)]
pub struct Args {
    /// Base URL of the running server.
    #[arg(long, env = "DUET_BENCH_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API key sent as `Authorization: Bearer`; adding and replacing models needs the `admin` scope.
    #[arg(long, env = "DUET_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model the clients search (and the one --replace-path replaces).
    #[arg(long, env = "DUET_BENCH_SWAP_MODEL", default_value = "minilm")]
    pub model: String,
    /// Folder of the model added during the back-fill phase, inside the server's `models_dir` (relative to it).
    #[arg(long, env = "DUET_BENCH_ADD_PATH")]
    pub add_path: String,
    /// Name the added model is served as (default: the searched model's name with `-bench-b`).
    #[arg(long, env = "DUET_BENCH_ADD_NAME")]
    pub add_name: Option<String>,
    /// Folder of a new version of the searched model: replace it while the clients search (the swap phase).
    #[arg(long, env = "DUET_BENCH_REPLACE_PATH")]
    pub replace_path: Option<String>,
    /// Only the swap phase: no idle or back-fill phase (needs --replace-path).
    #[arg(long, env = "DUET_BENCH_SWAP_ONLY")]
    pub swap_only: bool,
    /// Concurrent search clients.
    #[arg(long, env = "DUET_BENCH_CLIENTS", default_value_t = 4)]
    pub clients: usize,
    /// Searches per second, all clients together; 0: each client searches again as soon as it is answered
    /// (which saturates a small machine, leaving a back-fill nothing but a share of the CPU).
    #[arg(long, env = "DUET_BENCH_RATE", default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of the idle phase.
    #[arg(long, env = "DUET_BENCH_SECONDS", default_value_t = 20.0)]
    pub seconds: f64,
    /// Queries: JSONL with a `query` field per line (e.g. a test.jsonl of pairs), or plain text lines.
    #[arg(long, env = "DUET_BENCH_QUERIES")]
    pub queries: PathBuf,
    /// Use the first N distinct queries.
    #[arg(long, env = "DUET_BENCH_QUERY_LIMIT", default_value_t = 2000)]
    pub query_limit: usize,
    /// Results per search.
    #[arg(long, env = "DUET_BENCH_K", default_value_t = 10)]
    pub k: usize,
    /// Give up when a back-fill takes longer than this many seconds.
    #[arg(long, env = "DUET_BENCH_TIMEOUT", default_value_t = 1800.0)]
    pub timeout: f64,
    /// Also write the outcome as JSON here.
    #[arg(long, env = "DUET_BENCH_OUT")]
    pub out: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0 && args.k > 0, "--clients and --k must be positive");
    anyhow::ensure!(args.seconds > 0.0 && args.timeout > 0.0, "--seconds and --timeout must be positive");
    anyhow::ensure!(args.rate >= 0.0, "--rate must not be negative");
    anyhow::ensure!(!args.swap_only || args.replace_path.is_some(), "--swap-only needs --replace-path");
    let queries = swap_bench::load_queries(&args.queries, args.query_limit)?;
    let server = Server::new(&args.server, args.api_key.as_deref())?;
    let settings = SwapBenchSettings {
        add_name: args.add_name.unwrap_or_else(|| format!("{}-bench-b", args.model)),
        model: args.model,
        add_path: args.add_path,
        replace_path: args.replace_path,
        clients: args.clients,
        rate: (args.rate > 0.0).then_some(args.rate),
        idle: Duration::from_secs_f64(args.seconds),
        warmup: Duration::from_secs(2),
        settle: Duration::from_secs(2),
        k: args.k,
        poll: Duration::from_millis(250),
        timeout: Duration::from_secs_f64(args.timeout),
        swap_only: args.swap_only,
    };
    let outcome = swap_bench::run(&server, queries, settings, |what| eprintln!("{what}")).await?;
    print_outcome(&outcome);
    write_json(args.out.as_deref(), &outcome)?;
    let wrong = outcome.violations();
    anyhow::ensure!(wrong.is_empty(), "the swap was not clean: {}", wrong.join("; "));
    Ok(())
}

fn row(name: &str, p: &PhaseOutcome) {
    let l = &p.latency_ms;
    println!(
        "| {name} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
        p.seconds, p.requests, p.per_second, l.p50, l.p90, l.p99, l.mean, p.non_2xx, p.failed
    );
}

fn print_outcome(o: &SwapBenchOutcome) {
    let s = &o.settings;
    println!(
        "live search of `{}`: {} clients, {}, {} distinct queries, k {} (client side, POST /v1/search)",
        s.model,
        s.clients,
        s.rate.map_or_else(|| "each as fast as it is answered".to_string(), |r| format!("{r} searches/s in all")),
        o.queries,
        s.k
    );
    println!("| phase | seconds | requests | per second | p50 ms | p90 ms | p99 ms | mean ms | non-2xx | failed |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    if let Some(idle) = &o.idle {
        row("idle", idle);
    }
    if let (Some(during), Some(b)) = (&o.during_backfill, &o.backfill) {
        row(&format!("during the back-fill of `{}`", b.model), during);
    }
    if let Some(swap) = &o.swap {
        row(&format!("during the swap of `{}`", swap.model), &swap.live);
    }
    if let (Some(p99), Some(p50)) = (o.p99_ratio, o.p50_ratio) {
        let verdict = if p99 <= 2.0 { "within" } else { "ABOVE" };
        println!("p99 during back-fill / idle: {p99:.2}× ({verdict} the 2× target); p50: {p50:.2}×");
    }
    let server_pace = |v: Option<f64>| v.map_or_else(|| "n/a".into(), |x| format!("{x:.1}"));
    if let Some(b) = &o.backfill {
        println!(
            "back-fill of `{}`: {} documents in {:.1} s = {:.1} documents/s (server's pace {}); loading took {:.1} s",
            b.model,
            b.documents,
            b.seconds,
            b.per_second,
            server_pace(b.server_per_second),
            b.load_seconds
        );
    }
    if let Some(w) = &o.swap {
        println!(
            "swap of `{}` {} → {}: {:.1} s from PUT to serving ({:.1} s loading, {} documents back-filled at \
             {:.1} documents/s); {} non-2xx, {} failed of {} searches; clients: {} switched once, {} saw one \
             version, {} saw versions mixed",
            w.model,
            short(&w.from_version),
            short(&w.to_version),
            w.swap_seconds,
            w.backfill.load_seconds,
            w.backfill.documents,
            w.backfill.per_second,
            w.live.non_2xx,
            w.live.failed,
            w.live.requests,
            w.clients_switched_once,
            w.clients_one_version,
            w.clients_mixed
        );
    }
}

fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}
