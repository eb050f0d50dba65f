//! Similarity of changes: the metric between `f_A − f_A0` and `f_B − f_B0` (either base may be
//! absent), from the bilinearity of the inner products — no difference network is built:
//!
//! ```text
//! ⟨A − A0, B − B0⟩ = ⟨A, B⟩ − ⟨A, B0⟩ − ⟨A0, B⟩ + ⟨A0, B0⟩
//! ‖A − A0‖²        = ⟨A, A⟩ − 2⟨A, A0⟩ + ⟨A0, A0⟩
//! ```
//!
//! Exact for the bilinear forms: the tensor metric (per-layer symmetrisation is linear), the
//! gaussian metric when computed exactly, and the weight cosine. Rounding in the terms is bounded
//! by `10⁻¹²·Σ|terms|`; a result that bound does not resolve (a change too small for f64 next to
//! the models) is refused, never printed.

use crate::error::{Error, Result};
use crate::linalg::Mat;
use crate::metrics::{
    check_io, gaussian, matrix, tensor, Comparison, Method, Metric, Options, Symmetrize,
};
use crate::model::Model;
use crate::trajectory::{tile_tag, tiles::TileStore};

/// Relative accuracy assumed of each computed inner product.
const TERM_ACCURACY: f64 = 1e-12;
/// Largest rounding bound on the similarity that is still reported.
const MAX_ERROR: f64 = 1e-6;

/// `f_x − f_x0` as signed terms `[(x, 1), (x0, −1)]` (no base: `[(x, 1)]`).
pub(crate) fn signed<'m>(x: &'m Model, x0: Option<&'m Model>) -> Vec<(&'m Model, f64)> {
    let mut v = vec![(x, 1.0)];
    v.extend(x0.map(|m| (m, -1.0)));
    v
}

/// The metric between `f_a − f_a0` and `f_b − f_b0`.
pub fn similarity(
    (a, a0): (&Model, Option<&Model>),
    (b, b0): (&Model, Option<&Model>),
    metric: &Metric,
    opts: &Options,
) -> Result<Comparison> {
    if opts.per_output || opts.per_tensor {
        return Err(Error::Invalid(
            "differences of models report the total similarity only (no per-output or \
             per-tensor values)"
                .into(),
        ));
    }
    let (xs, ys) = (signed(a, a0), signed(b, b0));
    for (x, _) in xs.iter().chain(&ys) {
        check_io(a, x)?;
    }
    // Σ_ij c_i c_j ⟨x_i, y_j⟩ with its rounding bound.
    let form = |left: &[(&Model, f64)], right: &[(&Model, f64)]| -> Result<(f64, f64)> {
        let mut sum = 0.0;
        let mut size = 0.0;
        for &(x, cx) in left {
            for &(y, cy) in right {
                let v = cx * cy * inner(x, y, metric, opts)?;
                sum += v;
                size += v.abs();
            }
        }
        Ok((sum, TERM_ACCURACY * size))
    };
    let (inner_ab, err_ab) = form(&xs, &ys)?;
    let (norm2_a, err_a) = form(&xs, &xs)?;
    let (norm2_b, err_b) = form(&ys, &ys)?;
    for (n, err, which) in [(norm2_a, err_a, "A"), (norm2_b, err_b, "B")] {
        if n <= err {
            return Err(Error::Invalid(format!(
                "the change of model {which} is zero or too small to resolve next to the models \
                 ({n:.3e}, rounding bound {err:.3e}) under the {} metric",
                metric.name()
            )));
        }
    }
    let scale = (norm2_a * norm2_b).sqrt();
    // d(ab/√(aa·bb)) ≤ δab/√(aa·bb) + ½|s|(δaa/aa + δbb/bb).
    let s = inner_ab / scale;
    let bound = err_ab / scale + 0.5 * s.abs() * (err_a / norm2_a + err_b / norm2_b);
    if bound.is_nan() || bound > MAX_ERROR {
        return Err(Error::Invalid(format!(
            "the similarity of the changes is not resolved in f64 (rounding bound {bound:.1e}): \
             the changes are too small next to the models"
        )));
    }
    Ok(Comparison {
        metric: metric.kind(),
        similarity: s.clamp(-1.0, 1.0),
        inner: inner_ab,
        norm2_a,
        norm2_b,
        ..Default::default()
    })
}

