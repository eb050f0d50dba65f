//! `compare --breakdown FILE.npy [--plot FIG]` writes a breakdown; `tensim plot-breakdown FILE.npy`
//! draws one, rows and columns ordered by the matching.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use tensim::linalg::{from_row_major, to_row_major, Mat};
use tensim::metrics::breakdown::{Breakdown, Parts};

#[derive(Args)]
pub struct PlotBreakdownArgs {
    /// Contributions written by `tensim compare --breakdown` (parts of A × parts of B).
    file: PathBuf,
    /// The figure (.png or .svg).
    #[arg(long)]
    out: PathBuf,
    /// What the rows and columns are.
    #[arg(long, default_value = "unit")]
    parts: String,
    #[arg(long)]
    title: Option<String>,
}

pub fn plot_run(args: PlotBreakdownArgs) -> Result<()> {
    tensim::plot::format_of(&args.out)?;
    let (shape, values) = tensim::io::read_npy(&args.file)?;
    if shape.len() != 2 {
        bail!(
            "{}: expected a matrix of contributions (parts of A × parts of B), got shape {shape:?}",
            args.file.display()
        );
    }
    let c = from_row_major(shape[0], shape[1], &values);
    let title = args
        .title
        .unwrap_or_else(|| format!("contributions to ⟨A, B⟩, {} matched", args.parts));
    draw(&c, &args.parts, &title, &args.out)
}

fn draw(c: &Mat<f64>, parts: &str, title: &str, path: &Path) -> Result<()> {
    tensim::plot::breakdown(c, parts, title, path)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `FILE.npy` → `FILE.per-output.npy`.
pub fn per_output_path(file: &Path) -> PathBuf {
    file.with_extension("per-output.npy")
}

/// Write `b`'s contributions to `file` (and per output, `(outputs, A, B)`, beside it), and its
/// figure to `plot`.
pub fn write(b: &Breakdown, file: &Path, plot: Option<&Path>) -> Result<()> {
    let c = &b.contributions;
    tensim::io::write_npy(file, &[c.nrows(), c.ncols()], &to_row_major(c.as_ref()))?;
    eprintln!("wrote {}", file.display());
    if let Some(per) = &b.per_output {
        let path = per_output_path(file);
        let data: Vec<f64> = per
            .iter()
            .flat_map(|p| to_row_major(p.contributions.as_ref()))
            .collect();
        tensim::io::write_npy(&path, &[per.len(), c.nrows(), c.ncols()], &data)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = plot {
        let parts = match b.parts {
            Parts::Units => "unit",
            Parts::Heads => "head",
        };
        let title = format!(
            "contributions to ⟨A, B⟩: layer {} of A × layer {} of B",
            b.layer_a, b.layer_b
        );
        draw(c, parts, &title, path)?;
    }
    Ok(())
}
