//! Finished tiles of an all-pairs matrix, kept in a folder so that an interrupted run resumes.
//!
//! A tile is named by the hash of what it depends on (metric and the content hashes of its row
//! and column checkpoints), so a changed checkpoint invalidates exactly the tiles it is part of,
//! and adding checkpoints or reordering them reuses whatever still matches. Tiles are `.npy`
//! files written atomically; `manifest.json` records the checkpoints of the latest run.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::checkpoints::Checkpoint;
use crate::error::{Error, Result};
use crate::io;

/// A folder of finished tiles.
pub struct TileStore {
    dir: PathBuf,
}

impl TileStore {
    /// Open (creating if needed) the tile folder and record the run's manifest.
    pub fn open(dir: &Path, metric: &str, checkpoints: &[Checkpoint]) -> Result<TileStore> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let entries: Vec<_> = checkpoints
            .iter()
            .map(|c| json!({"path": c.name, "hash": c.hash}))
            .collect();
        let manifest = json!({
            "format": "tensim-tiles/1",
            "metric": metric,
            "checkpoints": entries,
        });
        io::write_atomic(
            &dir.join("manifest.json"),
            serde_json::to_string_pretty(&manifest).unwrap().as_bytes(),
        )?;
        Ok(TileStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The key of a tile: metric and the content hashes of its rows and columns.
    pub fn key(metric: &str, rows: &[&str], cols: &[&str]) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"tensim-tile/1\0");
        h.update(metric.as_bytes());
        for part in [rows, cols] {
            h.update(b"\0");
            for r in part {
                h.update(r.as_bytes());
                h.update(b",");
            }
        }
        h.finalize().to_hex()[..32].to_string()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("tile-{key}.npy"))
    }

    /// A finished tile of the given shape, if stored and intact.
    pub fn get(&self, key: &str, shape: &[usize]) -> Option<Vec<f64>> {
        match io::read_npy(&self.path(key)) {
            Ok((s, v)) if s == shape => Some(v),
            _ => None,
        }
    }

    /// Store a finished tile (atomic write).
    pub fn put(&self, key: &str, shape: &[usize], values: &[f64]) -> Result<()> {
        io::write_npy(&self.path(key), shape, values)
    }
}
