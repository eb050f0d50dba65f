//! Checkpoint lists: files, globs or folders, ordered by the step number in their names, with a
//! content hash per file (the identity of a checkpoint for resumable work).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io;
use crate::model::Model;

/// One checkpoint of a trajectory: its model, what messages call it, its step and the key of
/// its stored tiles.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub model: Model,
    /// The file's path, or a name given to an in-memory model.
    pub name: String,
    /// The last integer in the file stem (`ckpt_01200.safetensors` → 1200), if any.
    pub step: Option<u64>,
    /// Stored tensors the description does not use (empty for models held in memory).
    pub unused: Vec<String>,
    /// Key of the stored tiles: [`io::model_hash`] of the model as loaded (a file read with
    /// another description, or changed on disk, is another model), or any string that changes
    /// with the model.
    pub hash: String,
}

impl Checkpoint {
    /// The checkpoint's model read under `dist` ([`InputDistribution::apply`]), keyed anew.
    pub fn under(self, dist: &crate::distribution::InputDistribution) -> Result<Checkpoint> {
        let model = dist.apply(&self.model)?;
        Ok(Checkpoint {
            hash: io::model_hash(&model)?,
            model,
            ..self
        })
    }

    /// An in-memory model named `name`, keyed by `hash`.
    pub fn new(model: Model, name: impl Into<String>, hash: impl Into<String>) -> Checkpoint {
        Checkpoint {
            model,
            name: name.into(),
            step: None,
            unused: Vec::new(),
            hash: hash.into(),
        }
    }
}

/// Models held in memory as checkpoints, each named and keyed by its name.
pub fn in_memory(models: &[Model], names: &[String]) -> Vec<Checkpoint> {
    models
        .iter()
        .zip(names)
        .map(|(m, n)| Checkpoint::new(m.clone(), n, n))
        .collect()
}

/// Extensions of the model files a folder is searched for: safetensors and PyTorch checkpoints.
pub const MODEL_EXTENSIONS: &[&str] = &["safetensors", "pt", "pth", "bin", "ckpt"];

/// Expand files, glob patterns and folders (their model files, [`MODEL_EXTENSIONS`]) into a list
/// of paths.
pub fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let text = input.to_string_lossy();
        if input.is_dir() {
            let input = &run_folder(input);
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| Error::io(input, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| MODEL_EXTENSIONS.iter().any(|e| x == *e))
                })
                .collect();
            if found.is_empty() {
                return Err(Error::Invalid(format!(
                    "{text}: no model files (.safetensors, .pt, .pth, .bin, .ckpt) in this folder"
                )));
            }
            found.sort();
            out.extend(found);
        } else if text.contains(['*', '?', '[']) && !input.exists() {
            let paths = glob::glob(&text).map_err(|e| Error::Invalid(format!("{text}: {e}")))?;
            let found: Vec<PathBuf> = paths.filter_map(|p| p.ok()).collect();
            if found.is_empty() {
                return Err(Error::Invalid(format!(
                    "{text}: the pattern matches no file"
                )));
            }
            out.extend(found);
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

/// A training run's folder `run/` holding no model files but `run/checkpoints/`: the latter.
fn run_folder(dir: &Path) -> PathBuf {
    let has_models = |d: &Path| {
        std::fs::read_dir(d).is_ok_and(|mut it| {
            it.any(|e| {
                e.is_ok_and(|e| {
                    e.path()
                        .extension()
                        .is_some_and(|x| MODEL_EXTENSIONS.iter().any(|m| x == *m))
                })
            })
        })
    };
    let sub = dir.join("checkpoints");
    match !has_models(dir) && sub.is_dir() {
        true => sub,
        false => dir.to_path_buf(),
    }
}

/// The description a training run keeps beside its checkpoints: `config.json` in the one folder
/// given (`run/` or `run/checkpoints/`) or above it, when it is a tensim/1 description or a
/// configuration tensim reads ([`crate::layouts`]).
pub fn find_description(inputs: &[PathBuf]) -> Option<PathBuf> {
    let [dir] = inputs else { return None };
    if !dir.is_dir() {
        return None;
    }
    let dir = run_folder(dir);
    [dir.join("config.json"), dir.parent()?.join("config.json")]
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v.get("format").is_some() || crate::layouts::is_lm_config(&v))
        })
}

/// The last run of digits in the file stem.
pub fn step_of(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_string_lossy();
    let end = stem.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = stem[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    stem[start..end].parse().ok()
}

/// Order by step number (natural sort); files without a number keep their order, after the rest.
pub fn natural_sort(paths: &mut [PathBuf]) {
    paths.sort_by_key(|p| (step_of(p).is_none(), step_of(p)));
}

/// Read, hash and load every checkpoint. `sidecar` describes all of them (else each file's
/// metadata); `key` names the state dict in PyTorch checkpoints.
pub fn load_with(
    paths: &[PathBuf],
    sidecar: Option<&crate::arch::Arch>,
    key: Option<&str>,
) -> Result<Vec<Checkpoint>> {
    paths
        .iter()
        .map(|path| {
            let (model, unused) = io::load_with_unused(path, sidecar, key)?;
            Ok(Checkpoint {
                hash: io::model_hash(&model)?,
                unused,
                model,
                name: path.display().to_string(),
                step: step_of(path),
            })
        })
        .collect()
}

/// Labels: from a file (one per line), from the file stems, or the step numbers where every
/// checkpoint has one.
pub fn labels(cks: &[Checkpoint], file: Option<&Path>, from_names: bool) -> Result<Vec<String>> {
    if let Some(f) = file {
        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
        let text = String::from_utf8(bytes).map_err(|_| Error::Data {
            path: f.to_path_buf(),
            reason: "not a text file (labels, one per line, are expected here)".into(),
        })?;
        let labels: Vec<String> = text
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        if labels.len() != cks.len() {
            return Err(Error::Invalid(format!(
                "{}: {} labels for {} checkpoints",
                f.display(),
                labels.len(),
                cks.len()
            )));
        }
        return Ok(labels);
    }
    let stem = |c: &Checkpoint| {
        Path::new(&c.name)
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string()
    };
    Ok(match (from_names, cks.iter().all(|c| c.step.is_some())) {
        (false, true) => cks.iter().map(|c| c.step.unwrap().to_string()).collect(),
        _ => cks.iter().map(stem).collect(),
    })
}
