//! Re-parametrisations that leave a model's function unchanged (MATH.md §3.5). Tensor similarity
//! is invariant under all of them; the flattened-weight cosine is not.

use crate::arch::{Residual, ResidualMode};
use crate::error::{Error, Result};
use crate::layers::{Bilinear, Layer};
use crate::linalg::{mul, Mat, Par};
use crate::model::Model;

fn bilinear_mut(layers: &mut [Layer], i: usize) -> Result<&mut Bilinear> {
    match layers.get_mut(i) {
        Some(Layer::Bilinear(b)) => Ok(b),
        _ => Err(Error::Invalid(format!("layer {i} is not bilinear"))),
    }
}

fn rebuild(model: &Model, layers: Vec<Layer>) -> Result<Model> {
    model.with_layers(layers)
}

fn down_or_identity(b: &Bilinear) -> Mat<f64> {
    b.down
        .clone()
        .unwrap_or_else(|| Mat::identity(b.hidden(), b.hidden()))
}

/// Permute the hidden units of bilinear layer `i`: unit `k` moves to `perm[k]`.
pub fn permute_hidden(model: &Model, i: usize, perm: &[usize]) -> Result<Model> {
    let mut layers = model.layers().to_vec();
    let b = bilinear_mut(&mut layers, i)?;
    let h = b.hidden();
    let mut inv = vec![0; h];
    perm.iter().enumerate().for_each(|(k, &p)| inv[p] = k);
    let rows = |m: &Mat<f64>| Mat::from_fn(h, m.ncols(), |p, j| m[(inv[p], j)]);
    let vec = |v: &Option<Vec<f64>>| v.as_ref().map(|v| (0..h).map(|p| v[inv[p]]).collect());
    let down = down_or_identity(b);
    b.down = Some(Mat::from_fn(down.nrows(), h, |o, p| down[(o, inv[p])]));
    b.left = rows(&b.left);
    b.right = rows(&b.right);
    b.left_bias = vec(&b.left_bias);
    b.right_bias = vec(&b.right_bias);
    rebuild(model, layers)
}

/// Rescale hidden unit `k` of bilinear layer `i`: `(L_k, R_k, D_{:,k}) → (α_k L_k, β_k R_k, D_{:,k}/(α_k β_k))`.
pub fn rescale_hidden(model: &Model, i: usize, alpha: &[f64], beta: &[f64]) -> Result<Model> {
    let mut layers = model.layers().to_vec();
    let b = bilinear_mut(&mut layers, i)?;
    let scale_rows =
        |m: &Mat<f64>, s: &[f64]| Mat::from_fn(m.nrows(), m.ncols(), |k, j| s[k] * m[(k, j)]);
    let scale_vec = |v: &Option<Vec<f64>>, s: &[f64]| {
        v.as_ref()
            .map(|v| v.iter().zip(s).map(|(x, y)| x * y).collect())
    };
    let down = down_or_identity(b);
    b.down = Some(Mat::from_fn(down.nrows(), down.ncols(), |o, k| {
        down[(o, k)] / (alpha[k] * beta[k])
    }));
    b.left = scale_rows(&b.left, alpha);
    b.right = scale_rows(&b.right, beta);
    b.left_bias = scale_vec(&b.left_bias, alpha);
    b.right_bias = scale_vec(&b.right_bias, beta);
    rebuild(model, layers)
}

/// Swap `L_k ↔ R_k` (and their biases) for the hidden units `k` of bilinear layer `i` where
/// `swap[k]`.
pub fn swap_left_right(model: &Model, i: usize, swap: &[bool]) -> Result<Model> {
    let mut layers = model.layers().to_vec();
    let b = bilinear_mut(&mut layers, i)?;
    let (l, r) = (b.left.clone(), b.right.clone());
    b.left = Mat::from_fn(l.nrows(), l.ncols(), |k, j| {
        if swap[k] {
            r[(k, j)]
        } else {
            l[(k, j)]
        }
    });
    b.right = Mat::from_fn(l.nrows(), l.ncols(), |k, j| {
        if swap[k] {
            l[(k, j)]
        } else {
            r[(k, j)]
        }
    });
    let h = b.hidden();
    let (bl, br) = (
        b.left_bias.clone().unwrap_or(vec![0.0; h]),
        b.right_bias.clone().unwrap_or(vec![0.0; h]),
    );
    if b.left_bias.is_some() || b.right_bias.is_some() {
        b.left_bias = Some(
            (0..h)
                .map(|k| if swap[k] { br[k] } else { bl[k] })
                .collect(),
        );
        b.right_bias = Some(
            (0..h)
                .map(|k| if swap[k] { bl[k] } else { br[k] })
                .collect(),
        );
    }
    rebuild(model, layers)
}

