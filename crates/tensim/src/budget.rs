//! Memory estimates made before allocating: refuse work that cannot fit instead of being killed.
//!
//! The limit is `TENSIM_MAX_MEMORY_GIB` if set, else 80 % of the memory the system reports as
//! available (`/proc/meminfo`), else 16 GiB.

use crate::error::{Error, Result};

const GIB: f64 = (1u64 << 30) as f64;

/// The memory tensim allows itself, in bytes.
pub fn limit_bytes() -> f64 {
    if let Some(gib) = std::env::var("TENSIM_MAX_MEMORY_GIB")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        return gib * GIB;
    }
    available_bytes().map_or(16.0 * GIB, |b| 0.8 * b)
}

fn available_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Fail with [`Error::TooLarge`] if `f64_entries` doubles exceed the limit.
pub fn check(what: &str, f64_entries: f64) -> Result<()> {
    let need = 8.0 * f64_entries;
    let limit = limit_bytes();
    if need > limit {
        return Err(Error::TooLarge {
            what: what.to_string(),
            need_gib: need / GIB,
            limit_gib: limit / GIB,
        });
    }
    Ok(())
}
