//! Single-pair tensor similarity, with throughput in FLOPs so criterion prints GFLOP/s, beside the
//! machine's own f64 GEMM measured in the same run (compare the two rates, not absolute times).
//!
//! `cargo bench -p tensim --bench tensor`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::SeedableRng;
use tensim::arch::{Residual, ResidualMode};
use tensim::demo::{random_stack, StackShape};
use tensim::linalg::{mul, Mat, Par};
use tensim::metrics::{tensor, Options};

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_f64");
    for n in [256usize, 1024] {
        let a = Mat::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 11) as f64);
        g.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        for (name, par) in [("seq", Par::Seq), ("rayon", Par::rayon(0))] {
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| mul(a.as_ref(), a.as_ref(), par))
            });
        }
    }
    g.finish();
}

/// GEMM flops of one Gram of the recursion for `embed d_in→d, bilinear h (residual), head`:
/// embed `2(d+1)²(d_in+1)`, per bilinear node `P, Q` (4 × `2h(d+1)²`) and four `2h²(d+1)`,
/// `D̂K` and `(D̂K)D̂ᵀ` with a folded head of `c+1` rows.
fn gram_flops(d_in: usize, d: usize, h: usize, c: usize) -> u64 {
    let (d1, hh) = ((d + 1) as u64, (1 + h + d) as u64);
    let (h, c1) = (h as u64, (c + 1) as u64);
    2 * d1 * d1 * (d_in as u64 + 1)
        + 8 * h * d1 * d1
        + 8 * h * h * d1
        + 2 * c1 * hh * hh
        + 2 * c1 * hh * c1
}

fn pair(c: &mut Criterion) {
    let mut g = c.benchmark_group("tensor_pair");
    g.sample_size(10);
    for (d_in, d, h, out) in [(784, 128, 256, 10), (784, 512, 1024, 10)] {
        let shape = StackShape {
            d_in,
            d_model: d,
            hidden: vec![h],
            d_out: out,
            residual: Some(Residual {
                mode: ResidualMode::Lerp,
                scale: 0.5,
            }),
            bias: false,
            embed: true,
            down: true,
            heads: 0,
            n_ctx: 1,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let (a, b) = (
            random_stack(&shape, &mut rng).unwrap(),
            random_stack(&shape, &mut rng).unwrap(),
        );
        // Three Grams (ab, aa, bb); the self-Grams skip two of the eight node GEMMs.
        g.throughput(Throughput::Elements(3 * gram_flops(d_in, d, h, out)));
        let label = format!("{d_in}-{d}-{h}-{out}");
        for (name, par) in [("seq", Par::Seq), ("rayon", Par::rayon(0))] {
            let opts = Options {
                per_output: false,
                per_tensor: false,
                par,
            };
            g.bench_with_input(BenchmarkId::new(name, &label), &label, |bch, _| {
                bch.iter(|| tensor::similarity(&a, &b, &opts).unwrap())
            });
        }
    }
    g.finish();
}

/// All-pairs matrix of 32 checkpoints of the SVHN-backdoor shape (1024→64 bilinear, 64→10 head),
/// throughput = the tiles' own GEMM flop count.
fn all_pairs(c: &mut Criterion) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tensim::metrics::Metric;
    use tensim::trajectory::{similarity_matrix, MatrixOptions};
    let shape = tensim::bench::reference_shapes()[0].1.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let models: Vec<_> = (0..32)
        .map(|_| random_stack(&shape, &mut rng).unwrap())
        .collect();
    let names: Vec<String> = (0..32).map(|i| i.to_string()).collect();
    let checkpoints = tensim::trajectory::checkpoints::in_memory(&models, &names);
    let flops = AtomicU64::new(0);
    let counted = MatrixOptions {
        flops: Some(&flops),
        ..Default::default()
    };
    similarity_matrix(&checkpoints, &Metric::TENSOR, &counted, &|_, _| {}).unwrap();
    let mut g = c.benchmark_group("all_pairs");
    g.sample_size(10);
    g.throughput(Throughput::Elements(flops.load(Ordering::Relaxed)));
    g.bench_function("svhn_shape_32", |b| {
        b.iter(|| {
            similarity_matrix(
                &checkpoints,
                &Metric::TENSOR,
                &MatrixOptions::default(),
                &|_, _| {},
            )
            .unwrap()
        })
    });
    g.finish();
}

/// The gaussian metric on the paper's language model (vocabulary 4096, d_model 256, 8 heads,
/// 2 attention layers, n_ctx 4): one pair end to end, and one pair of a matrix (self chains
/// cached, the cross chain alone).
fn language_model(c: &mut Criterion) {
    use tensim::metrics::gaussian;
    let (_, shape) = tensim::bench::language_model_shape();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (a, b) = (
        random_stack(&shape, &mut rng).unwrap(),
        random_stack(&shape, &mut rng).unwrap(),
    );
    let mut g = c.benchmark_group("language_model");
    g.sample_size(10);
    for precision in [gaussian::Precision::F64, gaussian::Precision::F32] {
        let chain = |m| tensim::propagate::self_chain(m, precision).unwrap();
        let (ca, cb) = (chain(&a), chain(&b));
        let opts = gaussian::GaussOptions {
            precision,
            ..Default::default()
        };
        let name = |what: &str| format!("{what}/{precision}");
        g.bench_function(name("gaussian_pair"), |bch| {
            bch.iter(|| gaussian::similarity(&a, &b, &opts, Par::rayon(0)).unwrap())
        });
        g.bench_function(name("gaussian_cached_pair"), |bch| {
            bch.iter(|| gaussian::similarity_cached(&a, &b, &ca, &cb).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, gemm, pair, all_pairs, language_model);
criterion_main!(benches);
