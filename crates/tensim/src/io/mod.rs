//! Model files (`tensim/1`, FORMAT.md): safetensors weights plus an architecture description,
//! from a sidecar JSON file or the safetensors metadata key `"tensim"`. Every file tensim writes
//! goes to a temporary file in the same folder and is renamed into place.

mod header;
pub mod pytorch;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::arch::{Arch, AttentionSpec, BilinearSpec, LayerSpec, LinearSpec};
use crate::error::{Error, Result, TensorPlace};
use crate::layers::{Attention, Bilinear, Layer, Linear};
use crate::layouts::Prepare;
use crate::linalg::from_row_major;
use crate::model::Model;

/// Safetensors metadata key holding the architecture JSON.
pub const METADATA_KEY: &str = "tensim";

/// A safetensors file read into memory.
pub struct TensorFile {
    pub path: PathBuf,
    bytes: Vec<u8>,
}

/// Name, dtype and shape of one stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

impl TensorFile {
    /// Read and validate the file's header and data layout.
    pub fn open(path: &Path) -> Result<TensorFile> {
        TensorFile::open_key(path, None)
    }

    /// Read a safetensors file or a PyTorch checkpoint (told apart by their first bytes); `key`
    /// names the entry of a checkpoint's saved dict that holds the state dict (see
    /// [`pytorch::to_safetensors`]; a safetensors file has one state dict and ignores it).
    pub fn open_key(path: &Path, key: Option<&str>) -> Result<TensorFile> {
        let bytes = header::read(path)?;
        if pytorch::is_zip(&bytes) {
            let bytes = pytorch::to_safetensors(path, &bytes, key)?;
            return TensorFile::from_bytes(path, bytes);
        }
        if pytorch::is_legacy(&bytes) {
            return Err(pytorch::legacy_error(path));
        }
        TensorFile::from_bytes(path, bytes)
    }

    /// Validate safetensors `bytes` held in memory; `origin` names them in messages.
    pub fn from_bytes(origin: &Path, bytes: Vec<u8>) -> Result<TensorFile> {
        if let Some(name) = header::duplicate_key(&bytes) {
            return Err(Error::Corrupt {
                path: origin.to_path_buf(),
                reason: format!(
                    "\"{name}\" appears twice in the header (which one is meant cannot be told)"
                ),
            });
        }
        let file = TensorFile {
            path: origin.to_path_buf(),
            bytes,
        };
        file.parse()?;
        Ok(file)
    }

