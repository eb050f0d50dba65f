//! `tensim pack --arch A IN OUT`: embed an architecture description into a safetensors file (IN
//! may be a PyTorch checkpoint: OUT is then its state dict as safetensors).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tensim::io;

use crate::args::KeyArg;

#[derive(Args)]
pub struct PackArgs {
    /// Architecture JSON to embed.
    #[arg(long)]
    arch: PathBuf,
    #[command(flatten)]
    key: KeyArg,
    input: PathBuf,
    output: PathBuf,
}

pub fn run(args: PackArgs) -> Result<()> {
    let m = io::pack(
        &args.arch,
        &args.input,
        args.key.key.as_deref(),
        &args.output,
    )?;
    println!(
        "wrote {} ({} layers, {} parameters, architecture embedded)",
        args.output.display(),
        m.layers().len(),
        m.param_count()
    );
    Ok(())
}
