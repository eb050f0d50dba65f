//! The Gaussian moment of two linear layers' outputs (MATH.md §2.1): one leg each, so the
//! Wick sum is the second moment itself, `Σ'[t, ·, t', ·] = Ŵ S[t, t'] Ŵ'ᵀ` with
//! `S = C + μ_x μ_yᵀ`. Two closed forms keep input- and output-sized moments (a vocabulary)
//! out of memory: the first step from the Gaussian input ([`from_input`]) and the readout of
//! a final linear layer ([`readout`]).

use crate::einsum::Tensor;
use crate::layers::PaddedLinear;
use crate::linalg::{mul, mul_t, Mat, Par};
use crate::moment::second;
use crate::wick::Moments;

/// Copy the `(w × w')` block `y` into `out[t, ·, t', ·]`.
fn put_block(out: &mut Tensor, t: usize, t2: usize, y: &Mat<f64>) {
    let (n, wl, wr) = (out.shape[0], out.shape[1], out.shape[3]);
    for o in 0..wl {
        let row = ((t * wl + o) * n + t2) * wr;
        for (o2, x) in out.data[row..row + wr].iter_mut().enumerate() {
            *x = y[(o, o2)];
        }
    }
}

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
            put_block(&mut out, t, t2, &y);
        }
    }
    out
}

/// [`moment`] on the Gaussian input `Σ⁰[t, ·, t', ·] = e₀e₀ᵀ + δ_tt' diag(0, I)` of `n`
/// positions, without forming it: `ŵ₀ŵ'₀ᵀ + δ_tt' Ŵ_d Ŵ'_dᵀ`, `ŵ₀` the bias column and `Ŵ_d`
/// the weight columns. With `local` (blocks `t = t'` alone) it is `δ_tt' ŴŴ'ᵀ`, which is also
/// the Gram of the tensor metric after a first linear layer.
pub fn from_input(l: &PaddedLinear, r: &PaddedLinear, n: usize, local: bool) -> Tensor {
    let (wl, wr, d) = (l.w.nrows(), r.w.nrows(), l.w.ncols() - 1);
    let weights = mul_t(
        l.w.as_ref().subcols(1, d),
        r.w.as_ref().subcols(1, d),
        Par::Seq,
    );
    let means = Mat::from_fn(wl, wr, |o, o2| l.w[(o, 0)] * r.w[(o2, 0)]);
    let same = Mat::from_fn(wl, wr, |o, o2| weights[(o, o2)] + means[(o, o2)]);
    let mut out = Tensor::zeros(vec![n, wl, n, wr]);
    for t in 0..n {
        put_block(&mut out, t, t, &same);
        if !local {
            for t2 in (0..n).filter(|&t2| t2 != t) {
                put_block(&mut out, t, t2, &means);
            }
        }
    }
    out
}

