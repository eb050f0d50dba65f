//! `tensim init-arch CKPT`: a draft description inferred from a checkpoint's names and shapes,
//! and `tensim layouts`: the descriptions tensim reads.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use tensim::io;

use crate::args::KeyArg;

#[derive(Args)]
pub struct InitArchArgs {
    /// A checkpoint (safetensors or PyTorch).
    file: PathBuf,
    #[command(flatten)]
    key: KeyArg,
}

pub fn run(args: InitArchArgs) -> Result<()> {
    let file = io::TensorFile::open_key(&args.file, args.key.key.as_deref())?;
    let (arch, notes) = tensim::layouts::draft(&file.tensors()?);
    if arch.layers.is_empty() {
        bail!(
            "{}: no weight matrices (`NAME.weight` with two axes) to describe",
            args.file.display()
        );
    }
    println!("{}", arch.to_json());
    for note in notes {
        eprintln!("check: {note}");
    }
    let unused = file.unused_tensors(&arch)?;
    if !unused.is_empty() {
        eprintln!(
            "check: {} stored tensor(s) are not in the draft (`tensim inspect` lists them): {}",
            unused.len(),
            unused.join(", ")
        );
    }
    match file.model(&arch) {
        Ok(_) => eprintln!(
            "the draft loads {}; check it against the model's forward pass, save it and pass it \
             with --arch",
            args.file.display()
        ),
        Err(e) => eprintln!("check: the draft does not load yet: {e}"),
    }
    Ok(())
}

/// The descriptions `--arch` reads.
pub fn layouts() -> Result<()> {
    println!(
        "\
tensim/1      JSON {{\"format\": \"tensim/1\", \"input\": …, \"layers\": […]}}: linear, bilinear
              (left/right or fused left_right, optional down, residual lerp/add) and bilinear
              attention layers, each naming its tensors (README \"Model files\"); also embedded
              in a safetensors file by `tensim pack`.
lm-config     a bilinear-attention language model's training config.json (model block:
              vocab_size, d_model, n_head, n_layers, attn_type \"bilinear\", attn_scale,
              rope_base, use_bias_qk): embed.weight (vocab, d_model) → layers.{{i}}.{{q1,k1,q2,k2,
              v,o}} causal rotary attention, residual x + attn_scale·f(x) → unembed.weight with
              final_norm.running_mean_energy folded in; n_ctx 4 unless --n-ctx. Found without
              --arch as config.json beside a run folder given to `tensim matrix`.
draft         `tensim init-arch CKPT` prints a tensim/1 draft from a checkpoint's names and
              shapes (attention q1 k1 q2 k2 v o; bilinear l r [d] or left right [down]; fused
              w + p; other matrices linear) with what to check; never used unasked."
    );
    for (usage, what) in tensim::layouts::NAMED {
        let name = usage.split(':').next().unwrap_or(usage);
        println!("{name:<13} --arch {usage}: {what}");
    }
    Ok(())
}
