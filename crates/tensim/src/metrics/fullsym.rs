//! Fully symmetrised tensor similarity (MATH.md §3.7): `cos(P_S U_a, P_S U_b)`, where `P_S`
//! averages the unrolled tensor over *all* permutations of its legs. Unlike the per-layer metric
//! (which symmetrises each bilinear node) it is a function of the polynomial alone: it is 1
//! exactly when the two functions agree up to a positive scale, whatever the architecture.
//!
//! * depth ≤ 1: `P_S = P_W`, the per-layer value;
//! * depth 2: `⟨P_S U_a, P_S U_b⟩ = (tree + 2·crossed)/3` ([B6]), `tree` the per-layer inner
//!   product and `crossed = ⟨P_W U_a, (2 3)·P_W U_b⟩` evaluated in hidden space, cost
//!   `≈ 16·h₂h₁³ + 4·h₂²h₁²` flops per pair (`h₁, h₂` padded hidden widths of layers 1 and 2);
//! * depth ≥ 3: unbiased complex-Gaussian Monte Carlo ([C2], see [`crate::montecarlo`]).
//!
//! With a unit-slot weight `s` (input Gram `diag(s, I)`) both terms become polynomials in `s`
//! whose coefficients are the degree parts: `⟨P_S U_a, P_S U_b⟩(s) = Σ_m s^{k−m} ⟨P^a_m, P^b_m⟩ / C(k,m)`
//! ([B7]); evaluating at `k + 1` points and solving gives the similarity of each degree.

use crate::budget;
use crate::error::{Error, Result};
use crate::layers::{compose_linear, PaddedLayer};
use crate::linalg::{mul, mul_t, Mat, MatRef, Par};
use crate::metrics::batch::{Batch, Pairs, PerPair};
use crate::metrics::tensor::lifted_nodes;
use crate::model::Model;

/// A depth-2 network folded into hidden space: `U_α = (L̂₁|R̂₁)Ê` (rows over the padded input),
/// `A = L̂₂MD̂₁`, `B = R̂₂MD̂₁`, and `D` the data rows of `Ŵ_head D̂₂`.
pub struct Depth2 {
    u: [Mat<f64>; 2],
    a: Mat<f64>,
    b: Mat<f64>,
    d: Mat<f64>,
}

impl Depth2 {
    /// Fold `model` lifted to depth 2 (it must have at most two bilinear layers).
    pub fn new(model: &Model) -> Result<Depth2> {
        if model.n_bilinear() > 2 {
            return Err(Error::Invalid("the closed form covers depth ≤ 2".into()));
        }
        let nodes = lifted_nodes(model, 2);
        let bil: Vec<usize> = (0..nodes.len())
            .filter(|&i| matches!(nodes[i], PaddedLayer::Bilinear(_)))
            .collect();
        let (PaddedLayer::Bilinear(n1), PaddedLayer::Bilinear(n2)) =
            (&nodes[bil[0]], &nodes[bil[1]])
        else {
            unreachable!()
        };
        let right = |m: &Mat<f64>, by: Option<&Mat<f64>>| {
            by.map_or_else(|| m.clone(), |p| mul(m.as_ref(), p.as_ref(), Par::Seq))
        };
        let left = |by: Option<&Mat<f64>>, m: &Mat<f64>| {
            by.map_or_else(|| m.clone(), |p| mul(p.as_ref(), m.as_ref(), Par::Seq))
        };
        let (embed, mid, head) = (
            compose_linear(&nodes[..bil[0]]),
            compose_linear(&nodes[bil[0] + 1..bil[1]]),
            compose_linear(&nodes[bil[1] + 1..]),
        );
        let md1 = left(mid.as_ref(), &n1.d);
        let d = left(head.as_ref(), &n2.d);
        Ok(Depth2 {
            u: [right(&n1.l, embed.as_ref()), right(&n1.r, embed.as_ref())],
            a: mul(n2.l.as_ref(), md1.as_ref(), Par::Seq),
            b: mul(n2.r.as_ref(), md1.as_ref(), Par::Seq),
            d: d.subrows(1, d.nrows() - 1).to_owned(),
        })
    }

    fn h1(&self) -> usize {
        self.u[0].nrows()
    }
}