/// Replace the residual of bilinear layer `i` by `d` extra hidden units
/// `(L, R, D) = (e_j, 0 with bias 1, r·e_j)`: `r·x_j = (x_j)(1)·r`. Same padded tensor network.
pub fn fold_residual(model: &Model, i: usize) -> Result<Model> {
    let mut layers = model.layers().to_vec();
    let b = bilinear_mut(&mut layers, i)?;
    let Some(Residual { mode, scale }) = b.residual else {
        return rebuild(model, layers);
    };
    let (c, r) = match mode {
        ResidualMode::Lerp => (scale, 1.0 - scale),
        ResidualMode::Add => (scale, 1.0),
    };
    let (d, h) = (b.in_dim(), b.hidden());
    let down = down_or_identity(b);
    let zero = vec![0.0; h];
    let bias = |v: &Option<Vec<f64>>, tail: f64| {
        let mut v = v.clone().unwrap_or_else(|| zero.clone());
        v.extend(std::iter::repeat_n(tail, d));
        Some(v)
    };
    let left = Mat::from_fn(h + d, d, |k, j| {
        if k < h {
            b.left[(k, j)]
        } else {
            ((k - h) == j) as u8 as f64
        }
    });
    let right = Mat::from_fn(h + d, d, |k, j| if k < h { b.right[(k, j)] } else { 0.0 });
    *b = Bilinear {
        down: Some(Mat::from_fn(d, h + d, |o, k| {
            if k < h {
                c * down[(o, k)]
            } else {
                r * ((k - h) == o) as u8 as f64
            }
        })),
        left_bias: bias(&b.left_bias, 0.0),
        right_bias: bias(&b.right_bias, 1.0),
        down_bias: b
            .down_bias
            .as_ref()
            .map(|v| v.iter().map(|x| c * x).collect()),
        left,
        right,
        residual: None,
    };
    rebuild(model, layers)
}

/// Change of basis `x' = M x + c` of the space between layers `i` and `i + 1` (neither may have
/// a residual: fold it first). `minv` must be `M⁻¹`.
pub fn change_basis(
    model: &Model,
    i: usize,
    m: &Mat<f64>,
    minv: &Mat<f64>,
    c: &[f64],
) -> Result<Model> {
    let mut layers = model.layers().to_vec();
    if i + 1 >= layers.len() {
        return Err(Error::Invalid(format!("no layer after layer {i}")));
    }
    let affine_out = |w: &Mat<f64>, b: &Option<Vec<f64>>| {
        let w2 = mul(m.as_ref(), w.as_ref(), Par::Seq);
        let b0 = b.clone().unwrap_or(vec![0.0; w.nrows()]);
        let b2 = (0..m.nrows())
            .map(|p| c[p] + (0..m.ncols()).map(|q| m[(p, q)] * b0[q]).sum::<f64>())
            .collect();
        (w2, Some(b2))
    };
    // x = M⁻¹(x' − c): W x + b = (W M⁻¹) x' + (b − W M⁻¹ c).
    let affine_in = |w: &Mat<f64>, b: &Option<Vec<f64>>| {
        let w2 = mul(w.as_ref(), minv.as_ref(), Par::Seq);
        let b0 = b.clone().unwrap_or(vec![0.0; w.nrows()]);
        let b2 = (0..w.nrows())
            .map(|k| b0[k] - (0..c.len()).map(|q| w2[(k, q)] * c[q]).sum::<f64>())
            .collect();
        (w2, Some(b2))
    };
    match &mut layers[i] {
        Layer::Linear(l) => (l.weight, l.bias) = affine_out(&l.weight, &l.bias),
        Layer::Bilinear(b) if b.residual.is_none() => {
            let (d, bd) = affine_out(&down_or_identity(b), &b.down_bias);
            (b.down, b.down_bias) = (Some(d), bd);
        }
        Layer::Bilinear(_) => {
            return Err(Error::Invalid(format!(
                "layer {i} has a residual; fold it first"
            )))
        }
        Layer::Attention(_) => {
            return Err(Error::Invalid(format!(
                "layer {i} is attention; change bases around linear and bilinear layers"
            )))
        }
    }
    match &mut layers[i + 1] {
        Layer::Linear(l) => (l.weight, l.bias) = affine_in(&l.weight, &l.bias),
        Layer::Bilinear(b) if b.residual.is_none() => {
            (b.left, b.left_bias) = affine_in(&b.left, &b.left_bias);
            (b.right, b.right_bias) = affine_in(&b.right, &b.right_bias);
        }
        Layer::Bilinear(_) => {
            return Err(Error::Invalid(format!(
                "layer {} has a residual; fold it first",
                i + 1
            )))
        }
        Layer::Attention(_) => {
            return Err(Error::Invalid(format!(
                "layer {} is attention; change bases around linear and bilinear layers",
                i + 1
            )))
        }
    }
    rebuild(model, layers)
}
