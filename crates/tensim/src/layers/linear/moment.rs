//! The Gaussian moment of two linear layers' outputs (MATH.md §2.1): one leg each, so the
//! Wick sum is the second moment itself, `Σ'[t, ·, t', ·] = Ŵ S[t, t'] Ŵ'ᵀ` with
//! `S = C + μ_x μ_yᵀ`.

use crate::einsum::Tensor;
use crate::layers::PaddedLinear;
use crate::linalg::{mul, mul_t, Par};
use crate::moment::second;
use crate::wick::Moments;

/// `Σ'[t, o, t', o']` of the left node against the right one; `local`: blocks `t = t'` only
/// (the others stay zero).
pub fn moment(l: &PaddedLinear, r: &PaddedLinear, m: &Moments<'_>, local: bool) -> Tensor {
    let (n, wl, wr) = (m.mu[0].shape[0], l.w.nrows(), r.w.nrows());
    let mut out = Tensor::zeros(vec![n, wl, n, wr]);
    for t in 0..n {
        for t2 in (0..n).filter(|&t2| !local || t2 == t) {
            let s = second(m.cov[1], m.mu[0], m.mu[1], t, t2);
            let y = mul_t(
                mul(l.w.as_ref(), s.as_ref(), Par::Seq).as_ref(),
                r.w.as_ref(),
                Par::Seq,
            );
            for o in 0..wl {
                for o2 in 0..wr {
                    out.data[((t * wl + o) * n + t2) * wr + o2] = y[(o, o2)];
                }
            }
        }
    }
    out
}
