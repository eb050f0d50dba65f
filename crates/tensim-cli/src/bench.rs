//! `tensim bench`: this machine's GEMM rate and the reference shapes' throughput.

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// 16 checkpoints instead of 64 (a smoke test).
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let r = tensim::bench::run(args.quick)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{r}");
    }
    Ok(())
}