/// The data diagonal `Σ_t Σ'[t, o, t, o]` (`o ≥ 1`) of [`moment`] through final linear nodes
/// (`None`: the identity), without forming the output moment: with `M = Σ_t Σ[t, ·, t, ·]`,
/// `D[o] = ŵ_o M ŵ'_oᵀ`, the rows of `Ŵ M` dotted with those of `Ŵ'`.
pub fn readout(s: &Tensor, l: Option<&Mat<f64>>, r: Option<&Mat<f64>>) -> Vec<f64> {
    let (n, wl, wr) = (s.shape[0], s.shape[1], s.shape[3]);
    let m = Mat::from_fn(wl, wr, |i, j| {
        (0..n)
            .map(|t| s.data[((t * wl + i) * n + t) * wr + j])
            .sum()
    });
    let lm = match l {
        Some(l) => mul(l.as_ref(), m.as_ref(), Par::Seq),
        None => m,
    };
    (1..lm.nrows())
        .map(|o| match r {
            Some(r) => (0..wr).map(|j| lm[(o, j)] * r[(o, j)]).sum(),
            None => lm[(o, o)],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::layers::Linear;
    use crate::moment::{data_diagonal, max_diff, Moment};

    fn node(rng: &mut rand::rngs::StdRng, out: usize, inp: usize) -> PaddedLinear {
        Linear {
            weight: Mat::from_fn(out, inp, |_, _| rng.random_range(-1.0..1.0)),
            bias: Some((0..out).map(|_| rng.random_range(-0.5..0.5)).collect()),
        }
        .padded()
    }

    fn random(rng: &mut rand::rngs::StdRng, shape: Vec<usize>) -> Tensor {
        let len = shape.iter().product();
        Tensor::new(
            shape,
            (0..len).map(|_| rng.random_range(-1.0..1.0)).collect(),
        )
    }

    /// The closed-form first step equals the general update on the Gaussian input's moments
    /// `Σ⁰` (means `e₀`, covariance `δ_tt' diag(0, I)`), and with `local` the general update on
    /// the identity Gram (zero means, covariance `δ_tt' I`).
    #[test]
    fn the_first_step_equals_the_update_of_the_input_moments() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let (n, d) = (3, 5);
        let (l, r) = (node(&mut rng, 4, d), node(&mut rng, 2, d));
        let s0 = Moment::initial(n, d).m;
        let mu = crate::moment::mean(&s0);
        let c = crate::moment::centred(&s0, &mu, &mu);
        let zeros = Tensor::zeros(vec![n, d + 1]);
        let mut identity = Tensor::zeros(vec![n, d + 1, n, d + 1]);
        (0..n * (d + 1)).for_each(|k| identity.data[k * n * (d + 1) + k] = 1.0);
        for local in [false, true] {
            let gaussian = Moments {
                mu: [&mu, &mu],
                cov: [&c, &c, &c],
            };
            let want = moment(&l, &r, &gaussian, local);
            let err = max_diff(&from_input(&l, &r, n, local).data, &want.data);
            assert!(err < 1e-12, "local {local}: {err}");
        }
        let gram = Moments {
            mu: [&zeros, &zeros],
            cov: [&identity, &identity, &identity],
        };
        let want = moment(&l, &r, &gram, true);
        assert!(max_diff(&from_input(&l, &r, n, true).data, &want.data) < 1e-12);
    }

    /// The readout equals the data diagonal of the general update's output moment, through two
    /// nodes, through one and the identity, and through none.
    #[test]
    fn the_readout_equals_the_diagonal_of_the_output_moment() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (n, wl, wr) = (3, 5, 4);
        let (l, r) = (node(&mut rng, 3, wl - 1), node(&mut rng, 3, wr - 1));
        let s = random(&mut rng, vec![n, wl, n, wr]);
        let zl = Tensor::zeros(vec![n, wl]);
        let zr = Tensor::zeros(vec![n, wr]);
        let m = Moments {
            mu: [&zl, &zr],
            cov: [&s, &s, &s],
        };
        let want = data_diagonal(&moment(&l, &r, &m, false));
        let got = readout(&s, Some(&l.w), Some(&r.w));
        assert!(max_diff(&got, &want) < 1e-12, "{got:?} vs {want:?}");
        // The right side as it is (its width that of the left head's output).
        let s = random(&mut rng, vec![n, wl, n, 4]);
        let (z, id) = (
            Tensor::zeros(vec![n, 4]),
            Linear {
                weight: Mat::identity(3, 3),
                bias: None,
            },
        );
        let m = Moments {
            mu: [&zl, &z],
            cov: [&s, &s, &s],
        };
        let want = data_diagonal(&moment(&l, &id.padded(), &m, false));
        assert!(max_diff(&readout(&s, Some(&l.w), None), &want) < 1e-12);
        let s = random(&mut rng, vec![n, 4, n, 4]);
        assert!(max_diff(&readout(&s, None, None), &data_diagonal(&s)) < 1e-12);
    }
}
