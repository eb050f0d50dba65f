//! The cross Gram matrix `G_ab` of the tensor-similarity recursion (MATH.md §3.3), over the padded
//! output spaces of the layers processed so far: `G[o,o'] = Σ_I (P_W U_a)[o;I] (P_W U_b)[o';I]`.
//!
//! The bilinear update is homogeneous of degree 2 in `G`, so deep stacks overflow or underflow
//! f64. `Gram` stores `G = e^s · g` with `max|g| = 1` after every update (§3.4).

use crate::linalg::{Mat, MatRef};

/// `G = e^{log_scale} · g`; `g = None` stands for the identity of the padded input space.
#[derive(Clone, Debug)]
pub struct Gram {
    g: Option<Mat<f64>>,
    log_scale: f64,
}

impl Gram {
    /// `G = I` on the padded input space (unit slot weight 1).
    pub fn identity() -> Gram {
        Gram {
            g: None,
            log_scale: 0.0,
        }
    }

    /// The scaled matrix `g` (`None` for the identity).
    pub fn scaled(&self) -> Option<MatRef<'_, f64>> {
        self.g.as_ref().map(|m| m.as_ref())
    }

    pub fn log_scale(&self) -> f64 {
        self.log_scale
    }

    /// A linear (degree-1) update `g ← f(g)`: the true value is `e^s·f(g)`; renormalised, as
    /// weights far from 1 would otherwise push the next bilinear update out of range.
    pub fn map(&self, f: impl FnOnce(Option<MatRef<'_, f64>>) -> Mat<f64>) -> Gram {
        Gram::normalised(f(self.scaled()), self.log_scale)
    }

    /// Result of a degree-2 update computed from `g`: the true value is `e^{2s}·next`;
    /// renormalise so that `max|g| = 1`.
    pub fn from_quadratic(next: Mat<f64>, prev_log_scale: f64) -> Gram {
        Gram::normalised(next, 2.0 * prev_log_scale)
    }

    /// `e^{log_scale}·next` with `max|g| = 1` (unchanged where `next` is zero or not finite).
    fn normalised(next: Mat<f64>, mut log_scale: f64) -> Gram {
        let m = crate::linalg::max_abs(next.as_ref());
        let g = if m > 0.0 && m.is_finite() {
            log_scale += m.ln();
            Mat::from_fn(next.nrows(), next.ncols(), |i, j| next[(i, j)] / m)
        } else {
            next
        };
        Gram {
            g: Some(g),
            log_scale,
        }
    }

    /// Diagonal over the data output coordinates `o ≥ 1`, in units of `e^s`.
    pub fn scaled_data_diagonal(&self) -> Vec<f64> {
        match &self.g {
            Some(g) => (1..g.nrows().min(g.ncols())).map(|o| g[(o, o)]).collect(),
            None => Vec::new(),
        }
    }
}
