//! Matrix (weight) similarity, the naive baseline (MATH.md §6): the cosine of the two models'
//! parameters concatenated and flattened (row-major, layer by layer, weights then biases).
//! Defined only for models of identical architecture. Per output `c`: the cosine of the final
//! layer's row `c` (weights and bias of that output).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::layers::Layer;
use crate::linalg::to_row_major;
use crate::linalg::Mat;
use crate::metrics::batch::Dots;
use crate::metrics::{cosine, cosines, Comparison, Kind, Options};
use crate::model::Model;

/// Cosine of the flattened parameters.
pub fn similarity(a: &Model, b: &Model, opts: &Options) -> Result<Comparison> {
    same_architecture(a, b)?;
    let (pa, pb) = (flat(a), flat(b));
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(u, v)| u * v).sum::<f64>();
    let (inner, norm2_a, norm2_b) = (dot(&pa, &pb), dot(&pa, &pa), dot(&pb, &pb));
    let per_output = opts.per_output.then(|| {
        let (ra, rb) = (output_rows(a), output_rows(b));
        let f = |g: &dyn Fn(usize) -> f64| (0..ra.len()).map(g).collect::<Vec<_>>();
        cosines(
            &f(&|c| dot(&ra[c], &rb[c])),
            &f(&|c| dot(&ra[c], &ra[c])),
            &f(&|c| dot(&rb[c], &rb[c])),
        )
    });
    Ok(Comparison {
        metric: Kind::Matrix,
        similarity: cosine(inner, norm2_a, norm2_b, Kind::Matrix)?,
        inner,
        norm2_a,
        norm2_b,
        per_output,
        per_tensor: opts.per_tensor.then(|| per_tensor(a, b)),
        ..Default::default()
    })
}

/// The cosine of one parameter tensor of the two models.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorCosine {
    /// `layers.{i}.{role}` (the name [`crate::io::save`] writes).
    pub tensor: String,
    /// `None` where either tensor is zero.
    pub similarity: Option<f64>,
}

/// The cosine of each parameter tensor, layer by layer (models of the same architecture).
fn per_tensor(a: &Model, b: &Model) -> Vec<TensorCosine> {
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(u, v)| u * v).sum::<f64>();
    let layers = a.layers().iter().zip(b.layers()).enumerate();
    layers
        .flat_map(|(i, (la, lb))| {
            la.parameters()
                .into_iter()
                .zip(lb.parameters())
                .map(move |((role, x), (_, y))| TensorCosine {
                    tensor: Model::tensor_name(i, role),
                    similarity: cosines(&[dot(&x, &y)], &[dot(&x, &x)], &[dot(&y, &y)])[0],
                })
        })
        .collect()
}

