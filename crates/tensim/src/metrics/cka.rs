//! Linear CKA of the two models' outputs on the same inputs (MATH.md §6): with `X`, `Y` the
//! column-centred output matrices (inputs × outputs),
//! `CKA = ‖XᵀY‖_F² / (‖XᵀX‖_F ‖YᵀY‖_F)`; `inner = ‖XᵀY‖_F²`, `norm2_a = ‖XᵀX‖_F²`.
//! Per output `o`: CKA of the single columns, the squared correlation `(x_oᵀy_o)² / (‖x_o‖²‖y_o‖²)`.

use crate::error::Result;
use crate::linalg::{mul, Mat};
use crate::metrics::inputs::outputs;
use crate::metrics::{cosine, cosines, Comparison, Inputs, Kind, Options};
use crate::model::Model;

/// Linear CKA on `inputs`.
pub fn similarity(a: &Model, b: &Model, inputs: &Inputs, opts: &Options) -> Result<Comparison> {
    let (x, y) = (
        centred(outputs(a, inputs, opts.par)?),
        centred(outputs(b, inputs, opts.par)?),
    );
    let frob2 = |m: &Mat<f64>| m.squared_norm_l2();
    let hsic = |p: &Mat<f64>, q: &Mat<f64>| frob2(&mul(p.transpose(), q.as_ref(), opts.par));
    let (inner, norm2_a, norm2_b) = (hsic(&x, &y), hsic(&x, &x), hsic(&y, &y));
    let per_output = opts.per_output.then(|| {
        let col = |p: &Mat<f64>, q: &Mat<f64>| -> Vec<f64> {
            (0..p.ncols())
                .map(|o| {
                    let s: f64 = (0..p.nrows()).map(|r| p[(r, o)] * q[(r, o)]).sum();
                    s * s
                })
                .collect()
        };
        cosines(&col(&x, &y), &col(&x, &x), &col(&y, &y))
    });
    Ok(Comparison {
        metric: Kind::Cka,
        similarity: cosine(inner, norm2_a, norm2_b, Kind::Cka)?,
        inner,
        norm2_a,
        norm2_b,
        per_output,
        samples: Some(inputs.rows),
        inputs: Some(inputs.source.clone()),
        ..Default::default()
    })
}

/// Subtract each column's mean.
fn centred(m: Mat<f64>) -> Mat<f64> {
    let n = m.nrows() as f64;
    let means: Vec<f64> = (0..m.ncols())
        .map(|j| (0..m.nrows()).map(|i| m[(i, j)]).sum::<f64>() / n)
        .collect();
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] - means[j])
}