/// `X_{αβ} = U^a_α S U^b_βᵀ` with `S = diag(s, I)` (unit-slot weight `s`).
fn cross(a: &Depth2, b: &Depth2, s: f64, par: Par) -> [[Mat<f64>; 2]; 2] {
    let scaled = |m: &Mat<f64>| {
        Mat::from_fn(m.nrows(), m.ncols(), |i, j| {
            if j == 0 {
                s * m[(i, j)]
            } else {
                m[(i, j)]
            }
        })
    };
    let (a0, a1) = (scaled(&a.u[0]), scaled(&a.u[1]));
    let x = |ua: &Mat<f64>, ub: &Mat<f64>| mul_t(ua.as_ref(), ub.as_ref(), par);
    [
        [x(&a0, &b.u[0]), x(&a0, &b.u[1])],
        [x(&a1, &b.u[0]), x(&a1, &b.u[1])],
    ]
}

/// `⟨P_W U_a, (2 3)·P_W U_b⟩` for depth-2 networks, with unit-slot weight `s` in the input Gram.
///
/// `X_{αβ} = U^a_α S U^b_βᵀ` (`S = diag(s, I)`); `W_p = x_{p1} ⊗ x_{p0} + x_{p0} ⊗ x_{p1}` with
/// `x_{pα} = [X_{α0}[p,:], X_{α1}[p,:]]`; `Y_A = A_a W`, `Y_B = B_a W`;
/// `Z[k,q',p'] = Σ_{β,δ} Y_A[k,(q',β),(p',δ)] Y_B[k,(q',1−β),(p',1−δ)]`;
/// `crossed = (2/64) Σ_{(b₁,b₂)} Σ_{kk'} Γ[k,k'] Σ_{p'q'} b₁[k',p'] Z[k,q',p'] b₂[k',q']`
/// over `(b₁,b₂) ∈ {(A_b,B_b), (B_b,A_b)}`, `Γ = D_aᵀD_b` (MATH.md §3.7).
pub fn crossed(a: &Depth2, b: &Depth2, s: f64, par: Par) -> Result<f64> {
    let (h1a, h1b) = (a.h1(), b.h1());
    let (h2a, h2b) = (a.a.nrows(), b.a.nrows());
    let cols = 4 * h1b * h1b;
    budget::check(
        "the crossed term of full symmetrisation",
        ((h1a + 2 * h2a) * cols) as f64,
    )?;
    let x = cross(a, b, s, par);
    // Row x_{pα} over c = β·h1b + q'.
    let xr = |p: usize, al: usize, c: usize| x[al][c / h1b][(p, c % h1b)];
    let w = Mat::from_fn(h1a, cols, |p, idx| {
        let (c1, c2) = (idx / (2 * h1b), idx % (2 * h1b));
        xr(p, 1, c1) * xr(p, 0, c2) + xr(p, 0, c1) * xr(p, 1, c2)
    });
    let (ya, yb) = (
        mul(a.a.as_ref(), w.as_ref(), par),
        mul(a.b.as_ref(), w.as_ref(), par),
    );
    drop(w);
    // Z[k] as an h1b × h1b matrix (q', p').
    let at = |y: &Mat<f64>, k: usize, be: usize, q: usize, de: usize, p: usize| {
        y[(k, (be * h1b + q) * 2 * h1b + de * h1b + p)]
    };
    let gamma = mul(a.d.transpose(), b.d.as_ref(), par);
    let mut total = 0.0;
    for k in 0..h2a {
        let z = Mat::from_fn(h1b, h1b, |q, p| {
            let mut v = 0.0;
            for be in 0..2 {
                for de in 0..2 {
                    v += at(&ya, k, be, q, de, p) * at(&yb, k, 1 - be, q, 1 - de, p);
                }
            }
            v
        });
        for (b1, b2) in [(&b.a, &b.b), (&b.b, &b.a)] {
            // C[k,k'] = Σ_{p',q'} b₁[k',p'] Z[q',p'] b₂[k',q'] = (b₂ Z b₁ᵀ)[k',k'].
            let zb = mul_t(z.as_ref(), b1.as_ref(), Par::Seq);
            for kk in 0..h2b {
                let c: f64 = (0..h1b).map(|q| b2[(kk, q)] * zb[(q, kk)]).sum();
                total += gamma[(k, kk)] * c;
            }
        }
    }
    Ok(total * 2.0 / 64.0)
}