/// The all-pairs weight cosine of each parameter tensor: `(name, N × N)` per tensor, layer by
/// layer (`NaN` where a checkpoint's tensor is zero). One Gram `X Xᵀ` per tensor, `X` its
/// flattened values, a row per model.
pub fn per_tensor_matrices(models: &[&Model], names: &[&str]) -> Result<Vec<(String, Mat<f64>)>> {
    for (m, name) in models.iter().zip(names).skip(1) {
        same_architecture(models[0], m)
            .map_err(|e| e.context(format!("A = {}, B = {name}", names[0])))?;
    }
    let n = models.len();
    let params: Vec<Vec<(&'static str, Vec<f64>)>> = models
        .iter()
        .map(|m| m.layers().iter().flat_map(|l| l.parameters()).collect())
        .collect();
    let total: usize = params[0].iter().map(|(_, v)| v.len()).sum();
    crate::budget::check(
        "the per-tensor matrices",
        (2 * n * total) as f64 + (params[0].len() * n * n) as f64,
    )?;
    let roles = models[0].layers().iter().enumerate().flat_map(|(i, l)| {
        l.parameters()
            .into_iter()
            .map(move |(role, _)| Model::tensor_name(i, role))
    });
    Ok(roles
        .enumerate()
        .map(|(t, name)| {
            let x = Mat::from_fn(n, params[0][t].1.len(), |i, j| params[i][t].1[j]);
            let g = crate::linalg::mul_t(x.as_ref(), x.as_ref(), crate::linalg::Par::rayon(0));
            let c = Mat::from_fn(n, n, |i, j| {
                cosines(&[g[(i, j)]], &[g[(i, i)]], &[g[(j, j)]])[0].unwrap_or(f64::NAN)
            });
            (name, c)
        })
        .collect())
}

fn flat(m: &Model) -> Vec<f64> {
    m.layers()
        .iter()
        .flat_map(|l| l.parameters())
        .flat_map(|(_, v)| v)
        .collect()
}

/// The parameters that produce each output coordinate of the final layer.
pub(crate) fn output_rows(m: &Model) -> Vec<Vec<f64>> {
    let last = m.layers().last().expect("a model has layers");
    let rows = |w: &faer::Mat<f64>| -> Vec<Vec<f64>> {
        (0..w.nrows())
            .map(|c| to_row_major(w.subrows(c, 1)))
            .collect()
    };
    let with = |mut rows: Vec<Vec<f64>>, bias: &Option<Vec<f64>>| {
        if let Some(b) = bias {
            rows.iter_mut().zip(b).for_each(|(r, v)| r.push(*v));
        }
        rows
    };
    match last {
        Layer::Linear(l) => with(rows(&l.weight), &l.bias),
        Layer::Bilinear(bl) => match &bl.down {
            Some(d) => with(rows(d), &bl.down_bias),
            None => {
                let mut r = rows(&bl.left);
                for (row, extra) in r.iter_mut().zip(rows(&bl.right)) {
                    row.extend(extra);
                }
                let r = with(with(r, &bl.left_bias), &bl.right_bias);
                with(r, &bl.down_bias)
            }
        },
        Layer::Attention(a) => rows(&a.o),
    }
}

/// Same layer kinds, parameter roles and sizes, in the same order.
fn same_architecture(a: &Model, b: &Model) -> Result<()> {
    let sig = |m: &Model| -> Vec<String> {
        m.layers()
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                let dims = format!("{}→{}", l.in_dim(), l.out_dim());
                l.parameters().into_iter().map(move |(role, v)| {
                    format!("layer {i} {} {dims} {role}[{}]", l.kind(), v.len())
                })
            })
            .collect()
    };
    let (sa, sb) = (sig(a), sig(b));
    if sa != sb {
        let first = sa
            .iter()
            .zip(&sb)
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!("A has {x}, B has {y}"))
            .unwrap_or_else(|| format!("A has {} parameter tensors, B has {}", sa.len(), sb.len()));
        return Err(Error::Incompatible(format!(
            "the matrix metric needs identical architectures ({first}); use --metric tensor to \
             compare models of different shapes"
        )));
    }
    Ok(())
}

/// The batch form: one row of flattened parameters per model (cosines of rows; `NaN` for a
/// model whose parameters are all zero), and per output `c` the final layer's row `c` of every
/// model.
pub fn batch(models: &[&Model], names: &[&str], per_output: bool) -> Result<Dots> {
    for (m, name) in models.iter().zip(names).skip(1) {
        same_architecture(models[0], m)
            .map_err(|e| e.context(format!("A = {}, B = {name}", names[0])))?;
    }
    let flat: Vec<Vec<f64>> = models.iter().copied().map(flat).collect();
    let rows = Mat::from_fn(models.len(), flat[0].len(), |i, j| flat[i][j]);
    let norms: Vec<f64> = (0..models.len()).map(|i| rows.row(i).norm_l2()).collect();
    let undefined = norms.iter().map(|&v| v == 0.0).collect();
    let per_output = if per_output {
        let out_rows: Vec<Vec<Vec<f64>>> = models.iter().copied().map(output_rows).collect();
        (0..out_rows[0].len())
            .map(|c| Mat::from_fn(models.len(), out_rows[0][c].len(), |i, j| out_rows[i][c][j]))
            .collect()
    } else {
        vec![]
    };
    Ok(Dots {
        rows,
        scale: 1.0,
        norms: Some(norms),
        undefined,
        per_output,
    })
}