/// The all-pairs matrix of the changes `f_i − f_base`: from the inner products `G` of the list
/// `[base, m_1, …, m_N]`, `D_ij = G_ij − G_0i − G_0j + G_00`, `S_ij = D_ij/√(D_ii D_jj)`; `NaN`
/// where a change is zero or the rounding bound leaves `S_ij` unresolved. Pairs run in
/// parallel, each single-threaded; `progress(k)` after each inner product (`k` the pairs it
/// fills). `store`: the tile store and the models' hashes (`[base, m_1, …]`), each inner
/// product kept as a tile keyed by its two models, so that an interrupted run resumes.
pub fn matrix(
    models: &[&Model],
    base: &Model,
    metric: &Metric,
    store: Option<(&TileStore, &[&str])>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Mat<f64>> {
    use rayon::prelude::*;
    let all: Vec<&Model> = std::iter::once(base)
        .chain(models.iter().copied())
        .collect();
    for m in &all {
        check_io(base, m)?;
    }
    let n = all.len();
    let pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| (i..n).map(move |j| (i, j))).collect();
    // With a store, each pair of contents once (models of equal content are one), its models in
    // the order of their hashes, so that a resumed run equals a fresh one to the last bit.
    // The first model of each one's content.
    let first: Vec<usize> = match store {
        None => (0..n).collect(),
        Some((_, h)) => (0..n)
            .map(|k| h.iter().position(|x| *x == h[k]).unwrap_or(k))
            .collect(),
    };
    let job = |(i, j): (usize, usize)| match store {
        None => (i, j),
        Some((_, h)) => {
            let (a, b) = (first[i], first[j]);
            if h[a] <= h[b] {
                (a, b)
            } else {
                (b, a)
            }
        }
    };
    // Each job with the number of pairs it fills.
    let mut jobs = std::collections::BTreeMap::<(usize, usize), u64>::new();
    for &p in &pairs {
        *jobs.entry(job(p)).or_default() += 1;
    }
    let jobs: Vec<((usize, usize), u64)> = jobs.into_iter().collect();
    let opts = Options {
        par: crate::linalg::Par::Seq,
        ..Default::default()
    };
    let values: Vec<f64> = jobs
        .par_iter()
        .map(|&((i, j), fills)| {
            let key = store.map(|(_, h)| {
                TileStore::key(
                    &format!("inner {}", tile_tag(metric, false, None)),
                    &[h[i]],
                    &[h[j]],
                )
            });
            let stored = store
                .zip(key.as_ref())
                .and_then(|((s, _), k)| s.get(k, &[1]));
            let v = match stored {
                Some(v) => v[0],
                None => {
                    let v = inner(all[i], all[j], metric, &opts)?;
                    if let (Some((s, _)), Some(k)) = (store, &key) {
                        s.put(k, &[1], &[v])?;
                    }
                    v
                }
            };
            progress(fills);
            Ok(v)
        })
        .collect::<Result<_>>()?;
    let value: std::collections::BTreeMap<(usize, usize), f64> =
        jobs.iter().map(|&(p, _)| p).zip(values).collect();
    let mut g = Mat::zeros(n, n);
    for &(i, j) in &pairs {
        let v = value[&job((i, j))];
        (g[(i, j)], g[(j, i)]) = (v, v);
    }
    let d = |i: usize, j: usize| {
        let terms = [g[(i, j)], -g[(0, i)], -g[(0, j)], g[(0, 0)]];
        let size: f64 = terms.iter().map(|t| t.abs()).sum();
        (terms.iter().sum::<f64>(), TERM_ACCURACY * size)
    };
    Ok(Mat::from_fn(n - 1, n - 1, |i, j| {
        let ((ab, e_ab), (aa, e_a), (bb, e_b)) =
            (d(i + 1, j + 1), d(i + 1, i + 1), d(j + 1, j + 1));
        if aa <= e_a || bb <= e_b {
            return f64::NAN;
        }
        let s = ab / (aa * bb).sqrt();
        let bound = e_ab / (aa * bb).sqrt() + 0.5 * s.abs() * (e_a / aa + e_b / bb);
        if bound.is_nan() || bound > MAX_ERROR {
            f64::NAN
        } else {
            s.clamp(-1.0, 1.0)
        }
    }))
}

/// `⟨x, y⟩` of a bilinear metric, on the models as given.
fn inner(x: &Model, y: &Model, metric: &Metric, opts: &Options) -> Result<f64> {
    let r = match metric {
        Metric::Tensor(Symmetrize::Layer) => {
            if x.n_bilinear() != y.n_bilinear() {
                return Err(Error::Invalid(
                    "differences under the tensor metric need models with the same number of \
                     bilinear layers"
                        .into(),
                ));
            }
            if x.first_attention().is_none() && y.first_attention().is_none() {
                return finite(tensor::inner(x, y, opts.par)?, metric);
            }
            tensor::similarity(x, y, opts)?
        }
        Metric::Matrix => matrix::similarity(x, y, opts)?,
        Metric::Gaussian(g) => {
            let r = gaussian::similarity(x, y, g, opts.par)?;
            if r.mode != Some(Method::Exact) {
                return Err(Error::Invalid(
                    "differences under the gaussian metric need its exact value; the closure is \
                     not bilinear in the models (these models are too deep for --exact)"
                        .into(),
                ));
            }
            r
        }
        _ => {
            return Err(Error::Invalid(format!(
                "differences of models apply to the tensor (per-layer), gaussian and matrix \
                 metrics, not to {}",
                match metric {
                    Metric::Tensor(_) => "the fully symmetrised tensor metric",
                    m => m.name(),
                }
            )))
        }
    };
    finite(r.inner, metric)
}

/// `v`, or an error if it overflowed.
fn finite(v: f64, metric: &Metric) -> Result<f64> {
    if !v.is_finite() {
        return Err(Error::OutOfRange {
            metric: metric.name().into(),
            what: format!("inner product = {v}"),
        });
    }
    Ok(v)
}
