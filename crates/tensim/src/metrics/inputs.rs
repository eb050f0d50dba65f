//! Inputs for the behavioural metrics: a data file (`.npy`, rows are inputs; shape
//! `(rows, dim)` or `(rows, n_ctx, dim)`) or standard Gaussian samples.

use std::path::Path;

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::linalg::{from_row_major, Mat};

/// A batch of model inputs: `rows` inputs of `n_ctx` positions, stored one position per row of
/// `x` (`rows · n_ctx` rows, `dim` columns).
#[derive(Clone, Debug)]
pub struct Inputs {
    pub x: Mat<f64>,
    pub rows: usize,
    pub n_ctx: usize,
    /// Human-readable origin, e.g. `"data.npy"` or `"gaussian(n=1000, seed=0)"`.
    pub source: String,
}

impl Inputs {
    /// `rows` inputs with every position i.i.d. `N(0, I_dim)`, reproducible from `seed`.
    pub fn gaussian(rows: usize, n_ctx: usize, dim: usize, seed: u64) -> Result<Inputs> {
        if rows == 0 {
            return Err(Error::Invalid(
                "the number of samples must be at least 1".into(),
            ));
        }
        let entries = rows as f64 * n_ctx as f64 * dim as f64;
        crate::budget::check("the Gaussian input samples", entries)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x = Mat::from_fn(rows * n_ctx, dim, |_, _| StandardNormal.sample(&mut rng));
        Ok(Inputs {
            x,
            rows,
            n_ctx,
            source: Inputs::gaussian_source(rows, seed),
        })
    }

    /// How [`Inputs::gaussian`] names its samples.
    pub fn gaussian_source(rows: usize, seed: u64) -> String {
        format!("gaussian(n={rows}, seed={seed})")
    }

    /// Read a C-ordered `.npy` array of floats or integers, checking it against the model's
    /// input size `dim` and `n_ctx`.
    pub fn from_npy(path: &Path, n_ctx: usize, dim: usize) -> Result<Inputs> {
        let (shape, values) = read_array(path)?;
        Inputs::from_array(&shape, values, n_ctx, dim, &path.display().to_string())
    }

    /// Inputs from a C-ordered array of `shape` `(rows, dim)` or `(rows, n_ctx, dim)`, checked
    /// against the model's input size; `origin` names the array in messages.
    pub fn from_array(
        shape: &[usize],
        values: Vec<f64>,
        n_ctx: usize,
        dim: usize,
        origin: &str,
    ) -> Result<Inputs> {
        let bad = |reason: String| Error::Data {
            path: origin.into(),
            reason,
        };
        let expected = if n_ctx == 1 {
            format!("(rows, {dim}) or (rows, 1, {dim})")
        } else {
            format!("(rows, {n_ctx}, {dim})")
        };
        let rows = match shape {
            [r, d] if n_ctx == 1 && *d == dim => *r,
            [r, t, d] if *t == n_ctx && *d == dim => *r,
            _ => return Err(bad(format!("has shape {shape:?}, expected {expected}"))),
        };
        if rows == 0 {
            return Err(bad("holds no rows".into()));
        }
        if let Some(k) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "non-finite value ({}) at flat index {k}",
                values[k]
            )));
        }
        Ok(Inputs {
            x: from_row_major(rows * n_ctx, dim, &values),
            rows,
            n_ctx,
            source: origin.to_string(),
        })
    }
}

/// A C-ordered `.npy` array of floats (f16 to f64) or integers, as f64: `(shape, values)`.
pub fn read_array(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let bad = |reason: String| Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let npy =
        npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(format!("not a valid .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    if npy.order() == npyz::Order::Fortran {
        return Err(bad(
            "Fortran-ordered arrays are not supported; save np.ascontiguousarray(x)".into(),
        ));
    }
    let dtype = npy.dtype().descr();
    let values = read_values(npy)
        .ok_or_else(|| {
            bad(format!(
                "unsupported dtype {dtype}; use float or integer data"
            ))
        })?
        .map_err(|e| bad(format!("truncated or corrupt data: {e}")))?;
    Ok((shape, values))
}

fn read_values(npy: npyz::NpyFile<&[u8]>) -> Option<std::io::Result<Vec<f64>>> {
    macro_rules! try_as {
        ($npy:expr, $($t:ty),*) => {{
            let npy = $npy;
            $(
                let npy = match npy.try_data::<$t>() {
                    Ok(r) => return Some(r.into_iter().map(|v| v.map(|v| v as f64)).collect()),
                    Err(npy) => npy,
                };
            )*
            let _ = npy;
            None
        }};
    }
    // Half precision (as mixed-precision training stores activations) has no `as` cast.
    let npy = match npy.try_data::<half::f16>() {
        Ok(r) => return Some(r.into_iter().map(|v| v.map(f64::from)).collect()),
        Err(npy) => npy,
    };
    try_as!(npy, f64, f32, i64, i32, i16, i8, u8, u16, u32, u64)
}

/// The model's outputs on `inputs`, one row per input (`n_ctx · out` columns, position-major).
pub fn outputs(
    model: &crate::model::Model,
    inputs: &Inputs,
    par: crate::linalg::Par,
) -> Result<Mat<f64>> {
    if inputs.x.ncols() != model.in_dim() || inputs.n_ctx != model.input().n_ctx {
        return Err(Error::Invalid(format!(
            "inputs have {} positions of size {}, the model takes {} of size {}",
            inputs.n_ctx,
            inputs.x.ncols(),
            model.input().n_ctx,
            model.in_dim()
        )));
    }
    // The forward pass holds a layer's input, its hidden activations and its output.
    let widest = model
        .layers()
        .iter()
        .map(|l| match l {
            crate::layers::Layer::Bilinear(b) => 2 * b.hidden() + l.out_dim(),
            _ => l.in_dim() + l.out_dim(),
        })
        .max()
        .unwrap_or(0);
    crate::budget::check(
        "the forward pass on the inputs",
        3.0 * inputs.x.nrows() as f64 * widest as f64,
    )?;
    let y = model.forward(inputs.x.as_ref(), par);
    let (t, o) = (inputs.n_ctx, y.ncols());
    Ok(Mat::from_fn(inputs.rows, t * o, |r, j| {
        y[(r * t + j / o, j % o)]
    }))
}
