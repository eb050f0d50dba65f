//! All-pairs similarity matrices over the checkpoints of a training run.
//!
//! **Tensor metric, one bilinear layer** (after composing the linear layers before it into
//! `L̂, R̂` and those after it into `D̂`; widths may differ): stack every checkpoint's rows,
//! `U = [L̂₁Ê₁; …; L̂_NÊ_N]`, `V = [R̂₁Ê₁; …]`, `D = [D₁ … D_N]` (data output rows), and get every
//! pair of a tile of checkpoints `(I, J)` from five GEMMs (MATH.md §8, [G1]):
//!
//! ```text
//! K = ½[(U_I U_Jᵀ) ∘ (V_I V_Jᵀ) + (U_I V_Jᵀ) ∘ (V_I U_Jᵀ)],  Γ = D_Iᵀ D_J
//! inner(i, j) = Σ over the (i, j) block of K ∘ Γ
//! ```
//!
//! Only tiles with `I ≤ J` are computed (the matrix is symmetric); each tile's GEMMs are
//! single-threaded and tiles run in parallel (rayon). Self inner products are computed once per
//! checkpoint. Deeper models fall back to the per-pair recursion, still in parallel tiles.
//! Memory: the stacked `U, V, D` plus, per worker thread, five `(T·H)²` tile matrices for `T`
//! checkpoints of `H` hidden rows per tile side — estimated before starting.

pub mod checkpoints;
mod output;
pub mod tiles;

use rayon::prelude::*;

use crate::budget;
use crate::error::{Error, Result};
use crate::layers::PaddedLayer;
use crate::linalg::{mul, mul_t, Mat, MatRef, Par};
use crate::metrics::{self, gaussian, inputs::outputs, tensor, Inputs, Metric, Options};
use crate::model::Model;
use tiles::TileStore;

/// Options of an all-pairs run.
#[derive(Clone, Copy, Default)]
pub struct MatrixOptions<'a> {
    /// Checkpoints per tile side; 0 chooses about 1024 stacked rows per side.
    pub tile: usize,
    /// Where finished tiles are kept (resume); `None`: nothing is stored.
    pub store: Option<&'a TileStore>,
    /// Inputs of the behavioural metric.
    pub inputs: Option<&'a Inputs>,
    /// Also one matrix per output coordinate (tensor metric).
    pub per_output: bool,
    /// Fully symmetrised tensor similarity instead of the per-layer one (pair by pair).
    pub full: Option<&'a crate::metrics::fullsym::FullOptions>,
    /// Incremented by the GEMM flops of the stacked tiles (for benchmarks).
    pub flops: Option<&'a std::sync::atomic::AtomicU64>,
}

/// A model with one bilinear node in folded form: `U = L̂Ê`, `V = R̂Ê` (rows over the padded
/// input) and `D` (the data output rows of `Ŵ_head D̂`).
struct Folded {
    u: Mat<f64>,
    v: Mat<f64>,
    d: Mat<f64>,
}

fn fold_single(model: &Model) -> Option<Folded> {
    if model.n_bilinear() != 1 {
        return None;
    }
    let nodes = model.padded();
    let at = nodes
        .iter()
        .position(|n| matches!(n, PaddedLayer::Bilinear(_)))?;
    let compose = |ws: &[PaddedLayer]| -> Option<Mat<f64>> {
        ws.iter().fold(None, |acc: Option<Mat<f64>>, n| {
            let PaddedLayer::Linear(l) = n else {
                unreachable!()
            };
            Some(match acc {
                None => l.w.clone(),
                Some(m) => mul(l.w.as_ref(), m.as_ref(), Par::Seq),
            })
        })
    };
    let PaddedLayer::Bilinear(b) = &nodes[at] else {
        unreachable!()
    };
    let (pre, post) = (compose(&nodes[..at]), compose(&nodes[at + 1..]));
    let apply_pre = |m: &Mat<f64>| {
        pre.as_ref()
            .map_or_else(|| m.clone(), |p| mul(m.as_ref(), p.as_ref(), Par::Seq))
    };
    let d = post.map_or_else(|| b.d.clone(), |p| mul(p.as_ref(), b.d.as_ref(), Par::Seq));
    Some(Folded {
        u: apply_pre(&b.l),
        v: apply_pre(&b.r),
        d: d.subrows(1, d.nrows() - 1).to_owned(),
    })
}

