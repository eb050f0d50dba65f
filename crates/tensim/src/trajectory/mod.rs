//! All-pairs similarity matrices over the checkpoints of a training run: the matrix is cut into
//! tiles of checkpoints `I × J` (only `I ≤ J`, the metrics being symmetric), each computed by
//! the metric's batch form ([`crate::metrics::batch`]) in parallel, kept in a [`TileStore`]
//! for resuming, and reported to a progress callback. The tiles' memory is estimated before
//! starting.

pub mod checkpoints;
mod output;
pub mod tiles;

use std::borrow::Cow;

use crate::budget;
use crate::error::{Error, Result};
use crate::linalg::Mat;
use crate::metrics::batch::prepare;
use crate::metrics::gaussian::{GaussOptions, Precision};
use crate::metrics::{self, Inputs, Metric, Symmetrize};
use crate::model::Model;
use crate::scale;
use checkpoints::Checkpoint;
use tiles::TileStore;

/// Options of an all-pairs run.
#[derive(Clone, Copy, Default)]
pub struct MatrixOptions<'a> {
    /// Checkpoints per tile side; 0: the metric's choice ([`crate::metrics::batch::Batch::tile_side`]).
    pub tile: usize,
    /// Where finished tiles are kept (resume); `None`: nothing is stored.
    pub store: Option<&'a TileStore>,
    /// Inputs of the behavioural metric.
    pub inputs: Option<&'a Inputs>,
    /// Also one matrix per output coordinate (tensor metric).
    pub per_output: bool,
    /// Incremented by the GEMM flops of the stacked tiles (for benchmarks).
    pub flops: Option<&'a std::sync::atomic::AtomicU64>,
}

/// An all-pairs result: the similarity matrix and, if asked for, one matrix per output
/// coordinate (`NaN` where a checkpoint's output slice is zero).
#[derive(Clone, Debug)]
pub struct AllPairs {
    pub similarity: Mat<f64>,
    pub per_output: Option<Vec<Mat<f64>>>,
}

/// `N × N` similarity matrix of the checkpoints under `metric` (all but `cka`).
///
/// Their names identify them in messages, their hashes key the stored tiles for resuming;
/// `progress(finished, total)` is called with the number of newly finished pairs (pairs
/// `i ≤ j` of the tiles, diagonal tiles counted whole) and their total.
pub fn similarity_matrix(
    checkpoints: &[Checkpoint],
    metric: &Metric,
    opts: &MatrixOptions<'_>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<AllPairs> {
    let store = opts.store;
    let n = checkpoints.len();
    if n == 0 {
        return Err(Error::Invalid("no checkpoints".into()));
    }
    let (owned, names) = parts(checkpoints, metric)?;
    let models: Vec<&Model> = owned.iter().map(|m| m.as_ref()).collect();
    let inputs = opts.inputs.map(|x| scale::rescaled_inputs(x, &models));
    let batch = prepare(&models, &names, metric, inputs.as_deref(), opts.per_output)?;
    let planes = if opts.per_output {
        1 + models[0].out_dim()
    } else {
        1
    };
    let tag = tile_tag(
        metric,
        opts.per_output,
        opts.inputs.map(|i| i.source.as_str()),
    );
    let hidden = batch.rows_per_checkpoint();
    let t = if opts.tile > 0 {
        opts.tile
    } else {
        batch.tile_side()
    };
    let threads = rayon::current_num_threads() as f64;
    budget::check(
        "the all-pairs tiles",
        threads * 5.0 * ((t * hidden) as f64).powi(2) + (planes * n * n) as f64,
    )?;

    let blocks: Vec<std::ops::Range<usize>> =
        (0..n).step_by(t).map(|s| s..(s + t).min(n)).collect();
    let pairs: Vec<(usize, usize)> = (0..blocks.len())
        .flat_map(|a| (a..blocks.len()).map(move |b| (a, b)))
        .collect();
    let total: u64 = pairs
        .iter()
        .map(|&(a, b)| (blocks[a].len() * blocks[b].len()) as u64)
        .sum();
    let done: Vec<Result<(usize, usize, Vec<f64>)>> = batch.tiles().map(&pairs, |&(a, b)| {
        let (ci, cj) = (blocks[a].clone(), blocks[b].clone());
        let hashes = |r: &std::ops::Range<usize>| -> Vec<&str> {
            checkpoints[r.clone()]
                .iter()
                .map(|c| c.hash.as_str())
                .collect()
        };
        let key = TileStore::key(&tag, &hashes(&ci), &hashes(&cj));
        let shape = [planes, ci.len(), cj.len()];
        let values = match store.and_then(|s| s.get(&key, &shape)) {
            Some(v) => v,
            None => {
                if let Some(counter) = opts.flops {
                    let flops = batch.tile_flops(&ci, &cj);
                    counter.fetch_add(flops, std::sync::atomic::Ordering::Relaxed);
                }
                let v = batch.tile(ci.clone(), cj.clone())?;
                if let Some(s) = store {
                    s.put(&key, &shape, &v)?;
                }
                v
            }
        };
        progress((ci.len() * cj.len()) as u64, total);
        Ok((a, b, values))
    });
    let mut mats = vec![Mat::<f64>::zeros(n, n); planes];
    for r in done {
        let (a, b, v) = r?;
        let (ci, cj) = (blocks[a].clone(), blocks[b].clone());
        let plane = ci.len() * cj.len();
        for (k, value) in v.into_iter().enumerate() {
            let (p, i, j) = (
                k / plane,
                ci.start + (k % plane) / cj.len(),
                cj.start + k % cj.len(),
            );
            mats[p][(i, j)] = value;
            mats[p][(j, i)] = value;
        }
    }
    let similarity = mats.remove(0);
    Ok(AllPairs {
        similarity,
        per_output: opts.per_output.then_some(mats),
    })
}

