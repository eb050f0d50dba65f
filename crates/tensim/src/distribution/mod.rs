//! Gaussian input distributions `N(μ, Σ)` for the data-free metrics (`--input-stats`,
//! `--input-mean`/`--input-cov`, `--token-counts`).
//!
//! `x = μ + S z` with `S Sᵀ = Σ` and `z ~ N(0, I_r)` is one affine layer in front of the network,
//! so `E⟨f_a(x), f_b(x)⟩` under `N(μ, Σ)` is the gaussian metric of the models with that layer
//! folded in, and the tensor metric of those models contracts every input leg with
//! `ÂÂᵀ = [[1, μᵀ], [μ, Σ + μμᵀ]]` (`Â` the padded affine map). The layer is folded into the
//! first layer where that is linear (`W ↦ WS`, `b ↦ b + Wμ`) or bilinear without a residual
//! (`L ↦ LS`, `b_L ↦ b_L + Lμ`, the same for `R`); otherwise it is prepended. Every position of a
//! sequence reads the same distribution, independently of the others, unless statistics are
//! given per position ([`positions`]).

mod positions;

use std::sync::Arc;

use faer::Side;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::layers::{Bilinear, Layer, Linear};
use crate::linalg::{mul, Mat, MatRef, Par};
use crate::model::Model;
pub use positions::PositionLaw;

/// `N(μ, Σ)` at every position, held as `μ` and a root `S` (`dim × k`, `S Sᵀ = Σ`), or one
/// such law per position.
#[derive(Clone, Debug)]
pub struct InputDistribution {
    law: Law,
    info: DistributionInfo,
}

#[derive(Clone, Debug)]
enum Law {
    Shared { mean: Vec<f64>, root: Root },
    PerPosition(Arc<PositionLaw>),
}

/// The root `S`: dense, or `diag(√p) − p√pᵀ` restricted to the columns `seen` (`p_j > 0`), kept
/// in that form so that a vocabulary-sized `S` is never formed unless a layer must be prepended.
#[derive(Clone, Debug)]
enum Root {
    Dense(Mat<f64>),
    Categorical { p: Vec<f64>, seen: Vec<usize> },
}

impl Root {
    fn ncols(&self) -> usize {
        match self {
            Root::Dense(s) => s.ncols(),
            Root::Categorical { seen, .. } => seen.len(),
        }
    }

    /// `W S`, given `Wμ`: for the categorical root (`μ = p`), column `c` (token `j`) is
    /// `√p_j (W[:, j] − W p)`.
    fn right_of(&self, w: MatRef<'_, f64>, w_mean: &[f64]) -> Mat<f64> {
        match self {
            Root::Dense(s) => mul(w, s.as_ref(), Par::rayon(0)),
            Root::Categorical { p, seen } => Mat::from_fn(w.nrows(), seen.len(), |i, c| {
                p[seen[c]].sqrt() * (w[(i, seen[c])] - w_mean[i])
            }),
        }
    }

    /// A zero covariance (a point mass) keeps one zero column, so that models of it have an
    /// input.
    fn at_least_one_column(self, dim: usize) -> Root {
        match self.ncols() {
            0 => Root::Dense(Mat::zeros(dim, 1)),
            _ => self,
        }
    }

    /// `S` itself (`dim` rows), after checking that it fits in memory.
    fn dense(&self, dim: usize) -> Result<Mat<f64>> {
        crate::budget::check("the input distribution's root", (dim * self.ncols()) as f64)?;
        Ok(match self {
            Root::Dense(s) => s.clone(),
            Root::Categorical { p, seen } => Mat::from_fn(dim, seen.len(), |i, c| {
                let j = seen[c];
                f64::from(u8::from(i == j)) * p[j].sqrt() - p[i] * p[j].sqrt()
            }),
        })
    }
}

/// What `--json` reports of the distribution a comparison used.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DistributionInfo {
    /// `samples` (mean and covariance of data rows), `moments` (given) or `token-counts`
    /// (a categorical distribution's mean `p` and covariance `diag(p) − ppᵀ`).
    pub kind: &'static str,
    /// The file(s) or array it came from.
    pub source: String,
    /// Rows the statistics were estimated from (`samples`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<usize>,
    pub dim: usize,
    /// Per-position statistics: the positions, each with its own `N(μ_t, Σ_t)` (then `rank` is
    /// the largest of the positions', `trace` and `mean_norm` their means).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub positions: Option<usize>,
    /// Rank of `Σ` (eigenvalues above `dim·ε·λ_max`).
    pub rank: usize,
    /// `tr Σ`.
    pub trace: f64,
    /// `|μ|`.
    pub mean_norm: f64,
}

