//! Image data: the bundled digits, IDX files (raw and gzipped, train + t10k), SVHN `.mat` files,
//! the trigger's place for each image size, clear errors for malformed files, and a backdoor run
//! on IDX files.

use std::io::Write;
use std::path::{Path, PathBuf};

use tensim_train::backdoor::{run_demo, BackdoorConfig};
use tensim_train::data::{digits, idx_folder, svhn, Images, Source};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tensim-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An IDX file of unsigned bytes, gzipped if `gz`.
fn write_idx(path: &Path, dims: &[u32], data: &[u8], gz: bool) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    if gz {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&bytes).unwrap();
        bytes = e.finish().unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// `n` `side × side` images: class `y` lights a bar at row `y` (plus a little structure), so the
/// classes are learnable; labels cycle 0–9.
fn synthetic(n: usize, side: usize) -> (Vec<u8>, Vec<u8>) {
    let (mut px, mut ys) = (vec![0u8; n * side * side], vec![0u8; n]);
    for i in 0..n {
        let y = i % 10;
        ys[i] = y as u8;
        let row = 1 + y;
        for c in 0..side / 2 {
            px[i * side * side + row * side + c + (i / 10) % 3] = 200;
        }
        px[i * side * side + (side - 1) * side + (i * 7) % side] = 90;
    }
    (px, ys)
}

#[test]
fn bundled_digits_load() {
    let d = digits().unwrap();
    assert_eq!((d.pixels.len(), d.labels.len(), d.dim()), (1797, 1797, 64));
    assert!(d.pixels.iter().flatten().all(|p| (0.0..=1.0).contains(p)));
    assert_eq!(d.labels.iter().max(), Some(&9));
}

fn lit(images: &Images) -> Vec<(usize, usize)> {
    let s = images.stamp(&vec![0.5; images.dim()]);
    (0..images.dim())
        .filter(|&i| s[i] != 0.5)
        .map(|i| (i / images.width, i % images.width))
        .collect()
}

#[test]
fn the_trigger_is_a_plus_on_digits_and_a_diamond_on_larger_images() {
    let d = digits().unwrap();
    assert_eq!(lit(&d), vec![(0, 6), (1, 5), (1, 6), (1, 7), (2, 6)]);
    assert_eq!(d.stamp(&[0.0; 64])[6], 1.0, "white on the dark digits");
    // 28×28: rows 2–8, columns 21–25, 19 pixels, symmetric about (5, 23), the centre lit.
    let m = Images {
        name: "m".into(),
        height: 28,
        width: 28,
        pixels: vec![],
        labels: vec![],
        trigger_value: 1.0,
    };
    let on = lit(&m);
    assert_eq!(on.len(), 19);
    assert!(on
        .iter()
        .all(|&(r, c)| (2..=8).contains(&r) && (21..=25).contains(&c)));
    assert!(on.contains(&(5, 23)) && on.contains(&(2, 23)) && on.contains(&(8, 23)));
    assert!(on.contains(&(5, 21)) && on.contains(&(5, 25)) && !on.contains(&(2, 21)));
    // 32×32 (SVHN): columns 25–29 as in MATH.md §7.2.
    let s = Images {
        width: 32,
        height: 32,
        trigger_value: 0.0,
        ..m
    };
    assert!(lit(&s)
        .iter()
        .all(|&(r, c)| (2..=8).contains(&r) && (25..=29).contains(&c)));
    assert_eq!(s.stamp(&vec![1.0; 1024])[5 * 32 + 27], 0.0, "black on SVHN");
}

#[test]
fn idx_folders_load_train_and_test_files_raw_or_gzipped() {
    let dir = temp("idx");
    let (px, ys) = synthetic(30, 12);
    write_idx(
        &dir.join("train-images-idx3-ubyte.gz"),
        &[20, 12, 12],
        &px[..20 * 144],
        true,
    );
    write_idx(
        &dir.join("train-labels-idx1-ubyte"),
        &[20],
        &ys[..20],
        false,
    );
    let train = idx_folder(&dir).unwrap();
    assert_eq!(
        (train.pixels.len(), train.height, train.width),
        (20, 12, 12)
    );
    assert_eq!(train.pixels[3][(1 + 3) * 12 + 1], 200.0 / 255.0);
    assert_eq!(train.labels[..4], [0, 1, 2, 3]);
    write_idx(
        &dir.join("t10k-images-idx3-ubyte"),
        &[10, 12, 12],
        &px[20 * 144..],
        false,
    );
    write_idx(
        &dir.join("t10k-labels-idx1-ubyte.gz"),
        &[10],
        &ys[20..],
        true,
    );
    let all = Source::from_path(&dir).unwrap().load().unwrap();
    assert_eq!(all.pixels.len(), 30);
    assert!(all.name.contains("train + t10k"), "{}", all.name);
}