/// The per-layer (tree) inner product with unit-slot weight `s` in the input Gram.
pub fn tree(a: &Depth2, b: &Depth2, s: f64, par: Par) -> f64 {
    let x = cross(a, b, s, par);
    let (x00, x11, x01, x10) = (&x[0][0], &x[1][1], &x[0][1], &x[1][0]);
    let k1 = Mat::from_fn(a.h1(), b.h1(), |i, j| {
        0.5 * (x00[(i, j)] * x11[(i, j)] + x01[(i, j)] * x10[(i, j)])
    });
    let side =
        |p: MatRef<'_, f64>, q: MatRef<'_, f64>| mul_t(mul(p, k1.as_ref(), par).as_ref(), q, par);
    let (aa, bb, ab, ba) = (
        side(a.a.as_ref(), b.a.as_ref()),
        side(a.b.as_ref(), b.b.as_ref()),
        side(a.a.as_ref(), b.b.as_ref()),
        side(a.b.as_ref(), b.a.as_ref()),
    );
    let gamma = mul(a.d.transpose(), b.d.as_ref(), par);
    let mut t = 0.0;
    for j in 0..gamma.ncols() {
        for i in 0..gamma.nrows() {
            t += 0.5 * (aa[(i, j)] * bb[(i, j)] + ab[(i, j)] * ba[(i, j)]) * gamma[(i, j)];
        }
    }
    t
}

/// `⟨P_S U_a, P_S U_b⟩` of depth-≤2 networks (unit-slot weight `s`): `(tree + 2·crossed)/3`.
pub fn inner_depth2(a: &Depth2, b: &Depth2, s: f64, par: Par) -> Result<f64> {
    Ok((tree(a, b, s, par) + 2.0 * crossed(a, b, s, par)?) / 3.0)
}

/// Options of the fully symmetrised metric.
#[derive(Clone, Debug, PartialEq)]
pub struct FullOptions {
    /// Monte-Carlo samples for depth ≥ 3.
    pub samples: usize,
    pub seed: u64,
    /// Also the similarity of each degree part (depth ≤ 2).
    pub by_degree: bool,
}

impl Default for FullOptions {
    fn default() -> FullOptions {
        FullOptions {
            samples: 100_000,
            seed: 0,
            by_degree: false,
        }
    }
}

/// Degree-part inner products `⟨P^a_m, P^b_m⟩ / C(4, m)`, `m = 0..4`, of depth-2-lifted networks:
/// the coefficients of `s^{4−m}` in `inner_depth2(s)`, from its values at `s = 0, …, 4`; also the
/// value at `s = 1` (the full inner product).
fn degree_parts(a: &Depth2, b: &Depth2, par: Par) -> Result<(Vec<f64>, f64)> {
    use faer::linalg::solvers::Solve;
    let vals = (0..5)
        .map(|s| inner_depth2(a, b, s as f64, par))
        .collect::<Result<Vec<_>>>()?;
    let v = Mat::from_fn(5, 5, |i, j| (i as f64).powi(j as i32));
    let coef = v.partial_piv_lu().solve(Mat::from_fn(5, 1, |i, _| vals[i]));
    // coef[j] multiplies s^j = s^{4−m}.
    Ok(((0..5).map(|m| coef[(4 - m, 0)]).collect(), vals[1]))
}

/// A warning where a Monte-Carlo estimate `mean ± se` from `samples` draws is within three
/// standard errors of zero (no signal), with the samples that would bring `se` to 10 % of it.
fn unresolved(mean: f64, se: f64, samples: usize) -> Option<String> {
    (3.0 * se >= mean.abs()).then(|| {
        let need = samples as f64 * (se / (0.1 * mean.abs())).powi(2);
        let need = if need.is_finite() && need < 1e15 {
            format!("about {need:.1e}")
        } else {
            "more than 10^15".into()
        };
        format!(
            "the estimate is not resolved: the inner product is {mean:.3e} ± {se:.3e}, within \
             three standard errors of zero; {need} samples (--samples) would bring the error \
             to 10 % of it"
        )
    })
}

