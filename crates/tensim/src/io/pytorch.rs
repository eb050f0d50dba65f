//! PyTorch checkpoints (`torch.save`'s zip format, as `.pt`, `.pth`, `.bin` or `.ckpt`) turned
//! into the safetensors bytes every other reader works on.
//!
//! The pickle is interpreted by candle's reader into a tree of objects; no code from the file
//! runs. Every global the tree names must be one of the functions and classes PyTorch uses to
//! rebuild tensors, and is refused by name otherwise. A tensor is
//! `_rebuild_tensor_v2(storage, offset, size, stride, …)`: element `i` (row-major over `size`)
//! is `storage[offset + Σ_k i_k·stride_k]`, so views and non-contiguous tensors read as their
//! values.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use safetensors::tensor::{Dtype, TensorView};

use crate::budget;
use crate::error::{Error, Result};

/// The first bytes of a zip archive (PyTorch's format since 1.6).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// The first byte of a bare pickle (`torch.save(..., _use_new_zipfile_serialization=False)`).
pub fn is_legacy(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x80) && matches!(bytes.get(1), Some(2..=5))
}

/// The refusal of a legacy (pre-zip) checkpoint, saying how to re-save it.
pub fn legacy_error(path: &Path) -> Error {
    fail(
        path,
        "PyTorch's legacy (pre-1.6, non-zip) checkpoint format is not read; re-save it with \
         `torch.save(torch.load(path), path)` (zip format) or as safetensors"
            .into(),
    )
}

/// Globals a state dict's pickle may name: the tensor-rebuilding functions and storage classes.
const ALLOWED: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "Tensor"),
    ("torch", "Size"),
];

/// Storage classes and the safetensors dtype of their elements.
fn storage_dtype(class: &str) -> Option<Dtype> {
    Some(match class {
        "DoubleStorage" => Dtype::F64,
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        _ => return None,
    })
}

/// Largest pickle read: a state dict's is a few hundred bytes per tensor. The bound also bounds
/// how deeply the object tree can nest, which the reader's parsing thread has stack for.
const MAX_PICKLE: u64 = 2 << 20;
/// Most objects the pickle's memo may copy in all (a small file must not expand without bound).
const MAX_COPIED: usize = 2_000_000;
const STACK_BYTES: usize = 512 << 20;

fn fail(path: &Path, reason: String) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        reason,
    }
}