impl std::fmt::Display for DistributionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "N(μ, Σ) from {} ({}", self.source, self.kind)?;
        if let Some(rows) = self.rows {
            write!(f, ", {rows} rows")?;
        }
        if let Some(n) = self.positions {
            write!(
                f,
                "; each of {n} positions its own, positions independent; means over them"
            )?;
        }
        write!(
            f,
            "; dim {}, rank {}, tr Σ {:.4e}, |μ| {:.4e})",
            self.dim, self.rank, self.trace, self.mean_norm
        )
    }
}

impl InputDistribution {
    /// The mean and covariance (`n − 1` normalisation, as `np.cov`) of the rows of `x`.
    /// `source` names the data in messages.
    pub fn from_samples(x: MatRef<'_, f64>, source: &str) -> Result<InputDistribution> {
        let (n, d) = (x.nrows(), x.ncols());
        let bad = |reason: String| Error::Data {
            path: source.into(),
            reason,
        };
        if n < 2 {
            return Err(bad(format!(
                "input statistics need at least 2 rows, got {n}"
            )));
        }
        for i in 0..n {
            if let Some(j) = (0..d).find(|&j| !x[(i, j)].is_finite()) {
                return Err(bad(format!(
                    "row {i} holds a non-finite value ({}) in column {j}",
                    x[(i, j)]
                )));
            }
        }
        crate::budget::check("the input covariance", (n * d + 3 * d * d) as f64)?;
        let mean: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| x[(i, j)]).sum::<f64>() / n as f64)
            .collect();
        let centred = Mat::from_fn(n, d, |i, j| x[(i, j)] - mean[j]);
        let sum = mul(centred.transpose(), centred.as_ref(), Par::rayon(0));
        let cov = Mat::from_fn(d, d, |i, j| sum[(i, j)] / (n - 1) as f64);
        let mut dist = InputDistribution::from_moments(mean, cov.as_ref(), source)?;
        dist.info.kind = "samples";
        dist.info.rows = Some(n);
        Ok(dist)
    }

    /// `N(mean, cov)` given directly; `cov` must be symmetric positive semidefinite (within
    /// rounding); a singular one is fine (its root has fewer columns).
    pub fn from_moments(
        mean: Vec<f64>,
        cov: MatRef<'_, f64>,
        source: &str,
    ) -> Result<InputDistribution> {
        let d = mean.len();
        let bad = |reason: String| Error::Data {
            path: source.into(),
            reason,
        };
        if d == 0 {
            return Err(bad("the input mean is empty".into()));
        }
        if (cov.nrows(), cov.ncols()) != (d, d) {
            return Err(bad(format!(
                "the covariance has shape [{}, {}], expected [{d}, {d}] (the mean has {d} entries)",
                cov.nrows(),
                cov.ncols()
            )));
        }
        if let Some(k) = mean.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "the mean has a non-finite value ({}) at {k}",
                mean[k]
            )));
        }
        crate::budget::check("the covariance's eigendecomposition", 4.0 * (d * d) as f64)?;
        let root = Root::Dense(psd_root(cov).map_err(bad)?);
        let info = DistributionInfo {
            kind: "moments",
            source: source.into(),
            rows: None,
            positions: None,
            dim: d,
            rank: root.ncols(),
            trace: (0..d).map(|i| cov[(i, i)]).sum(),
            mean_norm: mean.iter().map(|v| v * v).sum::<f64>().sqrt(),
        };
        Ok(InputDistribution {
            law: Law::Shared {
                mean,
                root: root.at_least_one_column(d),
            },
            info,
        })
    }

    /// The Gaussian with a categorical distribution's moments, from token counts `c`:
    /// `p = c/Σc`, `μ = p`, `Σ = diag(p) − ppᵀ` with the exact root `S = diag(√p) − p√pᵀ`
    /// (`S Sᵀ = Σ` because `Σ√p = 1`), columns of unseen tokens dropped.
    pub fn from_token_counts(counts: &[f64], source: &str) -> Result<InputDistribution> {
        let bad = |reason: String| Error::Data {
            path: source.into(),
            reason,
        };
        if let Some(k) = counts.iter().position(|c| !c.is_finite() || *c < 0.0) {
            return Err(bad(format!(
                "token counts must be finite and non-negative; entry {k} is {}",
                counts[k]
            )));
        }
        let total: f64 = counts.iter().sum();
        if total <= 0.0 {
            return Err(bad("the token counts are all zero".into()));
        }
        let p: Vec<f64> = counts.iter().map(|c| c / total).collect();
        let seen: Vec<usize> = (0..p.len()).filter(|&j| p[j] > 0.0).collect();
        let info = DistributionInfo {
            kind: "token-counts",
            source: source.into(),
            rows: None,
            positions: None,
            dim: p.len(),
            rank: seen.len() - 1,
            trace: p.iter().map(|q| q - q * q).sum(),
            mean_norm: p.iter().map(|q| q * q).sum::<f64>().sqrt(),
        };
        Ok(InputDistribution {
            law: Law::Shared {
                mean: p.clone(),
                root: Root::Categorical { p, seen },
            },
            info,
        })
    }

    /// [`from_samples`](Self::from_samples) of a C-ordered array of shape `(rows, dim)`, or
    /// [`from_position_samples`](Self::from_position_samples) of one of shape
    /// `(rows, n_ctx, dim)`.
    pub fn from_sample_array(
        shape: &[usize],
        values: &[f64],
        source: &str,
    ) -> Result<InputDistribution> {
        match *shape {
            [rows, dim] | [rows, 1, dim] => {
                let x = MatRef::from_row_major_slice(values, rows, dim);
                InputDistribution::from_samples(x, source)
            }
            [rows, n_ctx, dim] => {
                InputDistribution::from_position_samples(values, (rows, n_ctx, dim), source)
            }
            _ => Err(Error::Data {
                path: source.into(),
                reason: format!("has shape {shape:?}, expected (rows, dim) or (rows, n_ctx, dim)"),
            }),
        }
    }

    /// Per-position statistics of sequences `x[row, t, :]` (C order, `(rows, n_ctx, dim)`):
    /// position `t` reads the mean and covariance of its own rows, positions independent.
    pub fn from_position_samples(
        values: &[f64],
        (rows, n_ctx, dim): (usize, usize, usize),
        source: &str,
    ) -> Result<InputDistribution> {
        let bad = |reason: String| Error::Data {
            path: source.into(),
            reason,
        };
        if let Some(k) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "row {}, position {}, column {} holds a non-finite value ({})",
                k / (n_ctx * dim),
                k / dim % n_ctx,
                k % dim,
                values[k]
            )));
        }
        let (mut mean, mut root) = (vec![], vec![]);
        let (mut rank, mut trace, mut norm) = (0, 0.0, 0.0);
        for t in 0..n_ctx {
            let x = Mat::from_fn(rows, dim, |i, j| values[(i * n_ctx + t) * dim + j]);
            let at = InputDistribution::from_samples(x.as_ref(), &format!("{source}[:, {t}]"))?;
            let Law::Shared { mean: mu, root: s } = at.law else {
                unreachable!("statistics of rows are shared")
            };
            (rank, trace, norm) = (
                rank.max(at.info.rank),
                trace + at.info.trace / n_ctx as f64,
                norm + at.info.mean_norm / n_ctx as f64,
            );
            mean.push(mu);
            root.push(s.dense(dim)?);
        }
        Ok(InputDistribution {
            law: Law::PerPosition(Arc::new(PositionLaw::new(mean, root))),
            info: DistributionInfo {
                kind: "samples",
                source: source.into(),
                rows: Some(rows),
                positions: Some(n_ctx),
                dim,
                rank,
                trace,
                mean_norm: norm,
            },
        })
    }

    /// [`from_moments`](Self::from_moments) of arrays of shapes `(dim,)` and `(dim, dim)`.
    pub fn from_moment_arrays(
        (mean_shape, mean): (&[usize], Vec<f64>),
        (cov_shape, cov): (&[usize], &[f64]),
        source: &str,
    ) -> Result<InputDistribution> {
        let bad = |reason: String| Error::Data {
            path: source.into(),
            reason,
        };
        if mean_shape.len() != 1 {
            return Err(bad(format!(
                "the mean has shape {mean_shape:?}, expected ({},)",
                mean.len()
            )));
        }
        let d = mean.len();
        let [r, c] = *cov_shape else {
            return Err(bad(format!(
                "the covariance has shape {cov_shape:?}, expected ({d}, {d})"
            )));
        };
        InputDistribution::from_moments(mean, MatRef::from_row_major_slice(cov, r, c), source)
    }

    /// [`from_token_counts`](Self::from_token_counts) of an array of shape `(vocab,)`.
    pub fn from_count_array(
        shape: &[usize],
        counts: &[f64],
        source: &str,
    ) -> Result<InputDistribution> {
        if shape.len() != 1 {
            return Err(Error::Data {
                path: source.into(),
                reason: format!("token counts have shape {shape:?}, expected (vocab,)"),
            });
        }
        InputDistribution::from_token_counts(counts, source)
    }

    pub fn info(&self) -> &DistributionInfo {
        &self.info
    }

    /// `z ↦ f(μ + S z)`: `model` read under this distribution, as a model of standard Gaussian
    /// input `z` (of size `rank`; at least 1). Per-position statistics are carried by the
    /// model instead ([`Model::with_law`]).
    pub fn apply(&self, model: &Model) -> Result<Model> {
        if model.in_dim() != self.info.dim {
            return Err(Error::Invalid(format!(
                "the input distribution from {} has dimension {}, but the model takes inputs of \
                 size {}",
                self.info.source,
                self.info.dim,
                model.in_dim()
            )));
        }
        match &self.law {
            Law::Shared { mean, root } => fold(mean, root, model),
            Law::PerPosition(law) => self.carried(law, model),
        }
    }

    /// `model` with its positions drawn from `law`.
    fn carried(&self, law: &Arc<PositionLaw>, model: &Model) -> Result<Model> {
        let source = &self.info.source;
        if model.first_attention().is_none() {
            return Err(Error::Invalid(format!(
                "the input statistics from {source} are per position, but the model has no \
                 attention: each position is read alone, by the same layers; reshape them to \
                 (rows·n_ctx, {}) for one distribution shared by every position",
                law.dim()
            )));
        }
        if law.n_ctx() != model.input().n_ctx {
            return Err(Error::Invalid(format!(
                "the input statistics from {source} are per position for {} positions, but the \
                 model reads n_ctx {}",
                law.n_ctx(),
                model.input().n_ctx
            )));
        }
        Ok(model.clone().with_law(law.clone()))
    }
}

