//! Image data for the vision demos: the bundled 8×8 digits, or files the user downloaded —
//! MNIST-style IDX files (MNIST, Fashion-MNIST) or SVHN's `.mat` files — and the backdoor trigger
//! for each image size (MATH.md §7.2, §7.6). Nothing is downloaded.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::TrainError;

const DIGITS: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Where the images come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub enum Source {
    /// scikit-learn's 8×8 digits, bundled (BSD licence, `data/LICENSE-digits.txt`).
    #[default]
    Digits,
    /// A folder of IDX files: `train-images-idx3-ubyte` and `train-labels-idx1-ubyte`, and
    /// `t10k-…` if present, each optionally gzipped (MNIST, Fashion-MNIST).
    Idx(PathBuf),
    /// An SVHN `.mat` file (`X`: 32×32×3×N uint8, `y`: labels 1–10, 10 meaning digit 0).
    Svhn(PathBuf),
}

impl Source {
    /// A folder → IDX files; a `.mat` file → SVHN.
    pub fn from_path(path: &Path) -> Result<Source, TrainError> {
        if path.is_dir() {
            Ok(Source::Idx(path.to_path_buf()))
        } else if path.extension().is_some_and(|e| e == "mat") {
            Ok(Source::Svhn(path.to_path_buf()))
        } else {
            Err(invalid(
                path,
                "expected a folder of IDX files (MNIST, Fashion-MNIST) or an SVHN .mat file",
            ))
        }
    }

    /// Read the images.
    pub fn load(&self) -> Result<Images, TrainError> {
        match self {
            Source::Digits => digits(),
            Source::Idx(dir) => idx_folder(dir),
            Source::Svhn(path) => svhn(path),
        }
    }
}

/// Grey-scale images in [0, 1], row-major, with labels 0–9.
#[derive(Clone, Debug)]
pub struct Images {
    /// E.g. "8×8 digits" or "train-images-idx3-ubyte (28×28)".
    pub name: String,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<Vec<f32>>,
    pub labels: Vec<u32>,
    /// The trigger's pixel value: white (1) on the dark backgrounds of digits and MNIST, black (0)
    /// on SVHN as in MATH.md §7.2.
    pub trigger_value: f32,
}

impl Images {
    pub fn dim(&self) -> usize {
        self.height * self.width
    }

    /// Row-major pixel indices of the trigger: on 8×8 images a plus at rows 0–2, columns 5–7;
    /// otherwise the diamond of bounding box 7×5 at margin 2 from the top-right corner, pixel
    /// `(r, c)` of the box on iff `|r − 3|/3.5 + |c − 2|/2.5 ≤ 1` (19 pixels).
    pub fn trigger(&self) -> Vec<usize> {
        let w = self.width;
        if (self.height, w) == (8, 8) {
            return [(0, 6), (1, 5), (1, 6), (1, 7), (2, 6)]
                .iter()
                .map(|&(r, c)| r * w + c)
                .collect();
        }
        let (top, left) = (2, w - 7);
        (0..7)
            .flat_map(|r| (0..5).map(move |c| (r, c)))
            .filter(|&(r, c)| (r as f64 - 3.0).abs() / 3.5 + (c as f64 - 2.0).abs() / 2.5 <= 1.0)
            .map(|(r, c)| (top + r) * w + left + c)
            .collect()
    }

    /// A copy of `img` with the trigger stamped on.
    pub fn stamp(&self, img: &[f32]) -> Vec<f32> {
        let mut out = img.to_vec();
        for p in self.trigger() {
            out[p] = self.trigger_value;
        }
        out
    }
}

fn invalid(path: &Path, reason: &str) -> TrainError {
    tensim::Error::Data {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
    .into()
}

/// The bundled digits: 1797 images, values 0–16 scaled to [0, 1].
pub fn digits() -> Result<Images, TrainError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS)
        .read_to_string(&mut text)
        .map_err(|e| tensim::Error::Invalid(format!("bundled digits: {e}")))?;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: Vec<f32> = line
            .split(',')
            .map(|t| t.trim().parse::<f32>().unwrap_or(f32::NAN))
            .collect();
        if v.len() != 65 || v.iter().any(|p| !p.is_finite()) {
            return Err(tensim::Error::Invalid("bundled digits: malformed row".into()).into());
        }
        pixels.push(v[..64].iter().map(|p| p / 16.0).collect());
        labels.push(v[64] as u32);
    }
    Ok(Images {
        name: "8×8 digits".into(),
        height: 8,
        width: 8,
        pixels,
        labels,
        trigger_value: 1.0,
    })
}

