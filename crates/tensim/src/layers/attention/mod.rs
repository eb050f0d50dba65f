//! Bilinear ("quadratic-score") attention (MATH.md §2.5, FORMAT.md `attention`). For query
//! position `t`, key position `u` and head `η` with head size `h = d/H`:
//!
//! ```text
//! σᶜ_η(t,u) = (ρ_t Q̂c_η x̂_t) · (ρ_u K̂c_η x̂_u)                       (c = 1, 2)
//! f(X)[t]   = Σ_η O_η Σ_u M[t,u] σ¹_η(t,u) σ²_η(t,u) / h² · V_η x_u
//! Y[t]      = (1−s)·X[t] + s·f(X)[t]  (lerp)   |   X[t] + s·f(X)[t]  (add)   |   f(X)[t]
//! ```
//!
//! `Q̂c_η = [b_Qc | Qc]` (rows of head `η`, padded input `x̂ = (1, x)`), `ρ_t` the rotary rotation
//! (rotate-half: pairs `(j, j+h/2)` turned by `t·θ_j`, `θ_j = base^(−2j/h)`).
//!
//! Tensor-network form ([`Attention::network`]): an identity term `ℐ[(t,o);(p,i)] = δ_tp δ_oi γ_i`
//! and a five-leg active term per head built from the factors `M[t,u]`, `(s/h²)·O_η V̂_η`,
//! `ρ_t Q̂c_η` (legs 3, 4 at the query position) and `ρ_u K̂c_η` (legs 1, 2 at the key position;
//! leg 0, the value, also at `u`), in `network.rs`; its Gaussian moment update (also the
//! transformer tensor metric's step) in `moment/`.

pub mod moment;
pub mod network;

pub use network::{HeadFactors, Network};

use crate::arch::{Mask, Residual};
use crate::linalg::kernels::Real;
use crate::linalg::{add_bias, mul_t, Mat, MatRef, Par};

/// A bilinear attention layer over `d`-dimensional positions.
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub n_head: usize,
    /// `Q₁, K₁, Q₂, K₂, V, O`, each `(d, d)` in the `nn.Linear` layout.
    pub q1: Mat<f64>,
    pub k1: Mat<f64>,
    pub q2: Mat<f64>,
    pub k2: Mat<f64>,
    pub v: Mat<f64>,
    pub o: Mat<f64>,
    pub q1_bias: Option<Vec<f64>>,
    pub k1_bias: Option<Vec<f64>>,
    pub q2_bias: Option<Vec<f64>>,
    pub k2_bias: Option<Vec<f64>>,
    pub mask: Mask,
    /// Rotary base (`None`: no rotary positions).
    pub rotary: Option<f64>,
    pub residual: Option<Residual>,
}

impl Attention {
    pub fn dim(&self) -> usize {
        self.q1.ncols()
    }

    pub fn head_size(&self) -> usize {
        self.dim() / self.n_head
    }

    /// `(c, r)`: the active term's weight and the residual's (`c = 1, r = 0` without residual).
    pub fn path_weights(&self) -> (f64, f64) {
        Residual::weights(self.residual)
    }

