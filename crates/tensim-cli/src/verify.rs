//! `tensim verify A B`: the exact tensor inner products against Monte Carlo.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tensim::linalg::Par;

use crate::args::ArchArgs;

#[derive(Args)]
pub struct VerifyArgs {
    a: PathBuf,
    b: PathBuf,
    #[command(flatten)]
    arch: ArchArgs,
    #[arg(long, default_value_t = 100_000)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

pub fn run(args: VerifyArgs) -> Result<()> {
    let (ma, mb) = args.arch.load_pair(&args.a, &args.b)?;
    let v = tensim::montecarlo::verify(&ma, &mb, args.samples, args.seed, Par::rayon(0))?;
    if args.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print!("{v}");
    }
    Ok(())
}