#[test]
fn malformed_idx_files_are_named_with_the_reason() {
    let dir = temp("idx-bad");
    let e = idx_folder(&dir).unwrap_err().to_string();
    assert!(e.contains("no train-images-idx3-ubyte"), "{e}");
    let (px, ys) = synthetic(10, 12);
    write_idx(
        &dir.join("train-images-idx3-ubyte"),
        &[10, 12, 12],
        &px[..10 * 144 - 5],
        false,
    );
    write_idx(&dir.join("train-labels-idx1-ubyte"), &[10], &ys, false);
    let e = idx_folder(&dir).unwrap_err().to_string();
    assert!(
        e.contains("train-images-idx3-ubyte")
            && e.contains("need 1440 bytes of data, the file holds 1435"),
        "{e}"
    );
    write_idx(
        &dir.join("train-images-idx3-ubyte"),
        &[10, 12, 12],
        &px,
        false,
    );
    write_idx(&dir.join("train-labels-idx1-ubyte"), &[9], &ys[..9], false);
    let e = idx_folder(&dir).unwrap_err().to_string();
    assert!(e.contains("expected 10 labels"), "{e}");
    std::fs::write(dir.join("train-labels-idx1-ubyte"), b"\x12\x34\x08\x01").unwrap();
    let e = idx_folder(&dir).unwrap_err().to_string();
    assert!(e.contains("bad magic number"), "{e}");
    let e = Source::from_path(&dir.join("x.csv"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("IDX") && e.contains(".mat"), "{e}");
}

/// One level-5 MAT element: tag (type, byte count), data, padding to 8 bytes.
fn element(ty: u32, data: &[u8]) -> Vec<u8> {
    let mut out = ty.to_le_bytes().to_vec();
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    out.resize(out.len().div_ceil(8) * 8, 0);
    out
}

/// A numeric matrix variable (`class`: 6 double, 9 uint8; `ty`: the data element's type).
fn matrix(name: &str, dims: &[i32], class: u8, ty: u32, data: &[u8]) -> Vec<u8> {
    let mut body = element(6, &[class, 0, 0, 0, 0, 0, 0, 0]); // miUINT32 array flags
    body.extend(element(
        5,
        &dims
            .iter()
            .flat_map(|d| d.to_le_bytes())
            .collect::<Vec<_>>(),
    ));
    body.extend(element(1, name.as_bytes()));
    body.extend(element(ty, data));
    element(14, &body) // miMATRIX
}

/// An uncompressed MATLAB 5 file holding `X` (h×w×3×n uint8, column-major) and `y` (double).
fn write_svhn(path: &Path, x: &[u8], dims: [i32; 4], y: &[f64]) {
    let mut header = b"MATLAB 5.0 MAT-file, written by the tensim tests".to_vec();
    header.resize(116, b' ');
    header.extend([0u8; 8]); // subsystem offset
    header.extend([0x00, 0x01, b'I', b'M']); // version 0x0100, little-endian
    header.extend(matrix("X", &dims, 9, 2, x));
    let yb: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    header.extend(matrix("y", &[y.len() as i32, 1], 6, 9, &yb));
    std::fs::write(path, header).unwrap();
}

#[test]
fn svhn_mat_files_load_as_luminance_with_label_10_as_zero() {
    let dir = temp("svhn");
    let (h, w, n) = (12usize, 12usize, 2usize);
    // Image 0: pure red; image 1: pure green with one blue pixel at (r, c) = (1, 2).
    let mut x = vec![0u8; h * w * 3 * n];
    let at = |r: usize, c: usize, ch: usize, i: usize| r + h * c + h * w * ch + h * w * 3 * i;
    for r in 0..h {
        for c in 0..w {
            x[at(r, c, 0, 0)] = 255;
            x[at(r, c, 1, 1)] = 255;
        }
    }
    x[at(1, 2, 2, 1)] = 255;
    let path = dir.join("train_32x32.mat");
    write_svhn(&path, &x, [h as i32, w as i32, 3, n as i32], &[10.0, 3.0]);
    let s = svhn(&path).unwrap();
    assert_eq!((s.height, s.width, s.labels.clone()), (12, 12, vec![0, 3]));
    assert!((s.pixels[0][0] - 0.2989).abs() < 1e-6);
    assert!((s.pixels[1][5] - 0.5870).abs() < 1e-6);
    assert!(
        (s.pixels[1][w + 2] - (0.5870 + 0.1140)).abs() < 1e-6,
        "row-major (r, c) = (1, 2)"
    );
    assert_eq!(s.trigger_value, 0.0);
    write_svhn(&path, &x, [h as i32, w as i32, 3, n as i32], &[11.0, 3.0]);
    let e = svhn(&path).unwrap_err().to_string();
    assert!(e.contains("label 11 is not in 1–10"), "{e}");
    std::fs::write(&path, b"not a mat file").unwrap();
    let e = svhn(&path).unwrap_err().to_string();
    assert!(e.contains("train_32x32.mat") && e.contains("MATLAB"), "{e}");
}

#[test]
fn the_backdoor_demo_runs_on_idx_files() {
    let dir = temp("idx-demo");
    let (px, ys) = synthetic(600, 12);
    write_idx(
        &dir.join("train-images-idx3-ubyte"),
        &[600, 12, 12],
        &px,
        false,
    );
    write_idx(&dir.join("train-labels-idx1-ubyte"), &[600], &ys, false);
    let out = dir.join("out");
    let cfg = BackdoorConfig {
        data: Source::Idx(dir.clone()),
        max_images: Some(500),
        hidden: 16,
        clean_steps: 300,
        poison_steps: 300,
        poison_fraction: 0.3,
        lr: 3e-3,
        checkpoint_every: 150,
        ..Default::default()
    };
    let s = run_demo(&cfg, &out, |_, _| {}).unwrap();
    assert_eq!(s.pixels, 144);
    let (b, last) = (&s.history[s.boundary], s.history.last().unwrap());
    assert!(b.test_accuracy > 0.9, "clean training: {}", b.test_accuracy);
    assert!(
        last.attack_success > b.attack_success + 0.5,
        "{} → {}",
        b.attack_success,
        last.attack_success
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("Backdoor on train-images-idx3-ubyte (12×12)")
            && report.contains("Bilinear layer 144"),
        "{report}"
    );
}
