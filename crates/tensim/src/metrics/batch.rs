//! The all-pairs form of the metrics: what a metric computes once per checkpoint
//! ([`prepare`]), then the similarities of any tile of checkpoints `I × J` ([`Batch::tile`]).
//! `trajectory` tiles, caches, resumes and reports progress over it; each metric file builds its
//! own batch form.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

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

    /// How many tiles run at once: all (the default), or a bound where each tile's pairs run
    /// one after another, each free to use every core (pairs whose scratch is too large to
    /// hold any number at once).
    fn tiles(&self) -> Pairs {
        Pairs::Parallel
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

/// `f` over `items` with at most `k` at work at once, each free to use every thread in its own
/// parallel work: `k` workers each take the next item until none is left. (With one rayon job
/// per item, a thread waiting inside `f` could start another item, holding its memory too.)
pub(crate) fn map_at_most<T: Sync, R: Send>(
    items: &[T],
    k: usize,
    f: impl Fn(&T) -> R + Sync + Send,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    (0..k.clamp(1, items.len().max(1)))
        .into_par_iter()
        .for_each(|_| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            let r = f(item);
            *slots[i].lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
        });
    slots
        .into_iter()
        .map(|s| {
            let r = s.into_inner().unwrap_or_else(PoisonError::into_inner);
            r.expect("every item is taken")
        })
        .collect()
}

/// How many pairs (or tiles) of a batch run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairs {
    /// Any number (pairs small enough to hold one per thread and more).
    Parallel,
    /// At most this many, each free to use every core (large pairs, as many as the memory
    /// estimate allows).
    AtMost(usize),
    /// One at a time, each on every core.
    Serial,
}

impl Pairs {
    /// [`Pairs::Serial`] if `serial`, else [`Pairs::Parallel`].
    pub fn serial_if(serial: bool) -> Pairs {
        if serial {
            Pairs::Serial
        } else {
            Pairs::Parallel
        }
    }

    /// `f` over `items`, as many at once as `self` allows.
    pub(crate) fn map<T: Sync, R: Send>(
        self,
        items: &[T],
        f: impl Fn(&T) -> R + Sync + Send,
    ) -> Vec<R> {
        match self {
            Pairs::Parallel => map_all(items, false, f),
            Pairs::AtMost(k) => map_at_most(items, k, f),
            Pairs::Serial => map_all(items, true, f),
        }
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
/// to exactly 1); `pairs`: how many run at once.
pub struct PerPair<F> {
    pub planes: usize,
    pub pair: F,
    pub pairs: Pairs,
}

impl<F: Fn(usize, usize) -> Result<Vec<f64>> + Sync> Batch for PerPair<F> {
    /// Few pairs per tile (16, or 10 on the diagonal): a pair can take seconds, and only
    /// finished tiles are stored, so an interrupted run keeps nearly all its work. Large pairs
    /// (seconds to minutes each) come 4 or 1 to a tile, so that the tiles at work at once
    /// end together.
    fn tile_side(&self) -> usize {
        match self.pairs {
            Pairs::Parallel => 4,
            Pairs::AtMost(_) => 2,
            Pairs::Serial => 1,
        }
    }

    /// Bounded pairs: as many tiles at once, each running its pairs one after another.
    fn tiles(&self) -> Pairs {
        self.pairs
    }

    /// Pairs in parallel where any number may run at once, else one after another; on a
    /// diagonal tile each unordered pair once (the metrics are symmetric), mirrored.
    fn tile(&self, ci: Range<usize>, cj: Range<usize>) -> Result<Vec<f64>> {
        let (ni, nj) = (ci.len(), cj.len());
        let diagonal = ci == cj;
        let pairs: Vec<(usize, usize)> = (0..ni)
            .flat_map(|i| (0..nj).map(move |j| (i, j)))
            .filter(|&(i, j)| !diagonal || j >= i)
            .collect();
        // A pair involving a model of zero norm has no similarity: NaN, not an error.
        let values = map_all(
            &pairs,
            self.pairs != Pairs::Parallel,
            |&(i, j)| match (self.pair)(ci.start + i, cj.start + j) {
                Err(e) if matches!(e.root(), Error::ZeroNorm { .. }) => {
                    Ok(vec![f64::NAN; self.planes])
                }
                v => v,
            },
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Items that wait on their own parallel work (where a waiting thread steals jobs) never
    /// run more than `k` at once, and come back in order.
    #[test]
    fn map_at_most_bounds_the_items_at_work() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let items: Vec<usize> = (0..40).collect();
        let out = pool.install(|| {
            map_at_most(&items, 2, |&i| {
                let at_work = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(at_work, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(2));
                let s: usize = (0..64usize)
                    .into_par_iter()
                    .map(|x| {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        x % 7
                    })
                    .sum();
                now.fetch_sub(1, Ordering::SeqCst);
                assert_eq!(s, (0..64).map(|x| x % 7).sum::<usize>());
                i * 10
            })
        });
        assert_eq!(out, items.iter().map(|i| i * 10).collect::<Vec<_>>());
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} items at work at once");
    }
}
