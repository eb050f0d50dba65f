//! Magnitudes, so that products of many layers neither overflow nor underflow.
//!
//! A matrix's scale is its RMS row norm `s(M) = ‖M‖_F / √rows` (the RMS entry of `Mx` is about
//! `s(M)` times that of `x`); a vector's size is its RMS entry. The estimated log-size of each
//! layer's output, for inputs of log-size `μ` (natural logs):
//!
//! ```text
//! linear     μ' = max(ln s(W) + μ, ln |b|)
//! bilinear   μ' = max(ln s(D) + ℓ_L + ℓ_R, ln |b_D|),    ℓ_X = max(ln s(X) + μ, ln |b_X|)
//! attention  μ' = ln s(O) + ln s(V) + μ + ℓ_Q1 + ℓ_K1 + ℓ_Q2 + ℓ_K2
//! residual   μ' ← max(ln c + μ', ln r + μ)                  (y = r·x + c·f(x))
//! ```
//!
//! A homogeneous model (no biases, no residuals) with every matrix divided by its scale computes
//! the same function times a positive constant, which no scale-invariant metric sees; the metrics
//! compute on that copy where the original's matrices or intermediates leave `[1e-8, 1e8]`, and
//! on inputs divided by their RMS where those raised to the models' degree would. A model that
//! is not homogeneous is computed as it is; a zero norm of one whose estimated size is below
//! `1e-50` is reported as underflow, not as a zero model.

use std::borrow::Cow;

use crate::arch::Residual;
use crate::error::Error;
use crate::layers::Layer;
use crate::linalg::Mat;
use crate::metrics::{Inputs, Kind};
use crate::model::Model;

/// `ln 1e8`: the widest log-size left as it is.
const LIMIT: f64 = 18.420_680_743_952_367;
/// `ln 1e-50`: below it, a norm computed as zero may be underflow.
const UNDERFLOW: f64 = -115.129_254_649_702_28;

/// `ln √(Σ v_k² / count)` of `count` values, without overflow (−∞ for zeros).
fn ln_rms(count: usize, at: impl Fn(usize) -> f64) -> f64 {
    let max = (0..count).fold(0.0f64, |m, k| m.max(at(k).abs()));
    if max == 0.0 {
        return f64::NEG_INFINITY;
    }
    let ss: f64 = (0..count).map(|k| (at(k) / max).powi(2)).sum();
    max.ln() + 0.5 * (ss / count as f64).ln()
}

/// `ln s(M)`: the log RMS row norm.
fn ln_scale(m: &Mat<f64>) -> f64 {
    let rows = m.nrows().max(1);
    ln_rms(m.nrows() * m.ncols(), |k| m[(k % rows, k / rows)]) + 0.5 * (m.ncols() as f64).ln()
}

/// Log RMS entry of an optional vector (−∞ for none).
fn ln_size(v: &Option<Vec<f64>>) -> f64 {
    v.as_ref()
        .map_or(f64::NEG_INFINITY, |v| ln_rms(v.len(), |k| v[k]))
}

/// The estimated log-size of each layer's output for inputs of log-size `mu` (module docs).
pub fn magnitudes(m: &Model, mut mu: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(m.layers().len());
    for layer in m.layers() {
        let through = |w: &Mat<f64>, b: &Option<Vec<f64>>| (ln_scale(w) + mu).max(ln_size(b));
        let (active, residual) = match layer {
            Layer::Linear(l) => (through(&l.weight, &l.bias), None),
            Layer::Bilinear(b) => {
                let d = b.down.as_ref().map_or(0.0, ln_scale);
                let pair = through(&b.left, &b.left_bias) + through(&b.right, &b.right_bias);
                ((d + pair).max(ln_size(&b.down_bias)), b.residual)
            }
            Layer::Attention(a) => {
                let scores: f64 = a.matrices()[..4]
                    .iter()
                    .zip(a.biases())
                    .map(|((_, w), (_, b))| through(w, b))
                    .sum();
                (ln_scale(&a.o) + ln_scale(&a.v) + mu + scores, a.residual)
            }
        };
        let (c, r) = Residual::weights(residual);
        mu = (c.abs().ln() + active).max(r.abs().ln() + mu);
        out.push(mu);
    }
    out
}

/// No biases (or only zero ones) and no residual path: `f(λ-scaled matrices)` is `f` times a
/// positive constant.
pub fn homogeneous(m: &Model) -> bool {
    let zero = |b: &Option<Vec<f64>>| b.as_ref().is_none_or(|v| v.iter().all(|&x| x == 0.0));
    let direct = |r: Option<Residual>| Residual::weights(r).1 == 0.0;
    m.layers().iter().all(|l| match l {
        Layer::Linear(l) => zero(&l.bias),
        Layer::Bilinear(b) => {
            direct(b.residual)
                && [&b.left_bias, &b.right_bias, &b.down_bias]
                    .into_iter()
                    .all(zero)
        }
        Layer::Attention(a) => direct(a.residual) && a.biases().into_iter().all(|(_, b)| zero(b)),
    })
}

/// The matrices of a layer, mutably.
fn matrices_mut(layer: &mut Layer) -> Vec<&mut Mat<f64>> {
    match layer {
        Layer::Linear(l) => vec![&mut l.weight],
        Layer::Bilinear(b) => [&mut b.left, &mut b.right]
            .into_iter()
            .chain(b.down.as_mut())
            .collect(),
        Layer::Attention(a) => {
            let a = &mut **a;
            vec![
                &mut a.q1, &mut a.k1, &mut a.q2, &mut a.k2, &mut a.v, &mut a.o,
            ]
        }
    }
}