/// `z ↦ f(μ + S z)` with the affine map folded into `model`'s first layer or prepended.
fn fold(mu: &[f64], root: &Root, model: &Model) -> Result<Model> {
    // `(W S, Wμ + b)`.
    let fold = |w: &Mat<f64>, b: &Option<Vec<f64>>| -> (Mat<f64>, Option<Vec<f64>>) {
        let w_mean: Vec<f64> = (0..w.nrows())
            .map(|i| (0..w.ncols()).map(|j| w[(i, j)] * mu[j]).sum())
            .collect();
        let bias = match b {
            Some(b) => w_mean.iter().zip(b).map(|(x, y)| x + y).collect(),
            None => w_mean.clone(),
        };
        (root.right_of(w.as_ref(), &w_mean), Some(bias))
    };
    let mut layers = model.layers().to_vec();
    match &layers[0] {
        Layer::Linear(l) => {
            let (weight, bias) = fold(&l.weight, &l.bias);
            layers[0] = Layer::Linear(Linear { weight, bias })
        }
        Layer::Bilinear(b) if b.residual.is_none() => {
            let ((left, left_bias), (right, right_bias)) =
                (fold(&b.left, &b.left_bias), fold(&b.right, &b.right_bias));
            layers[0] = Layer::Bilinear(Bilinear {
                left,
                right,
                left_bias,
                right_bias,
                down: b.down.clone(),
                down_bias: b.down_bias.clone(),
                residual: None,
            })
        }
        _ => layers.insert(
            0,
            Layer::Linear(Linear {
                weight: root.dense(mu.len())?,
                bias: Some(mu.to_vec()),
            }),
        ),
    }
    Model::new(root.ncols(), model.input().n_ctx, layers)
}