/// Fully symmetrised tensor similarity of `a` and `b` (input and output sizes must agree).
pub fn similarity(
    a: &Model,
    b: &Model,
    opts: &crate::metrics::Options,
    full: &FullOptions,
) -> Result<crate::metrics::Comparison> {
    use crate::metrics::{check_io, cosine, cosines, Comparison, Kind, Method, Symmetry};
    check_io(a, b)?;
    a.require_position_wise("the fully symmetrised tensor metric")?;
    b.require_position_wise("the fully symmetrised tensor metric")?;
    if opts.per_output {
        return Err(Error::Invalid(
            "--per-output is computed for the per-layer tensor metric (--symmetrize layer)".into(),
        ));
    }
    let depth = a.n_bilinear().max(b.n_bilinear());
    // With --by-degree on depth-2 networks the s = 1 values give the full inner products too.
    let mut exact_inners = None;
    let by_degree = if full.by_degree {
        if depth > 2 {
            return Err(Error::Invalid(
                "--by-degree is exact for networks of at most two bilinear layers".into(),
            ));
        }
        let (fa, fb) = (Depth2::new(a)?, Depth2::new(b)?);
        let ((ab, iab), (aa, iaa), (bb, ibb)) = (
            degree_parts(&fa, &fb, opts.par)?,
            degree_parts(&fa, &fa, opts.par)?,
            degree_parts(&fb, &fb, opts.par)?,
        );
        exact_inners = Some((iab, iaa, ibb));
        // Parts that vanish up to rounding have no similarity.
        let tiny = |v: &[f64]| 1e-12 * v.iter().map(|x| x.abs()).sum::<f64>();
        let keep = |v: &[f64]| {
            v.iter()
                .map(|&x| if x > tiny(v) { x } else { 0.0 })
                .collect::<Vec<_>>()
        };
        Some(cosines(&ab, &keep(&aa), &keep(&bb))[..=(1usize << depth)].to_vec())
    } else {
        None
    };
    let mut r = match depth {
        0 | 1 => crate::metrics::tensor::similarity(a, b, opts)?,
        2 => {
            let (ab, aa, bb) = match exact_inners {
                Some(v) => v,
                None => {
                    let (fa, fb) = (Depth2::new(a)?, Depth2::new(b)?);
                    (
                        inner_depth2(&fa, &fb, 1.0, opts.par)?,
                        inner_depth2(&fa, &fa, 1.0, opts.par)?,
                        inner_depth2(&fb, &fb, 1.0, opts.par)?,
                    )
                }
            };
            Comparison {
                metric: Kind::Tensor,
                similarity: cosine(ab, aa, bb, Kind::Tensor)?,
                inner: ab,
                norm2_a: aa,
                norm2_b: bb,
                ..Default::default()
            }
        }
        _ => {
            let t = crate::montecarlo::full_symmetric(a, b, full.samples, full.seed, opts.par)?;
            Comparison {
                metric: Kind::Tensor,
                similarity: cosine(t.inner.mean, t.norm2_a.mean, t.norm2_b.mean, Kind::Tensor)?,
                inner: t.inner.mean,
                norm2_a: t.norm2_a.mean,
                norm2_b: t.norm2_b.mean,
                mode: Some(Method::MonteCarlo),
                stderr: Some(t.inner.stderr),
                samples: Some(full.samples),
                warning: unresolved(t.inner.mean, t.inner.stderr, full.samples),
                ..Default::default()
            }
        }
    };
    r.symmetrize = Some(Symmetry::Full);
    r.mode = r.mode.or(Some(Method::Exact));
    r.by_degree = by_degree;
    Ok(r)
}

/// The batch form: full symmetrisation pair by pair.
pub fn batch<'a>(models: &'a [&'a Model], full: FullOptions) -> impl Batch + 'a {
    let opts = crate::metrics::Options {
        per_output: false,
        per_tensor: false,
        par: Par::Seq,
    };
    PerPair {
        planes: 1,
        pair: move |i: usize, j: usize| {
            Ok(vec![
                similarity(models[i], models[j], &opts, &full)?.similarity,
            ])
        },
        pairs: Pairs::Parallel,
    }
}
