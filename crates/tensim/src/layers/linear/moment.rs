//! The Gaussian moment of two linear layers' outputs (MATH.md §2.1): one leg each, so the
//! Wick sum is the second moment itself, `Σ'[t, ·, t', ·] = Ŵ S[t, t'] Ŵ'ᵀ` with
//! `S = C + μ_x μ_yᵀ`. Two closed forms keep input- and output-sized moments (a vocabulary)
//! out of memory: the first step from the Gaussian input ([`from_input`]) and the readout of
//! a final linear layer ([`readout`]).

use crate::distribution::PositionLaw;
use crate::einsum::Tensor;
use crate::layers::{Linear, PaddedLinear};
use crate::linalg::{mul, mul_t, Mat, MatRef, Par};
use crate::moment::{put_block, second};
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
            put_block(&mut out, t, t2, &y);
        }
    }
    out
}

/// `[1, b]`: the padded bias column `ŵ₀` of a layer.
fn bias_column(l: &Linear) -> Vec<f64> {
    std::iter::once(1.0)
        .chain((0..l.out_dim()).map(|o| l.bias.as_ref().map_or(0.0, |b| b[o])))
        .collect()
}

/// [`moment`] on the Gaussian input `Σ⁰[t, ·, t', ·] = e₀e₀ᵀ + δ_tt' diag(0, I)` of `n`
/// positions, without forming it: `ŵ₀ŵ'₀ᵀ + δ_tt' Ŵ_d Ŵ'_dᵀ`, `ŵ₀ = [1, b]` the bias column and
/// `Ŵ_d Ŵ'_dᵀ = diag(0, W W'ᵀ)` (read from the weights, not padded copies). With `local`
/// (blocks `t = t'` alone) it is `δ_tt' ŴŴ'ᵀ`, also the Gram of the tensor metric after a
/// first linear layer. With a law of the positions, `(ŴÂ_t)(Ŵ'Â_t')ᵀ` ([`PositionLaw::moment`]).
pub fn from_input(
    l: &Linear,
    r: &Linear,
    n: usize,
    local: bool,
    law: Option<&PositionLaw>,
) -> Tensor {
    if let Some(law) = law {
        return law.moment(Some(l), Some(r), local);
    }
    from_gram(l, r, &input_gram(l, r), n, local)
}

/// `W W'ᵀ`, the product [`from_input`] reads the weights through.
pub fn input_gram(l: &Linear, r: &Linear) -> Mat<f64> {
    mul_t(l.weight.as_ref(), r.weight.as_ref(), Par::Seq)
}

/// [`from_input`] (without a law) given its product `W W'ᵀ` (`weights`).
pub fn from_gram(l: &Linear, r: &Linear, weights: &Mat<f64>, n: usize, local: bool) -> Tensor {
    let (wl, wr) = (l.out_dim() + 1, r.out_dim() + 1);
    let (bl, br) = (bias_column(l), bias_column(r));
    let means = Mat::from_fn(wl, wr, |o, o2| bl[o] * br[o2]);
    let same = Mat::from_fn(wl, wr, |o, o2| match (o, o2) {
        (0, _) | (_, 0) => means[(o, o2)],
        _ => weights[(o - 1, o2 - 1)] + means[(o, o2)],
    });
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

/// The data diagonal `Σ_t Σ'[t, o, t, o]` (`o ≥ 1`) of [`moment`] through final linear layers
/// (`None`: the identity), without forming the output moment: with `M = Σ_t Σ[t, ·, t, ·]`,
/// `D[o] = ŵ_o M ŵ'_oᵀ`, `ŵ_o = [b_o, W_o]`: the rows of `[b | W] M` dotted with those of
/// `[b' | W']`, where `[b | W] M = b M[0, ·] + W M[1.., ·]`.
pub fn readout(s: &Tensor, l: Option<&Linear>, r: Option<&Linear>) -> Vec<f64> {
    let (n, wl, wr) = (s.shape[0], s.shape[1], s.shape[3]);
    let m = Mat::from_fn(wl, wr, |i, j| {
        (0..n)
            .map(|t| s.data[((t * wl + i) * n + t) * wr + j])
            .sum()
    });
    // Rows o ≥ 1 of `Ŵ M` (the identity: M's own rows).
    let lm = match l {
        Some(l) => {
            let mut y = mul(l.weight.as_ref(), m.as_ref().subrows(1, wl - 1), Par::Seq);
            let b = bias_column(l);
            for j in 0..wr {
                for o in 0..y.nrows() {
                    y[(o, j)] += b[o + 1] * m[(0, j)];
                }
            }
            y
        }
        None => m.as_ref().subrows(1, wl - 1).to_owned(),
    };
    let Some(r) = r else {
        return (0..lm.nrows()).map(|o| lm[(o, o + 1)]).collect();
    };
    // Column by column (both column-major): D += ŷ_j ∘ ŵ'_j.
    fn col(m: MatRef<'_, f64>, j: usize) -> &[f64] {
        m.col(j).try_as_col_major().expect("contiguous").as_slice()
    }
    let mut d: Vec<f64> = match &r.bias {
        Some(b) => (col(lm.as_ref(), 0).iter().zip(b))
            .map(|(y, b)| y * b)
            .collect(),
        None => vec![0.0; lm.nrows()],
    };
    for j in 1..wr {
        let (y, w) = (col(lm.as_ref(), j), col(r.weight.as_ref(), j - 1));
        (d.iter_mut().zip(y).zip(w)).for_each(|((d, y), w)| *d += y * w);
    }
    d
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::layers::Linear;
    use crate::moment::{data_diagonal, max_diff, Moment};

    fn node(rng: &mut rand::rngs::StdRng, out: usize, inp: usize) -> Linear {
        Linear {
            weight: Mat::from_fn(out, inp, |_, _| rng.random_range(-1.0..1.0)),
            bias: Some((0..out).map(|_| rng.random_range(-0.5..0.5)).collect()),
        }
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
        let (pl, pr) = (l.padded(), r.padded());
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
            let want = moment(&pl, &pr, &gaussian, local);
            let err = max_diff(&from_input(&l, &r, n, local, None).data, &want.data);
            assert!(err < 1e-12, "local {local}: {err}");
        }
        let gram = Moments {
            mu: [&zeros, &zeros],
            cov: [&identity, &identity, &identity],
        };
        let want = moment(&pl, &pr, &gram, true);
        assert!(max_diff(&from_input(&l, &r, n, true, None).data, &want.data) < 1e-12);
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
        let want = data_diagonal(&moment(&l.padded(), &r.padded(), &m, false));
        let got = readout(&s, Some(&l), Some(&r));
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
        let want = data_diagonal(&moment(&l.padded(), &id.padded(), &m, false));
        assert!(max_diff(&readout(&s, Some(&l), None), &want) < 1e-12);
        let s = random(&mut rng, vec![n, 4, n, 4]);
        assert!(max_diff(&readout(&s, None, None), &data_diagonal(&s)) < 1e-12);
    }
}
