//! `tensim phases MATRIX -k K`: the optimal split of a similarity matrix into contiguous phases.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use tensim::io;

use crate::args::draw_heatmap;

#[derive(Args)]
pub struct PhasesArgs {
    /// Similarity matrix written by `tensim matrix`.
    matrix: PathBuf,
    /// Number of phases.
    #[arg(short, long)]
    k: usize,
    /// Labels, one per line (default: indices). With --log-steps they must be step numbers.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Heat-map with the phases outlined (.png or .svg).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Place checkpoints on a log(step + 1) axis.
    #[arg(long)]
    log_steps: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(args: PhasesArgs) -> Result<()> {
    let (matrix, k) = (&args.matrix, args.k);
    if let Some(p) = &args.plot {
        tensim::plot::format_of(p)?;
    }
    let (shape, values) = io::read_npy(matrix)?;
    let n = shape[0];
    if shape.len() != 2 || shape[1] != n {
        bail!(
            "{}: expected a square matrix, got shape {shape:?}",
            matrix.display()
        );
    }
    let sim = tensim::linalg::from_row_major(n, n, &values);
    let labels: Vec<String> = match &args.labels {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading --labels {}", f.display()))?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        None => (0..n).map(|i| i.to_string()).collect(),
    };
    if labels.len() != n {
        bail!("{} labels for a {n}×{n} matrix", labels.len());
    }
    let phases = tensim::phases::segment(&sim, k)?;
    if args.json {
        let v = json!({"starts": phases.starts, "cost": phases.cost, "labels": labels});
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "{k} phases (within-phase dissimilarity {:.6}):",
            phases.cost
        );
        let mut ends: Vec<usize> = phases.starts[1..].to_vec();
        ends.push(n);
        for (p, (&a, &b)) in phases.starts.iter().zip(&ends).enumerate() {
            println!(
                "  phase {p}: checkpoints {a}..{} ({} … {})",
                b - 1,
                labels[a],
                labels[b - 1]
            );
        }
    }
    if let Some(path) = &args.plot {
        let steps: Option<Vec<f64>> = labels.iter().map(|l| l.parse().ok()).collect();
        let title = format!("similarity, {n} checkpoints, {k} phases");
        draw_heatmap(&sim, path, title, labels, steps, args.log_steps, Some(k))?;
    }
    Ok(())
}