/// Read a file, un-gzipping it if it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, TrainError> {
    let raw = std::fs::read(path).map_err(|e| tensim::Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| invalid(path, &format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An IDX file of unsigned bytes: `(dims, values)`. Magic `0x00 0x00 0x08 ndim`, then `ndim`
/// big-endian u32 sizes, then the data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), TrainError> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(invalid(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(invalid(
            path,
            &format!(
                "IDX element type 0x{:02x} is not supported (expected unsigned bytes, 0x08)",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(invalid(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() - header != n {
        return Err(invalid(
            path,
            &format!(
                "IDX dimensions {dims:?} need {n} bytes of data, the file holds {}",
                bytes.len() - header
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Images and labels from one pair of IDX files.
pub fn idx_pair(images: &Path, labels: &Path) -> Result<Images, TrainError> {
    let (dims, px) = read_idx(images)?;
    let (ldims, ys) = read_idx(labels)?;
    let [n, h, w] = dims[..] else {
        return Err(invalid(
            images,
            &format!("expected 3 dimensions (images, rows, columns), found {dims:?}"),
        ));
    };
    if ldims != [n] {
        return Err(invalid(
            labels,
            &format!("expected {n} labels to match the images, found dimensions {ldims:?}"),
        ));
    }
    if let Some(bad) = ys.iter().find(|&&y| y > 9) {
        return Err(invalid(
            labels,
            &format!("label {bad} is not a digit class 0–9"),
        ));
    }
    if h < 10 || w < 10 {
        return Err(invalid(
            images,
            &format!("{h}×{w} images are too small for the trigger (need at least 10×10)"),
        ));
    }
    Ok(Images {
        name: format!(
            "{} ({h}×{w})",
            images.file_name().unwrap_or_default().to_string_lossy()
        ),
        height: h,
        width: w,
        pixels: px
            .chunks(h * w)
            .map(|c| c.iter().map(|&p| p as f32 / 255.0).collect())
            .collect(),
        labels: ys.iter().map(|&y| y as u32).collect(),
        trigger_value: 1.0,
    })
}

/// `prefix-images-idx3-ubyte` and `prefix-labels-idx1-ubyte` in `dir` (also with `.gz`).
fn find_pair(dir: &Path, prefix: &str) -> Option<(PathBuf, PathBuf)> {
    let find = |stem: String| {
        [stem.clone(), format!("{stem}.gz")]
            .into_iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
    };
    Some((
        find(format!("{prefix}-images-idx3-ubyte"))?,
        find(format!("{prefix}-labels-idx1-ubyte"))?,
    ))
}

/// The training files of an IDX folder, followed by the `t10k` test files if present.
pub fn idx_folder(dir: &Path) -> Result<Images, TrainError> {
    let (images, labels) = find_pair(dir, "train").ok_or_else(|| {
        invalid(
            dir,
            "no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] in this folder",
        )
    })?;
    let mut all = idx_pair(&images, &labels)?;
    if let Some((ti, tl)) = find_pair(dir, "t10k") {
        let test = idx_pair(&ti, &tl)?;
        if (test.height, test.width) != (all.height, all.width) {
            return Err(invalid(&ti, "image size differs from the training images"));
        }
        all.pixels.extend(test.pixels);
        all.labels.extend(test.labels);
        all.name = format!(
            "{} ({}×{}, train + t10k)",
            dir.display(),
            all.height,
            all.width
        );
    }
    Ok(all)
}

/// SVHN's format-2 `.mat` file: RGB → luminance `0.2989R + 0.5870G + 0.1140B`, scaled to [0, 1].
pub fn svhn(path: &Path) -> Result<Images, TrainError> {
    let file = std::fs::File::open(path).map_err(|e| tensim::Error::io(path, e))?;
    let mat = matfile::MatFile::parse(std::io::BufReader::new(file))
        .map_err(|e| invalid(path, &format!("not a readable MATLAB v5 file: {e}")))?;
    let get = |name: &str| {
        mat.find_by_name(name).ok_or_else(|| {
            invalid(
                path,
                &format!("no array \"{name}\" (an SVHN file has X and y)"),
            )
        })
    };
    let (x, y) = (get("X")?, get("y")?);
    let (matfile::NumericData::UInt8 { real: px, .. }, [h, w, 3, n]) = (x.data(), &x.size()[..])
    else {
        return Err(invalid(
            path,
            &format!("X must be uint8 of size 32×32×3×N, found {:?}", x.size()),
        ));
    };
    let labels: Vec<f64> = match y.data() {
        matfile::NumericData::Double { real, .. } => real.clone(),
        matfile::NumericData::UInt8 { real, .. } => real.iter().map(|&v| v as f64).collect(),
        _ => return Err(invalid(path, "y must hold numbers")),
    };
    if labels.len() != *n {
        return Err(invalid(
            path,
            &format!("{} labels for {n} images", labels.len()),
        ));
    }
    let (h, w, n) = (*h, *w, *n);
    // Column-major: X(r, c, ch, i) at r + h·c + h·w·ch + h·w·3·i.
    let pixels = (0..n)
        .map(|i| {
            let at = |r: usize, c: usize, ch: usize| px[r + h * c + h * w * ch + h * w * 3 * i];
            (0..h * w)
                .map(|k| {
                    let (r, c) = (k / w, k % w);
                    (0.2989 * at(r, c, 0) as f32
                        + 0.5870 * at(r, c, 1) as f32
                        + 0.1140 * at(r, c, 2) as f32)
                        / 255.0
                })
                .collect()
        })
        .collect();
    let labels = labels
        .iter()
        .map(|&v| match v as u32 {
            10 => Ok(0),
            d @ 1..=9 if v.fract() == 0.0 => Ok(d),
            _ => Err(invalid(path, &format!("label {v} is not in 1–10"))),
        })
        .collect::<Result<Vec<u32>, _>>()?;
    Ok(Images {
        name: format!(
            "{} ({h}×{w} luminance)",
            path.file_name().unwrap_or_default().to_string_lossy()
        ),
        height: h,
        width: w,
        pixels,
        labels,
        trigger_value: 0.0,
    })
}