    fn parse(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            reason: header::foreign(&self.bytes).unwrap_or_else(|| e.to_string()),
        })
    }

    /// blake3 hash of the file's bytes, hex (the checkpoint's identity for resumable work).
    pub fn content_hash(&self) -> String {
        blake3::hash(&self.bytes).to_hex().to_string()
    }

    /// The header metadata (string to string), if any.
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    /// The architecture embedded under the `"tensim"` metadata key, if any.
    pub fn embedded_arch(&self) -> Result<Option<Arch>> {
        match self.metadata()?.get(METADATA_KEY) {
            None => Ok(None),
            Some(text) => Arch::from_json(
                text,
                &format!("{} (metadata \"{METADATA_KEY}\")", self.path.display()),
            )
            .map(Some),
        }
    }

    /// `arch` with a named layout resolved against this file's tensors (else `arch` itself).
    pub fn describe(&self, arch: &Arch) -> Result<Arch> {
        match arch.named {
            None => Ok(arch.clone()),
            Some(_) => {
                crate::layouts::resolve(arch, &self.tensors()?, &self.path.display().to_string())
            }
        }
    }

    /// Every stored tensor, sorted by name.
    pub fn tensors(&self) -> Result<Vec<TensorInfo>> {
        let st = self.parse()?;
        let mut out: Vec<TensorInfo> = st
            .iter()
            .map(|(name, view)| TensorInfo {
                name: name.to_string(),
                dtype: format!("{:?}", view.dtype()),
                shape: view.shape().to_vec(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The stored tensors `arch` does not use (a description that covers only part of a
    /// checkpoint is a likely mistake).
    pub fn unused_tensors(&self, arch: &Arch) -> Result<Vec<String>> {
        let used = self.describe(arch)?.tensor_names();
        Ok(self
            .tensors()?
            .into_iter()
            .map(|t| t.name)
            .filter(|n| !used.contains(n))
            .collect())
    }

    /// Build the model `arch` describes from this file's tensors (prepared first where the
    /// description says so).
    pub fn model(&self, arch: &Arch) -> Result<Model> {
        if arch.named.is_some() {
            return self.model(&self.describe(arch)?);
        }
        if !arch.prepare.is_empty() {
            let (file, plain) = self.prepared(arch)?;
            return file.model(&plain);
        }
        let st = self.parse()?;
        let reader = Reader {
            file: self,
            st: &st,
        };
        let mut dim = arch.input.dim;
        let mut layers = Vec::with_capacity(arch.layers.len());
        for (i, spec) in arch.layers.iter().enumerate() {
            let layer = match spec {
                LayerSpec::Linear(s) => Layer::Linear(reader.linear(i, s, dim)?),
                LayerSpec::Bilinear(s) => Layer::Bilinear(reader.bilinear(i, s, dim)?),
                LayerSpec::Attention(s) => Layer::Attention(Box::new(reader.attention(i, s, dim)?)),
            };
            dim = layer.out_dim();
            layers.push(layer);
        }
        Model::new(arch.input.dim, arch.input.n_ctx, layers)
            .map_err(|e| e.context(self.path.display().to_string()))
    }
}

impl TensorFile {
    /// This file with `arch.prepare` applied (the tensors it changes as f64, the rest as
    /// stored), and `arch` without it.
    pub fn prepared(&self, arch: &Arch) -> Result<(TensorFile, Arch)> {
        let st = self.parse()?;
        let reader = Reader {
            file: self,
            st: &st,
        };
        // Tensors changed so far: name → (shape, row-major f64 values).
        type Changed = HashMap<String, (Vec<usize>, Vec<f64>)>;
        let mut changed = Changed::new();
        let read = |changed: &Changed, name: &str, layer: usize, role: &str| {
            if let Some(t) = changed.get(name) {
                return Ok(t.clone());
            }
            let rank = st.tensor(name).map_or(0, |v| v.shape().len());
            reader.read(layer, role, name, &vec![Axis::Free("n", false); rank])
        };
        for step in &arch.prepare {
            match step {
                Prepare::Transpose { tensor, layer } => {
                    let (shape, v) =
                        read(&changed, tensor, *layer, "embedding table (vocab, d_model)")?;
                    let [r, c] = shape[..] else {
                        return Err(Error::Data {
                            path: self.path.clone(),
                            reason: format!(
                                "tensor \"{tensor}\" has shape {shape:?}, expected a matrix"
                            ),
                        });
                    };
                    let t = (0..c * r).map(|k| v[(k % r) * c + k / r]).collect();
                    changed.insert(tensor.clone(), (vec![c, r], t));
                }
                Prepare::FoldNorm {
                    weight,
                    energy,
                    eps,
                    layer,
                } => {
                    let (shape, mut w) = read(&changed, weight, *layer, "weight")?;
                    let (_, e) = read(&changed, energy, *layer, "frozen normalisation energy")?;
                    let cols = *shape.last().unwrap_or(&0);
                    if shape.len() != 2 || !(e.len() == 1 || e.len() == cols) {
                        return Err(Error::Data {
                            path: self.path.clone(),
                            reason: format!(
                                "\"{energy}\" has {} values and \"{weight}\" shape {shape:?}: \
                                 one energy, or one per input of the matrix, is expected",
                                e.len()
                            ),
                        });
                    }
                    if let Some(bad) = e.iter().find(|&&x| x + eps <= 0.0) {
                        return Err(Error::Data {
                            path: self.path.clone(),
                            reason: format!("\"{energy}\" holds {bad}: an energy must be positive"),
                        });
                    }
                    // W[:, j] / √(e_j + ε)
                    for (k, x) in w.iter_mut().enumerate() {
                        *x /= (e[if e.len() == 1 { 0 } else { k % cols }] + eps).sqrt();
                    }
                    changed.insert(weight.clone(), (shape, w));
                }
            }
        }
        let bytes: HashMap<&String, Vec<u8>> = changed
            .iter()
            .map(|(n, (_, v))| (n, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views = st
            .iter()
            .map(|(name, view)| match changed.get(name) {
                None => Ok((name.to_string(), view)),
                Some((shape, _)) => {
                    TensorView::new(Dtype::F64, shape.clone(), &bytes[&name.to_string()])
                        .map(|v| (name.to_string(), v))
                        .map_err(|e| Error::Invalid(e.to_string()))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let out = safetensors::serialize(views, Some(self.metadata()?))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let plain = Arch {
            prepare: Vec::new(),
            ..arch.clone()
        };
        Ok((TensorFile::from_bytes(&self.path, out)?, plain))
    }
}

/// Load a model: `weights` (safetensors) described by `arch` (a sidecar JSON file) or by the
/// file's own `"tensim"` metadata.
pub fn load(weights: &Path, arch: Option<&Path>) -> Result<Model> {
    let file = TensorFile::open(weights)?;
    let arch = resolve_arch(&file, arch)?;
    file.model(&arch)
}

/// [`load`] with the description already parsed (`None`: the file's own) and the key of a
/// PyTorch checkpoint's state dict ([`TensorFile::open_key`]).
pub fn load_with(weights: &Path, arch: Option<&Arch>, key: Option<&str>) -> Result<Model> {
    Ok(load_with_unused(weights, arch, key)?.0)
}

/// [`load_with`], and the stored tensors the description does not use (from the same read).
pub fn load_with_unused(
    weights: &Path,
    arch: Option<&Arch>,
    key: Option<&str>,
) -> Result<(Model, Vec<String>)> {
    let file = TensorFile::open_key(weights, key)?;
    let arch = match arch {
        Some(a) => file.describe(a)?,
        None => resolve_arch(&file, None)?,
    };
    Ok((file.model(&arch)?, file.unused_tensors(&arch)?))
}

/// The architecture for `file`: the sidecar if given, else the embedded description.
pub fn resolve_arch(file: &TensorFile, arch: Option<&Path>) -> Result<Arch> {
    match arch {
        Some(p) => Arch::from_file(p),
        None => file.embedded_arch()?.ok_or_else(|| Error::NoArch {
            path: file.path.clone(),
        }),
    }
}

/// Expected size of one tensor axis.
#[derive(Clone, Copy)]
enum Axis {
    Is(usize),
    /// A size the tensor itself defines (named for messages), optionally required even.
    Free(&'static str, bool),
}

struct Reader<'a> {
    file: &'a TensorFile,
    st: &'a SafeTensors<'a>,
}

impl Reader<'_> {
    /// Read tensor `name` as f64 (row-major), checking its shape against `axes`.
    fn read(
        &self,
        layer: usize,
        role: &str,
        name: &str,
        axes: &[Axis],
    ) -> Result<(Vec<usize>, Vec<f64>)> {
        let path = self.file.path.clone();
        let place = || {
            Box::new(TensorPlace {
                path: path.clone(),
                name: name.to_string(),
                layer,
                role: role.to_string(),
            })
        };
        let view = self.st.tensor(name).map_err(|_| Error::MissingTensor {
            place: place(),
            hint: self.near_names(name),
        })?;
        let shape = view.shape().to_vec();
        let fits = shape.len() == axes.len()
            && shape.iter().zip(axes).all(|(&n, a)| match *a {
                Axis::Is(m) => n == m,
                Axis::Free(_, even) => n > 0 && (!even || n % 2 == 0),
            });
        if !fits {
            let expected = axes
                .iter()
                .map(|a| match *a {
                    Axis::Is(m) => m.to_string(),
                    Axis::Free(s, _) => s.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::Shape {
                place: place(),
                expected: format!("[{expected}]"),
                actual: shape,
            });
        }
        let values = to_f64(&view).ok_or_else(|| Error::Dtype {
            path: path.clone(),
            name: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                path,
                name: name.to_string(),
                index,
                value: values[index],
            });
        }
        Ok((shape, values))
    }

    /// " (the file has: …)" with stored names sharing the module prefix or the last component.
    fn near_names(&self, name: &str) -> String {
        let (prefix, tail) = name.rsplit_once('.').unwrap_or(("", name));
        let mut near: Vec<String> = self
            .st
            .names()
            .into_iter()
            .filter(|n| {
                n.ends_with(tail) || (!prefix.is_empty() && n.starts_with(&format!("{prefix}.")))
            })
            .map(str::to_string)
            .collect();
        near.sort();
        near.truncate(6);
        if near.is_empty() {
            format!(
                " (the file holds {} tensors; `tensim inspect` lists them)",
                self.st.len()
            )
        } else {
            format!(" (the file has: {})", near.join(", "))
        }
    }

    fn matrix(
        &self,
        layer: usize,
        role: &str,
        name: &str,
        rows: Axis,
        cols: Axis,
    ) -> Result<faer::Mat<f64>> {
        let (shape, v) = self.read(layer, role, name, &[rows, cols])?;
        Ok(from_row_major(shape[0], shape[1], &v))
    }

    fn vector(
        &self,
        layer: usize,
        role: &str,
        name: &Option<String>,
        len: usize,
    ) -> Result<Option<Vec<f64>>> {
        name.as_ref()
            .map(|n| self.read(layer, role, n, &[Axis::Is(len)]).map(|(_, v)| v))
            .transpose()
    }

    fn linear(&self, i: usize, s: &LinearSpec, dim: usize) -> Result<Linear> {
        let weight = self.matrix(
            i,
            "weight",
            &s.weight,
            Axis::Free("out", false),
            Axis::Is(dim),
        )?;
        let bias = self.vector(i, "bias", &s.bias, weight.nrows())?;
        Ok(Linear { weight, bias })
    }

    fn attention(&self, i: usize, s: &AttentionSpec, dim: usize) -> Result<Attention> {
        let square =
            |role: &str, name: &str| self.matrix(i, role, name, Axis::Is(dim), Axis::Is(dim));
        let bias = |role: &str, name: &Option<String>| self.vector(i, role, name, dim);
        let a = Attention {
            n_head: s.n_head,
            q1: square("q1", &s.q1)?,
            k1: square("k1", &s.k1)?,
            q2: square("q2", &s.q2)?,
            k2: square("k2", &s.k2)?,
            v: square("v", &s.v)?,
            o: square("o", &s.o)?,
            q1_bias: bias("q1_bias", &s.q1_bias)?,
            k1_bias: bias("k1_bias", &s.k1_bias)?,
            q2_bias: bias("q2_bias", &s.q2_bias)?,
            k2_bias: bias("k2_bias", &s.k2_bias)?,
            mask: s.mask,
            rotary: s.rotary.as_ref().map(|r| r.base),
            residual: s.residual,
        };
        if !dim.is_multiple_of(s.n_head)
            || (a.rotary.is_some() && !(dim / s.n_head).is_multiple_of(2))
        {
            return Err(Error::Model(format!(
                "{}: layer {i} (attention): n_head {} must divide d_model {dim}{}",
                self.file.path.display(),
                s.n_head,
                if a.rotary.is_some() {
                    " into heads of even size (rotary rotates pairs of coordinates)"
                } else {
                    ""
                }
            )));
        }
        Ok(a)
    }

    fn bilinear(&self, i: usize, s: &BilinearSpec, dim: usize) -> Result<Bilinear> {
        let (left, right) = match (&s.left, &s.right, &s.left_right) {
            (Some(l), Some(r), _) => {
                let left = self.matrix(i, "left", l, Axis::Free("h", false), Axis::Is(dim))?;
                let right = self.matrix(i, "right", r, Axis::Is(left.nrows()), Axis::Is(dim))?;
                (left, right)
            }
            (_, _, Some(lr)) => {
                let fused =
                    self.matrix(i, "left_right", lr, Axis::Free("2h", true), Axis::Is(dim))?;
                let h = fused.nrows() / 2;
                (
                    fused.subrows(0, h).to_owned(),
                    fused.subrows(h, h).to_owned(),
                )
            }
            _ => unreachable!("validated by Arch"),
        };
        let h = left.nrows();
        let down = s
            .down
            .as_ref()
            .map(|n| self.matrix(i, "down", n, Axis::Free("out", false), Axis::Is(h)))
            .transpose()?;
        let (left_bias, right_bias) = match &s.left_right_bias {
            Some(_) => {
                let v = self
                    .vector(i, "left_right_bias", &s.left_right_bias, 2 * h)?
                    .unwrap();
                (Some(v[..h].to_vec()), Some(v[h..].to_vec()))
            }
            None => (
                self.vector(i, "left_bias", &s.left_bias, h)?,
                self.vector(i, "right_bias", &s.right_bias, h)?,
            ),
        };
        let out = down.as_ref().map_or(h, |d| d.nrows());
        let down_bias = self.vector(i, "down_bias", &s.down_bias, out)?;
        if s.residual.is_some() && out != dim {
            return Err(Error::Model(format!(
                "{}: layer {i} (bilinear): a residual needs equal input and output sizes, but \
                 input is {dim} and output is {out}{}",
                self.file.path.display(),
                if s.down.is_none() {
                    " (no \"down\": the output is the hidden product)"
                } else {
                    ""
                }
            )));
        }
        Ok(Bilinear {
            left,
            right,
            down,
            left_bias,
            right_bias,
            down_bias,
            residual: s.residual,
        })
    }
}

/// Stored values as f64 (little-endian F16, BF16, F32, F64); `None` for other dtypes.
fn to_f64(view: &TensorView<'_>) -> Option<Vec<f64>> {
    let data = view.data();
    let chunks = |n: usize| data.chunks_exact(n);
    Some(match view.dtype() {
        Dtype::F64 => chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F32 => chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F16 => chunks(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::BF16 => chunks(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        _ => return None,
    })
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
/// On any failure the previous content of `path` is left intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("folder {} does not exist", dir.display()),
            ),
        ));
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    // Unique per process and call: threads writing the same file (equal tiles) must not share
    // a temporary file.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.{}.{call}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Save `model` as a self-describing `tensim/1` file: f64 tensors under canonical names
/// (`layers.{i}.{role}`) and the architecture in the `"tensim"` metadata key. Reloading gives
/// the identical model.
pub fn save(model: &Model, path: &Path) -> Result<()> {
    if model.law().is_some() {
        return Err(Error::Invalid(format!(
            "{}: a model read under per-position input statistics has no file form (save the \
             model itself)",
            path.display()
        )));
    }
    write_atomic(path, &serialize(model, HashMap::new())?)
}

/// blake3 hash of the model's `tensim/1` serialisation: equal to the content hash of the file
/// [`save`] writes, so in-memory models and saved checkpoints share resumable tiles; a law of
/// its positions is hashed after it.
pub fn model_hash(model: &Model) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(&serialize(model, HashMap::new())?);
    if let Some(law) = model.law() {
        law.values().for_each(|v| {
            h.update(&v.to_le_bytes());
        });
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Every parameter of `model` as `(canonical name, shape, row-major values)`, in layer order.
pub fn parameter_tensors(model: &Model) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let mut out = Vec::new();
    for (i, layer) in model.layers().iter().enumerate() {
        for (role, values) in layer.parameters() {
            let shape = match (layer, role) {
                (Layer::Linear(l), "weight") => vec![l.weight.nrows(), l.weight.ncols()],
                (Layer::Bilinear(b), "left" | "right") => vec![b.hidden(), b.in_dim()],
                (Layer::Bilinear(b), "down") => vec![b.out_dim(), b.hidden()],
                (Layer::Attention(a), "q1" | "k1" | "q2" | "k2" | "v" | "o") => {
                    vec![a.dim(), a.dim()]
                }
                _ => vec![values.len()],
            };
            out.push((Model::tensor_name(i, role), shape, values));
        }
    }
    out
}

/// The bytes of a self-describing `tensim/1` file of `model`, with `metadata` (string pairs)
/// stored beside the architecture.
pub fn serialize(model: &Model, mut metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    metadata.insert(METADATA_KEY.to_string(), model.arch().to_json());
    f64_safetensors(&parameter_tensors(model), metadata)
}

/// Safetensors bytes of named f64 tensors `(name, shape, row-major values)`.
pub fn f64_safetensors(
    tensors: &[(String, Vec<usize>, Vec<f64>)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            TensorView::new(Dtype::F64, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Invalid(format!("tensor \"{name}\" of shape {shape:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Invalid(e.to_string()))
}

/// The model `arch` describes, from named tensors held in memory (a PyTorch `state_dict`);
/// `origin` names them in messages. Every check of a file applies.
pub fn model_from_tensors(
    tensors: &[(String, Vec<usize>, Vec<f64>)],
    arch: &Arch,
    origin: &str,
) -> Result<Model> {
    let bytes = f64_safetensors(tensors, HashMap::new())?;
    TensorFile::from_bytes(Path::new(origin), bytes)?.model(arch)
}

/// Embed `arch` into a copy of `input` (all tensors kept as stored, other metadata kept), after
/// checking that the weights load under it. `input` may be a PyTorch checkpoint (`key`: its
/// state dict's entry); the copy is safetensors.
pub fn pack(arch_path: &Path, input: &Path, key: Option<&str>, output: &Path) -> Result<Model> {
    let file = TensorFile::open_key(input, key)?;
    let arch = file.describe(&Arch::from_file(arch_path)?)?;
    let (file, arch) = match arch.prepare.is_empty() {
        true => (file, arch),
        false => file.prepared(&arch)?,
    };
    let model = file.model(&arch)?;
    let st = file.parse()?;
    let mut meta = file.metadata()?;
    meta.insert(METADATA_KEY.to_string(), arch.to_json());
    let bytes = safetensors::serialize(st.tensors(), Some(meta))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    write_atomic(output, &bytes)?;
    Ok(model)
}

/// Write a C-ordered f64 `.npy` array atomically.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f64]) -> Result<()> {
    write_atomic(
        path,
        &npy_bytes(shape, data).map_err(|e| Error::io(path, e))?,
    )
}

/// The bytes of an f64 `.npy` file.
pub fn npy_bytes(shape: &[usize], data: &[f64]) -> std::io::Result<Vec<u8>> {
    use npyz::WriterBuilder;
    assert_eq!(shape.iter().product::<usize>(), data.len());
    let mut bytes = Vec::new();
    let shape: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    let mut w = npyz::WriteOptions::<f64>::new()
        .default_dtype()
        .shape(&shape)
        .writer(&mut bytes)
        .begin_nd()?;
    w.extend(data.iter().copied())?;
    w.finish()?;
    Ok(bytes)
}

/// Read an f64 `.npy` array written by [`write_npy`] (or numpy): `(shape, values)`.
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    parse_npy(path, &std::fs::read(path).map_err(|e| Error::io(path, e))?)
}

/// [`read_npy`] of bytes in memory (`path` names them in messages).
pub fn parse_npy(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<f64>)> {
    let bad = |e: std::io::Error| Error::Data {
        path: path.to_path_buf(),
        reason: format!("not a valid f64 .npy file: {e}"),
    };
    let npy = npyz::NpyFile::new(bytes).map_err(bad)?;
    let shape = npy.shape().iter().map(|&s| s as usize).collect();
    let values = npy.into_vec::<f64>().map_err(bad)?;
    Ok((shape, values))
}
