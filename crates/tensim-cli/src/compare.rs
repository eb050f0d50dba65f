//! `tensim compare A B`: one pair under one metric.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tensim::linalg::Par;
use tensim::metrics::{self, Kind, Options};

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
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CompareArgs) -> Result<()> {
    let metric = metric(args.metric, &args.sym, args.gauss.options(), &args.inputs)?;
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
    let null = args.null.null.map(|k| (k, args.inputs.seed));
    let r =
        metrics::compare_calibrated(&ma, &mb, &metric, data.as_ref(), &opts, dist.as_ref(), null)
            .with_context(|| format!("comparing {} with {}", args.a.display(), args.b.display()))?;
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
