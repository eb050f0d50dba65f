//! Per-position input statistics: position `t` of a sequence reads `x_t = μ_t + S_t z_t`,
//! `z_t ~ N(0, I)` independent across positions. No shared layer can fold a different map into
//! each position, so a model carries the law ([`Model::with_law`](crate::Model::with_law)) and
//! the engines start from it: the padded input's second moment
//! `E[x̂_t x̂_t'ᵀ] = m_t m_t'ᵀ + δ_tt' diag(0, S_t S_tᵀ)` (`m_t = [1, μ_t]`), in closed form through
//! a first linear layer, and the tensor metric's input Gram `δ_tt' Â_t Â_tᵀ` with
//! `Â_t = [[1, 0], [μ_t, S_t]]`.

use crate::einsum::Tensor;
use crate::layers::Linear;
use crate::linalg::{mul, mul_t, Mat, Par};
use crate::moment::put_block;

/// `N(μ_t, S_t S_tᵀ)` at each position `t`, positions independent.
#[derive(Clone, Debug, PartialEq)]
pub struct PositionLaw {
    mean: Vec<Vec<f64>>,
    root: Vec<Mat<f64>>,
}

impl PositionLaw {
    /// From each position's mean `μ_t` and root `S_t` (`dim × r_t`).
    pub fn new(mean: Vec<Vec<f64>>, root: Vec<Mat<f64>>) -> PositionLaw {
        assert!(mean.len() == root.len() && !mean.is_empty());
        assert!(root.iter().zip(&mean).all(|(s, m)| s.nrows() == m.len()));
        PositionLaw { mean, root }
    }

    pub fn n_ctx(&self) -> usize {
        self.mean.len()
    }

    pub fn dim(&self) -> usize {
        self.mean[0].len()
    }

    /// Every number of the law: per position `r_t`, `μ_t`, `S_t` (column-major).
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.mean.iter().zip(&self.root).flat_map(|(mu, s)| {
            let root = (0..s.ncols()).flat_map(move |j| (0..s.nrows()).map(move |i| s[(i, j)]));
            std::iter::once(s.ncols() as f64)
                .chain(mu.iter().copied())
                .chain(root)
        })
    }

    /// `Ŵ Â_t = [[1, 0], [b + Wμ_t, W S_t]]` of a linear layer (`None`: the identity, giving
    /// `Â_t`): column 0 is the padded mean `Ŵ m_t`.
    pub fn through(&self, l: Option<&Linear>, t: usize) -> Mat<f64> {
        let (mu, s) = (&self.mean[t], &self.root[t]);
        let (ws, wmu) = match l {
            None => (s.clone(), mu.clone()),
            Some(l) => (
                mul(l.weight.as_ref(), s.as_ref(), Par::Seq),
                (0..l.out_dim())
                    .map(|i| {
                        let x: f64 = (0..l.in_dim()).map(|j| l.weight[(i, j)] * mu[j]).sum();
                        x + l.bias.as_ref().map_or(0.0, |b| b[i])
                    })
                    .collect(),
            ),
        };
        Mat::from_fn(ws.nrows() + 1, ws.ncols() + 1, |i, j| match (i, j) {
            (0, 0) => 1.0,
            (0, _) => 0.0,
            (_, 0) => wmu[i - 1],
            _ => ws[(i - 1, j - 1)],
        })
    }

    /// `Σ'[t, ·, t', ·] = (Ŵ Â_t)(Ŵ' Â_t)ᵀ` for `t = t'`, `(Ŵ m_t)(Ŵ' m_t')ᵀ` otherwise: the padded
    /// second moment of `(Ŵ x̂, Ŵ' x̂)` (identities: of the input itself). `local`: the
    /// same-position blocks alone (the others zero), also the tensor metric's Gram.
    pub fn moment(&self, l: Option<&Linear>, r: Option<&Linear>, local: bool) -> Tensor {
        let n = self.n_ctx();
        let (x, y): (Vec<Mat<f64>>, Vec<Mat<f64>>) = (0..n)
            .map(|t| (self.through(l, t), self.through(r, t)))
            .unzip();
        let (wl, wr) = (x[0].nrows(), y[0].nrows());
        let mut out = Tensor::zeros(vec![n, wl, n, wr]);
        for t in 0..n {
            put_block(
                &mut out,
                t,
                t,
                &mul_t(x[t].as_ref(), y[t].as_ref(), Par::Seq),
            );
            for t2 in (0..n).filter(|&t2| !local && t2 != t) {
                let means = Mat::from_fn(wl, wr, |o, o2| x[t][(o, 0)] * y[t2][(o2, 0)]);
                put_block(&mut out, t, t2, &means);
            }
        }
        out
    }
}
