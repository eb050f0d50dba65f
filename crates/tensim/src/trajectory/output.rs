//! An all-pairs result written out: `.npy` (and `.per-output.npy`), labelled CSV, JSON
//! (`NaN` → `null`). Files are written atomically.

use std::path::Path;

use serde_json::{json, Value};

use super::AllPairs;
use crate::error::Result;
use crate::io;
use crate::linalg::Mat;

/// `m` as rows (JSON arrays; serde writes `NaN` as `null`).
fn rows(m: &Mat<f64>) -> Vec<Vec<f64>> {
    (0..m.nrows())
        .map(|i| (0..m.ncols()).map(|j| m[(i, j)]).collect())
        .collect()
}

impl AllPairs {
    /// The matrix as `(N, N)` `.npy` at `path`; the per-output matrices, if any, as
    /// `(outputs, N, N)` beside it (`PATH.per-output.npy`).
    pub fn write_npy(&self, path: &Path) -> Result<()> {
        let n = self.similarity.nrows();
        let values: Vec<f64> = rows(&self.similarity).concat();
        io::write_npy(path, &[n, n], &values)?;
        if let Some(mats) = &self.per_output {
            let v: Vec<f64> = mats.iter().flat_map(|m| rows(m).concat()).collect();
            io::write_npy(
                &path.with_extension("per-output.npy"),
                &[mats.len(), n, n],
                &v,
            )?;
        }
        Ok(())
    }

    /// The matrix as CSV with labelled rows and columns (12 decimals).
    pub fn write_csv(&self, path: &Path, labels: &[String]) -> Result<()> {
        let mut text = format!("label,{}\n", labels.join(","));
        for (l, row) in labels.iter().zip(rows(&self.similarity)) {
            let row: Vec<String> = row.iter().map(|v| format!("{v:.12}")).collect();
            text += &format!("{l},{}\n", row.join(","));
        }
        io::write_atomic(path, text.as_bytes())
    }

    /// `{"metric", "labels", "paths", "similarity"}` and `"per_output"` where computed.
    pub fn to_json(&self, metric: &str, labels: &[String], paths: &[String]) -> Value {
        let mut v = json!({"metric": metric, "labels": labels, "paths": paths,
                           "similarity": rows(&self.similarity)});
        if let Some(mats) = &self.per_output {
            v["per_output"] = mats.iter().map(rows).collect();
        }
        v
    }
}
