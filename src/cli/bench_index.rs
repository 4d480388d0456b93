//! `duet bench-index`: the vector index's graph backends side by side on the same vectors — seeded clustered
//! unit vectors, or little-endian f32 files — at the same M and ef_construction: build time (all cores), bytes
//! per vector, and recall@k (against exact brute force) with single-thread QPS at several ef. `--dump DIR` writes
//! the vectors and the exact neighbours so that another library (scripts/bench-index runs hnswlib) is measured
//! on the very same data. Uses the index only.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args as ClapArgs;
use duet::index::{Backend, IndexParams, Precision, VectorIndex};
use duet::util::rng::Rng;
use serde::Serialize;

#[derive(ClapArgs)]
pub struct Args {
    /// Base vectors, a little-endian f32 file of `--dim` floats per vector (default: generated).
    #[arg(long, env = "DUET_BENCH_VECTORS")]
    pub vectors: Option<PathBuf>,
    /// Query vectors, same format (required with --vectors).
    #[arg(long, env = "DUET_BENCH_QUERIES")]
    pub queries: Option<PathBuf>,
    /// Generated base vectors.
    #[arg(long, env = "DUET_BENCH_N", default_value_t = 20_000)]
    pub n: usize,
    /// Generated queries.
    #[arg(long, env = "DUET_BENCH_QUERY_COUNT", default_value_t = 1000)]
    pub query_count: usize,
    #[arg(long, env = "DUET_BENCH_DIM", default_value_t = 384)]
    pub dim: usize,
    #[arg(long, env = "DUET_BENCH_SEED", default_value_t = 7)]
    pub seed: u64,
    #[arg(long, env = "DUET_BENCH_M", default_value_t = 16)]
    pub m: usize,
    #[arg(long, env = "DUET_BENCH_EF_CONSTRUCTION", default_value_t = 200)]
    pub ef_construction: usize,
    /// Search candidate list sizes, comma-separated.
    #[arg(long, env = "DUET_BENCH_EF", value_delimiter = ',', default_value = "16,32,64,128")]
    pub ef: Vec<usize>,
    #[arg(long, env = "DUET_BENCH_K", default_value_t = 10)]
    pub k: usize,
    /// Graphs measured, `backend/precision`, comma-separated (e.g. usearch/f32,usearch/f16,usearch/i8,hnsw_rs/f32).
    #[arg(long, env = "DUET_BENCH_GRAPHS", value_delimiter = ',', default_value = "usearch/f32,hnsw_rs/f32")]
    pub graphs: Vec<String>,
    /// Writes base.f32, queries.f32 and truth.u32 (the exact k nearest ids per query) here, then measures.
    #[arg(long, env = "DUET_BENCH_DUMP")]
    pub dump: Option<PathBuf>,
    /// Writes the results as JSON here.
    #[arg(long, env = "DUET_BENCH_JSON")]
    pub json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Point {
    ef: usize,
    recall: f64,
    qps: f64,
}

#[derive(Serialize)]
struct Run {
    backend: &'static str,
    precision: &'static str,
    build_s: f64,
    bytes_per_vector: usize,
    points: Vec<Point>,
}

#[derive(Serialize)]
struct Report {
    n: usize,
    queries: usize,
    dim: usize,
    m: usize,
    ef_construction: usize,
    k: usize,
    cores: usize,
    runs: Vec<Run>,
}

/// Clustered unit vectors: `n / 100` (at least 10) Gaussian centres, each point a centre plus Gaussian noise
/// (0.7 per component), normalised. Queries are drawn the same way and are not in the base set.
fn generate(n: usize, queries: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let clusters = (n / 100).max(10);
    let centres: Vec<f32> = (0..clusters * dim).map(|_| rng.normal() as f32).collect();
    let mut draw = |count: usize| {
        let mut out = Vec::with_capacity(count * dim);
        for _ in 0..count {
            let c = rng.below(clusters);
            let mut v: Vec<f32> = (0..dim).map(|j| centres[c * dim + j] + 0.7 * rng.normal() as f32).collect();
            duet::util::normalize(&mut v);
            out.extend(v);
        }
        out
    };
    let base = draw(n);
    (base, draw(queries))
}

fn read_f32(path: &Path, dim: usize) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(bytes.len() % (4 * dim) == 0, "{} is not a whole number of {dim}-d f32 vectors", path.display());
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect())
}

