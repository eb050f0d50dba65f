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
//! leg 0, the value, also at `u`).

use crate::arch::{Mask, Residual};
use crate::einsum::{Einsum, Tensor};
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

/// The factors of one head's active term, indexed by position (`n` positions, padded size
/// `d + 1`): `vo = o·v` with `v[e, i] = V̂_η` (unit column zero) and `o[o, e] = (s/h²)·O_η`
/// (row `o = 0` zero), `q[c][t, e, i]`, `k[c][u, e, i]`.
#[derive(Clone, Debug)]
pub struct HeadFactors {
    pub v: Tensor,
    pub o: Tensor,
    pub vo: Tensor,
    pub q: [Tensor; 2],
    pub k: [Tensor; 2],
}

/// The tensor-network form of the layer at `n` positions.
#[derive(Clone, Debug)]
pub struct Network {
    /// `γ_i` of the identity term (`γ₀ = 1`).
    pub gamma: Vec<f64>,
    /// `M[t, u]`.
    pub mask: Tensor,
    pub heads: Vec<HeadFactors>,
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
            let t = (r % n) as f64;
            for head in 0..self.n_head {
                let c0 = head * h;
                for j in 0..half {
                    let theta = t * base.powf(-2.0 * j as f64 / h as f64);
                    let (cos, sin) = (theta.cos(), theta.sin());
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

    /// Rows of head `head` of `[b | W]` (`h × (d+1)`), rotated by `ρ_t`: `out[t, e, i]`.
    fn padded_rotated(&self, w: &Mat<f64>, b: &Option<Vec<f64>>, head: usize, n: usize) -> Tensor {
        let (d, h) = (self.dim(), self.head_size());
        // Rows (t, e) of the padded head block, one per position.
        let mut rows = Mat::<f64>::zeros(n * h, d + 1);
        for t in 0..n {
            for e in 0..h {
                let row = head * h + e;
                rows[(t * h + e, 0)] = b.as_ref().map_or(0.0, |b| b[row]);
                for i in 0..d {
                    rows[(t * h + e, 1 + i)] = w[(row, i)];
                }
            }
        }
        if let Some(base) = self.rotary {
            let half = h / 2;
            for t in 0..n {
                for j in 0..half {
                    let theta = t as f64 * base.powf(-2.0 * j as f64 / h as f64);
                    let (cos, sin) = (theta.cos(), theta.sin());
                    for i in 0..=d {
                        let (a, bb) = (rows[(t * h + j, i)], rows[(t * h + j + half, i)]);
                        rows[(t * h + j, i)] = a * cos - bb * sin;
                        rows[(t * h + j + half, i)] = bb * cos + a * sin;
                    }
                }
            }
        }
        Tensor::new(
            vec![n, h, d + 1],
            (0..n * h)
                .flat_map(|r| (0..=d).map(move |i| (r, i)))
                .map(|(r, i)| rows[(r, i)])
                .collect(),
        )
    }

    /// The tensor-network form at `n` positions.
    pub fn network(&self, n: usize) -> Network {
        let (d, h) = (self.dim(), self.head_size());
        let (c, r) = self.path_weights();
        let mut gamma = vec![r; d + 1];
        gamma[0] = 1.0;
        let mask = Tensor::new(
            vec![n, n],
            (0..n * n).map(|k| self.mask_value(k / n, k % n)).collect(),
        );
        let heads = (0..self.n_head)
            .map(|head| {
                // V̂_η (h × (d+1)) and (s/h²)·O_η ((d+1) × h); their product is `vo`.
                let (w, rows) = (d + 1, head * h..(head + 1) * h);
                let mut v = Tensor::zeros(vec![h, w]);
                let mut o = Tensor::zeros(vec![w, h]);
                for (e, row) in rows.enumerate() {
                    for i in 0..d {
                        v.data[e * w + 1 + i] = self.v[(row, i)];
                        o.data[(1 + i) * h + e] = c * self.o[(i, row)] / (h * h) as f64;
                    }
                }
                let mut vo = Tensor::zeros(vec![w, w]);
                for out in 1..w {
                    for e in 0..h {
                        let x = o.data[out * h + e];
                        for i in 1..w {
                            vo.data[out * w + i] += x * v.data[e * w + i];
                        }
                    }
                }
                HeadFactors {
                    v,
                    o,
                    vo,
                    q: [
                        self.padded_rotated(&self.q1, &self.q1_bias, head, n),
                        self.padded_rotated(&self.q2, &self.q2_bias, head, n),
                    ],
                    k: [
                        self.padded_rotated(&self.k1, &self.k1_bias, head, n),
                        self.padded_rotated(&self.k2, &self.k2_bias, head, n),
                    ],
                }
            })
            .collect();
        Network { gamma, mask, heads }
    }
}

impl Network {
    /// The two terms: the identity `ℐ[(t,o);(t,i)] = γ_i δ_oi` (one leg) and the active term
    /// (five legs: value, K₁, K₂ at the key position `u`; Q₁, Q₂ at the query position `t`),
    /// heads summed over a label `η`.
    pub fn terms(&self) -> Vec<crate::wick::Term> {
        use crate::wick::Term;
        use std::sync::Arc;
        let w = self.gamma.len();
        let gamma = Tensor::new(
            vec![w, w],
            (0..w * w)
                .map(|k| {
                    if k / w == k % w {
                        self.gamma[k % w]
                    } else {
                        0.0
                    }
                })
                .collect(),
        );
        let identity = Term {
            factors: vec![(vec![1, 2], Arc::new(gamma))],
            out: (0, 1),
            legs: vec![(0, 2)],
            n_labels: 3,
        };
        // Heads stacked along a leading axis.
        let stack = |part: &dyn Fn(&HeadFactors) -> &Tensor| {
            let first = part(&self.heads[0]);
            let mut shape = vec![self.heads.len()];
            shape.extend(&first.shape);
            Arc::new(Tensor::new(
                shape,
                self.heads
                    .iter()
                    .flat_map(|h| part(h).data.clone())
                    .collect(),
            ))
        };
        let (t, o, u, eta, e, f) = (0, 1, 2, 3, 4, 5);
        let (a, b, c, d, g) = (6, 7, 8, 9, 10);
        let active = Term {
            factors: vec![
                (vec![t, u], Arc::new(self.mask.clone())),
                (vec![eta, o, a], stack(&|h| &h.vo)),
                (vec![eta, t, e, b], stack(&|h| &h.q[0])),
                (vec![eta, u, e, c], stack(&|h| &h.k[0])),
                (vec![eta, t, f, d], stack(&|h| &h.q[1])),
                (vec![eta, u, f, g], stack(&|h| &h.k[1])),
            ],
            out: (t, o),
            legs: vec![(u, a), (u, c), (u, g), (t, b), (t, d)],
            n_labels: 11,
        };
        vec![identity, active]
    }

    /// `ℐ(X̂⁽⁰⁾) + 𝒜(X̂⁽⁰⁾, …, X̂⁽⁴⁾)` (the identity term reads leg 0) for padded inputs `X̂⁽ˡ⁾` of shape `(n, d+1)` (leg `l`):
    /// the multilinear map of the network, contracted by the einsum engine.
    pub fn apply(&self, legs: [&Tensor; 5]) -> Tensor {
        // t: query, u: key, o: output, e/f: the two score contractions, a..g: leg coordinates.
        let active = Einsum::parse("tu,oa,ua,teb,tb,uec,uc,tfd,td,ufg,ug->to").expect("valid");
        let n = self.mask.shape[0];
        let width = self.gamma.len();
        let mut out = Tensor::new(
            vec![n, width],
            (0..n * width)
                .map(|k| self.gamma[k % width] * legs[0].data[k])
                .collect(),
        );
        for head in &self.heads {
            let y = active
                .contract(&[
                    &self.mask, &head.vo, legs[0], &head.q[0], legs[3], &head.k[0], legs[1],
                    &head.q[1], legs[4], &head.k[1], legs[2],
                ])
                .expect("consistent shapes");
            out.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a += b);
        }
        out
    }
}
