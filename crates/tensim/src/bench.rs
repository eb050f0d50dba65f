//! `tensim bench`: in one run on this machine, the machine's own GEMM throughput and the
//! all-pairs tensor-similarity matrix for the reference shapes, reported as pairs/s, achieved
//! GFLOP/s and the ratio to the GEMM throughput (absolute times on shared machines are noisy;
//! ratios measured in the same run are not).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

use crate::demo::{random_stack, StackShape};
use crate::error::Result;
use crate::linalg::{Mat, Par};
use crate::metrics::Metric;
use crate::moment::Precision;
use crate::trajectory::checkpoints::in_memory;
use crate::trajectory::{similarity_matrix, MatrixOptions};

/// GEMM throughput of this machine.
#[derive(Clone, Debug, Serialize)]
pub struct Gemm {
    pub n: usize,
    /// One thread.
    pub f64_single_gflops: f64,
    /// Independent single-threaded GEMMs on every core (how the all-pairs tiles run).
    pub f64_all_cores_gflops: f64,
    pub f32_all_cores_gflops: f64,
}

/// One all-pairs case.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub name: String,
    pub checkpoints: usize,
    pub seconds: f64,
    pub pairs_per_second: f64,
    pub gflops: f64,
    /// `gflops / f64_all_cores_gflops`.
    pub ratio_to_gemm: f64,
}

/// The gaussian metric on one tensor-transformer shape.
#[derive(Clone, Debug, Serialize)]
pub struct GaussCase {
    pub name: String,
    pub parameters: usize,
    /// The first comparison in the process (contraction paths searched).
    pub pair_cold_seconds: f64,
    /// The best of three later comparisons of the same pair.
    pub pair_warm_seconds: f64,
    pub matrix_checkpoints: usize,
    /// `tensim matrix --metric gaussian`: one self chain per model, then every pair.
    pub matrix_seconds: f64,
    /// `matrix_seconds` over the pairs of different checkpoints (`n(n−1)/2`; a model against
    /// itself reuses its self chain).
    pub matrix_seconds_per_pair: f64,
    /// Peak resident memory of the case (pair and matrix), where the system reports it.
    pub peak_gib: Option<f64>,
    pub mode: String,
    /// Of the attention moments.
    pub precision: Precision,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub threads: usize,
    pub gemm: Gemm,
    pub cases: Vec<Case>,
    pub transformers: Vec<GaussCase>,
}

/// The tables `tensim bench` prints.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = &self.gemm;
        writeln!(f, "GEMM {0}×{0}×{0}: f64 {1:.1} GFLOP/s on one thread, {2:.1} GFLOP/s on {3} cores; f32 {4:.1} GFLOP/s on {3} cores", g.n, g.f64_single_gflops, g.f64_all_cores_gflops, self.threads, g.f32_all_cores_gflops)?;
        writeln!(f, "\nall-pairs tensor similarity (stacked GEMMs, f64):")?;
        writeln!(
            f,
            "  {:<44} {:>6} {:>9} {:>10} {:>9} {:>9}",
            "shape", "ckpts", "seconds", "pairs/s", "GFLOP/s", "of GEMM"
        )?;
        for c in &self.cases {
            writeln!(
                f,
                "  {:<44} {:>6} {:>9.3} {:>10.0} {:>9.1} {:>8.0}%",
                c.name,
                c.checkpoints,
                c.seconds,
                c.pairs_per_second,
                c.gflops,
                100.0 * c.ratio_to_gemm
            )?;
        }
        writeln!(f, "\ngaussian similarity of tensor transformers:")?;
        writeln!(
            f,
            "  {:<62} {:>4} {:>8} {:>8} {:>8} {:>6} {:>9} {:>8} {:>8}",
            "shape",
            "prec",
            "params",
            "cold s",
            "warm s",
            "ckpts",
            "matrix s",
            "s/pair",
            "peak GiB"
        )?;
        for c in &self.transformers {
            let peak = c.peak_gib.map_or("-".into(), |g| format!("{g:.2}"));
            writeln!(
                f,
                "  {:<62} {:>4} {:>8} {:>8.3} {:>8.3} {:>6} {:>9.2} {:>8.3} {:>8}",
                c.name,
                c.precision,
                c.parameters,
                c.pair_cold_seconds,
                c.pair_warm_seconds,
                c.matrix_checkpoints,
                c.matrix_seconds,
                c.matrix_seconds_per_pair,
                peak
            )?;
        }
        Ok(())
    }
}

