//! HNSW against exact search on 10,000 clustered 384-dimensional vectors (the dimension of MiniLM): recall@10
//! must stay at or above 0.95 as served (default parameters), after deletions and replacements too.
//! Clustered data, because i.i.d. random high-dimensional vectors defeat every HNSW and test nothing.

use duet::index::{recall, IndexParams, SearchMethod, VectorIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 384;
const DOCS: usize = 10_000;
const CLUSTERS: usize = 200;
const QUERIES: usize = 300;

fn gaussian(rng: &mut StdRng) -> f32 {
    // Box-Muller.
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

struct Data {
    centers: Vec<Vec<f32>>,
    rng: StdRng,
}

impl Data {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let centers = (0..CLUSTERS).map(|_| (0..DIM).map(|_| gaussian(&mut rng)).collect()).collect();
        Self { centers, rng }
    }

    /// A point near a random cluster centre (noise comparable to the spread between clusters' members).
    fn point(&mut self) -> Vec<f32> {
        let c = self.rng.random_range(0..CLUSTERS);
        let center = self.centers[c].clone();
        center.iter().map(|x| x + 0.8 * gaussian(&mut self.rng)).collect()
    }
}

fn mean_recall(index: &VectorIndex, queries: &[Vec<f32>]) -> f64 {
    let mut total = 0.0;
    for q in queries {
        let approx = index.search(q, 10, None, false);
        assert_eq!(approx.method, SearchMethod::Hnsw);
        let exact = index.search(q, 10, None, true);
        assert_eq!(exact.method, SearchMethod::Exact);
        total += recall(&approx.hits, &exact.hits);
    }
    total / queries.len() as f64
}

#[test]
fn hnsw_recall_at_10_is_at_least_095_against_exact_search() {
    let mut data = Data::new(7);
    let params = IndexParams::default();
    let index = VectorIndex::new(DIM, params);
    let items: Vec<(String, Vec<f32>)> = (0..DOCS).map(|i| (format!("doc-{i}"), data.point())).collect();
    index.upsert(items).unwrap();
    assert!(index.needs_rebuild(), "10k documents are past exact_below={}", params.exact_below);
    let started = std::time::Instant::now();
    index.rebuild_graph();
    let build = started.elapsed();
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|_| data.point()).collect();

    for ef in [10, 16, 32] {
        let r: f64 = queries
            .iter()
            .map(|q| recall(&index.search(q, 10, Some(ef), false).hits, &index.search(q, 10, None, true).hits))
            .sum::<f64>()
            / QUERIES as f64;
        println!("recall@10 at ef {ef}: {r:.4}");
    }
    let r = mean_recall(&index, &queries);
    println!("recall@10 = {r:.4} over {QUERIES} queries (default ef); graph of {DOCS}x{DIM} built in {build:.1?}");
    assert!(r >= 0.95, "recall@10 {r:.4} < 0.95");

    // Delete 10% and replace another 10% (with new vectors): dead entries are filtered out at once,
    // and recall holds before any rebuild.
    for i in (0..DOCS).step_by(10) {
        assert!(index.delete(&format!("doc-{i}")));
    }
    let replaced: Vec<(String, Vec<f32>)> = (5..DOCS).step_by(10).map(|i| (format!("doc-{i}"), data.point())).collect();
    index.upsert(replaced).unwrap();
    assert_eq!(index.len(), DOCS - DOCS / 10);
    assert_eq!(index.dead_in_graph(), DOCS / 5);
    let r = mean_recall(&index, &queries);
    println!("recall@10 = {r:.4} with 20% of the graph dead");
    assert!(r >= 0.95, "recall@10 {r:.4} < 0.95 after deletions");
    for q in &queries[..20] {
        for hit in index.search(q, 10, None, false).hits {
            let n: usize = hit.id.trim_start_matches("doc-").parse().unwrap();
            assert_ne!(n % 10, 0, "deleted documents never come back");
        }
    }

    // A larger ef can only help.
    let wide: f64 = queries
        .iter()
        .map(|q| recall(&index.search(q, 10, Some(256), false).hits, &index.search(q, 10, None, true).hits))
        .sum::<f64>()
        / QUERIES as f64;
    assert!(wide >= r - 1e-9, "ef 256 recall {wide} below default-ef recall {r}");
}
