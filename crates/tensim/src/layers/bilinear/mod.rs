//! Bilinear layer `y = D((L x + b_L) ∘ (R x + b_R)) + b_D`, optionally with a residual.
//!
//! Padded form (MATH.md §2.2): `ŷ = D̂((L̂x̂) ∘ (R̂x̂))` with hidden units
//! `k ∈ {0} ∪ {1..h} ∪ {h+1..h+d}` (unit, data, residual):
//!
//! | unit `k`        | `L̂[k,:]`           | `R̂[k,:]`           | `D̂[:,k]`        |
//! |-----------------|--------------------|--------------------|-----------------|
//! | `0`             | `e₀ᵀ`              | `e₀ᵀ`              | `(1, c·b_D)`    |
//! | `1..h`          | `(b_L[k], L[k,:])` | `(b_R[k], R[k,:])` | `(0, c·D[:,k])` |
//! | `h+i`, `i=1..d` | `e_iᵀ`             | `e₀ᵀ`              | `r·e_i`         |
//!
//! `c = 1, r = 0` without residual; `c = s, r = 1−s` for `lerp`; `c = s, r = 1` for `add`.
//! The residual block is left out when `r = 0`.
//!
//! `gram.rs`: the node pair's Gram update (tensor similarity); `moment.rs`: its Gaussian moment
//! update.

pub mod gram;
pub mod moment;

use crate::arch::{Residual, ResidualMode};
use crate::linalg::{add_bias, hadamard, mul_t, Mat, MatRef, Par};

/// A bilinear layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Bilinear {
    /// `L`, shape `(h, in)`.
    pub left: Mat<f64>,
    /// `R`, shape `(h, in)`.
    pub right: Mat<f64>,
    /// `D`, shape `(out, h)`; `None`: the layer outputs the hidden product itself.
    pub down: Option<Mat<f64>>,
    pub left_bias: Option<Vec<f64>>,
    pub right_bias: Option<Vec<f64>>,
    pub down_bias: Option<Vec<f64>>,
    pub residual: Option<Residual>,
}

impl Bilinear {
    pub fn in_dim(&self) -> usize {
        self.left.ncols()
    }

    pub fn hidden(&self) -> usize {
        self.left.nrows()
    }

    pub fn out_dim(&self) -> usize {
        self.down.as_ref().map_or(self.hidden(), |d| d.nrows())
    }

    /// `(c, r)`: weight of the active path and of the residual path.
    fn path_weights(&self) -> (f64, f64) {
        Residual::weights(self.residual)
    }

    /// Batched forward pass, rows are inputs, straight from the definition.
    pub fn forward(&self, x: MatRef<'_, f64>, par: Par) -> Mat<f64> {
        let u = add_bias(mul_t(x, self.left.as_ref(), par), &self.left_bias);
        let v = add_bias(mul_t(x, self.right.as_ref(), par), &self.right_bias);
        let p = hadamard(u.as_ref(), v.as_ref());
        let f = match &self.down {
            Some(d) => add_bias(mul_t(p.as_ref(), d.as_ref(), par), &self.down_bias),
            None => add_bias(p, &self.down_bias),
        };
        match self.residual {
            None => f,
            Some(Residual { mode, scale }) => {
                let keep = if mode == ResidualMode::Lerp {
                    1.0 - scale
                } else {
                    1.0
                };
                Mat::from_fn(f.nrows(), f.ncols(), |i, j| {
                    keep * x[(i, j)] + scale * f[(i, j)]
                })
            }
        }
    }

