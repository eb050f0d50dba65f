//! Reading a safetensors file defensively: no further than its header says (an endless stream
//! such as `/dev/zero` is refused, not read until memory runs out), within the memory limit, and
//! with every tensor name in the header once (the format's reader keeps the last of two equal
//! names without a word).

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::budget;
use crate::error::{Error, Result};

/// The format's largest header.
const MAX_HEADER: u64 = 100_000_000;

fn corrupt(path: &Path, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// The bytes of the safetensors file at `path`: a regular file whole (its size checked against
/// the memory limit first); anything else (a pipe, a device) as its 8-byte header length, the
/// header, then the data up to the largest tensor end the header names.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let what = || format!("reading {}", path.display());
    if meta.is_file() {
        budget::check(&what(), meta.len() as f64 / 8.0)?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        return Ok(bytes);
    }
    let mut take = |n: u64, part: &str| -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        (&mut file)
            .take(n)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(path, e))?;
        if (buf.len() as u64) < n {
            return Err(corrupt(
                path,
                format!(
                    "the stream ends inside the {part} ({} of {n} bytes)",
                    buf.len()
                ),
            ));
        }
        Ok(buf)
    };
    let mut bytes = take(8, "header length")?;
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER {
        return Err(corrupt(
            path,
            format!("header length {n} bytes exceeds the format's {MAX_HEADER}"),
        ));
    }
    let header = take(n, "header")?;
    let end = data_end(&header).map_err(|reason| corrupt(path, reason))?;
    budget::check(&what(), (8 + n + end) as f64 / 8.0)?;
    bytes.extend(header);
    bytes.extend(take(end, "tensor data")?);
    Ok(bytes)
}

/// What a file that safetensors cannot read seems to be instead (zip archives and pickles are
/// read as PyTorch checkpoints before this).
pub fn foreign(bytes: &[u8]) -> Option<String> {
    bytes
        .starts_with(b"\x93NUMPY")
        .then(|| "this is a numpy .npy array, not a model".into())
}

/// The largest `data_offsets` end among the header's tensors.
fn data_end(header: &[u8]) -> std::result::Result<u64, String> {
    let v: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| format!("the header is not valid JSON: {e}"))?;
    let map = v.as_object().ok_or("the header is not a JSON object")?;
    Ok(map
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| t["data_offsets"][1].as_u64())
        .max()
        .unwrap_or(0))
}

/// The first name that occurs twice among the header's keys or its metadata's keys.
pub fn duplicate_key(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header = bytes.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)?;
    serde_json::from_slice::<Duplicate>(header).ok()?.0
}

/// A JSON object's first repeated key, also inside its `__metadata__` object.
struct Duplicate(Option<String>);

impl<'de> Deserialize<'de> for Duplicate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(Keys)
    }
}

struct Keys;

impl<'de> Visitor<'de> for Keys {
    type Value = Duplicate;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> std::result::Result<Duplicate, M::Error> {
        let (mut seen, mut first) = (HashSet::new(), None);
        while let Some(key) = map.next_key::<String>()? {
            let inner = if key == "__metadata__" {
                map.next_value::<Duplicate>()?.0
            } else {
                map.next_value::<IgnoredAny>()?;
                None
            };
            if first.is_none() {
                first = inner.or_else(|| (!seen.insert(key.clone())).then_some(key));
            }
        }
        Ok(Duplicate(first))
    }
}
