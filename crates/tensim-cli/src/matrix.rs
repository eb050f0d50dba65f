//! `tensim matrix CHECKPOINTS…`: the all-pairs similarity matrix of a training run.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tensim::metrics::Kind;
use tensim::trajectory::{self, checkpoints, tiles::TileStore, MatrixOptions};

use crate::args::{
    description, draw_heatmap, metric, warn_unused, DistArgs, GaussArgs, InputArgs, KeyArg,
    NCtxArg, NullArg, PlotArgs, SymArgs,
};

#[derive(Args)]
pub struct MatrixArgs {
    #[arg(required = true)]
    checkpoints: Vec<PathBuf>,
    /// Architecture JSON for every checkpoint, or a language model's training config.json
    /// (otherwise a config.json beside the one folder given, else each file's embedded metadata).
    #[arg(long)]
    arch: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    n_ctx: NCtxArg,
    /// The metric (all but cka, which compares two models only).
    #[arg(long, value_enum, default_value_t = Kind::Tensor)]
    metric: Kind,
    /// Also one matrix per output coordinate (per-class similarity, as `compare --per-output`),
    /// written to OUT with `.per-output.npy` as an array (outputs, N, N); NaN where a slice is zero.
    #[arg(long)]
    per_output: bool,
    /// matrix: also one matrix per parameter tensor (`layers.{i}.{role}`), written to OUT with
    /// `.per-tensor.npy` as an array (tensors, N, N), the names in the JSON.
    #[arg(long, conflicts_with = "minus")]
    per_tensor: bool,
    #[command(flatten)]
    sym: SymArgs,
    #[command(flatten)]
    gauss: GaussArgs,
    /// Labels, one per line, in checkpoint order.
    #[arg(long, conflicts_with = "labels_from_names")]
    labels: Option<PathBuf>,
    /// Label checkpoints by file name (default: by step number where every name has one).
    #[arg(long)]
    labels_from_names: bool,
    /// Keep the order given instead of sorting by step number.
    #[arg(long)]
    no_sort: bool,
    /// The matrix as .npy (default tensim-METRIC.npy).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The matrix as CSV with labelled rows and columns.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Print the labels and matrix as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    plot: PlotArgs,
    /// Checkpoints per tile side (default: about 1024 stacked hidden rows for the one-layer
    /// tensor metric, 4 for the metrics computed pair by pair (1 where pairs run one at a time), so that an interrupted run has
    /// stored nearly all finished pairs).
    #[arg(long, default_value_t = 0)]
    tile: usize,
    /// Neither read nor write finished tiles.
    #[arg(long)]
    no_resume: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    inputs: InputArgs,
    #[command(flatten)]
    dist: DistArgs,
    #[command(flatten)]
    null: NullArg,
    /// Compare every checkpoint's change from CKPT, f_i − f_CKPT (tensor, gaussian when exact,
    /// matrix; NaN where a change is zero or too small to resolve). Each inner product is kept
    /// in OUT.tiles/, so that a run resumes.
    #[arg(long, value_name = "CKPT", conflicts_with_all = ["per_output", "null"])]
    minus: Option<PathBuf>,
}

