//! The all-pairs form of the metrics: what a metric computes once per checkpoint
//! ([`prepare`]), then the similarities of any tile of checkpoints `I × J` ([`Batch::tile`]).
//! `trajectory` tiles, caches, resumes and reports progress over it; each metric file builds its
//! own batch form.

use std::ops::Range;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::linalg::{mul_t, Mat, Par};
use crate::metrics::{self, Inputs, Metric, Symmetrize};
use crate::model::Model;

/// A metric prepared for a list of checkpoints.
pub trait Batch: Sync {
    /// Similarities of checkpoints `I × J`, row-major `planes × |I| × |J|` (plane 0 the metric,
    /// plane `1 + o` output `o`'s slice; `NaN` where a slice has zero norm).
    fn tile(&self, rows: Range<usize>, cols: Range<usize>) -> Result<Vec<f64>>;

    /// Stacked rows per checkpoint in a tile (sizes the tiles); 1 for pair-by-pair metrics.
    fn rows_per_checkpoint(&self) -> usize {
        1
    }

    /// Checkpoints per tile side when the caller does not choose: about 1024 stacked rows per
    /// side for GEMM-shaped forms.
    fn tile_side(&self) -> usize {
        (1024 / self.rows_per_checkpoint().max(1)).clamp(1, 256)
    }

    /// GEMM flops of a tile (benchmarks), where the metric counts them.
    fn tile_flops(&self, _rows: &Range<usize>, _cols: &Range<usize>) -> u64 {
        0
    }

    /// Whether tiles (and their pairs) run one at a time, each pair on every core: pairs
    /// whose scratch is too large to hold one per core (rayon would also start more pairs
    /// while one waits on its own parallel work).
    fn serial(&self) -> bool {
        false
    }
}

/// `f` over `items`, in parallel unless `serial`.
pub(crate) fn map_all<T: Sync, R: Send>(
    items: &[T],
    serial: bool,
    f: impl Fn(&T) -> R + Sync + Send,
) -> Vec<R> {
    match serial {
        true => items.iter().map(f).collect(),
        false => items.par_iter().map(f).collect(),
    }
}

/// The batch form of `metric` over `models` (`names` identify them in messages); its tiles have
/// one plane, or `1 + outputs` with `per_output`.
pub fn prepare<'a>(
    models: &'a [&'a Model],
    names: &[&str],
    metric: &Metric,
    inputs: Option<&Inputs>,
    per_output: bool,
) -> Result<Box<dyn Batch + 'a>> {
    match metric {
        Metric::Tensor(Symmetrize::Full(f)) if !per_output && !f.by_degree => {
            Ok(Box::new(metrics::fullsym::batch(models, f.clone())))
        }
        Metric::Tensor(Symmetrize::Full(_)) => Err(Error::Invalid(
            "--symmetrize full in `tensim matrix` covers the tensor metric without --per-output or --by-degree".into(),
        )),
        Metric::Tensor(Symmetrize::Layer) => metrics::tensor::batch(models, per_output),
        Metric::Matrix => Ok(Box::new(metrics::matrix::batch(models, names, per_output)?)),
        Metric::Behavioral => {
            let inputs = inputs.ok_or(Error::NeedsInputs {
                metric: metric.kind(),
            })?;
            Ok(Box::new(metrics::behavioral::batch(models, inputs, per_output)?))
        }
        Metric::Gaussian(_) if per_output => Err(Error::Invalid(
            "--per-output in the all-pairs matrix covers tensor, matrix and behavioral".into(),
        )),
        Metric::Gaussian(g) => Ok(Box::new(metrics::gaussian::batch(models, g.clone())?)),
        Metric::Cka => Err(Error::Invalid(
            "the all-pairs matrix supports tensor, matrix, behavioral and gaussian".into(),
        )),
    }
}

/// A metric computed pair by pair: `pair(i, j)` gives one value per plane (`NaN` for a pair
/// with a model of zero norm; `pair(i, i)` is computed for that check, its finite values set
/// to exactly 1); `serial`: see [`Batch::serial`].
pub struct PerPair<F> {
    pub planes: usize,
    pub pair: F,
    pub serial: bool,
}

