//! `tensim inspect FILE`: a model's layers, size, degree and stored tensors.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;
use tensim::io;

use crate::args::KeyArg;

#[derive(Args)]
pub struct InspectArgs {
    file: PathBuf,
    /// Architecture JSON (otherwise the file's embedded "tensim" metadata).
    #[arg(long)]
    arch: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArg,
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let (file, arch, json) = (args.file.as_path(), args.arch.as_deref(), args.json);
    let tf = io::TensorFile::open_key(file, args.key.key.as_deref())?;
    let stored = tf.tensors()?;
    let description = tf.describe(&io::resolve_arch(&tf, arch)?)?;
    let model = tf.model(&description)?;
    let used = description.tensor_names();
    let unused = tf.unused_tensors(&description)?;
    if json {
        let tensors: Vec<_> = stored
            .iter()
            .map(|t| json!({"name": t.name, "dtype": t.dtype, "shape": t.shape, "used": used.contains(&t.name)}))
            .collect();
        let v = json!({
            "file": file.display().to_string(),
            "architecture": serde_json::to_value(&description)?,
            "parameters": model.param_count(),
            "degree": model.degree(),
            "input_dim": model.in_dim(),
            "output_dim": model.out_dim(),
            "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("file        {}", file.display());
    println!(
        "input       dim {}, n_ctx {}",
        model.in_dim(),
        model.input().n_ctx
    );
    println!("output      dim {}", model.out_dim());
    println!("parameters  {}", model.param_count());
    match model.degree() {
        Some(d) => println!("degree      {d} (polynomial degree in the input)"),
        None => println!("degree      more than 2^64 (polynomial degree in the input)"),
    }
    println!("layers:");
    let residual = |r: Option<tensim::arch::Residual>| {
        r.map(|r| format!(", residual {:?} scale {}", r.mode, r.scale).to_lowercase())
            .unwrap_or_default()
    };
    for (i, layer) in model.layers().iter().enumerate() {
        let extra = match layer {
            tensim::Layer::Bilinear(b) => format!(
                " hidden {}{}{}",
                b.hidden(),
                if b.down.is_none() { ", no down" } else { "" },
                residual(b.residual)
            ),
            tensim::Layer::Attention(a) => format!(
                " {} heads, mask {:?}{}{}",
                a.n_head,
                a.mask,
                a.rotary
                    .map(|b| format!(", rotary base {b}"))
                    .unwrap_or_default(),
                residual(a.residual)
            )
            .to_lowercase(),
            tensim::Layer::Linear(_) => String::new(),
        };
        println!(
            "  {i:>3}  {:<9} {} → {}{extra}",
            layer.kind(),
            layer.in_dim(),
            layer.out_dim()
        );
    }
    println!("tensors:");
    for t in &stored {
        let mark = if used.contains(&t.name) {
            ""
        } else {
            "   (not used by the architecture)"
        };
        println!("  {:<40} {:<5} {:?}{mark}", t.name, t.dtype, t.shape);
    }
    if !unused.is_empty() {
        println!(
            "{} stored tensor(s) are not used by the architecture",
            unused.len()
        );
    }
    Ok(())
}
