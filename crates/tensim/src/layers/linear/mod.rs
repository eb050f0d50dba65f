//! Linear layer `y = W x + b` (PyTorch `nn.Linear` layout, `W ∈ ℝ^{m×d}`).
//!
//! Padded form (MATH.md §2.1): `ŷ = Ŵ x̂` with `Ŵ = [[1, 0ᵀ], [b, W]] ∈ ℝ^{(m+1)×(d+1)}`;
//! one input leg. `gram.rs`: its Gram updates (tensor similarity, one side at a time);
//! `moment.rs`: the Gaussian moment update of a pair.

pub mod gram;
pub mod moment;

use crate::linalg::{add_bias, mul_t, Mat, MatRef, Par};

/// A linear (affine) layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `W`, shape `(out, in)`.
    pub weight: Mat<f64>,
    /// `b`, length `out`.
    pub bias: Option<Vec<f64>>,
}

impl Linear {
    pub fn in_dim(&self) -> usize {
        self.weight.ncols()
    }

    pub fn out_dim(&self) -> usize {
        self.weight.nrows()
    }

    /// Batched forward pass, rows are inputs: `Y = X Wᵀ + 1 bᵀ`.
    pub fn forward(&self, x: MatRef<'_, f64>, par: Par) -> Mat<f64> {
        add_bias(mul_t(x, self.weight.as_ref(), par), &self.bias)
    }

    /// `Ŵ = [[1, 0ᵀ], [b, W]]`.
    pub fn padded(&self) -> PaddedLinear {
        let (m, d) = (self.out_dim(), self.in_dim());
        let w = Mat::from_fn(m + 1, d + 1, |i, j| match (i, j) {
            (0, 0) => 1.0,
            (0, _) => 0.0,
            (_, 0) => self.bias.as_ref().map_or(0.0, |b| b[i - 1]),
            _ => self.weight[(i - 1, j - 1)],
        });
        PaddedLinear { w }
    }
}

/// The padded node `Ŵ` of a linear layer.
#[derive(Clone, Debug)]
pub struct PaddedLinear {
    pub w: Mat<f64>,
}

impl PaddedLinear {
    /// Tensor-network evaluation on padded inputs (rows): `X̂ Ŵᵀ`.
    pub fn apply(&self, x: MatRef<'_, f64>, par: Par) -> Mat<f64> {
        mul_t(x, self.w.as_ref(), par)
    }
}

impl PaddedLinear {
    /// The node as a one-leg term `Ŵ[o, i]` (position `t` = the leg's).
    pub fn term(&self) -> crate::wick::Term {
        let (t, o, i) = (0, 1, 2);
        crate::wick::Term {
            factors: vec![(vec![o, i], crate::wick::matrix(&self.w))],
            out: (t, o),
            legs: vec![(t, i)],
            n_labels: 3,
        }
    }
}
