//! Split GGUFs (llama.cpp's `gguf-split`): the first part brings the others along and the
//! whole reads as one file; parts that do not belong together are clear errors.

use std::path::Path;

use baimo_formats::gguf::GgufWriter;
use baimo_formats::{FormatError, Gguf, Value};
use baimo_kernels::GgmlType;

/// Tensor `i`: 4 × (i + 1) f32 values `i·100 + j`.
fn tensor(i: usize) -> (String, Vec<u64>, Vec<u8>) {
    let n = 4 * (i + 1);
    let data = (0..n).flat_map(|j| ((i * 100 + j) as f32).to_le_bytes()).collect();
    (format!("t{i}"), vec![n as u64], data)
}

/// Writes `name-0000k-of-0000n.gguf` for each part, part k holding the tensors `parts[k]`;
/// `meta(k)` adds to part k's metadata. `split.tensors.count` is the true total unless
/// `declared` says otherwise.
fn write_split(
    dir: &Path,
    name: &str,
    parts: &[&[usize]],
    declared: Option<usize>,
    meta: impl Fn(usize, &mut GgufWriter),
) {
    let count = parts.len();
    let total = declared.unwrap_or(parts.iter().map(|p| p.len()).sum());
    for (k, tensors) in parts.iter().enumerate() {
        let mut w = GgufWriter::new();
        if k == 0 {
            w.add("general.architecture", Value::String("llama".into()));
            w.add("split.tensors.count", Value::I32(total as i32));
        }
        w.add("split.no", Value::U16(k as u16));
        w.add("split.count", Value::U16(count as u16));
        meta(k, &mut w);
        for &i in *tensors {
            let (name, ne, data) = tensor(i);
            w.add_tensor(&name, &ne, GgmlType::F32, data);
        }
        std::fs::write(dir.join(format!("{name}-{:05}-of-{count:05}.gguf", k + 1)), w.to_bytes()).unwrap();
    }
}

#[test]
fn the_first_part_opens_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    write_split(dir.path(), "m", &[&[0, 1], &[2, 3], &[4]], None, |_, _| {});
    let g = Gguf::open(&dir.path().join("m-00001-of-00003.gguf")).unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.tensors().len(), 5);
    for i in 0..5 {
        let (name, ne, data) = tensor(i);
        let info = g.tensor_info(&name).unwrap();
        assert_eq!(info.ne, ne);
        assert_eq!(&g.tensor_data(info)[..], &data[..], "{name}");
    }
    let parts_len: u64 =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert_eq!(g.file_len(), parts_len);
}

fn open_err(dir: &Path, file: &str) -> String {
    match Gguf::open(&dir.join(file)) {
        Ok(_) => panic!("{file} opened"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn parts_that_do_not_belong_together_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_split(dir.path(), "m", &[&[0], &[1], &[2]], None, |_, _| {});
    let err = open_err(dir.path(), "m-00002-of-00003.gguf");
    assert!(err.contains("part 2 of 3; open the first part"), "{err}");
    std::fs::remove_file(dir.path().join("m-00003-of-00003.gguf")).unwrap();
    let err = open_err(dir.path(), "m-00001-of-00003.gguf");
    assert!(err.contains("m-00003-of-00003.gguf"), "a missing part is named: {err}");

    write_split(dir.path(), "dup", &[&[0, 1], &[1]], None, |_, _| {});
    let err = open_err(dir.path(), "dup-00001-of-00002.gguf");
    assert!(err.contains("tensor \"t1\" is in two parts"), "{err}");

    write_split(dir.path(), "few", &[&[0], &[1]], Some(7), |_, _| {});
    let err = open_err(dir.path(), "few-00001-of-00002.gguf");
    assert!(err.contains("the parts hold 2 tensors, split.tensors.count says 7"), "{err}");

    // Part 2 of another file of the same name pattern: its split.count disagrees.
    write_split(dir.path(), "swap", &[&[0], &[1]], None, |_, _| {});
    write_split(dir.path(), "other", &[&[2], &[3], &[4]], None, |_, _| {});
    std::fs::copy(dir.path().join("other-00002-of-00003.gguf"), dir.path().join("swap-00002-of-00002.gguf"))
        .unwrap();
    let err = Gguf::open(&dir.path().join("swap-00001-of-00002.gguf")).unwrap_err();
    assert!(matches!(err, FormatError::BadSplit { .. }), "{err}");
    assert!(err.to_string().contains("is not part 2 of 2"), "{err}");

    std::fs::copy(dir.path().join("m-00001-of-00003.gguf"), dir.path().join("renamed.gguf")).unwrap();
    let err = open_err(dir.path(), "renamed.gguf");
    assert!(err.contains("must be named NAME-00001-of-00003.gguf"), "{err}");
}
