//! Monte-Carlo checks a user can run on their own models (`tensim verify`).
//!
//! * **Multilinear estimate of the tensor inner product** (MATH.md §4.3 (i)): feed every leg of
//!   the unrolled tensor its own padded input `x̂⁽ʲ⁾ = (1, g⁽ʲ⁾)`, `g⁽ʲ⁾ ~ N(0, I)` independent.
//!   Since `E[x̂x̂ᵀ] = I`, `E⟨(P_W U_a)(x̂⁽¹⁾…x̂⁽ᵏ⁾), (P_W U_b)(x̂⁽¹⁾…x̂⁽ᵏ⁾)⟩ = ⟨P_W U_a, P_W U_b⟩`,
//!   exactly the value the `tensor` metric computes. `P_W U` is evaluated node by node, each
//!   bilinear node symmetrised over its two input subtrees.
//! * **Gaussian functional inner product** `E_x⟨f_a(x), f_b(x)⟩`, one shared `x ~ N(0, I)` per
//!   position (the real network function, §4.1). It differs from the tensor inner product for
//!   real inputs (§4.3 (iii)).
//!
//! Both report the sample mean and its standard error `√(Var/S)`.

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::layers::{Layer, PaddedLayer};
use crate::linalg::{Mat, Par};
use crate::metrics::{self, inputs::outputs, tensor, Inputs, Options};
use crate::model::Model;

/// Samples are drawn and evaluated in chunks of this many rows (bounds memory).
const CHUNK: usize = 4096;

/// A sample mean with its standard error.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub stderr: f64,
}

impl Estimate {
    /// Distance from `exact` in standard errors.
    pub fn z(&self, exact: f64) -> f64 {
        (self.mean - exact) / self.stderr.max(f64::MIN_POSITIVE)
    }
}

/// Estimates of `⟨a,b⟩`, `⟨a,a⟩`, `⟨b,b⟩` and the cosine (ratio of the means).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Triple {
    pub inner: Estimate,
    pub norm2_a: Estimate,
    pub norm2_b: Estimate,
    pub similarity: f64,
}

/// What `tensim verify` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub samples: usize,
    pub seed: u64,
    /// Exact tensor similarity (the `tensor` metric).
    pub tensor_exact: metrics::Comparison,
    /// Independent-legs Monte-Carlo estimate of the same quantities.
    pub tensor_mc: Triple,
    /// Shared-input Monte-Carlo estimate of the Gaussian functional inner product.
    pub functional_mc: Triple,
}

/// The text `tensim verify` prints: exact against estimated tensor inner products, then the
/// functional estimate.
impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (t, mc) = (&self.tensor_exact, &self.tensor_mc);
        writeln!(
            f,
            "Monte Carlo with {} samples (seed {})",
            self.samples, self.seed
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "tensor inner products: exact vs independent-Gaussian-legs estimate (MATH.md §4.3 (i))"
        )?;
        writeln!(
            f,
            "  {:<10} {:>18} {:>18} {:>14} {:>8}",
            "", "exact", "monte carlo", "std. error", "z"
        )?;
        for (name, exact, est) in [
            ("inner", t.inner, mc.inner),
            ("norm2_a", t.norm2_a, mc.norm2_a),
            ("norm2_b", t.norm2_b, mc.norm2_b),
        ] {
            writeln!(
                f,
                "  {name:<10} {exact:>18.10e} {:>18.10e} {:>14.3e} {:>8.2}",
                est.mean,
                est.stderr,
                est.z(exact)
            )?;
        }
        writeln!(
            f,
            "  {:<10} {:>18.10} {:>18.10}",
            "similarity", t.similarity, mc.similarity
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "Gaussian functional inner product E<f_a(x), f_b(x)>, x ~ N(0, I) (monte carlo)"
        )?;
        let fm = &self.functional_mc;
        for (name, est) in [
            ("inner", fm.inner),
            ("norm2_a", fm.norm2_a),
            ("norm2_b", fm.norm2_b),
        ] {
            writeln!(f, "  {name:<10} {:>18.10e} ± {:.3e}", est.mean, est.stderr)?;
        }
        writeln!(f, "  {:<10} {:>18.10}", "cosine", fm.similarity)
    }
}

