//! What a training demo writes: its checkpoint folder, `history.json`, similarity matrices
//! (and the means of their blocks, for its report).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

use tensim::linalg::Mat;

use crate::TrainError;

/// `out/checkpoints/`, created.
pub fn checkpoint_dir(out: &Path) -> Result<PathBuf, TrainError> {
    let dir = out.join("checkpoints");
    std::fs::create_dir_all(&dir)
        .map_err(|e| tensim::Error::Invalid(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

/// `out/history.json`: `{"config": …, "history": […]}`.
pub fn write_history(
    out: &Path,
    config: &impl Serialize,
    history: &impl Serialize,
) -> Result<(), TrainError> {
    let text =
        serde_json::to_string_pretty(&serde_json::json!({"config": config, "history": history}))
            .expect("serialisable");
    tensim::io::write_atomic(&out.join("history.json"), text.as_bytes())?;
    Ok(())
}

/// Write the square matrix `m` as `out/{name}.npy`.
pub fn write(out: &Path, name: &str, m: &Mat<f64>) -> Result<(), TrainError> {
    let n = m.nrows();
    let values: Vec<f64> = (0..n * n).map(|k| m[(k / n, k % n)]).collect();
    tensim::io::write_npy(&out.join(format!("{name}.npy")), &[n, n], &values)?;
    Ok(())
}

/// Mean of `m[i, j]` over `i ∈ rows`, `j ∈ cols`, `i ≠ j`.
pub fn block_mean(m: &Mat<f64>, rows: Range<usize>, cols: Range<usize>) -> f64 {
    let v: Vec<f64> = rows
        .flat_map(|i| {
            cols.clone()
                .filter(move |&j| j != i)
                .map(move |j| m[(i, j)])
        })
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}
