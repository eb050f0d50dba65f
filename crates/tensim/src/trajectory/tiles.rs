//! Finished tiles of an all-pairs matrix, kept in a folder so that an interrupted run resumes.
//!
//! A tile is named by the hash of what it depends on (metric and the content hashes of its row
//! and column checkpoints), so a changed checkpoint invalidates exactly the tiles it is part of,
//! and adding checkpoints or reordering them reuses whatever still matches. Tiles are `.npy`
//! files written atomically, each with the blake3 hash of its bytes beside it (`.b3`): a tile
//! altered on disk (a flipped bit, a value overwritten) fails the check and is recomputed.
//! `manifest.json` records the checkpoints of the latest run.

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
        let store = TileStore::at(dir)?;
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
        Ok(store)
    }

    /// The tile folder (created if needed), without touching its manifest.
    pub fn at(dir: &Path) -> Result<TileStore> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
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

    fn checksum_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("tile-{key}.b3"))
    }

    /// A finished tile of the given shape, if stored and intact (its bytes hash to its checksum).
    pub fn get(&self, key: &str, shape: &[usize]) -> Option<Vec<f64>> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        let sum = std::fs::read_to_string(self.checksum_path(key)).ok()?;
        if sum.trim() != blake3::hash(&bytes).to_hex().as_str() {
            return None;
        }
        match io::parse_npy(&path, &bytes) {
            Ok((s, v)) if s == shape => Some(v),
            _ => None,
        }
    }

    /// Store a finished tile and then its checksum (atomic writes: a tile interrupted between
    /// the two fails the check and is recomputed).
    pub fn put(&self, key: &str, shape: &[usize], values: &[f64]) -> Result<()> {
        let path = self.path(key);
        let bytes = io::npy_bytes(shape, values).map_err(|e| Error::io(&path, e))?;
        io::write_atomic(&path, &bytes)?;
        let sum = blake3::hash(&bytes).to_hex();
        io::write_atomic(&self.checksum_path(key), sum.as_bytes())
    }
}
