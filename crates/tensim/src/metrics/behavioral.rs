//! Behavioural similarity, the paper's baseline (MATH.md §6): the mean over inputs of the
//! per-input cosine of the two output vectors, `mean_n ⟨f_a(x_n), f_b(x_n)⟩ / (‖f_a(x_n)‖‖f_b(x_n)‖)`,
//! where an input on which both outputs are zero counts 1 (they agree) and one on which only one
//! is zero counts 0. The reference adds `10⁻⁸` to each norm instead, which puts a model's
//! similarity to itself below 1 and makes the value depend on the outputs' scale; here identical
//! outputs give exactly 1 (`√(fl(x²)) = x` in IEEE arithmetic) and the value is scale-invariant.
//!
//! `inner`, `norm2_a`, `norm2_b` report the means of `⟨f_a,f_b⟩`, `‖f_a‖²`, `‖f_b‖²`.
//! Per output `o`: the cosine over inputs of the two models' `o`-th outputs,
//! `Σ_n f_a(x_n)_o f_b(x_n)_o / √(Σ_n f_a(x_n)_o² · Σ_n f_b(x_n)_o²)` (summed over positions).

use crate::error::{Error, Result};
use crate::linalg::{Mat, Par};
use crate::metrics::batch::Dots;
use crate::metrics::inputs::outputs;
use crate::metrics::{cosines, Comparison, Inputs, Kind, Options};
use crate::model::Model;

/// The cosine of one input's outputs from `⟨a,b⟩`, `‖a‖²`, `‖b‖²` (see the module doc for zeros).
fn sample_cosine(ab: f64, aa: f64, bb: f64) -> f64 {
    match (aa == 0.0, bb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => {
            let p = aa * bb;
            if p.is_normal() {
                ab / p.sqrt()
            } else {
                ab / (aa.sqrt() * bb.sqrt())
            }
        }
    }
}

/// Behavioural similarity on `inputs`.
pub fn similarity(a: &Model, b: &Model, inputs: &Inputs, opts: &Options) -> Result<Comparison> {
    let (ya, yb) = (outputs(a, inputs, opts.par)?, outputs(b, inputs, opts.par)?);
    let n = ya.nrows();
    let (mut sim, mut inner, mut na, mut nb) = (0.0, 0.0, 0.0, 0.0);
    for r in 0..n {
        let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
        for j in 0..ya.ncols() {
            let (x, y) = (ya[(r, j)], yb[(r, j)]);
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        sim += sample_cosine(ab, aa, bb);
        inner += ab;
        na += aa;
        nb += bb;
    }
    for (norm, which) in [(na, "A"), (nb, "B")] {
        if norm == 0.0 {
            return Err(Error::ZeroNorm {
                which: format!("{which} (on {})", inputs.source),
                metric: Kind::Behavioral.name().into(),
            });
        }
    }
    let per_output = opts.per_output.then(|| {
        let out = a.out_dim();
        let col = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
            (0..out)
                .map(|o| {
                    (0..n)
                        .flat_map(|r| (0..inputs.n_ctx).map(move |t| (r, t * out + o)))
                        .map(|(r, j)| f(ya[(r, j)], yb[(r, j)]))
                        .sum()
                })
                .collect()
        };
        cosines(
            &col(&|x, y| x * y),
            &col(&|x, _| x * x),
            &col(&|_, y| y * y),
        )
    });
    let m = n as f64;
    Ok(Comparison {
        metric: Kind::Behavioral,
        similarity: (sim / m).clamp(-1.0, 1.0),
        inner: inner / m,
        norm2_a: na / m,
        norm2_b: nb / m,
        per_output,
        samples: Some(inputs.rows),
        inputs: Some(inputs.source.clone()),
        ..Default::default()
    })
}

/// The batch form: `mean_r` of the per-input cosines as dot products of one row per model: its
/// outputs, each input's divided by its norm, then an indicator per input of a zero output (two
/// zero outputs add 1). A model whose outputs are all zero has no similarity (`NaN`). Per output
/// `o`, the `o`-th output over all inputs and positions.
pub fn batch(models: &[&Model], inputs: &Inputs, per_output: bool) -> Result<Dots> {
    let outs = models
        .iter()
        .map(|m| outputs(m, inputs, Par::Seq))
        .collect::<Result<Vec<_>>>()?;
    let (r, w) = (outs[0].nrows(), outs[0].ncols());
    let norms: Vec<Vec<f64>> = outs
        .iter()
        .map(|y| {
            (0..r)
                .map(|i| (0..w).map(|j| y[(i, j)] * y[(i, j)]).sum::<f64>().sqrt())
                .collect()
        })
        .collect();
    let rows = Mat::from_fn(models.len(), r * w + r, |m, k| {
        let (y, n) = (&outs[m], &norms[m]);
        if k >= r * w {
            f64::from(u8::from(n[k - r * w] == 0.0))
        } else if n[k / w] > 0.0 {
            y[(k / w, k % w)] / n[k / w]
        } else {
            0.0
        }
    });
    let undefined = norms.iter().map(|n| n.iter().all(|&v| v == 0.0)).collect();
    let out_dim = models[0].out_dim();
    let per_output = if per_output {
        (0..out_dim)
            .map(|o| {
                let cols: Vec<usize> = (o..w).step_by(out_dim).collect();
                Mat::from_fn(models.len(), r * cols.len(), |i, k| {
                    outs[i][(k / cols.len(), cols[k % cols.len()])]
                })
            })
            .collect()
    } else {
        vec![]
    };
    Ok(Dots {
        rows,
        scale: 1.0 / r as f64,
        norms: None,
        undefined,
        per_output,
    })
}