/// Stacked folded rows of all checkpoints.
struct Stack {
    u: Mat<f64>,
    v: Mat<f64>,
    d: Mat<f64>,
    /// Row offsets: checkpoint `i` owns rows `offsets[i]..offsets[i+1]`.
    offsets: Vec<usize>,
}

impl Stack {
    fn new(folded: &[Folded]) -> Stack {
        let mut offsets = vec![0];
        for f in folded {
            offsets.push(offsets.last().unwrap() + f.u.nrows());
        }
        let (rows, p, c) = (
            *offsets.last().unwrap(),
            folded[0].u.ncols(),
            folded[0].d.nrows(),
        );
        let (mut u, mut v, mut d) = (
            Mat::zeros(rows, p),
            Mat::zeros(rows, p),
            Mat::zeros(c, rows),
        );
        for (f, &o) in folded.iter().zip(&offsets) {
            let h = f.u.nrows();
            u.subrows_mut(o, h).copy_from(&f.u);
            v.subrows_mut(o, h).copy_from(&f.v);
            d.subcols_mut(o, h).copy_from(&f.d);
        }
        Stack { u, v, d, offsets }
    }

    fn rows(&self, r: &std::ops::Range<usize>) -> (usize, usize) {
        (
            self.offsets[r.start],
            self.offsets[r.end] - self.offsets[r.start],
        )
    }

    /// GEMM flops of one tile: four `nr×nc×p` products and `Γ` (`nr×nc×c`).
    fn tile_flops(&self, ci: &std::ops::Range<usize>, cj: &std::ops::Range<usize>) -> u64 {
        let (nr, nc) = (self.rows(ci).1 as u64, self.rows(cj).1 as u64);
        2 * nr * nc * (4 * self.u.ncols() as u64 + self.d.nrows() as u64)
    }

    /// Inner products of checkpoints `I × J`: plane 0 the total, and with `per_output` plane
    /// `1 + o` the slice of output `o` (`Γ_o = D_I[o]ᵀ D_J[o]`); row-major `planes × |I| × |J|`.
    fn tile(
        &self,
        ci: std::ops::Range<usize>,
        cj: std::ops::Range<usize>,
        per_output: bool,
    ) -> Vec<f64> {
        let ((r0, nr), (c0, nc)) = (self.rows(&ci), self.rows(&cj));
        let (ui, vi) = (self.u.subrows(r0, nr), self.v.subrows(r0, nr));
        let (uj, vj) = (self.u.subrows(c0, nc), self.v.subrows(c0, nc));
        let prod = |a: MatRef<'_, f64>, b: MatRef<'_, f64>| mul_t(a, b, Par::Seq);
        let (ll, rr, lr, rl) = (prod(ui, uj), prod(vi, vj), prod(ui, vj), prod(vi, uj));
        let (di, dj) = (self.d.subcols(r0, nr), self.d.subcols(c0, nc));
        let gamma = mul(di.transpose(), dj, Par::Seq);
        // Row → checkpoint of the tile.
        let owner = |r: usize, base: usize, range: &std::ops::Range<usize>| {
            range
                .clone()
                .find(|&i| self.offsets[i + 1] > base + r)
                .unwrap()
                - range.start
        };
        let row_owner: Vec<usize> = (0..nr).map(|r| owner(r, r0, &ci)).collect();
        let outputs = if per_output { self.d.nrows() } else { 0 };
        let plane = ci.len() * cj.len();
        let mut out = vec![0.0; (1 + outputs) * plane];
        let mut k = vec![0.0; nr];
        for col in 0..nc {
            let j = owner(col, c0, &cj);
            let (a, b, c, d, g) = (
                ll.col_as_slice(col),
                rr.col_as_slice(col),
                lr.col_as_slice(col),
                rl.col_as_slice(col),
                gamma.col_as_slice(col),
            );
            for r in 0..nr {
                k[r] = 0.5 * (a[r] * b[r] + c[r] * d[r]);
                out[row_owner[r] * cj.len() + j] += k[r] * g[r];
            }
            for o in 0..outputs {
                let w = dj[(o, col)];
                let base = (1 + o) * plane + j;
                for r in 0..nr {
                    out[base + row_owner[r] * cj.len()] += k[r] * di[(o, r)] * w;
                }
            }
        }
        out
    }
}