/// What a stored tile's values depend on besides its checkpoints: the metric and its options
/// (per-output planes, full symmetrisation, a gaussian mode, the source of the behavioural
/// inputs).
pub fn tile_tag(metric: &Metric, per_output: bool, inputs_source: Option<&str>) -> String {
    let mut tag = metric.name().to_string();
    if per_output {
        tag += "/per-output";
    }
    match metric {
        Metric::Tensor(Symmetrize::Full(f)) => {
            tag += &format!("/full(samples={}, seed={})", f.samples, f.seed);
        }
        Metric::Gaussian(g) => {
            let d = GaussOptions::default();
            if (g.mode, g.max_configs) != (d.mode, d.max_configs) {
                tag += &format!("/{:?}(max_configs={})", g.mode, g.max_configs);
            }
            // f64 untagged, as stored before f32 became the default.
            if g.precision != Precision::F64 {
                tag += &format!("/{}", g.precision);
            }
        }
        _ => {}
    }
    if let (true, Some(source)) = (metric.needs_inputs(), inputs_source) {
        tag += &format!("/{source}");
    }
    tag
}

/// The checkpoints' models and names, once their input and output sizes are checked to agree
/// with the first one's.
/// The checkpoints' models as `metric` computes on them ([`metrics::scale_free`]) and their
/// names, once their sizes are checked to agree.
fn parts<'a>(
    checkpoints: &'a [Checkpoint],
    metric: &Metric,
) -> Result<(Vec<Cow<'a, Model>>, Vec<&'a str>)> {
    let first = &checkpoints[0];
    for c in &checkpoints[1..] {
        metrics::check_io(&first.model, &c.model)
            .map_err(|e| e.context(format!("A = {}, B = {}", first.name, c.name)))?;
    }
    Ok(checkpoints
        .iter()
        .map(|c| (metrics::scale_free(&c.model, metric), c.name.as_str()))
        .unzip())
}

/// Similarities of `checkpoints[rows] × checkpoints[cols]` under `metric`: one tile of an
/// all-pairs run, for a worker that loads only the checkpoints of its tile (`checkpoints` holds
/// them all). Equal to the same entries of [`similarity_matrix`].
pub fn block(
    checkpoints: &[Checkpoint],
    metric: &Metric,
    inputs: Option<&Inputs>,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Result<Mat<f64>> {
    let n = checkpoints.len();
    if n == 0 || rows.end > n || cols.end > n {
        return Err(Error::Invalid(format!(
            "tile rows {rows:?} × columns {cols:?} outside the {n} checkpoints given"
        )));
    }
    let (owned, names) = parts(checkpoints, metric)?;
    let models: Vec<&Model> = owned.iter().map(|m| m.as_ref()).collect();
    let inputs = inputs.map(|x| scale::rescaled_inputs(x, &models));
    let values = prepare(&models, &names, metric, inputs.as_deref(), false)?
        .tile(rows.clone(), cols.clone())?;
    Ok(Mat::from_fn(rows.len(), cols.len(), |i, j| {
        values[i * cols.len() + j]
    }))
}