/// `x · e^(−ln_s)` in two factors, so that neither overflows.
fn divide(x: &mut Mat<f64>, ln_s: f64) {
    let f = (-0.5 * ln_s).exp();
    for j in 0..x.ncols() {
        for i in 0..x.nrows() {
            x[(i, j)] = x[(i, j)] * f * f;
        }
    }
}

/// `m`, or (homogeneous and a matrix or intermediate beyond `e^±LIMIT`) `m` with every nonzero
/// matrix divided by its scale: the same function up to a positive factor.
pub fn rescaled(m: &Model) -> Cow<'_, Model> {
    let beyond = |x: f64| x.is_finite() && x.abs() > LIMIT;
    if !homogeneous(m) {
        return Cow::Borrowed(m);
    }
    let extreme = magnitudes(m, 0.0).into_iter().any(beyond)
        || m.layers().iter().any(|l| match l {
            Layer::Linear(l) => beyond(ln_scale(&l.weight)),
            Layer::Bilinear(b) => [&b.left, &b.right]
                .into_iter()
                .chain(b.down.as_ref())
                .any(|w| beyond(ln_scale(w))),
            Layer::Attention(a) => a.matrices().into_iter().any(|(_, w)| beyond(ln_scale(w))),
        });
    if !extreme {
        return Cow::Borrowed(m);
    }
    let mut layers = m.layers().to_vec();
    for layer in &mut layers {
        for w in matrices_mut(layer) {
            let s = ln_scale(w);
            if s.is_finite() {
                divide(w, s);
            }
        }
    }
    Cow::Owned(m.with_layers(layers).expect("a rescaled valid model"))
}

/// `x`, or (every model homogeneous and `|ln RMS(x)| · degree` beyond `LIMIT`) `x` divided by its
/// RMS entry: each model's outputs change by a positive factor.
pub fn rescaled_inputs<'a>(x: &'a Inputs, models: &[&Model]) -> Cow<'a, Inputs> {
    let rows = x.x.nrows().max(1);
    let ln = ln_rms(x.x.nrows() * x.x.ncols(), |k| x.x[(k % rows, k / rows)]);
    let degree = models
        .iter()
        .map(|m| m.degree().map_or(f64::INFINITY, |d| d as f64))
        .fold(1.0, f64::max);
    if !ln.is_finite() || ln.abs() * degree <= LIMIT || !models.iter().all(|m| homogeneous(m)) {
        return Cow::Borrowed(x);
    }
    let mut x = x.clone();
    divide(&mut x.x, ln);
    Cow::Owned(x)
}

/// `e`, or where it says that model A or B has zero norm while that model's estimated size is
/// below `e^UNDERFLOW`, the underflow it more likely is.
pub fn explain_zero(e: Error, a: &Model, b: &Model, metric: Kind) -> Error {
    let Error::ZeroNorm { which, .. } = e.root() else {
        return e;
    };
    let model = if which.starts_with('B') { b } else { a };
    let tiny = magnitudes(model, 0.0)
        .into_iter()
        .find(|x| x.is_finite() && *x < UNDERFLOW);
    match tiny {
        None => e,
        Some(ln) => Error::OutOfRange {
            metric: metric.name().into(),
            what: format!(
                "model {which} computes to zero norm, but its parameters are not zero: an \
                 intermediate of about 1e{:.0} underflows",
                ln / std::f64::consts::LN_10
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Linear;

    fn linear(rows: usize, cols: usize, v: f64) -> Layer {
        Layer::Linear(Linear {
            weight: Mat::from_fn(rows, cols, |_, _| v),
            bias: None,
        })
    }

    #[test]
    fn the_scale_is_the_rms_row_norm_and_survives_extremes() {
        for v in [1e-300, 0.5, 1e300] {
            let Layer::Linear(l) = linear(2, 4, v) else {
                unreachable!()
            };
            // Rows of four entries v: norm 2v.
            let want = (2.0 * v).ln();
            assert!((ln_scale(&l.weight) - want).abs() < 1e-12 * want.abs().max(1.0));
        }
        assert_eq!(ln_size(&Some(vec![0.0; 3])), f64::NEG_INFINITY);
    }

    #[test]
    fn extreme_homogeneous_models_are_rescaled_and_others_kept() {
        let m = Model::new(4, 1, vec![linear(3, 4, 1e-20), linear(2, 3, 1.0)]).unwrap();
        let r = rescaled(&m);
        assert!(matches!(r, Cow::Owned(_)));
        assert!(magnitudes(&r, 0.0).iter().all(|x| x.abs() < 1.0));
        let plain = Model::new(4, 1, vec![linear(3, 4, 0.3), linear(2, 3, 2.0)]).unwrap();
        assert!(matches!(rescaled(&plain), Cow::Borrowed(_)));
        let mut layers = m.layers().to_vec();
        if let Layer::Linear(l) = &mut layers[1] {
            l.bias = Some(vec![1.0, 0.0]);
        }
        let biased = Model::new(4, 1, layers).unwrap();
        assert!(!homogeneous(&biased));
        assert!(matches!(rescaled(&biased), Cow::Borrowed(_)));
    }
}
