//! The state of the Gaussian moment propagation (MATH.md §5.6): scaled second moments of the
//! padded activations, `Σ[t, i, t', i']` over positions `t` and padded coordinates `i` (slot 0
//! the unit), and what a layer's moment update reads of them. Below the layers (each owns its
//! update) and the engine that chains the updates (`propagate.rs`).
//!
//! States are kept scaled: `Σ_xx = e^{s_x} Σ̃_xx`, `Σ_ab = e^{(s_a+s_b)/2} Σ̃_ab`; a term pair with
//! `k_l`, `k_r` legs picks up `e^{(k_l s_l + k_r s_r)/2}`.

use crate::distribution::PositionLaw;
use crate::einsum::Tensor;
use crate::linalg::Mat;

/// A scaled second moment `e^{scale}·m`.
#[derive(Clone, Debug)]
pub struct Moment {
    pub m: Tensor,
    pub scale: f64,
}

impl Moment {
    /// `Σ⁰ = C + μμᵀ` of `n` i.i.d. `N(0, I_d)` positions (`μ[(t,0)] = 1`,
    /// `C = I_n ⊗ diag(0, I_d)`), scale 0.
    pub fn initial(n: usize, d: usize) -> Moment {
        let w = d + 1;
        let mut s = Tensor::zeros(vec![n, w, n, w]);
        for t in 0..n {
            for u in 0..n {
                s.data[((t * w) * n + u) * w] = 1.0;
            }
            for i in 1..w {
                s.data[((t * w + i) * n + t) * w + i] = 1.0;
            }
        }
        Moment { m: s, scale: 0.0 }
    }

    /// `Σ⁰` of a model's input: [`Moment::initial`], or from its positions' law
    /// (`m_t m_t'ᵀ + δ_tt' diag(0, S_t S_tᵀ)`, [`PositionLaw::moment`]).
    pub fn input(n: usize, d: usize, law: Option<&PositionLaw>) -> Moment {
        match law {
            None => Moment::initial(n, d),
            Some(law) => Moment {
                m: law.moment(None, None, false),
                scale: 0.0,
            },
        }
    }

    /// A self moment normalised by its largest entry (the scale takes its logarithm).
    pub fn normalised(m: Tensor, scale: f64) -> Moment {
        let alpha = m.data.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        if alpha > 0.0 && alpha.is_finite() {
            Moment {
                m: Tensor::new(m.shape.clone(), m.data.iter().map(|v| v / alpha).collect()),
                scale: scale + alpha.ln(),
            }
        } else {
            Moment { m, scale }
        }
    }
}

/// The arithmetic of the attention moments' inner products (projected covariances, the
/// moments of pairs of combinations and their maps to the output coordinates): `F32` (the
/// default) runs twice the lanes per instruction and holds half the memory, at about `6e-8`
/// relative rounding per product instead of `1e-16` (similarities within about `1e-6`), its
/// rows held near unit size so that no product leaves its range; the sums over pairs and
/// everything else stay `f64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F64,
    #[default]
    F32,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Precision::F64 => "f64",
            Precision::F32 => "f32",
        })
    }
}

/// What a layer step knows of positions. `independent`: no layer before it mixes positions,
/// so its input covariances across positions are exactly zero. `local`: no layer after it
/// mixes positions, so only its output's same-position blocks `Σ[t, ·, t, ·]` are ever read
/// (by position-wise layers and the traces); the others are not computed and are left zero.
#[derive(Clone, Copy, Default)]
pub struct Positions {
    pub independent: bool,
    pub local: bool,
}

impl Positions {
    /// What holds for both of two layers (a cross step).
    pub fn and(self, other: Positions) -> Positions {
        Positions {
            independent: self.independent && other.independent,
            local: self.local && other.local,
        }
    }
}

