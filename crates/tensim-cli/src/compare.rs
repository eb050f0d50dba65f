//! `tensim compare A B`: one pair under one metric.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tensim::distribution::InputDistribution;
use tensim::linalg::Par;
use tensim::metrics::{self, Comparison, Kind, Metric, Options};
use tensim::Model;

use crate::args::{metric, ArchArgs, DistArgs, GaussArgs, InputArgs, NullArg, SymArgs};

#[derive(Args)]
pub struct CompareArgs {
    a: PathBuf,
    b: PathBuf,
    #[command(flatten)]
    arch: ArchArgs,
    #[arg(long, value_enum, default_value_t = Kind::Tensor)]
    metric: Kind,
    /// Also report the metric for each output coordinate (per-class slice similarity).
    #[arg(long)]
    per_output: bool,
    /// matrix: also the cosine of each parameter tensor (`layers.{i}.{role}`).
    #[arg(long)]
    per_tensor: bool,
    #[command(flatten)]
    sym: SymArgs,
    #[command(flatten)]
    gauss: GaussArgs,
    #[command(flatten)]
    inputs: InputArgs,
    #[command(flatten)]
    dist: DistArgs,
    #[command(flatten)]
    null: NullArg,
    /// Compare the change f_A − f_A0 (with --minus-b, of both sides), from the inner products
    /// (tensor, gaussian when exact, matrix): is this change the same as the other one?
    #[arg(long, value_name = "A0", conflicts_with = "null")]
    minus_a: Option<PathBuf>,
    /// Compare the change f_B − f_B0 (read with --arch-b or --arch).
    #[arg(long, value_name = "B0", conflicts_with = "null")]
    minus_b: Option<PathBuf>,
    /// Write the inner product's breakdown over the units (heads) of the last bilinear
    /// (attention) layers to FILE.npy (A's × B's; with --per-output also FILE.per-output.npy,
    /// outputs × A's × B's) and report the matching of A's to B's (tensor, gaussian). With
    /// --minus-a/--minus-b, of the changes: which units carry them.
    #[arg(long, value_name = "FILE.npy")]
    breakdown: Option<PathBuf>,
    /// Draw the breakdown (.png or .svg), ordered by the matching.
    #[arg(long, value_name = "FIG", requires = "breakdown")]
    plot: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CompareArgs) -> Result<()> {
    let metric = metric(args.metric, &args.sym, &args.gauss, &args.inputs)?;
    if let Some(p) = &args.plot {
        tensim::plot::format_of(p)?;
    }
    if args.breakdown.is_some() {
        metrics::breakdown::check_metric(&metric)?;
    }
    let dist = args.dist.load(metric.kind())?;
    let (ma, mb) = args.arch.load_pair(&args.a, &args.b)?;
    let data = metric
        .needs_inputs()
        .then(|| args.inputs.inputs(&ma))
        .transpose()?;
    let opts = Options {
        per_output: args.per_output,
        per_tensor: args.per_tensor,
        par: Par::rayon(0),
    };
    let what = || format!("comparing {} with {}", args.a.display(), args.b.display());
    let r = if args.minus_a.is_some() || args.minus_b.is_some() {
        changes(&args, (&ma, &mb), &metric, &opts, dist.as_ref()).with_context(what)?
    } else {
        let null = args.null.null.map(|k| (k, args.inputs.seed));
        let dist = dist.as_ref();
        let mut r =
            metrics::compare_calibrated(&ma, &mb, &metric, data.as_ref(), &opts, dist, null)
                .with_context(what)?;
        if let Some(file) = &args.breakdown {
            let b = metrics::breakdown_of(&ma, &mb, &metric, dist, r.inner, args.per_output)
                .with_context(what)?;
            crate::breakdown::write(&b, file, args.plot.as_deref())?;
            r.breakdown = Some(b);
        }
        r
    };
    if let Some(w) = &r.warning {
        eprintln!("warning: {w}");
    }
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{r}");
    }
    Ok(())
}

/// `--minus-a A0` / `--minus-b B0`: the metric between the changes `f_A − f_A0` and `f_B − f_B0`
/// (all four models read under the input distribution, if any).
fn changes(
    args: &CompareArgs,
    (a, b): (&Model, &Model),
    metric: &Metric,
    opts: &Options,
    dist: Option<&InputDistribution>,
) -> Result<Comparison> {
    let read = |m: Model| match dist {
        Some(d) => d.apply(&m),
        None => Ok(m),
    };
    let base = |path: &Option<PathBuf>, side_a| -> Result<Option<Model>> {
        match path {
            Some(p) => Ok(Some(read(args.arch.load_side(p, side_a)?)?)),
            None => Ok(None),
        }
    };
    let (a0, b0) = (base(&args.minus_a, true)?, base(&args.minus_b, false)?);
    let (a, b) = (read(a.clone())?, read(b.clone())?);
    let (a, b) = ((&a, a0.as_ref()), (&b, b0.as_ref()));
    // With a breakdown, the per-output values are the breakdown's.
    let per_output = opts.per_output && args.breakdown.is_none();
    let total = Options {
        per_output,
        ..opts.clone()
    };
    let mut r = metrics::difference::similarity(a, b, metric, &total)?;
    r.input_distribution = dist.map(|d| d.info().clone());
    if let Some(file) = &args.breakdown {
        let per_output = opts.per_output;
        let bd = metrics::breakdown::of_changes(a, b, metric, Some(r.inner), per_output)?;
        crate::breakdown::write(&bd, file, args.plot.as_deref())?;
        r.breakdown = Some(bd);
    }
    Ok(r)
}