    /// `Q₁, K₁, Q₂, K₂, V, O` with their roles.
    pub fn matrices(&self) -> [(&'static str, &Mat<f64>); 6] {
        [
            ("q1", &self.q1),
            ("k1", &self.k1),
            ("q2", &self.q2),
            ("k2", &self.k2),
            ("v", &self.v),
            ("o", &self.o),
        ]
    }

    /// The query/key biases with their roles.
    pub fn biases(&self) -> [(&'static str, &Option<Vec<f64>>); 4] {
        [
            ("q1_bias", &self.q1_bias),
            ("k1_bias", &self.k1_bias),
            ("q2_bias", &self.q2_bias),
            ("k2_bias", &self.k2_bias),
        ]
    }

    /// `M[t, u]`.
    pub fn mask_value(&self, t: usize, u: usize) -> f64 {
        let on = match self.mask {
            Mask::Causal => u <= t,
            Mask::None => true,
            Mask::Diag => u == t,
        };
        if on {
            1.0
        } else {
            0.0
        }
    }

    /// `ρ_t` applied to the rows of `x` (`n·?` rows, one head's `h` columns at `col`), in place:
    /// row `r` is at position `r % n`.
    fn rotate(&self, x: &mut Mat<f64>, n: usize) {
        let Some(base) = self.rotary else { return };
        let h = self.head_size();
        let half = h / 2;
        for r in 0..x.nrows() {
            let turns = turns(base, h, r % n);
            for head in 0..self.n_head {
                let c0 = head * h;
                for (j, &(cos, sin)) in turns.iter().enumerate() {
                    let (a, b) = (x[(r, c0 + j)], x[(r, c0 + j + half)]);
                    x[(r, c0 + j)] = a * cos - b * sin;
                    x[(r, c0 + j + half)] = b * cos + a * sin;
                }
            }
        }
    }

    /// Forward pass over sequences of `n` positions: rows `r·n .. r·n + n` of `x` are one input.
    pub fn forward(&self, x: MatRef<'_, f64>, n: usize, par: Par) -> Mat<f64> {
        let (d, h) = (self.dim(), self.head_size());
        let project = |w: &Mat<f64>, b: &Option<Vec<f64>>, rotate: bool| {
            let mut y = add_bias(mul_t(x, w.as_ref(), par), b);
            if rotate {
                self.rotate(&mut y, n);
            }
            y
        };
        let (q1, k1) = (
            project(&self.q1, &self.q1_bias, true),
            project(&self.k1, &self.k1_bias, true),
        );
        let (q2, k2) = (
            project(&self.q2, &self.q2_bias, true),
            project(&self.k2, &self.k2_bias, true),
        );
        let v = project(&self.v, &None, false);
        let mut z = Mat::<f64>::zeros(x.nrows(), d);
        let dot = |a: &Mat<f64>, b: &Mat<f64>, i: usize, j: usize, c0: usize| -> f64 {
            (c0..c0 + h).map(|c| a[(i, c)] * b[(j, c)]).sum()
        };
        for seq in 0..x.nrows() / n {
            for head in 0..self.n_head {
                let c0 = head * h;
                for t in 0..n {
                    let i = seq * n + t;
                    for u in 0..n {
                        let m = self.mask_value(t, u);
                        if m == 0.0 {
                            continue;
                        }
                        let j = seq * n + u;
                        let score =
                            m * dot(&q1, &k1, i, j, c0) * dot(&q2, &k2, i, j, c0) / (h * h) as f64;
                        for c in c0..c0 + h {
                            z[(i, c)] += score * v[(j, c)];
                        }
                    }
                }
            }
        }
        let f = mul_t(z.as_ref(), self.o.as_ref(), par);
        if self.residual.is_none() {
            return f;
        }
        let (c, r) = self.path_weights();
        Mat::from_fn(f.nrows(), d, |i, j| r * x[(i, j)] + c * f[(i, j)])
    }
}

/// `ρ` given by its `turns` on the rows of a row-major `h × cols` block:
/// `(row_j, row_{j+h/2}) ↦ (row_j cos θ_j − row_{j+h/2} sin θ_j, row_{j+h/2} cos θ_j + row_j sin θ_j)`.
#[inline(always)]
pub(crate) fn turn_rows<T: Real>(block: &mut [T], cols: usize, turns: &[(f64, f64)]) {
    let (top, bottom) = block.split_at_mut(block.len() / 2);
    let pairs = top
        .chunks_exact_mut(cols)
        .zip(bottom.chunks_exact_mut(cols));
    for ((x, y), &(cos, sin)) in pairs.zip(turns) {
        let (cos, sin) = (T::of(cos), T::of(sin));
        for (a, z) in x.iter_mut().zip(y.iter_mut()) {
            (*a, *z) = (*a * cos - *z * sin, *z * cos + *a * sin);
        }
    }
}

/// `(cos θ_j, sin θ_j)`, `θ_j = t·base^(−2j/h)` for `j < h/2`: the rotary rotation `ρ_t` turns
/// each pair of coordinates `(j, j + h/2)` of a head by `θ_j`.
pub(crate) fn turns(base: f64, h: usize, t: usize) -> Vec<(f64, f64)> {
    (0..h / 2)
        .map(|j| {
            let theta = t as f64 * base.powf(-2.0 * j as f64 / h as f64);
            (theta.cos(), theta.sin())
        })
        .collect()
}
