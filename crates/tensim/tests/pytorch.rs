//! PyTorch checkpoints: every way `torch.save` stores a state dict (tests/data/pytorch, written by
//! its `make.py`) loads to exactly the model of the same tensors as safetensors, and what cannot
//! be read safely is refused with a message that says why.

use std::io::Write;
use std::path::{Path, PathBuf};

use tensim::{io, Arch, Error};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pytorch")
        .join(name)
}

fn arch() -> Arch {
    Arch::from_file(&data("arch.json")).unwrap()
}

/// The model's content hash (equal iff every weight is bitwise equal).
fn hash(name: &str, key: Option<&str>) -> String {
    io::model_hash(&io::load_with(&data(name), Some(&arch()), key).unwrap()).unwrap()
}

fn refusal(path: &Path, key: Option<&str>) -> String {
    match io::load_with(path, Some(&arch()), key) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_saved_form_loads_the_same_weights_as_safetensors() {
    let reference = hash("model.safetensors", None);
    for name in ["plain.pt", "parameters.pth", "views.pt", "nested.ckpt"] {
        assert_eq!(hash(name, None), reference, "{name}");
    }
    assert_eq!(hash("two.pt", Some("model")), reference);
    assert_ne!(hash("two.pt", Some("ema")), reference);
    for dtype in ["f16", "bf16", "f32"] {
        let st = hash(&format!("{dtype}.safetensors"), None);
        assert_eq!(hash(&format!("{dtype}.bin"), None), st, "{dtype}");
        assert_ne!(st, reference, "{dtype} rounds the weights");
    }
}

#[test]
fn the_deepmlp_layout_reads_the_fixture_as_its_description() {
    let named = Arch::from_file(Path::new("deepmlp:lerp=0.5")).unwrap();
    let model = io::load_with(&data("plain.pt"), Some(&named), None).unwrap();
    assert_eq!(io::model_hash(&model).unwrap(), hash("plain.pt", None));
    let other = Arch::from_file(Path::new("deepmlp:lerp=0.25")).unwrap();
    let model = io::load_with(&data("plain.pt"), Some(&other), None).unwrap();
    assert_ne!(io::model_hash(&model).unwrap(), hash("plain.pt", None));
    for bad in ["deepmlp", "deepmlp:lerp=x"] {
        let e = Arch::from_file(Path::new(bad)).unwrap_err().to_string();
        assert!(e.contains("deepmlp:lerp="), "{e}");
    }
    // Unused tensors are counted against the resolved layers.
    let file = io::TensorFile::open(&data("plain.pt")).unwrap();
    assert!(file.unused_tensors(&named).unwrap().is_empty());
}

#[test]
fn the_tensor_list_of_a_checkpoint_equals_that_of_its_safetensors_copy() {
    let names = |p: &str| io::TensorFile::open(&data(p)).unwrap().tensors().unwrap();
    assert_eq!(names("plain.pt"), names("model.safetensors"));
    assert_eq!(names("f16.bin"), names("f16.safetensors"));
}

#[test]
fn a_saved_dict_with_several_state_dicts_needs_a_key_and_lists_them() {
    let msg = refusal(&data("two.pt"), None);
    assert!(
        msg.contains("\"ema\", \"model\"") && msg.contains("--key"),
        "{msg}"
    );
    let msg = refusal(&data("two.pt"), Some("step"));
    assert!(msg.contains("\"step\" holds no tensors"), "{msg}");
    let msg = refusal(&data("two.pt"), Some("optimizer"));
    assert!(msg.contains("not in the saved dict"), "{msg}");
    // A safetensors file holds one state dict: a key (given for the other file of a pair) is moot.
    assert_eq!(
        hash("model.safetensors", Some("ema")),
        hash("plain.pt", None)
    );
    assert_eq!(hash("plain.pt", Some("ema")), hash("plain.pt", None));
}

#[test]
fn unsafe_or_unreadable_checkpoints_are_refused_by_name() {
    let msg = refusal(&data("global.pt"), None);
    assert!(
        msg.contains("`posix.system`") && msg.contains("refused"),
        "{msg}"
    );
    let msg = refusal(&data("legacy.pt"), None);
    assert!(msg.contains("legacy") && msg.contains("re-save"), "{msg}");
    let msg = refusal(&data("protocol4.pt"), None);
    assert!(msg.contains("pickle protocol 4"), "{msg}");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tensim-pytorch-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// A zip archive holding `archive/data.pkl` = `pickle`.
fn checkpoint(name: &str, pickle: &[u8]) -> PathBuf {
    let path = tmp(name);
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", stored).unwrap();
    z.write_all(pickle).unwrap();
    z.finish().unwrap();
    path
}

#[test]
fn truncated_corrupt_and_expanding_files_are_refused() {
    let bytes = std::fs::read(data("plain.pt")).unwrap();
    let cut = tmp("cut.pt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(refusal(&cut, None).contains("truncated or corrupt"));
    // A flipped byte inside the pickle fails the archive's checksum.
    let mut flipped = bytes.clone();
    let at = bytes.windows(2).position(|w| w == [0x80, 0x02]).unwrap() + 20;
    flipped[at] ^= 0xff;
    let bad = tmp("flipped.pt");
    std::fs::write(&bad, flipped).unwrap();
    assert!(refusal(&bad, None).contains("truncated or corrupt"));

    // [] memoised, then 40 times (m, m) memoised again: 2^40 objects from 250 bytes.
    let mut bomb = b"\x80\x02]q\x00".to_vec();
    for _ in 0..40 {
        bomb.extend_from_slice(b"h\x00h\x00\x86q\x00");
    }
    bomb.push(b'.');
    let msg = refusal(&checkpoint("bomb.pt", &bomb), None);
    assert!(msg.contains("two million objects"), "{msg}");
    // () wrapped in two million 1-tuples (the most the largest pickle read can nest).
    let mut deep = b"\x80\x02)".to_vec();
    deep.extend(std::iter::repeat_n(0x85, (2 << 20) - 4));
    deep.push(b'.');
    let msg = refusal(&checkpoint("deep.pt", &deep), None);
    assert!(msg.contains("nests objects"), "{msg}");
    // A zip without data.pkl (a numpy .npz, say).
    let path = tmp("other.npz");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    z.start_file("x.npy", zip::write::SimpleFileOptions::default())
        .unwrap();
    z.finish().unwrap();
    assert!(refusal(&path, None).contains("without a data.pkl"));
}

#[test]
fn a_checkpoint_packs_into_a_self_describing_safetensors_file() {
    let out = tmp("packed.safetensors");
    io::pack(&data("arch.json"), &data("nested.ckpt"), None, &out).unwrap();
    let packed = io::model_hash(&io::load(&out, None).unwrap()).unwrap();
    assert_eq!(packed, hash("model.safetensors", None));
    assert!(matches!(
        io::pack(&data("arch.json"), &data("two.pt"), None, &out),
        Err(Error::Data { .. })
    ));
}
