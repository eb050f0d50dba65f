//! `tensim compare A B`: one pair under one metric.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use tensim::linalg::Par;
use tensim::metrics::{self, Metric, Options};

use crate::args::{ArchArgs, GaussArgs, InputArgs, SymArgs};

#[derive(Args)]
pub struct CompareArgs {
    a: PathBuf,
    b: PathBuf,
    #[command(flatten)]
    arch: ArchArgs,
    /// tensor | matrix | behavioral | cka | gaussian
    #[arg(long, default_value = "tensor")]
    metric: String,
    /// Also report the metric for each output coordinate (per-class slice similarity).
    #[arg(long)]
    per_output: bool,
    #[command(flatten)]
    sym: SymArgs,
    #[command(flatten)]
    gauss: GaussArgs,
    #[command(flatten)]
    inputs: InputArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CompareArgs) -> Result<()> {
    let full = args.sym.full(&args.inputs)?;
    let metric: Metric = args.metric.parse()?;
    let (ma, mb) = args.arch.load_pair(&args.a, &args.b)?;
    let data = metric
        .needs_inputs()
        .then(|| args.inputs.inputs(&ma))
        .transpose()?;
    let opts = Options {
        per_output: args.per_output,
        par: Par::rayon(0),
        gaussian: args.gauss.options(),
    };
    let r = match (&full, metric) {
        (Some(f), Metric::Tensor) => metrics::fullsym::similarity(&ma, &mb, &opts, f),
        (Some(_), _) => bail!("--symmetrize full applies to the tensor metric"),
        (None, _) => metrics::compare(&ma, &mb, metric, data.as_ref(), &opts),
    }
    .with_context(|| format!("comparing {} with {}", args.a.display(), args.b.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{r}");
    }
    Ok(())
}