/// Run both Monte-Carlo estimates with `samples` draws from `seed`.
pub fn verify(a: &Model, b: &Model, samples: usize, seed: u64, par: Par) -> Result<Verification> {
    if samples < 2 {
        return Err(Error::Invalid("verify needs at least 2 samples".into()));
    }
    for m in [a, b] {
        m.require_position_wise("verify (the independent-legs Monte Carlo)")?;
    }
    let depth = a.n_bilinear().max(b.n_bilinear());
    check_batches(a, b, 2f64.powi(depth as i32), 4)?;
    let legs = 1usize << depth;
    let tensor_exact = tensor::similarity(
        a,
        b,
        &Options {
            per_output: false,
            per_tensor: false,
            par,
        },
    )?;
    let (na, nb) = (
        tensor::lifted_nodes(a, depth),
        tensor::lifted_nodes(b, depth),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensor_acc = Accumulator::default();
    let mut functional_acc = Accumulator::default();
    let mut done = 0;
    while done < samples {
        let n = CHUNK.min(samples - done);
        let x: Vec<Mat<f64>> = (0..legs)
            .map(|_| padded_gaussian(n, a.in_dim(), &mut rng))
            .collect();
        let (fa, fb) = (
            eval_symmetrised(&na, &x, par),
            eval_symmetrised(&nb, &x, par),
        );
        tensor_acc.add_rows(&fa, &fb, 1);
        let inputs = Inputs {
            x: Mat::from_fn(n * a.input().n_ctx, a.in_dim(), |_, _| {
                StandardNormal.sample(&mut rng)
            }),
            rows: n,
            n_ctx: a.input().n_ctx,
            source: String::new(),
        };
        let (ya, yb) = (outputs(a, &inputs, par)?, outputs(b, &inputs, par)?);
        functional_acc.add_rows(&ya, &yb, 0);
        done += n;
    }
    Ok(Verification {
        samples,
        seed,
        tensor_exact,
        tensor_mc: tensor_acc.finish(),
        functional_mc: functional_acc.finish(),
    })
}

/// The deepest network whose fully symmetrised metric is estimated (`2^20` legs).
const MAX_FULL_DEPTH: usize = 20;

/// Refuse a run whose batches would not fit: `CHUNK` samples of `legs` input legs, each
/// intermediate as wide as the widest layer (padded), `copies` of them alive at once.
fn check_batches(a: &Model, b: &Model, legs: f64, copies: usize) -> Result<()> {
    let widest = a
        .layers()
        .iter()
        .chain(b.layers())
        .map(|l| match l {
            Layer::Bilinear(x) => x.hidden().max(x.in_dim()).max(x.out_dim()),
            l => l.in_dim().max(l.out_dim()),
        })
        .max()
        .unwrap_or(0);
    let entries = CHUNK as f64 * legs * (widest + 1) as f64 * copies as f64;
    crate::budget::check("the Monte-Carlo batches", entries)
}

/// `S` padded inputs `(1, g)`, `g ~ N(0, I_dim)`, as rows.
fn padded_gaussian(s: usize, dim: usize, rng: &mut rand::rngs::StdRng) -> Mat<f64> {
    Mat::from_fn(s, dim + 1, |_, j| {
        if j == 0 {
            1.0
        } else {
            StandardNormal.sample(rng)
        }
    })
}

/// `(P_W U)(x̂⁽¹⁾, …, x̂⁽ᵏ⁾)` for the node list `nodes` and `k = legs.len()` padded input batches
/// (leg order: left subtree first).
pub fn eval_symmetrised(nodes: &[PaddedLayer], legs: &[Mat<f64>], par: Par) -> Mat<f64> {
    match nodes.split_last() {
        None => {
            assert_eq!(legs.len(), 1, "one leg per leaf of the tree");
            legs[0].clone()
        }
        Some((PaddedLayer::Linear(l), rest)) => {
            l.apply(eval_symmetrised(rest, legs, par).as_ref(), par)
        }
        Some((PaddedLayer::Bilinear(node), rest)) => {
            let half = legs.len() / 2;
            let u = eval_symmetrised(rest, &legs[..half], par);
            let v = eval_symmetrised(rest, &legs[half..], par);
            node.apply(u.as_ref(), v.as_ref(), true, par)
        }
    }
}

/// Running sums of per-sample `⟨a,b⟩, ⟨a,a⟩, ⟨b,b⟩` and their squares.
#[derive(Default)]
struct Accumulator {
    n: f64,
    sum: [f64; 3],
    sum2: [f64; 3],
}

impl Accumulator {
    /// Add one sample per row, skipping the first `skip` columns (the unit slot).
    fn add_rows(&mut self, fa: &Mat<f64>, fb: &Mat<f64>, skip: usize) {
        for r in 0..fa.nrows() {
            let mut v = [0.0; 3];
            for j in skip..fa.ncols() {
                let (x, y) = (fa[(r, j)], fb[(r, j)]);
                v[0] += x * y;
                v[1] += x * x;
                v[2] += y * y;
            }
            for (i, vi) in v.into_iter().enumerate() {
                self.sum[i] += vi;
                self.sum2[i] += vi * vi;
            }
            self.n += 1.0;
        }
    }

    fn finish(&self) -> Triple {
        let est = |i: usize| {
            let mean = self.sum[i] / self.n;
            let var = (self.sum2[i] / self.n - mean * mean).max(0.0) * self.n / (self.n - 1.0);
            Estimate {
                mean,
                stderr: (var / self.n).sqrt(),
            }
        };
        let (inner, norm2_a, norm2_b) = (est(0), est(1), est(2));
        Triple {
            inner,
            norm2_a,
            norm2_b,
            similarity: inner.mean / (norm2_a.mean * norm2_b.mean).sqrt(),
        }
    }
}

/// A batch of complex vectors as rows: `re + i·im`.
struct Complex {
    re: Mat<f64>,
    im: Mat<f64>,
}

/// Evaluate the padded network on complex inputs: `Ŵζ`, `D̂((L̂ζ) ∘ (R̂ζ))`.
fn eval_complex(nodes: &[PaddedLayer], x: &Complex, par: Par) -> Complex {
    let lin = |w: &Mat<f64>, z: &Complex| Complex {
        re: crate::linalg::mul_t(z.re.as_ref(), w.as_ref(), par),
        im: crate::linalg::mul_t(z.im.as_ref(), w.as_ref(), par),
    };
    let mut z = Complex {
        re: x.re.clone(),
        im: x.im.clone(),
    };
    for node in nodes {
        z = match node {
            PaddedLayer::Linear(l) => lin(&l.w, &z),
            PaddedLayer::Bilinear(b) => {
                let (u, v) = (lin(&b.l, &z), lin(&b.r, &z));
                let prod = Complex {
                    re: Mat::from_fn(u.re.nrows(), u.re.ncols(), |i, j| {
                        u.re[(i, j)] * v.re[(i, j)] - u.im[(i, j)] * v.im[(i, j)]
                    }),
                    im: Mat::from_fn(u.re.nrows(), u.re.ncols(), |i, j| {
                        u.re[(i, j)] * v.im[(i, j)] + u.im[(i, j)] * v.re[(i, j)]
                    }),
                };
                lin(&b.d, &prod)
            }
        };
    }
    z
}

/// Monte-Carlo estimate of the fully symmetrised inner products `⟨P_S U_a, P_S U_b⟩`,
/// `⟨P_S U_a, P_S U_a⟩`, `⟨P_S U_b, P_S U_b⟩` (MATH.md §4.3 (ii), [C2]): with `ζ ~ CN(0, I)` in
/// every padded slot (the unit slot too), `E Re⟨f̂_a(ζ), conj f̂_b(ζ)⟩ = k!·⟨P_S U_a, P_S U_b⟩`
/// for `k = 2^depth` legs. Unbiased for the inner products; the cosine is their ratio.
pub fn full_symmetric(a: &Model, b: &Model, samples: usize, seed: u64, par: Par) -> Result<Triple> {
    if samples < 2 {
        return Err(Error::Invalid(
            "the Monte-Carlo estimate needs at least 2 samples".into(),
        ));
    }
    let depth = a.n_bilinear().max(b.n_bilinear());
    let (na, nb) = (
        tensor::lifted_nodes(a, depth),
        tensor::lifted_nodes(b, depth),
    );
    check_batches(a, b, 1.0, 8)?;
    if depth > MAX_FULL_DEPTH {
        return Err(Error::Invalid(format!(
            "full symmetrisation averages over (2^{depth})! leg orders; it is estimated for at \
             most {MAX_FULL_DEPTH} bilinear layers"
        )));
    }
    // ln k! for k = 2^depth legs; the estimates are divided by k! in logs (k! > 1e308 from 256).
    let ln_k_factorial: f64 = (2..=(1u64 << depth)).map(|v| (v as f64).ln()).sum();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let half = std::f64::consts::FRAC_1_SQRT_2;
    let mut acc = Accumulator::default();
    let mut done = 0;
    while done < samples {
        let n = CHUNK.min(samples - done);
        let mut draw = || {
            Mat::from_fn(n, a.in_dim() + 1, |_, _| {
                let g: f64 = StandardNormal.sample(&mut rng);
                half * g
            })
        };
        let z = Complex {
            re: draw(),
            im: draw(),
        };
        let (fa, fb) = (eval_complex(&na, &z, par), eval_complex(&nb, &z, par));
        // Re⟨f_a, conj f_b⟩ = Σ_o re_a re_b + im_a im_b: stack re and im side by side.
        let side = |c: &Complex| {
            Mat::from_fn(n, 2 * c.re.ncols(), |i, j| {
                if j < c.re.ncols() {
                    c.re[(i, j)]
                } else {
                    c.im[(i, j - c.re.ncols())]
                }
            })
        };
        let (sa, sb) = (side(&fa), side(&fb));
        // Skip the output unit slot (column 0 of each half) by zeroing it.
        let width = fa.re.ncols();
        let zero_unit = |mut m: Mat<f64>| {
            for i in 0..n {
                m[(i, 0)] = 0.0;
                m[(i, width)] = 0.0;
            }
            m
        };
        acc.add_rows(&zero_unit(sa), &zero_unit(sb), 0);
        done += n;
    }
    let t = acc.finish();
    let down = |x: f64| x.signum() * (x.abs().ln() - ln_k_factorial).exp();
    let scale = |e: Estimate| Estimate {
        mean: down(e.mean),
        stderr: down(e.stderr),
    };
    Ok(Triple {
        inner: scale(t.inner),
        norm2_a: scale(t.norm2_a),
        norm2_b: scale(t.norm2_b),
        similarity: t.similarity,
    })
}