/// How the pairs of one metric are computed.
enum Plan<'a> {
    /// `norms[i]`: the self inner products of checkpoint `i`, one per plane.
    Stacked { stack: Stack, norms: Vec<Vec<f64>> },
    /// Per-pair recursion; `norms` are the self traces when every model has the same depth.
    PerPair {
        models: &'a [Model],
        norms: Option<Vec<(f64, f64)>>,
        depth: usize,
    },
    /// Gaussian similarity: cached self chains, cross chains per pair (exact enumeration
    /// where the default mode asks for it).
    Gaussian {
        models: &'a [Model],
        chains: Vec<Vec<crate::moment::Moment>>,
    },
    /// Tensor similarity of models with attention (general network recursion), pair by pair.
    Network { models: &'a [Model] },
    /// Fully symmetrised tensor similarity, pair by pair.
    Full {
        models: &'a [Model],
        opts: crate::metrics::fullsym::FullOptions,
    },
    /// Rows whose pairwise dot products, times `scale` and divided by the row norms (if given),
    /// are the similarity; `per_output[o]` holds one row per model whose cosines are plane `1 + o`.
    Dots {
        rows: Mat<f64>,
        scale: f64,
        norms: Option<Vec<f64>>,
        per_output: Vec<Mat<f64>>,
    },
}