fn best_of<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn gemm_rate<T: faer::traits::ComplexField + Copy + Send + Sync>(
    n: usize,
    copies: usize,
    one: T,
) -> f64 {
    let a = Mat::<T>::from_fn(n, n, |_, _| one);
    let secs = best_of(3, || {
        (0..copies)
            .into_par_iter()
            .map(|_| {
                let mut c = Mat::<T>::zeros(n, n);
                faer::linalg::matmul::matmul(
                    c.as_mut(),
                    faer::Accum::Replace,
                    a.as_ref(),
                    a.as_ref(),
                    one,
                    Par::Seq,
                );
                c
            })
            .collect::<Vec<_>>()
    });
    copies as f64 * 2.0 * (n as f64).powi(3) / secs / 1e9
}

/// The reference shapes: (a) the SVHN-backdoor model 1024→64 bilinear (no `down`) +
/// 64→10 head; (b) 784→128 embedding, bilinear 128→256→128, 128→10 head.
pub fn reference_shapes() -> [(&'static str, StackShape); 2] {
    let plain = StackShape {
        d_in: 0,
        d_model: 0,
        hidden: vec![],
        d_out: 10,
        residual: None,
        bias: false,
        embed: true,
        down: true,
        heads: 0,
        n_ctx: 1,
    };
    [
        (
            "(a) 1024→64 bilinear + 64→10 head",
            StackShape {
                d_in: 1024,
                d_model: 1024,
                hidden: vec![64],
                embed: false,
                down: false,
                heads: 0,
                n_ctx: 1,
                ..plain.clone()
            },
        ),
        (
            "(b) 784→128, bilinear 128→256→128, 128→10",
            StackShape {
                d_in: 784,
                d_model: 128,
                hidden: vec![256],
                ..plain
            },
        ),
    ]
}

/// The tensor transformers: embed → (attention → bilinear) × layers → head, causal rotary
/// attention with q/k biases, lerp residuals 0.5.
pub fn transformer_shapes() -> [(&'static str, StackShape); 2] {
    let shape = |d: usize, heads: usize, n_ctx: usize, hidden: Vec<usize>| StackShape {
        d_in: d,
        d_model: d,
        hidden,
        d_out: d,
        residual: Some(crate::arch::Residual {
            mode: crate::arch::ResidualMode::Lerp,
            scale: 0.5,
        }),
        bias: true,
        embed: true,
        down: true,
        heads,
        n_ctx,
    };
    [
        (
            "1 layer: d_model 16, 2 heads, n_ctx 3, d_hidden 32",
            shape(16, 2, 3, vec![32]),
        ),
        (
            "2 layers: d_model 64, 4 heads, n_ctx 4, d_hidden 256",
            shape(64, 4, 4, vec![256, 256]),
        ),
    ]
}

/// The paper's language model: vocabulary 4096, embedding → 2 attention layers (d_model 256,
/// 8 heads, causal, rotary, q/k biases, additive residual ×0.35) → unembedding, at n_ctx 4.
pub fn language_model_shape() -> (&'static str, StackShape) {
    (
        "paper's LM: vocab 4096, d_model 256, 8 heads, 2 layers, n_ctx 4",
        StackShape {
            d_in: 4096,
            d_model: 256,
            hidden: vec![0, 0],
            d_out: 4096,
            residual: Some(crate::arch::Residual {
                mode: crate::arch::ResidualMode::Add,
                scale: 0.35,
            }),
            bias: true,
            embed: true,
            down: true,
            heads: 8,
            n_ctx: 4,
        },
    )
}

/// Peak resident memory since the last reset (`VmHWM`), in GiB; Linux only.
fn peak_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1u64 << 20) as f64)
}

