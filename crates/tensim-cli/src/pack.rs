//! `tensim pack --arch A IN OUT`: embed an architecture description into a safetensors file.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tensim::io;

#[derive(Args)]
pub struct PackArgs {
    /// Architecture JSON to embed.
    #[arg(long)]
    arch: PathBuf,
    input: PathBuf,
    output: PathBuf,
}

pub fn run(args: PackArgs) -> Result<()> {
    let m = io::pack(&args.arch, &args.input, &args.output)?;
    println!(
        "wrote {} ({} layers, {} parameters, architecture embedded)",
        args.output.display(),
        m.layers().len(),
        m.param_count()
    );
    Ok(())
}