/// Cosines of the rows `I × J` of `rows` (`NaN` where a row is zero).
fn row_cosines(
    rows: &Mat<f64>,
    ci: &std::ops::Range<usize>,
    cj: &std::ops::Range<usize>,
) -> Vec<f64> {
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

impl Plan<'_> {
    /// Similarities of pair `(i, j)`, one per plane (`NaN` where a slice has zero norm).
    fn pair(&self, i: usize, j: usize, planes: usize) -> Result<Vec<f64>> {
        match self {
            Plan::PerPair {
                models,
                norms: Some(n),
                depth,
            } if planes == 1 => {
                let na = tensor::lifted_nodes(&models[i], *depth);
                let nb = tensor::lifted_nodes(&models[j], *depth);
                let ab = tensor::trace(&tensor::cross_gram(&na, &nb, false, Par::Seq));
                Ok(vec![tensor::cosine_of(ab, n[i], n[j])?])
            }
            Plan::PerPair { models, .. } => {
                let opts = Options {
                    per_output: planes > 1,
                    par: Par::Seq,
                    ..Default::default()
                };
                let r = tensor::similarity(&models[i], &models[j], &opts)?;
                let mut v = vec![r.similarity];
                v.extend(
                    r.per_output
                        .unwrap_or_default()
                        .into_iter()
                        .map(|x| x.unwrap_or(f64::NAN)),
                );
                Ok(v)
            }
            Plan::Gaussian { models, chains } => {
                let (a, b) = (&models[i], &models[j]);
                let g = gaussian::GaussOptions::default();
                let v = match gaussian::resolve(a, b, &g)?.0 {
                    gaussian::Mode::Closure => {
                        gaussian::similarity_cached(a, b, &chains[i], &chains[j])?
                    }
                    gaussian::Mode::Exact => gaussian::similarity(a, b, &g)?.similarity,
                };
                Ok(vec![v])
            }
            Plan::Network { models } => Ok(vec![
                tensor::network_similarity(&models[i], &models[j])?.similarity,
            ]),
            Plan::Full { models, opts } => {
                let o = Options {
                    per_output: false,
                    par: Par::Seq,
                    ..Default::default()
                };
                Ok(vec![
                    crate::metrics::fullsym::similarity(&models[i], &models[j], &o, opts)?
                        .similarity,
                ])
            }
            _ => unreachable!("tiles of this plan are computed whole"),
        }
    }

    /// Similarities of checkpoints `I × J`, row-major `planes × |I| × |J|`.
    fn tile(
        &self,
        ci: std::ops::Range<usize>,
        cj: std::ops::Range<usize>,
        planes: usize,
    ) -> Result<Vec<f64>> {
        let (ni, nj) = (ci.len(), cj.len());
        match self {
            Plan::Stacked { stack, norms } => {
                let inner = stack.tile(ci.clone(), cj.clone(), planes > 1);
                Ok(inner
                    .iter()
                    .enumerate()
                    .map(|(k, v)| {
                        let (p, i, j) = (k / (ni * nj), (k / nj) % ni, k % nj);
                        let (a, b) = (norms[ci.start + i][p], norms[cj.start + j][p]);
                        if a > 0.0 && b > 0.0 {
                            (v / (a * b).sqrt()).clamp(-1.0, 1.0)
                        } else {
                            f64::NAN
                        }
                    })
                    .collect())
            }
            Plan::Dots {
                rows,
                scale,
                norms,
                per_output,
            } => {
                let dots = mul_t(
                    rows.subrows(ci.start, ni),
                    rows.subrows(cj.start, nj),
                    Par::Seq,
                );
                let norm = |i: usize| norms.as_ref().map_or(1.0, |n| n[i]);
                let mut out: Vec<f64> = (0..ni * nj)
                    .map(|k| {
                        let (i, j) = (ci.start + k / nj, cj.start + k % nj);
                        (scale * dots[(k / nj, k % nj)] / (norm(i) * norm(j))).clamp(-1.0, 1.0)
                    })
                    .collect();
                for r in per_output {
                    out.extend(row_cosines(r, &ci, &cj));
                }
                Ok(out)
            }
            Plan::PerPair { .. }
            | Plan::Full { .. }
            | Plan::Gaussian { .. }
            | Plan::Network { .. } => {
                // Pairs in parallel; on a diagonal tile each unordered pair once (the metrics
                // are symmetric), mirrored.
                let diagonal = ci == cj;
                let pairs: Vec<(usize, usize)> = (0..ni)
                    .flat_map(|i| (0..nj).map(move |j| (i, j)))
                    .filter(|&(i, j)| !diagonal || j >= i)
                    .collect();
                let values = pairs
                    .par_iter()
                    .map(|&(i, j)| self.pair(ci.start + i, cj.start + j, planes))
                    .collect::<Result<Vec<_>>>()?;
                let mut out = vec![0.0; planes * ni * nj];
                for (&(i, j), v) in pairs.iter().zip(values) {
                    for (p, x) in v.into_iter().enumerate() {
                        out[(p * ni + i) * nj + j] = x;
                        if diagonal {
                            out[(p * nj + j) * ni + i] = x;
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// An all-pairs result: the similarity matrix and, if asked for, one matrix per output
/// coordinate (`NaN` where a checkpoint's output slice is zero).
#[derive(Clone, Debug)]
pub struct AllPairs {
    pub similarity: Mat<f64>,
    pub per_output: Option<Vec<Mat<f64>>>,
}

/// `N × N` similarity matrix of `models` under `metric` (`tensor`, `matrix` or `behavioral`).
///
/// `names` identify the models in messages; `hashes` (content hashes) key the stored tiles
/// for resuming; `progress(finished, total)` is called with the number of newly finished pairs
/// (pairs `i ≤ j` of the tiles, diagonal tiles counted whole) and their total.
pub fn similarity_matrix(
    models: &[Model],
    names: &[String],
    hashes: &[String],
    metric: Metric,
    opts: &MatrixOptions<'_>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<AllPairs> {
    let store = opts.store;
    let n = models.len();
    if n == 0 {
        return Err(Error::Invalid("no checkpoints".into()));
    }
    check_all(models, names)?;
    let plan = match opts.full {
        Some(f) if metric == Metric::Tensor && !opts.per_output && !f.by_degree => {
            Plan::Full { models, opts: f.clone() }
        }
        Some(_) => {
            return Err(Error::Invalid(
                "--symmetrize full in `tensim matrix` covers the tensor metric without --per-output or --by-degree".into(),
            ))
        }
        None => plan(models, names, metric, opts.inputs, opts.per_output)?,
    };
    let planes = if opts.per_output {
        1 + models[0].out_dim()
    } else {
        1
    };
    let tag = tile_tag(
        metric,
        opts.per_output,
        opts.full,
        opts.inputs.map(|i| i.source.as_str()),
    );
    let hidden = match &plan {
        Plan::Stacked { stack, .. } => stack
            .offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(1),
        _ => 1,
    };
    let t = if opts.tile > 0 {
        opts.tile
    } else {
        (1024 / hidden).clamp(1, 256)
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
    let done: Vec<Result<(usize, usize, Vec<f64>)>> = pairs
        .par_iter()
        .map(|&(a, b)| {
            let (ci, cj) = (blocks[a].clone(), blocks[b].clone());
            let key = TileStore::key(
                &tag,
                &hashes[ci.clone()]
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                &hashes[cj.clone()]
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            );
            let shape = [planes, ci.len(), cj.len()];
            let values = match store.and_then(|s| s.get(&key, &shape)) {
                Some(v) => v,
                None => {
                    if let (Some(counter), Plan::Stacked { stack, .. }) = (opts.flops, &plan) {
                        counter.fetch_add(
                            stack.tile_flops(&ci, &cj),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                    let v = plan.tile(ci.clone(), cj.clone(), planes)?;
                    if let Some(s) = store {
                        s.put(&key, &shape, &v)?;
                    }
                    v
                }
            };
            progress((ci.len() * cj.len()) as u64, total);
            Ok((a, b, values))
        })
        .collect();
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
/// (per-output planes, full symmetrisation, the source of the behavioural inputs).
pub fn tile_tag(
    metric: Metric,
    per_output: bool,
    full: Option<&crate::metrics::fullsym::FullOptions>,
    inputs_source: Option<&str>,
) -> String {
    let mut tag = metric.name().to_string();
    if per_output {
        tag += "/per-output";
    }
    if let Some(f) = full {
        tag += &format!("/full(samples={}, seed={})", f.samples, f.seed);
    }
    if let (true, Some(source)) = (metric.needs_inputs(), inputs_source) {
        tag += &format!("/{source}");
    }
    tag
}

/// Input and output sizes of every model agree with the first one's.
fn check_all(models: &[Model], names: &[String]) -> Result<()> {
    for (m, name) in models.iter().zip(names).skip(1) {
        metrics::check_io(&models[0], m)
            .map_err(|e| Error::Incompatible(format!("{name} vs {}: {e}", names[0])))?;
    }
    Ok(())
}

/// Similarities of `models[rows] × models[cols]` under `metric`: one tile of an all-pairs run,
/// for a worker that loads only the checkpoints of its tile (`models` holds them all). Equal
/// to the same entries of [`similarity_matrix`].
pub fn block(
    models: &[Model],
    names: &[String],
    metric: Metric,
    inputs: Option<&Inputs>,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Result<Mat<f64>> {
    if models.is_empty() || rows.end > models.len() || cols.end > models.len() {
        return Err(Error::Invalid(format!(
            "tile rows {rows:?} × columns {cols:?} outside the {} models given",
            models.len()
        )));
    }
    check_all(models, names)?;
    let values = plan(models, names, metric, inputs, false)?.tile(rows.clone(), cols.clone(), 1)?;
    Ok(Mat::from_fn(rows.len(), cols.len(), |i, j| {
        values[i * cols.len() + j]
    }))
}

fn plan<'a>(
    models: &'a [Model],
    names: &[String],
    metric: Metric,
    inputs: Option<&Inputs>,
    per_output: bool,
) -> Result<Plan<'a>> {
    match metric {
        Metric::Tensor if models.iter().any(|m| m.first_attention().is_some()) => {
            if per_output {
                return Err(Error::Invalid(
                    "--per-output of the tensor metric covers models without attention".into(),
                ));
            }
            Ok(Plan::Network { models })
        }
        Metric::Tensor => {
            let folded: Option<Vec<Folded>> = models.iter().map(fold_single).collect();
            if let Some(folded) = folded {
                let stack = Stack::new(&folded);
                let norms = (0..models.len())
                    .into_par_iter()
                    .map(|i| stack.tile(i..i + 1, i..i + 1, per_output))
                    .collect::<Vec<_>>();
                if let Some(i) = norms.iter().position(|v| v[0] <= 0.0) {
                    return Err(Error::ZeroNorm {
                        which: names[i].clone(),
                        metric: "tensor".into(),
                    });
                }
                return Ok(Plan::Stacked { stack, norms });
            }
            let depth = models[0].n_bilinear();
            let same = models.iter().all(|m| m.n_bilinear() == depth) && !per_output;
            let norms = same.then(|| {
                models
                    .par_iter()
                    .map(|m| {
                        let nodes = tensor::lifted_nodes(m, depth);
                        tensor::trace(&tensor::cross_gram(&nodes, &nodes, true, Par::Seq))
                    })
                    .collect::<Vec<_>>()
            });
            if let Some(i) = norms
                .as_ref()
                .and_then(|v| v.iter().position(|t| t.0 <= 0.0))
            {
                return Err(Error::ZeroNorm {
                    which: names[i].clone(),
                    metric: "tensor".into(),
                });
            }
            Ok(Plan::PerPair {
                models,
                norms,
                depth,
            })
        }
        Metric::Matrix => {
            let opts = Options {
                per_output: false,
                par: Par::Seq,
                ..Default::default()
            };
            for (m, name) in models.iter().zip(names).skip(1) {
                metrics::matrix::similarity(&models[0], m, &opts)
                    .map_err(|e| Error::Incompatible(format!("{name}: {e}")))?;
            }
            let flat: Vec<Vec<f64>> = models
                .iter()
                .map(|m| {
                    m.layers()
                        .iter()
                        .flat_map(|l| l.parameters())
                        .flat_map(|(_, v)| v)
                        .collect()
                })
                .collect();
            let rows = Mat::from_fn(models.len(), flat[0].len(), |i, j| flat[i][j]);
            let norms: Vec<f64> = (0..models.len()).map(|i| rows.row(i).norm_l2()).collect();
            if let Some(i) = norms.iter().position(|&v| v == 0.0) {
                return Err(Error::ZeroNorm {
                    which: names[i].clone(),
                    metric: "matrix".into(),
                });
            }
            // Per output c: the final layer's row c (weights and bias), as in `compare`.
            let per_output = if per_output {
                let out_rows: Vec<Vec<Vec<f64>>> = models
                    .iter()
                    .map(crate::metrics::matrix::output_rows)
                    .collect();
                (0..out_rows[0].len())
                    .map(|c| {
                        Mat::from_fn(models.len(), out_rows[0][c].len(), |i, j| out_rows[i][c][j])
                    })
                    .collect()
            } else {
                vec![]
            };
            Ok(Plan::Dots {
                rows,
                scale: 1.0,
                norms: Some(norms),
                per_output,
            })
        }
        Metric::Behavioral => {
            // mean_r ⟨a_r, b_r⟩ / ((‖a_r‖ + ε)(‖b_r‖ + ε)): rows pre-divided by ‖·‖ + ε, flattened.
            let inputs = inputs
                .ok_or_else(|| Error::Invalid("the behavioral metric needs inputs".into()))?;
            let outs = models
                .iter()
                .map(|m| outputs(m, inputs, Par::Seq))
                .collect::<Result<Vec<_>>>()?;
            let (r, w) = (outs[0].nrows(), outs[0].ncols());
            let scaled: Vec<Vec<f64>> = outs
                .iter()
                .map(|y| {
                    (0..r)
                        .flat_map(|i| {
                            let norm =
                                (0..w).map(|j| y[(i, j)] * y[(i, j)]).sum::<f64>().sqrt() + 1e-8;
                            (0..w).map(move |j| y[(i, j)] / norm)
                        })
                        .collect()
                })
                .collect();
            let rows = Mat::from_fn(models.len(), r * w, |i, j| scaled[i][j]);
            // Per output o: the o-th output over all inputs and positions, as in `compare`.
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
            Ok(Plan::Dots {
                rows,
                scale: 1.0 / r as f64,
                norms: None,
                per_output,
            })
        }
        Metric::Gaussian if per_output => Err(Error::Invalid(
            "--per-output in the all-pairs matrix covers tensor, matrix and behavioral".into(),
        )),
        Metric::Gaussian => Ok(Plan::Gaussian {
            models,
            // One self chain per model; a pair then costs its cross chain only.
            chains: models
                .par_iter()
                .map(crate::propagate::self_chain)
                .collect::<Result<Vec<_>>>()?,
        }),
        Metric::Cka => Err(Error::Invalid(
            "the all-pairs matrix supports tensor, matrix, behavioral and gaussian".into(),
        )),
    }
}