/// `μ[t, i] = Σ[t, i, t, 0] / √Σ[t, 0, t, 0]` of a self moment, `(n, w)` (the unit slot is 1
/// at every position; read from the same-position block, which every step computes).
pub fn mean(s: &Tensor) -> Tensor {
    let (n, w) = (s.shape[0], s.shape[1]);
    let at = |t: usize, i: usize| s.data[((t * w + i) * n + t) * w];
    Tensor::new(
        vec![n, w],
        (0..n * w)
            .map(|k| at(k / w, k % w) / at(k / w, 0).sqrt())
            .collect(),
    )
}

/// `Σ − μ_x ⊗ μ_y`.
pub fn centred(s: &Tensor, mx: &Tensor, my: &Tensor) -> Tensor {
    let (nx, ny) = (mx.data.len(), my.data.len());
    Tensor::new(
        s.shape.clone(),
        (0..nx * ny)
            .map(|k| s.data[k] - mx.data[k / ny] * my.data[k % ny])
            .collect(),
    )
}

/// `S[t, :, t', :]` of `C + μ_x μ_yᵀ` as a `(w_x × w_y)` matrix.
pub fn second(c: &Tensor, mx: &Tensor, my: &Tensor, t: usize, t2: usize) -> Mat<f64> {
    let (n, wx, wy) = (c.shape[0], c.shape[1], c.shape[3]);
    Mat::from_fn(wx, wy, |i, j| {
        c.data[((t * wx + i) * n + t2) * wy + j] + mx.data[t * wx + i] * my.data[t2 * wy + j]
    })
}

/// Copy the `(w × w')` block `y` into `out[t, ·, t', ·]`.
pub fn put_block(out: &mut Tensor, t: usize, t2: usize, y: &Mat<f64>) {
    let (n, wl, wr) = (out.shape[0], out.shape[1], out.shape[3]);
    for o in 0..wl {
        let row = ((t * wl + o) * n + t2) * wr;
        for (o2, x) in out.data[row..row + wr].iter_mut().enumerate() {
            *x = y[(o, o2)];
        }
    }
}

/// `m` with its blocks across positions set to zero.
pub fn same_position(mut m: Tensor) -> Tensor {
    let (n, w, w2) = (m.shape[0], m.shape[1], m.shape[3]);
    for (k, x) in m.data.iter_mut().enumerate() {
        if k / (w * n * w2) != k / w2 % n {
            *x = 0.0;
        }
    }
    m
}

/// `Σ_t Σ[t, o, t, o]` for each data output `o ≥ 1` (per-output inner products; the engine
/// reads them through `layers::linear::moment::readout`).
#[cfg(test)]
pub(crate) fn data_diagonal(s: &Tensor) -> Vec<f64> {
    let (n, w) = (s.shape[0], s.shape[1]);
    (1..w)
        .map(|o| (0..n).map(|t| s.data[((t * w + o) * n + t) * w + o]).sum())
        .collect()
}

/// `(k_l, k_r, moment)` of every term pair of a step (legs of each term, and its Wick sum).
pub type Parts = Vec<(usize, usize, Tensor)>;

/// `Σ_{parts} e^{(k_l s_l + k_r s_r)/2 − shift} · moment`, and the shift (default: the largest
/// exponent).
pub fn combine(parts: Parts, scales: (f64, f64), shift: Option<f64>) -> (Tensor, f64) {
    let exponent = |kl: usize, kr: usize| 0.5 * (kl as f64 * scales.0 + kr as f64 * scales.1);
    let top = parts
        .iter()
        .map(|(kl, kr, _)| exponent(*kl, *kr))
        .fold(f64::NEG_INFINITY, f64::max);
    let shift = shift.unwrap_or(top);
    let mut total: Option<Tensor> = None;
    for (kl, kr, mut v) in parts {
        let f = (exponent(kl, kr) - shift).exp();
        v.data.iter_mut().for_each(|x| *x *= f);
        match &mut total {
            None => total = Some(v),
            Some(t) => t.data.iter_mut().zip(&v.data).for_each(|(a, b)| *a += b),
        }
    }
    (total.expect("every layer has a term"), shift)
}

/// `max |x − y|`, infinite where a difference is not a number (`f64::max` would skip it).
#[cfg(test)]
pub(crate) fn max_diff(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).fold(0.0f64, |a, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            a.max(d)
        }
    })
}