pub fn run(args: MatrixArgs) -> Result<()> {
    let metric = metric(args.metric, &args.sym, &args.gauss, &args.inputs)?;
    if args.per_tensor && args.metric != Kind::Matrix {
        anyhow::bail!("--per-tensor is a matrix-metric value (--metric matrix)");
    }
    let mut paths = checkpoints::expand(&args.checkpoints)?;
    if !args.no_sort {
        checkpoints::natural_sort(&mut paths);
    }
    let arch = args.arch.clone().or_else(|| {
        let found = checkpoints::find_description(&args.checkpoints)?;
        eprintln!("description: {} (beside the checkpoints)", found.display());
        Some(found)
    });
    let sidecar = description(arch.as_deref(), args.n_ctx.n_ctx)?;
    let dist = args.dist.load(metric.kind())?;
    let mut cks = checkpoints::load_with(&paths, sidecar.as_ref(), args.key.key.as_deref())?;
    warn_unused(&paths[0], &cks[0].unused);
    // The null draws from the architecture as stored (it is read under the distribution).
    let plain = args.null.null.map(|_| cks[0].model.clone());
    if let Some(d) = &dist {
        cks = cks
            .into_iter()
            .map(|c| c.under(d))
            .collect::<Result<_, _>>()?;
    }
    let labels = checkpoints::labels(&cks, args.labels.as_deref(), args.labels_from_names)?;
    args.plot
        .check(cks.len(), cks.iter().all(|c| c.step.is_some()))?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("tensim-{}.npy", metric.name())));
    let store = if args.no_resume {
        None
    } else {
        let dir = PathBuf::from(format!("{}.tiles", out.display()));
        Some(TileStore::open(&dir, metric.name(), &cks)?)
    };
    let data = metric
        .needs_inputs()
        .then(|| args.inputs.inputs(&cks[0].model))
        .transpose()?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} pairs  {elapsed} elapsed, ETA {eta}",
        )
        .expect("valid template"),
    );
    if args.quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = std::time::Instant::now();
    let result = match &args.minus {
        Some(base) => {
            let base = crate::args::load(base, sidecar.as_ref(), args.key.key.as_deref())?;
            let base = match &dist {
                Some(d) => d.apply(&base)?,
                None => base,
            };
            let n = cks.len() as u64 + 1;
            bar.set_length(n * (n + 1) / 2);
            let models: Vec<&tensim::Model> = cks.iter().map(|c| &c.model).collect();
            let base_hash = tensim::io::model_hash(&base)?;
            let hashes: Vec<&str> = std::iter::once(base_hash.as_str())
                .chain(cks.iter().map(|c| c.hash.as_str()))
                .collect();
            let store = store.as_ref().map(|s| (s, hashes.as_slice()));
            let tick = |k| bar.inc(k);
            let similarity =
                tensim::metrics::difference::matrix(&models, &base, &metric, store, &tick)?;
            trajectory::AllPairs {
                similarity,
                per_output: None,
            }
        }
        None => trajectory::similarity_matrix(
            &cks,
            &metric,
            &MatrixOptions {
                tile: args.tile,
                store: store.as_ref(),
                inputs: data.as_ref(),
                per_output: args.per_output,
                flops: None,
            },
            &|done, total| {
                bar.set_length(total);
                bar.inc(done);
            },
        )?,
    };
    bar.finish_and_clear();
    let null = match (args.null.null, &plain) {
        (Some(k), Some(plain)) => {
            let (seed, par) = (args.inputs.seed, tensim::linalg::Par::rayon(0));
            let opts = (data.as_ref(), dist.as_ref());
            let n = tensim::metrics::null_of(plain, &metric, opts.0, opts.1, (k, seed), par)?;
            eprintln!(
                "null: {} between {k} pairs of independent initialisations: {:.6} ± {:.6}",
                metric.name(),
                n.mean,
                n.std
            );
            Some(n)
        }
        _ => None,
    };
    let n = cks.len();
    let undefined: Vec<&str> = (0..n)
        .filter(|&i| result.similarity[(i, i)].is_nan())
        .map(|i| cks[i].name.as_str())
        .collect();
    if !undefined.is_empty() {
        eprintln!(
            "warning: {} of the checkpoints have no similarity under the {} metric (zero \
             norm, values beyond floating-point range, or with --minus a change too small to resolve); their rows and columns are NaN (null \
             in JSON, grey in plots): {}",
            undefined.len(),
            metric.name(),
            undefined.join(", ")
        );
    }
    result.write_npy(&out)?;
    let per_tensor = if args.per_tensor {
        let models: Vec<&tensim::Model> = cks.iter().map(|c| &c.model).collect();
        let names: Vec<&str> = cks.iter().map(|c| c.name.as_str()).collect();
        let per = tensim::metrics::matrix::per_tensor_matrices(&models, &names)?;
        let values: Vec<f64> = per
            .iter()
            .flat_map(|(_, m)| tensim::linalg::to_row_major(m.as_ref()))
            .collect();
        let path = out.with_extension("per-tensor.npy");
        tensim::io::write_npy(&path, &[per.len(), n, n], &values)?;
        if !args.quiet {
            eprintln!("per tensor → {}", path.display());
        }
        Some(per)
    } else {
        None
    };
    if let Some(csv) = &args.csv {
        result.write_csv(csv, &labels)?;
    }
    if let Some(path) = &args.plot.plot {
        let steps: Option<Vec<f64>> = cks.iter().map(|c| c.step.map(|s| s as f64)).collect();
        let title = format!("{} similarity, {n} checkpoints", metric.name());
        let (log_steps, phases) = (args.plot.log_steps, args.plot.phases);
        draw_heatmap(
            &result.similarity,
            path,
            title,
            labels.clone(),
            steps,
            log_steps,
            phases,
        )?;
    }
    if args.json {
        let names: Vec<String> = cks.iter().map(|c| c.name.clone()).collect();
        let mut v = result.to_json(metric.name(), &labels, &names);
        if let Some(d) = &dist {
            v["input_distribution"] = serde_json::to_value(d.info())?;
        }
        if let Some(per) = &per_tensor {
            let rows = |m: &tensim::linalg::Mat<f64>| -> Vec<Vec<f64>> {
                (0..n)
                    .map(|i| (0..n).map(|j| m[(i, j)]).collect())
                    .collect()
            };
            v["per_tensor"] = serde_json::json!({
                "tensors": per.iter().map(|(t, _)| t).collect::<Vec<_>>(),
                "similarity": per.iter().map(|(_, m)| rows(m)).collect::<Vec<_>>(),
            });
        }
        if let Some(n) = &null {
            v["null_mean"] = n.mean.into();
            v["null_std"] = n.std.into();
            v["null_pairs"] = n.pairs.into();
        }
        println!("{}", serde_json::to_string(&v)?);
    } else if !args.quiet {
        eprintln!(
            "{n}×{n} {} similarity matrix in {:.2} s → {}{}",
            metric.name(),
            started.elapsed().as_secs_f64(),
            out.display(),
            args.csv
                .map(|c| format!(", {}", c.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}