fn write_bytes(path: &Path, bytes: impl Iterator<Item = [u8; 4]>) -> anyhow::Result<()> {
    let data: Vec<u8> = bytes.flatten().collect();
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// The exact k nearest base ids of every query (dot product; both threads).
fn truth(base: &[f32], queries: &[f32], dim: usize, k: usize) -> Vec<Vec<u32>> {
    let one = |q: &[f32]| {
        let mut scored: Vec<(f32, u32)> = base
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), i as u32))
            .collect();
        let k = k.min(scored.len());
        scored.select_nth_unstable_by(k.saturating_sub(1), |a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().map(|(_, i)| i).collect::<Vec<u32>>()
    };
    let qs: Vec<&[f32]> = queries.chunks_exact(dim).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = qs.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> =
            qs.chunks(chunk).map(|part| s.spawn(move || part.iter().map(|q| one(q)).collect::<Vec<_>>())).collect();
        parts.into_iter().flat_map(|h| h.join().expect("truth thread")).collect()
    })
}

fn parse_graph(text: &str) -> anyhow::Result<(Backend, Precision)> {
    let (backend, precision) = text.split_once('/').unwrap_or((text, "f32"));
    let backend = match backend {
        "usearch" => Backend::Usearch,
        "hnsw_rs" => Backend::HnswRs,
        other => anyhow::bail!("unknown backend {other:?} (usearch, hnsw_rs)"),
    };
    let precision = match precision {
        "f32" => Precision::F32,
        "f16" => Precision::F16,
        "i8" => Precision::I8,
        other => anyhow::bail!("unknown precision {other:?} (f32, f16, i8)"),
    };
    Ok((backend, precision))
}

fn measure(
    args: &Args,
    base: &[f32],
    queries: &[f32],
    truth: &[Vec<u32>],
    graph: (Backend, Precision),
) -> anyhow::Result<Run> {
    let (backend, precision) = graph;
    let params = IndexParams {
        m: args.m,
        ef_construction: args.ef_construction,
        exact_below: 0,
        backend,
        precision,
        ..IndexParams::default()
    };
    if let Some(problem) = params.problem() {
        anyhow::bail!("{problem}");
    }
    let index = VectorIndex::new(args.dim, params);
    let items: Vec<(String, Vec<f32>)> =
        base.chunks_exact(args.dim).enumerate().map(|(i, v)| (i.to_string(), v.to_vec())).collect();
    index.upsert(items)?;
    let started = Instant::now();
    index.rebuild_graph();
    let build_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(index.has_graph(), "the {} graph was not built", backend.as_str());
    let mut points = Vec::new();
    for &ef in &args.ef {
        let started = Instant::now();
        let mut found = 0usize;
        for (q, want) in queries.chunks_exact(args.dim).zip(truth) {
            let out = index.search(q, args.k, Some(ef), false);
            found += out.hits.iter().filter(|h| h.id.parse::<u32>().is_ok_and(|id| want.contains(&id))).count();
        }
        let seconds = started.elapsed().as_secs_f64();
        let recall = found as f64 / (truth.len() * args.k).max(1) as f64;
        points.push(Point { ef, recall, qps: truth.len() as f64 / seconds });
    }
    Ok(Run {
        backend: backend.as_str(),
        precision: precision.as_str(),
        build_s,
        bytes_per_vector: index.bytes_per_vector(),
        points,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (base, queries) = match (&args.vectors, &args.queries) {
        (Some(v), Some(q)) => (read_f32(v, args.dim)?, read_f32(q, args.dim)?),
        (None, None) => generate(args.n, args.query_count, args.dim, args.seed),
        _ => anyhow::bail!("--vectors and --queries go together"),
    };
    let graphs = args.graphs.iter().map(|g| parse_graph(g)).collect::<anyhow::Result<Vec<_>>>()?;
    let n = base.len() / args.dim;
    let truth = truth(&base, &queries, args.dim, args.k);
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir)?;
        write_bytes(&dir.join("base.f32"), base.iter().map(|x| x.to_le_bytes()))?;
        write_bytes(&dir.join("queries.f32"), queries.iter().map(|x| x.to_le_bytes()))?;
        write_bytes(&dir.join("truth.u32"), truth.iter().flatten().map(|x| x.to_le_bytes()))?;
    }
    println!(
        "{n} vectors x {} dims, {} queries, M {}, ef_construction {}, k {}",
        args.dim,
        truth.len(),
        args.m,
        args.ef_construction,
        args.k
    );
    println!("| graph | build s | bytes/vector | ef | recall@{} | QPS (1 thread) |", args.k);
    println!("|---|---|---|---|---|---|");
    let mut runs = Vec::new();
    for graph in graphs {
        let run = measure(&args, &base, &queries, &truth, graph)?;
        for p in &run.points {
            println!(
                "| {}/{} | {:.1} | {} | {} | {:.4} | {:.0} |",
                run.backend, run.precision, run.build_s, run.bytes_per_vector, p.ef, p.recall, p.qps
            );
        }
        runs.push(run);
    }
    if let Some(path) = &args.json {
        let report = Report {
            n,
            queries: truth.len(),
            dim: args.dim,
            m: args.m,
            ef_construction: args.ef_construction,
            k: args.k,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            runs,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