impl<F: Fn(usize, usize) -> Result<Vec<f64>> + Sync> Batch for PerPair<F> {
    /// Few pairs per tile (16, or 10 on the diagonal): a pair can take seconds, and only
    /// finished tiles are stored, so an interrupted run keeps nearly all its work. Pairs run
    /// one at a time (large attention covariances: seconds to minutes each) are a tile each.
    fn tile_side(&self) -> usize {
        if self.serial {
            1
        } else {
            4
        }
    }

    fn serial(&self) -> bool {
        self.serial
    }

    /// Pairs in parallel (unless `serial`); on a diagonal tile each unordered pair once (the
    /// metrics are symmetric), mirrored.
    fn tile(&self, ci: Range<usize>, cj: Range<usize>) -> Result<Vec<f64>> {
        let (ni, nj) = (ci.len(), cj.len());
        let diagonal = ci == cj;
        let pairs: Vec<(usize, usize)> = (0..ni)
            .flat_map(|i| (0..nj).map(move |j| (i, j)))
            .filter(|&(i, j)| !diagonal || j >= i)
            .collect();
        // A pair involving a model of zero norm has no similarity: NaN, not an error.
        let values = map_all(&pairs, self.serial, |&(i, j)| {
            match (self.pair)(ci.start + i, cj.start + j) {
                Err(e) if matches!(e.root(), Error::ZeroNorm { .. }) => {
                    Ok(vec![f64::NAN; self.planes])
                }
                v => v,
            }
        })
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
        let mut out = vec![0.0; self.planes * ni * nj];
        for (&(i, j), v) in pairs.iter().zip(values) {
            // A model with itself: exactly 1 where defined (as `Dots` gives it), not 1 ± ulp.
            let itself = ci.start + i == cj.start + j;
            let v = v
                .into_iter()
                .map(|x| if itself && x.is_finite() { 1.0 } else { x });
            for (p, x) in v.enumerate() {
                out[(p * ni + i) * nj + j] = x;
                if diagonal {
                    out[(p * nj + j) * ni + i] = x;
                }
            }
        }
        Ok(out)
    }
}

/// Rows whose pairwise dot products, times `scale` and divided by the row norms (if given),
/// are the similarity (exactly 1 for a model with itself, `NaN` for an `undefined` one);
/// `per_output[o]` holds one row per model whose cosines are plane `1 + o`.
pub struct Dots {
    pub rows: Mat<f64>,
    pub scale: f64,
    pub norms: Option<Vec<f64>>,
    pub undefined: Vec<bool>,
    pub per_output: Vec<Mat<f64>>,
}

impl Batch for Dots {
    fn tile(&self, ci: Range<usize>, cj: Range<usize>) -> Result<Vec<f64>> {
        let (ni, nj) = (ci.len(), cj.len());
        let dots = mul_t(
            self.rows.subrows(ci.start, ni),
            self.rows.subrows(cj.start, nj),
            Par::Seq,
        );
        let norm = |i: usize| self.norms.as_ref().map_or(1.0, |n| n[i]);
        let mut out: Vec<f64> = (0..ni * nj)
            .map(|k| {
                let (i, j) = (ci.start + k / nj, cj.start + k % nj);
                if self.undefined[i] || self.undefined[j] {
                    f64::NAN
                } else if i == j {
                    1.0
                } else {
                    (self.scale * dots[(k / nj, k % nj)] / (norm(i) * norm(j))).clamp(-1.0, 1.0)
                }
            })
            .collect();
        for r in &self.per_output {
            out.extend(row_cosines(r, &ci, &cj));
        }
        Ok(out)
    }
}

/// Cosines of the rows `I × J` of `rows` (`NaN` where a row is zero).
fn row_cosines(rows: &Mat<f64>, ci: &Range<usize>, cj: &Range<usize>) -> Vec<f64> {
    let dots = mul_t(
        rows.subrows(ci.start, ci.len()),
        rows.subrows(cj.start, cj.len()),
        Par::Seq,
    );
    let norm = |i: usize| rows.row(i).norm_l2();
    let (ni, nj) = (
        ci.clone().map(norm).collect::<Vec<_>>(),
        cj.clone().map(norm).collect::<Vec<_>>(),
    );
    (0..ci.len() * cj.len())
        .map(|k| {
            let (a, b) = (ni[k / cj.len()], nj[k % cj.len()]);
            if a > 0.0 && b > 0.0 {
                (dots[(k / cj.len(), k % cj.len())] / (a * b)).clamp(-1.0, 1.0)
            } else {
                f64::NAN
            }
        })
        .collect()
}