    /// The padded node `(L̂, R̂, D̂)` of the table above.
    pub fn padded(&self) -> PaddedBilinear {
        let (d, h, m) = (self.in_dim(), self.hidden(), self.out_dim());
        let (c, r) = self.path_weights();
        let res = if r != 0.0 { d } else { 0 };
        let hh = 1 + h + res;
        let side =
            |w: &Mat<f64>, bias: &Option<Vec<f64>>, residual_row: &dyn Fn(usize) -> usize| {
                Mat::from_fn(hh, d + 1, |k, j| {
                    if k == 0 {
                        (j == 0) as u8 as f64
                    } else if k <= h {
                        if j == 0 {
                            bias.as_ref().map_or(0.0, |b| b[k - 1])
                        } else {
                            w[(k - 1, j - 1)]
                        }
                    } else {
                        (j == residual_row(k - h)) as u8 as f64
                    }
                })
            };
        let l = side(&self.left, &self.left_bias, &|i| i);
        let rr = side(&self.right, &self.right_bias, &|_| 0);
        let down = Mat::from_fn(m + 1, hh, |o, k| {
            if k == 0 {
                if o == 0 {
                    1.0
                } else {
                    c * self.down_bias.as_ref().map_or(0.0, |b| b[o - 1])
                }
            } else if o == 0 {
                0.0
            } else if k <= h {
                c * match &self.down {
                    Some(dm) => dm[(o - 1, k - 1)],
                    None => (o == k) as u8 as f64,
                }
            } else {
                r * (o == k - h) as u8 as f64
            }
        });
        PaddedBilinear { l, r: rr, d: down }
    }
}

/// The padded node `(L̂, R̂, D̂)` of a bilinear layer: `T[o,i,j] = Σ_k D̂[o,k] L̂[k,i] R̂[k,j]`.
#[derive(Clone, Debug)]
pub struct PaddedBilinear {
    pub l: Mat<f64>,
    pub r: Mat<f64>,
    pub d: Mat<f64>,
}

impl PaddedBilinear {
    /// The identity node `x̂ ↦ x̂ ∘ x̂₀` on a padded space of data size `dim` (a `lerp` layer with
    /// scale 0 and no hidden units). Lifts a shallower model to a deeper tree.
    pub fn identity(dim: usize) -> PaddedBilinear {
        Bilinear {
            left: Mat::zeros(0, dim),
            right: Mat::zeros(0, dim),
            down: Some(Mat::zeros(dim, 0)),
            left_bias: None,
            right_bias: None,
            down_bias: None,
            residual: Some(Residual {
                mode: ResidualMode::Lerp,
                scale: 0.0,
            }),
        }
        .padded()
    }

    /// Multilinear evaluation on two padded input batches (rows): `(Û L̂ᵀ ∘ V̂ R̂ᵀ) D̂ᵀ`;
    /// with `symmetrise`, the node tensor symmetrised over its two legs:
    /// `½(Û L̂ᵀ ∘ V̂ R̂ᵀ + V̂ L̂ᵀ ∘ Û R̂ᵀ) D̂ᵀ`.
    pub fn apply(
        &self,
        u: MatRef<'_, f64>,
        v: MatRef<'_, f64>,
        symmetrise: bool,
        par: Par,
    ) -> Mat<f64> {
        let ul = mul_t(u, self.l.as_ref(), par);
        let vr = mul_t(v, self.r.as_ref(), par);
        let mut p = hadamard(ul.as_ref(), vr.as_ref());
        if symmetrise {
            let vl = mul_t(v, self.l.as_ref(), par);
            let ur = mul_t(u, self.r.as_ref(), par);
            p = Mat::from_fn(p.nrows(), p.ncols(), |i, j| {
                0.5 * (p[(i, j)] + vl[(i, j)] * ur[(i, j)])
            });
        }
        mul_t(p.as_ref(), self.d.as_ref(), par)
    }
}

impl PaddedBilinear {
    /// The node as a two-leg term `Σ_k D̂[o,k] L̂[k,i] R̂[k,j]`, both legs at the output position.
    pub fn term(&self) -> crate::wick::Term {
        let (t, o, k, i, j) = (0, 1, 2, 3, 4);
        let m = crate::wick::matrix;
        crate::wick::Term {
            factors: vec![
                (vec![o, k], m(&self.d)),
                (vec![k, i], m(&self.l)),
                (vec![k, j], m(&self.r)),
            ],
            out: (t, o),
            legs: vec![(t, i), (t, j)],
            n_labels: 5,
        }
    }
}

/// `Some(j)` where row `k` of `m` is the unit row `e_jᵀ`.
pub(crate) fn unit_row(m: &Mat<f64>, k: usize) -> Option<usize> {
    let mut nz = (0..m.ncols()).filter(|&j| m[(k, j)] != 0.0);
    match (nz.next(), nz.next()) {
        (Some(j), None) if m[(k, j)] == 1.0 => Some(j),
        _ => None,
    }
}
