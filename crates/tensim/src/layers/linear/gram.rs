//! The linear node's Gram updates of the tensor-similarity recursion (MATH.md §3.3): a linear
//! layer acts on one model's side of `G` only.

use super::PaddedLinear;
use crate::gram::Gram;
use crate::linalg::{mul, mul_t, Par};

impl PaddedLinear {
    /// Gram update on the left (model a) side: `G ← Ŵ_a G`.
    pub fn gram_left(&self, g: &Gram, par: Par) -> Gram {
        g.map(|m| match m {
            None => self.w.clone(),
            Some(m) => mul(self.w.as_ref(), m, par),
        })
    }

    /// Gram update on the right (model b) side: `G ← G Ŵ_bᵀ`.
    pub fn gram_right(&self, g: &Gram, par: Par) -> Gram {
        g.map(|m| match m {
            None => self.w.transpose().to_owned(),
            Some(m) => mul_t(m, self.w.as_ref(), par),
        })
    }
}