/// One tensor as the pickle describes it.
struct TensorRef {
    name: String,
    dtype: Dtype,
    storage: String,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// The checkpoint `bytes` (a zip archive) as safetensors bytes. `key` names the entry of the
/// saved dict that holds the state dict; without it (or without such an entry) the dict itself is
/// the state dict when it holds tensors, else its one entry that does.
pub fn to_safetensors(path: &Path, bytes: &[u8], key: Option<&str>) -> Result<Vec<u8>> {
    let bad_zip = |e: zip::result::ZipError| {
        fail(
            path,
            format!("not a valid PyTorch checkpoint (truncated or corrupt zip archive?): {e}"),
        )
    };
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(bad_zip)?;
    let pickle_name = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| {
            fail(
                path,
                "a zip archive without a data.pkl: not a checkpoint written by torch.save".into(),
            )
        })?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    if let Ok(mut order) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut text = String::new();
        let _ = order.read_to_string(&mut text);
        if text.trim() == "big" {
            return Err(fail(
                path,
                "saved on a big-endian machine; only little-endian checkpoints are read".into(),
            ));
        }
    }
    let pickle = entry(path, &mut zip, &pickle_name, MAX_PICKLE).map_err(|e| match e {
        Error::TooLarge { .. } => fail(
            path,
            format!(
                "its pickle is larger than {} MB; a state dict's is a few hundred bytes per tensor",
                MAX_PICKLE >> 20
            ),
        ),
        e => e,
    })?;
    let refs = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, || tensor_refs(path, &pickle, key))
            .map_err(|e| Error::io(path, e))?
            .join()
            .map_err(|_| fail(path, "the pickle could not be read".into()))?
    })?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut data = Vec::with_capacity(refs.len());
    for t in &refs {
        if !storages.contains_key(&t.storage) {
            let name = format!("{prefix}data/{}", t.storage);
            let bytes = entry(path, &mut zip, &name, u64::MAX)?;
            storages.insert(t.storage.clone(), bytes);
        }
        data.push(gather(path, t, &storages[&t.storage])?);
    }
    let views = refs
        .iter()
        .zip(&data)
        .map(|(t, d)| {
            TensorView::new(t.dtype, t.size.clone(), d)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| fail(path, format!("tensor \"{}\": {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| fail(path, e.to_string()))
}

/// The bytes of archive entry `name`, at most `max` of them and within the memory limit.
fn entry(
    path: &Path,
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    max: u64,
) -> Result<Vec<u8>> {
    let mut file = zip.by_name(name).map_err(|e| {
        fail(
            path,
            format!("archive entry \"{name}\" cannot be read (truncated or corrupt?): {e}"),
        )
    })?;
    if file.size() > max {
        return Err(Error::TooLarge {
            what: name.into(),
            need_gib: file.size() as f64 / f64::from(1u32 << 30),
            limit_gib: max as f64 / f64::from(1u32 << 30),
        });
    }
    budget::check(
        &format!("reading {} ({name})", path.display()),
        file.size() as f64 / 8.0,
    )?;
    let mut out = Vec::with_capacity(file.size() as usize);
    file.read_to_end(&mut out).map_err(|e| {
        fail(
            path,
            format!("archive entry \"{name}\" cannot be read (truncated or corrupt?): {e}"),
        )
    })?;
    Ok(out)
}

/// Interpret the pickle and find the state dict's tensors (runs on a thread with a large stack:
/// candle's objects are cloned and dropped recursively).
fn tensor_refs(path: &Path, pickle: &[u8], key: Option<&str>) -> Result<Vec<TensorRef>> {
    let root = interpret(path, pickle)?;
    refuse_globals(path, &root, 0)?;
    let Object::Dict(items) = root else {
        return Err(fail(
            path,
            "the saved object is not a dict (a state dict, or a dict holding one, is expected; \
             save `model.state_dict()`, not the module)"
                .into(),
        ));
    };
    let holds = |d: &[(Object, Object)]| {
        d.iter()
            .any(|(_, t)| tensor(path, "", t).ok().flatten().is_some())
    };
    let has_tensors = |v: &Object| matches!(v, Object::Dict(d) if holds(d));
    let name = |k: &Object| match k {
        Object::Unicode(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let candidates: Vec<String> = items
        .iter()
        .filter(|(_, v)| has_tensors(v))
        .map(|(k, _)| name(k))
        .collect();
    let listed = || {
        candidates
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let entry = |k: &str| items.iter().find(|(n, _)| name(n) == k).map(|(_, v)| v);
    // A bare state dict (a key given for the other file of a pair is moot).
    if holds(&items) && key.and_then(entry).is_none() {
        return state_dict(path, &items);
    }
    let state = match (key, &candidates[..]) {
        (Some(k), _) => entry(k).filter(|v| has_tensors(v)).ok_or_else(|| {
            fail(
                path,
                format!(
                    "key \"{k}\" {}; entries holding tensors: {}",
                    match entry(k) {
                        Some(_) => "holds no tensors",
                        None => "is not in the saved dict",
                    },
                    if candidates.is_empty() {
                        "none".into()
                    } else {
                        listed()
                    }
                ),
            )
        })?,
        (None, [one]) => entry(one).expect("a listed entry"),
        (None, []) => return Err(fail(path, "the checkpoint holds no tensors".into())),
        (None, _) => {
            return Err(fail(
                path,
                format!(
                    "several entries hold tensors ({}); say which state dict to read with --key \
                     NAME (key= in Python)",
                    listed()
                ),
            ))
        }
    };
    match state {
        Object::Dict(d) => state_dict(path, d),
        _ => unreachable!("has_tensors holds for dicts only"),
    }
}

/// The tensors of a state dict, by name (entries that are not tensors are skipped).
fn state_dict(path: &Path, items: &[(Object, Object)]) -> Result<Vec<TensorRef>> {
    let mut out = Vec::new();
    for (k, v) in items {
        if let Object::Unicode(name) = k {
            if let Some(t) = tensor(path, name, v)? {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// Run the pickle through candle's reader, bounding how much its memo may copy.
fn interpret(path: &Path, pickle: &[u8]) -> Result<Object> {
    if let [0x80, protocol @ 3..=255, ..] = *pickle {
        return Err(fail(
            path,
            format!(
                "pickle protocol {protocol} (torch.save(…, pickle_protocol={protocol})) is not \
                 read; re-save with PyTorch's default protocol 2"
            ),
        ));
    }
    let bad = |e: candle_core::Error| {
        // candle's message, without the backtrace it may carry.
        let e = e.to_string();
        let e = e.lines().next().unwrap_or_default();
        fail(path, format!("its pickle cannot be read (corrupt?): {e}"))
    };
    let mut r = Cursor::new(pickle);
    let mut stack = Stack::empty();
    let mut copied = 0usize;
    loop {
        let op = pickle.get(r.position() as usize).copied();
        if stack.read(&mut r).map_err(bad)? {
            break;
        }
        // BINGET, LONG_BINGET: a copy of a memoised object.
        if matches!(op, Some(b'h' | b'j')) {
            copied += stack.stack().last().map_or(0, count);
            if copied > MAX_COPIED {
                return Err(fail(
                    path,
                    "its pickle expands to more than two million objects; not a state dict".into(),
                ));
            }
        }
    }
    stack.finalize().map_err(bad)
}

/// Objects in `o`, counted without recursion.
fn count(o: &Object) -> usize {
    let mut todo = vec![o];
    let mut n = 0;
    while let Some(o) = todo.pop() {
        n += 1;
        match o {
            Object::Tuple(v) | Object::List(v) => todo.extend(v),
            Object::Dict(d) => d.iter().for_each(|(k, v)| todo.extend([k, v])),
            Object::Reduce { callable, args } | Object::Build { callable, args } => {
                todo.extend([callable.as_ref(), args.as_ref()])
            }
            Object::PersistentLoad(o) => todo.push(o),
            _ => {}
        }
    }
    n
}

/// Refuse any global outside the tensor-rebuilding set, naming it.
fn refuse_globals(path: &Path, o: &Object, depth: usize) -> Result<()> {
    if depth > 10_000 {
        return Err(fail(
            path,
            "its pickle nests objects more than 10 000 deep".into(),
        ));
    }
    let go = |o: &Object| refuse_globals(path, o, depth + 1);
    match o {
        Object::Class {
            module_name,
            class_name,
        } => {
            let allowed = ALLOWED.contains(&(module_name.as_str(), class_name.as_str()))
                || (module_name == "torch" && storage_dtype(class_name).is_some());
            if !allowed {
                return Err(fail(
                    path,
                    format!(
                        "refused: the pickle names the global `{module_name}.{class_name}`, which \
                         is not one of the tensor-rebuilding functions tensim accepts (nothing \
                         from the file is run; save the state dict alone, \
                         `torch.save(model.state_dict(), path)`)"
                    ),
                ));
            }
        }
        Object::Tuple(v) | Object::List(v) => v.iter().try_for_each(go)?,
        Object::Dict(d) => d.iter().try_for_each(|(k, v)| go(k).and(go(v)))?,
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            go(callable)?;
            go(args)?;
        }
        Object::PersistentLoad(o) => go(o)?,
        _ => {}
    }
    Ok(())
}

fn is_class(o: &Object, module: &str, class: &str) -> bool {
    matches!(o, Object::Class { module_name, class_name } if module_name == module && class_name == class)
}

/// `o` as a tensor, if it is one: `_rebuild_tensor_v2` directly, or under `_rebuild_parameter`,
/// `_rebuild_parameter_with_state` or `_rebuild_from_type_v2`.
fn tensor(path: &Path, name: &str, o: &Object) -> Result<Option<TensorRef>> {
    let (callable, args) = match o {
        Object::Reduce { callable, args } => (callable.as_ref(), args.as_ref()),
        Object::Build { callable, .. } => return tensor(path, name, callable),
        _ => return Ok(None),
    };
    let Object::Tuple(args) = args else {
        return Ok(None);
    };
    let inner = |o: Option<&Object>| match o {
        Some(o) => tensor(path, name, o),
        None => Ok(None),
    };
    if is_class(callable, "torch._utils", "_rebuild_parameter")
        || is_class(callable, "torch._utils", "_rebuild_parameter_with_state")
    {
        return inner(args.first());
    }
    if is_class(callable, "torch._tensor", "_rebuild_from_type_v2") {
        // (func, type, args, state): func(*args).
        return match (args.first(), args.get(2)) {
            (Some(f), Some(a)) => tensor(
                path,
                name,
                &Object::Reduce {
                    callable: Box::new(f.clone()),
                    args: Box::new(a.clone()),
                },
            ),
            _ => Ok(None),
        };
    }
    if !is_class(callable, "torch._utils", "_rebuild_tensor_v2") {
        return Ok(None);
    }
    let bad = |what: &str| fail(path, format!("tensor \"{name}\": {what}"));
    let int = |o: &Object| match o {
        Object::Int(i) if *i >= 0 => Some(*i as usize),
        Object::Long(i) if *i >= 0 => Some(*i as usize),
        _ => None,
    };
    let ints = |o: Option<&Object>| match o {
        Some(Object::Tuple(v)) => v.iter().map(int).collect::<Option<Vec<usize>>>(),
        _ => None,
    };
    // storage: persistent id ("storage", class, key, location, numel)
    let Some(Object::PersistentLoad(id)) = args.first() else {
        return Err(bad("its storage is not a persistent reference"));
    };
    let Object::Tuple(id) = id.as_ref() else {
        return Err(bad("its storage reference is not a tuple"));
    };
    let (class, storage) = match (id.get(1), id.get(2)) {
        (Some(Object::Class { class_name, .. }), Some(Object::Unicode(k))) => (class_name, k),
        _ => return Err(bad("its storage reference is malformed")),
    };
    let dtype = storage_dtype(class)
        .ok_or_else(|| bad(&format!("storage type {class} is not supported")))?;
    let offset = args.get(1).and_then(int).ok_or_else(|| bad("bad offset"))?;
    let size = ints(args.get(2)).ok_or_else(|| bad("bad size"))?;
    let stride = ints(args.get(3)).ok_or_else(|| bad("bad stride"))?;
    if size.len() != stride.len() {
        return Err(bad("size and stride differ in length"));
    }
    Ok(Some(TensorRef {
        name: name.to_string(),
        dtype,
        storage: storage.clone(),
        offset,
        size,
        stride,
    }))
}

/// The tensor's elements, row-major, gathered from its storage by offset and strides.
fn gather(path: &Path, t: &TensorRef, storage: &[u8]) -> Result<Vec<u8>> {
    let es = t.dtype.bitsize() / 8;
    let numel: usize = t.size.iter().product();
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&n, &s)| {
            acc.checked_add(n.saturating_sub(1).checked_mul(s)?)
        });
    let fits = last.is_some_and(|l| (l + 1).checked_mul(es).is_some_and(|b| b <= storage.len()));
    if numel > 0 && !fits {
        return Err(fail(
            path,
            format!(
                "tensor \"{}\" (shape {:?}, strides {:?}, offset {}) reaches past its storage of \
                 {} bytes (truncated or corrupt?)",
                t.name,
                t.size,
                t.stride,
                t.offset,
                storage.len()
            ),
        ));
    }
    // Row-major contiguous: one slice.
    let mut row_major = 1;
    let contiguous = t.size.iter().zip(&t.stride).rev().all(|(&n, &s)| {
        let ok = n <= 1 || s == row_major;
        row_major *= n;
        ok
    });
    if contiguous {
        return Ok(storage[t.offset * es..(t.offset + numel) * es].to_vec());
    }
    let mut out = Vec::with_capacity(numel * es);
    let mut index = vec![0usize; t.size.len()];
    for _ in 0..numel {
        let at: usize = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.extend_from_slice(&storage[at * es..(at + 1) * es]);
        for k in (0..index.len()).rev() {
            index[k] += 1;
            if index[k] < t.size[k] {
                break;
            }
            index[k] = 0;
        }
    }
    Ok(out)
}