/// Start measuring the peak anew (`5` to `/proc/self/clear_refs` resets `VmHWM`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Gaussian similarity of tensor transformers: one pair cold and warm, and an all-pairs matrix.
fn transformer_case(
    name: &str,
    shape: &StackShape,
    checkpoints: usize,
    precision: Precision,
) -> Result<GaussCase> {
    reset_peak();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let models = (0..checkpoints.max(2))
        .map(|_| random_stack(shape, &mut rng))
        .collect::<Result<Vec<_>>>()?;
    let opts = crate::metrics::gaussian::GaussOptions {
        precision,
        ..Default::default()
    };
    let pair =
        || crate::metrics::gaussian::similarity(&models[0], &models[1], &opts, Par::rayon(0));
    let t = Instant::now();
    let first = pair()?;
    let pair_cold_seconds = t.elapsed().as_secs_f64();
    let pair_warm_seconds = best_of(3, || pair().expect("as the first call"));
    let names: Vec<String> = (0..models.len())
        .map(|i| format!("checkpoint {i}"))
        .collect();
    let checkpoints = in_memory(&models, &names);
    let t = Instant::now();
    similarity_matrix(
        &checkpoints,
        &Metric::Gaussian(opts.clone()),
        &MatrixOptions::default(),
        &|_, _| {},
    )?;
    let matrix_seconds = t.elapsed().as_secs_f64();
    let n = models.len();
    Ok(GaussCase {
        name: name.to_string(),
        parameters: models[0].param_count(),
        pair_cold_seconds,
        pair_warm_seconds,
        matrix_checkpoints: n,
        matrix_seconds,
        matrix_seconds_per_pair: matrix_seconds / (n * (n - 1) / 2).max(1) as f64,
        peak_gib: peak_gib(),
        mode: first.mode.map(|m| m.to_string()).unwrap_or_default(),
        precision,
    })
}

/// Run the benchmark; `quick` uses 16 instead of 64 checkpoints (a smoke test), 4 instead of
/// 32 transformer checkpoints, and leaves out the paper's language model (a minute).
pub fn run(quick: bool) -> Result<Report> {
    let threads = rayon::current_num_threads();
    let n = 1024;
    let gemm = Gemm {
        n,
        f64_single_gflops: gemm_rate(n, 1, 1.0f64),
        f64_all_cores_gflops: gemm_rate(n, threads, 1.0f64),
        f32_all_cores_gflops: gemm_rate(n, threads, 1.0f32),
    };
    let count = if quick { 16 } else { 64 };
    let shapes = reference_shapes();
    let mut cases = vec![];
    for (name, shape) in shapes {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let models = (0..count)
            .map(|_| random_stack(&shape, &mut rng))
            .collect::<Result<Vec<_>>>()?;
        let names: Vec<String> = (0..count).map(|i| format!("checkpoint {i}")).collect();
        let flops = AtomicU64::new(0);
        let opts = MatrixOptions {
            flops: Some(&flops),
            ..Default::default()
        };
        let checkpoints = in_memory(&models, &names);
        let t = Instant::now();
        similarity_matrix(&checkpoints, &Metric::TENSOR, &opts, &|_, _| {})?;
        let seconds = t.elapsed().as_secs_f64();
        let gflops = flops.load(Ordering::Relaxed) as f64 / seconds / 1e9;
        cases.push(Case {
            name: name.to_string(),
            checkpoints: count,
            seconds,
            pairs_per_second: (count * (count + 1) / 2) as f64 / seconds,
            gflops,
            ratio_to_gemm: gflops / gemm.f64_all_cores_gflops,
        });
    }
    let mut transformers = transformer_shapes()
        .iter()
        .map(|(name, shape)| {
            transformer_case(name, shape, if quick { 4 } else { 32 }, Precision::F64)
        })
        .collect::<Result<Vec<_>>>()?;
    if !quick {
        let (name, shape) = language_model_shape();
        for precision in [Precision::F64, Precision::F32] {
            transformers.push(transformer_case(name, &shape, 4, precision)?);
        }
    }
    Ok(Report {
        threads,
        gemm,
        cases,
        transformers,
    })
}