/// `V_+ diag(√λ_+)` from `Σ = V diag(λ) Vᵀ`, keeping eigenvalues above `d·ε·λ_max`; an error
/// naming what is wrong if `Σ` is not symmetric or has an eigenvalue below `−10⁻⁸·λ_max`.
fn psd_root(cov: MatRef<'_, f64>) -> std::result::Result<Mat<f64>, String> {
    let d = cov.nrows();
    let scale = crate::linalg::max_abs(cov);
    for i in 0..d {
        for j in 0..i {
            let (a, b) = (cov[(i, j)], cov[(j, i)]);
            if !a.is_finite() || !b.is_finite() {
                return Err(format!(
                    "the covariance has a non-finite entry at ({i}, {j})"
                ));
            }
            if (a - b).abs() > 1e-8 * scale {
                return Err(format!(
                    "the covariance is not symmetric: entry ({i}, {j}) is {a} but ({j}, {i}) is {b}"
                ));
            }
        }
        if !cov[(i, i)].is_finite() {
            return Err(format!(
                "the covariance has a non-finite entry at ({i}, {i})"
            ));
        }
    }
    let sym = Mat::from_fn(d, d, |i, j| 0.5 * (cov[(i, j)] + cov[(j, i)]));
    let eig = sym
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| format!("the covariance's eigendecomposition failed: {e:?}"))?;
    let lambda: Vec<f64> = (0..d).map(|k| eig.S()[k]).collect();
    let max = lambda.iter().fold(0.0f64, |m, &l| m.max(l));
    let min = lambda.iter().fold(f64::INFINITY, |m, &l| m.min(l));
    if min < -1e-8 * max.max(f64::MIN_POSITIVE) {
        return Err(format!(
            "the covariance is not positive semidefinite: its smallest eigenvalue is {min:.6e} \
             (largest {max:.6e})"
        ));
    }
    let keep: Vec<usize> = (0..d)
        .filter(|&k| lambda[k] > d as f64 * f64::EPSILON * max)
        .collect();
    let v = eig.U();
    Ok(Mat::from_fn(d, keep.len(), |i, c| {
        v[(i, keep[c])] * lambda[keep[c]].sqrt()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::mul_t;

    fn root(d: &InputDistribution) -> &Root {
        match &d.law {
            Law::Shared { root, .. } => root,
            Law::PerPosition(_) => unreachable!(),
        }
    }

    #[test]
    fn roots_reproduce_the_covariance() {
        // Rank 2 in 3 dimensions.
        let a = Mat::from_fn(3, 2, |i, j| (i + 2 * j) as f64 - 1.5);
        let cov = mul_t(a.as_ref(), a.as_ref(), Par::Seq);
        let dist =
            InputDistribution::from_moments(vec![0.5, -1.0, 2.0], cov.as_ref(), "t").unwrap();
        assert_eq!(dist.info().rank, 2);
        let s = root(&dist).dense(dist.info().dim).unwrap();
        let back = mul_t(s.as_ref(), s.as_ref(), Par::Seq);
        assert!(crate::linalg::max_abs((&back - &cov).as_ref()) < 1e-12);

        let counts = [3.0, 0.0, 1.0, 4.0];
        let dist = InputDistribution::from_token_counts(&counts, "c").unwrap();
        let s = root(&dist).dense(dist.info().dim).unwrap();
        let back = mul_t(s.as_ref(), s.as_ref(), Par::Seq);
        let p = [0.375, 0.0, 0.125, 0.5];
        let want = Mat::from_fn(4, 4, |i, j| {
            f64::from(u8::from(i == j)) * p[i] - p[i] * p[j]
        });
        assert!(crate::linalg::max_abs((&back - &want).as_ref()) < 1e-15);
        assert_eq!((dist.info().rank, s.ncols()), (2, 3));
        // `W S` in the factored form equals the product with the formed root.
        let w = Mat::from_fn(2, 4, |i, j| (i * 4 + j) as f64 - 3.5);
        let ws = mul(w.as_ref(), s.as_ref(), Par::Seq);
        let wp: Vec<f64> = (0..2)
            .map(|i| (0..4).map(|j| w[(i, j)] * p[j]).sum())
            .collect();
        let fast = root(&dist).right_of(w.as_ref(), &wp);
        assert!(crate::linalg::max_abs((&fast - &ws).as_ref()) < 1e-14);
    }

    #[test]
    fn bad_covariances_are_refused_naming_the_fault() {
        let asym = Mat::from_fn(2, 2, |i, j| if (i, j) == (0, 1) { 0.5 } else { 1.0 });
        let e = InputDistribution::from_moments(vec![0.0; 2], asym.as_ref(), "s.npy")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not symmetric: entry (1, 0)"), "{e}");
        let indefinite = Mat::from_fn(2, 2, |i, j| if i == j { 1.0 } else { 2.0 });
        let e = InputDistribution::from_moments(vec![0.0; 2], indefinite.as_ref(), "s.npy")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not positive semidefinite") && e.contains("-1.0"),
            "{e}"
        );
        let e = InputDistribution::from_moments(vec![0.0; 3], asym.as_ref(), "s.npy")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shape [2, 2], expected [3, 3]"), "{e}");
        let x = Mat::from_fn(3, 2, |i, j| if (i, j) == (2, 1) { f64::NAN } else { 1.0 });
        let e = InputDistribution::from_samples(x.as_ref(), "x.npy")
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 2"), "{e}");
        let e = InputDistribution::from_samples(x.subrows(0, 1), "x.npy")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 2 rows, got 1"), "{e}");
    }
}
