//! Damaged, hostile and foreign files give the exact [`FormatError`] for what is wrong, with a
//! one-line message naming it, and never a panic.

mod common;

use baimo_formats::gguf::GgufWriter;
use baimo_formats::{ArrayValue, FormatError, Gguf, Value};
use baimo_kernels::GgmlType;
use common::{VOCABS, assert_one_line, check_parsed, filler, parse, rewrite, vocab_path};

/// Asserts that two errors are the same variant with the same fields.
#[track_caller]
fn assert_err(actual: &FormatError, expected: &FormatError) {
    assert_eq!(format!("{actual:?}"), format!("{expected:?}"));
}

#[track_caller]
fn parse_err(bytes: Vec<u8>) -> FormatError {
    match parse(bytes) {
        Ok(g) => panic!("parsed: {g:?}"),
        Err(e) => e,
    }
}

/// One step of the reader, in the order it takes them, to predict where a cut file fails.
enum Op {
    /// Reading bytes `start..end`: fails as `Truncated` when the file ends before `end`.
    Read { start: usize, end: usize, what: String },
    /// Checking at `at` that `count` items of at least `min` bytes fit: fails as `CountTooLarge`.
    Check { at: usize, count: u64, min: u64, what: String },
}

/// A GGUF file written field by field (independently of [`GgufWriter`]), which records the
/// reader's steps and where each tensor's data lies.
#[derive(Default)]
struct Spec {
    bytes: Vec<u8>,
    ops: Vec<Op>,
    /// Name, absolute offset and size of each tensor's data.
    data: Vec<(String, u64, u64)>,
}

fn value_type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// Element type id, smallest encoded element size, and the encoded elements of fixed-size types.
fn array_parts(a: &ArrayValue) -> (u32, u64, Option<Vec<u8>>) {
    fn le<T: Copy, const N: usize>(v: &[T], f: fn(T) -> [u8; N]) -> Option<Vec<u8>> {
        Some(v.iter().flat_map(|&x| f(x)).collect())
    }
    match a {
        ArrayValue::U8(v) => (0, 1, Some(v.clone())),
        ArrayValue::I8(v) => (1, 1, le(v, i8::to_le_bytes)),
        ArrayValue::U16(v) => (2, 2, le(v, u16::to_le_bytes)),
        ArrayValue::I16(v) => (3, 2, le(v, i16::to_le_bytes)),
        ArrayValue::U32(v) => (4, 4, le(v, u32::to_le_bytes)),
        ArrayValue::I32(v) => (5, 4, le(v, i32::to_le_bytes)),
        ArrayValue::F32(v) => (6, 4, le(v, f32::to_le_bytes)),
        ArrayValue::Bool(v) => (7, 1, Some(v.iter().map(|&b| b as u8).collect())),
        ArrayValue::String(_) => (8, 8, None),
        ArrayValue::Array(_) => (9, 12, None),
        ArrayValue::U64(v) => (10, 8, le(v, u64::to_le_bytes)),
        ArrayValue::I64(v) => (11, 8, le(v, i64::to_le_bytes)),
        ArrayValue::F64(v) => (12, 8, le(v, f64::to_le_bytes)),
    }
}

impl Spec {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Spec {
        let mut s = Spec::default();
        s.bytes.extend_from_slice(b"GGUF");
        s.u32(version, "the version")
            .u64(n_tensors, "the tensor count")
            .u64(n_kv, "the metadata count")
            .check(n_kv, 12, "the metadata count")
            .check(n_tensors, 24, "the tensor count");
        s
    }

    fn read(&mut self, b: &[u8], what: &str) -> &mut Self {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        self.ops.push(Op::Read { start, end: self.bytes.len(), what: what.into() });
        self
    }

    fn u32(&mut self, x: u32, what: &str) -> &mut Self {
        self.read(&x.to_le_bytes(), what)
    }

    fn u64(&mut self, x: u64, what: &str) -> &mut Self {
        self.read(&x.to_le_bytes(), what)
    }

    fn string(&mut self, s: &str, what: &str) -> &mut Self {
        self.u64(s.len() as u64, what).read(s.as_bytes(), what)
    }

    fn check(&mut self, count: u64, min: u64, what: &str) -> &mut Self {
        self.ops.push(Op::Check { at: self.bytes.len(), count, min, what: what.into() });
        self
    }

    fn kv(&mut self, key: &str, v: &Value) -> &mut Self {
        self.string(key, "a metadata key").u32(value_type_id(v), "a metadata value type");
        let what = format!("the value of {key:?}");
        match v {
            Value::U8(x) => self.read(&[*x], &what),
            Value::I8(x) => self.read(&x.to_le_bytes(), &what),
            Value::U16(x) => self.read(&x.to_le_bytes(), &what),
            Value::I16(x) => self.read(&x.to_le_bytes(), &what),
            Value::U32(x) => self.read(&x.to_le_bytes(), &what),
            Value::I32(x) => self.read(&x.to_le_bytes(), &what),
            Value::F32(x) => self.read(&x.to_le_bytes(), &what),
            Value::Bool(x) => self.read(&[*x as u8], &what),
            Value::String(s) => self.string(s, &what),
            Value::Array(a) => self.array(a, &format!("the array {key:?}")),
            Value::U64(x) => self.read(&x.to_le_bytes(), &what),
            Value::I64(x) => self.read(&x.to_le_bytes(), &what),
            Value::F64(x) => self.read(&x.to_le_bytes(), &what),
        }
    }

    fn array(&mut self, a: &ArrayValue, what: &str) -> &mut Self {
        let (elem_type, min, fixed) = array_parts(a);
        self.u32(elem_type, what).u64(a.len() as u64, what).check(a.len() as u64, min, what);
        match (a, fixed) {
            (_, Some(bytes)) => self.read(&bytes, what),
            (ArrayValue::String(v), None) => v.iter().fold(self, |s, x| s.string(x, what)),
            (ArrayValue::Array(v), None) => v.iter().fold(self, |s, x| s.array(x, what)),
            _ => unreachable!(),
        }
    }

    fn tensor(&mut self, name: &str, ne: &[u64], type_id: u32, offset: u64) -> &mut Self {
        self.string(name, "a tensor name").u32(ne.len() as u32, "a tensor's dimension count");
        for &d in ne {
            self.u64(d, "a tensor dimension");
        }
        self.u32(type_id, "a tensor type").u64(offset, "a tensor offset")
    }

    /// Pads to `alignment`, then writes `n` bytes of tensor data.
    fn data(&mut self, alignment: usize, n: usize) -> &mut Self {
        self.bytes.resize(self.bytes.len().next_multiple_of(alignment), 0);
        self.bytes.extend(filler(n, 7));
        self
    }

    /// Records where the reader will expect a tensor's data.
    fn expect_data(&mut self, name: &str, offset: u64, size: u64) -> &mut Self {
        self.data.push((name.into(), offset, size));
        self
    }

    /// The error `Gguf::parse` must give for the first `cut` bytes of this file.
    fn error_at(&self, cut: usize) -> Option<FormatError> {
        let file_len = cut as u64;
        if cut < 4 {
            return Some(FormatError::NotGguf { found: self.bytes[..cut].to_vec() });
        }
        for op in &self.ops {
            match op {
                Op::Read { start, end, what } if cut < *end => {
                    return Some(FormatError::Truncated {
                        what: what.clone(),
                        offset: *start as u64,
                        need: (end - start) as u64,
                        file_len,
                    });
                }
                Op::Check { at, count, min, what } if ((cut - at) as u64) < count * min => {
                    return Some(FormatError::CountTooLarge { what: what.clone(), count: *count, file_len });
                }
                _ => {}
            }
        }
        self.data.iter().find(|(_, offset, size)| offset + size > file_len).map(|(name, offset, size)| {
            FormatError::TensorOutOfBounds { tensor: name.clone(), offset: *offset, size: *size, file_len }
        })
    }
}

/// A file with the given metadata and tensors `(name, ne, type id, relative offset)`, followed
/// by `data` bytes of tensor data after the padding.
fn build(kvs: &[(&str, Value)], tensors: &[(&str, &[u64], u32, u64)], data: usize) -> Vec<u8> {
    let mut s = Spec::header(3, tensors.len() as u64, kvs.len() as u64);
    let mut alignment = 32;
    for (key, value) in kvs {
        s.kv(key, value);
        if *key == "general.alignment" {
            alignment = value.as_u64().filter(|a| a.is_power_of_two()).unwrap_or(32);
        }
    }
    for &(name, ne, type_id, offset) in tensors {
        s.tensor(name, ne, type_id, offset);
    }
    // (A huge alignment is only for files that fail before their data is looked at.)
    s.data(alignment.min(4096) as usize, data);
    s.bytes
}

fn f32_id() -> u32 {
    GgmlType::F32.id()
}

// 1. Truncation ----------------------------------------------------------------------------------

#[test]
fn a_file_cut_anywhere_names_the_field_that_was_cut() {
    let nested = ArrayValue::Array(vec![ArrayValue::U8(vec![1, 2]), ArrayValue::String(vec!["z".into()])]);
    let kvs = [
        ("x.count", Value::U32(7)),
        ("x.tokens", Value::Array(ArrayValue::String(vec!["a".into(), "bb".into(), "ccc".into()]))),
        ("x.nested", Value::Array(nested)),
        ("x.scores", Value::Array(ArrayValue::F32(vec![0.5, -1.0]))),
        ("general.architecture", Value::String("llama".into())),
        ("x.big", Value::U64(1 << 40)),
    ];
    let tensors: [(&str, &[u64], GgmlType); 3] =
        [("t0", &[4, 2], GgmlType::F32), ("t1", &[32], GgmlType::Q8_0), ("t2", &[3], GgmlType::F16)];

    let mut spec = Spec::header(3, tensors.len() as u64, kvs.len() as u64);
    let mut writer = GgufWriter::new();
    for (key, value) in &kvs {
        spec.kv(key, value);
        writer.add(key, value.clone());
    }
    let mut rel = 0u64;
    let mut layout = Vec::new();
    for (name, ne, dtype) in tensors {
        let size = dtype.row_bytes(ne.iter().product()).unwrap();
        spec.tensor(name, ne, dtype.id(), rel);
        writer.add_tensor(name, ne, dtype, filler(size as usize, 7));
        layout.push((name, rel, size));
        rel = (rel + size).next_multiple_of(32);
    }
    let data_start = spec.bytes.len().next_multiple_of(32) as u64;
    for (name, rel, size) in layout {
        spec.bytes.resize((data_start + rel) as usize, 0);
        spec.bytes.extend(filler(size as usize, 7));
        spec.expect_data(name, data_start + rel, size);
    }
    // The field-by-field file is the one GgufWriter writes, and it parses.
    assert_eq!(spec.bytes, writer.to_bytes());
    let whole = parse(spec.bytes.clone()).expect("the whole file parses");
    check_parsed(&whole);
    assert!(spec.error_at(spec.bytes.len()).is_none());

    let mut seen = Vec::new();
    for cut in 0..spec.bytes.len() {
        let expected = spec.error_at(cut).expect("a cut file is bad");
        let err = parse_err(spec.bytes[..cut].to_vec());
        assert_err(&err, &expected);
        match &err {
            FormatError::NotGguf { .. } => assert_one_line(&err, &["not a GGUF file"]),
            FormatError::Truncated { what, .. } => {
                assert_one_line(&err, &["truncated", what, &format!("has {cut}")]);
                seen.push(what.clone());
            }
            FormatError::CountTooLarge { what, .. } => {
                assert_one_line(&err, &[what, &format!("{cut}-byte file")]);
                seen.push(format!("count of {what}"));
            }
            FormatError::TensorOutOfBounds { tensor, .. } => {
                assert_one_line(&err, &[tensor, "past the end"]);
                seen.push("tensor data".into());
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // Every kind of field was cut somewhere.
    for what in [
        "the version",
        "the tensor count",
        "the metadata count",
        "count of the metadata count",
        "a metadata key",
        "a metadata value type",
        "the value of \"general.architecture\"",
        "the value of \"x.big\"",
        "the array \"x.tokens\"",
        "count of the array \"x.tokens\"",
        "the array \"x.nested\"",
        "count of the array \"x.scores\"",
        "a tensor name",
        "a tensor's dimension count",
        "a tensor dimension",
        "a tensor type",
        "a tensor offset",
        "tensor data",
    ] {
        assert!(seen.iter().any(|s| s == what), "no cut inside {what}");
    }
}

#[test]
fn a_real_vocabulary_cut_short_never_parses() {
    let bytes = std::fs::read(vocab_path("ggml-vocab-llama-spm.gguf")).unwrap();
    // The file holds metadata only; the last few bytes may be padding.
    let end = bytes.len() - 32;
    for cut in (0..end).step_by(997).chain([1, 3, 4, 5, 23, 24, 25, end - 1]) {
        match parse_err(bytes[..cut].to_vec()) {
            FormatError::NotGguf { found } => assert_eq!(found, &bytes[..cut]),
            e @ (FormatError::Truncated { file_len, .. } | FormatError::CountTooLarge { file_len, .. }) => {
                assert_eq!(file_len, cut as u64, "{e}");
                assert_one_line(&e, &[&cut.to_string()]);
            }
            e => panic!("cut at {cut}: {e:?}"),
        }
    }
}

// 2. Tensor data past the end ---------------------------------------------------------------------

#[test]
fn tensor_data_running_past_the_end_of_the_file() {
    // 4 × 2 F32 = 32 bytes at data offset 0, with one byte missing.
    let bytes = build(&[], &[("w", &[4, 2], f32_id(), 0)], 31);
    let data_start = (bytes.len() - 31) as u64;
    let err = parse_err(bytes.clone());
    let expected = FormatError::TensorOutOfBounds {
        tensor: "w".into(),
        offset: data_start,
        size: 32,
        file_len: bytes.len() as u64,
    };
    assert_err(&err, &expected);
    assert_one_line(&err, &["\"w\"", "32 bytes", "past the end"]);

    // The second tensor starts inside the file and ends outside it.
    let bytes = build(&[], &[("a", &[8], f32_id(), 0), ("b", &[8], f32_id(), 32)], 60);
    let file_len = bytes.len() as u64;
    let err = parse_err(bytes);
    assert_err(
        &err,
        &FormatError::TensorOutOfBounds {
            tensor: "b".into(),
            offset: file_len - 60 + 32,
            size: 32,
            file_len,
        },
    );

    // Offsets far beyond the file, up to ones whose sum with the data start overflows.
    for rel in [1 << 40, 1 << 63, !31] {
        let bytes = build(&[], &[("far", &[1], f32_id(), rel)], 32);
        let file_len = bytes.len() as u64;
        let data_start = file_len - 32;
        let err = parse_err(bytes);
        assert_err(
            &err,
            &FormatError::TensorOutOfBounds {
                tensor: "far".into(),
                offset: data_start.saturating_add(rel),
                size: 4,
                file_len,
            },
        );
        assert_one_line(&err, &["\"far\"", "past the end"]);
    }

    // A shape too large for the file, and an empty tensor placed after the end.
    let bytes = build(&[], &[("big", &[1 << 40], f32_id(), 0)], 64);
    assert!(matches!(
        parse_err(bytes),
        FormatError::TensorOutOfBounds { tensor, size, .. } if tensor == "big" && size == 1 << 42
    ));
    let bytes = build(&[], &[("empty", &[0], f32_id(), 4096)], 64);
    assert!(matches!(
        parse_err(bytes),
        FormatError::TensorOutOfBounds { tensor, size: 0, .. } if tensor == "empty"
    ));
    // ... whereas an empty tensor at the end of the file is fine.
    let g = parse(build(&[], &[("empty", &[0], f32_id(), 0)], 0)).unwrap();
    assert_eq!(g.tensor_data(&g.tensors()[0]).len(), 0);
}

// 3. Shapes whose size overflows ------------------------------------------------------------------

#[test]
fn a_dimension_product_that_overflows_u64() {
    let cases: [(&[u64], GgmlType); 6] = [
        (&[1 << 32, 1 << 32], GgmlType::F32),
        (&[u64::MAX, 2], GgmlType::F32),
        (&[2, 2, 2, 1 << 62], GgmlType::I8),
        // The element count fits, the byte count does not.
        (&[1 << 62], GgmlType::F32),
        (&[u64::MAX], GgmlType::F64),
        (&[u64::MAX / 32 * 32], GgmlType::Q8_0),
    ];
    for (ne, dtype) in cases {
        let err = parse_err(build(&[], &[("huge", ne, dtype.id(), 0)], 32));
        assert_err(&err, &FormatError::ShapeOverflow { tensor: "huge".into(), dims: ne.to_vec() });
        assert_one_line(&err, &["\"huge\"", "overflows", &format!("{ne:?}")]);
    }
    // A zero dimension makes the product zero, however large the others are.
    for ne in [&[0, u64::MAX][..], &[u64::MAX, 0], &[0, u64::MAX, u64::MAX]] {
        let g = parse(build(&[], &[("zero", ne, f32_id(), 0)], 0)).unwrap();
        assert_eq!(g.tensors()[0].n_elements(), 0);
        assert_eq!(g.tensors()[0].n_bytes, 0);
    }
}

// 4. Tensor types --------------------------------------------------------------------------------

#[test]
fn unknown_tensor_type_ids_are_refused_and_every_known_one_parses() {
    let mut unknown = 0;
    for type_id in (0..=64).chain([1000, u32::MAX]) {
        // 256 elements are a whole number of blocks of every type.
        let size = GgmlType::from_id(type_id).map_or(0, |t| t.row_bytes(256).unwrap());
        let bytes = build(&[], &[("t", &[256], type_id, 0)], size as usize);
        match GgmlType::from_id(type_id) {
            Some(dtype) => {
                let g = parse(bytes).unwrap_or_else(|e| panic!("{dtype}: {e}"));
                check_parsed(&g);
                assert_eq!(g.tensors()[0].dtype, dtype);
                assert_eq!(g.tensors()[0].n_bytes, size);
            }
            None => {
                unknown += 1;
                let err = parse_err(bytes);
                assert_err(&err, &FormatError::UnknownTensorType { tensor: "t".into(), type_id });
                assert_one_line(&err, &["\"t\"", "unknown type", &type_id.to_string()]);
            }
        }
    }
    // Q4_2, Q4_3 (removed), 31..=33 (removed), 36..=38 (removed), 40..=64, 1000, u32::MAX.
    assert_eq!(unknown, 2 + 3 + 3 + 25 + 2);
}

#[test]
fn rows_that_are_not_whole_blocks_and_too_many_dimensions() {
    let err = parse_err(build(&[], &[("q", &[33, 2], GgmlType::Q4_0.id(), 0)], 0));
    assert_err(
        &err,
        &FormatError::BadRowLength { tensor: "q".into(), ne0: 33, dtype: "Q4_0".into(), block: 32 },
    );
    assert_one_line(&err, &["\"q\"", "33", "Q4_0", "32"]);
    // A tensor with no dimensions is one element, not a whole block of Q4_K.
    let err = parse_err(build(&[], &[("s", &[], GgmlType::Q4_K.id(), 0)], 0));
    assert!(matches!(err, FormatError::BadRowLength { ne0: 1, block: 256, .. }));

    for n_dims in [5, 1000, u32::MAX] {
        let mut s = Spec::header(3, 1, 0);
        s.string("five", "").u32(n_dims, "");
        let err = parse_err(s.data(1, 64).bytes.clone());
        assert_err(&err, &FormatError::TooManyDims { tensor: "five".into(), n_dims });
        assert_one_line(&err, &["\"five\"", &n_dims.to_string(), "dimensions"]);
    }
}

// 6. Lengths larger than the file, nesting --------------------------------------------------------

#[test]
fn string_lengths_larger_than_the_file() {
    for len in [1000, 1 << 60, u64::MAX] {
        // A key.
        let mut s = Spec::header(3, 0, 1);
        s.u64(len, "");
        let bytes = s.data(1, 76).bytes.clone();
        let err = parse_err(bytes);
        let expected =
            FormatError::Truncated { what: "a metadata key".into(), offset: 32, need: len, file_len: 108 };
        assert_err(&err, &expected);
        assert_one_line(&err, &["a metadata key", &len.to_string(), "108"]);

        // A string value.
        let mut s = Spec::header(3, 0, 1);
        s.string("name", "").u32(8, "").u64(len, "");
        let bytes = s.data(1, 50).bytes.clone();
        let file_len = bytes.len() as u64;
        let err = parse_err(bytes);
        assert_err(
            &err,
            &FormatError::Truncated { what: "the value of \"name\"".into(), offset: 48, need: len, file_len },
        );
        assert_one_line(&err, &["\"name\"", "truncated"]);

        // A tensor name.
        let mut s = Spec::header(3, 1, 0);
        s.u64(len, "");
        let err = parse_err(s.data(1, 80).bytes.clone());
        assert!(
            matches!(&err, FormatError::Truncated { what, need, .. } if what == "a tensor name" && *need == len),
            "{err:?}"
        );
    }
}

#[test]
fn array_lengths_larger_than_the_file() {
    for elem_type in 0..=12u32 {
        for n in [1000, 1 << 60, u64::MAX] {
            let mut s = Spec::header(3, 0, 1);
            s.string("arr", "").u32(9, "").u32(elem_type, "").u64(n, "");
            let bytes = s.data(1, 64).bytes.clone();
            let file_len = bytes.len() as u64;
            let err = parse_err(bytes);
            assert_err(
                &err,
                &FormatError::CountTooLarge { what: "the array \"arr\"".into(), count: n, file_len },
            );
            assert_one_line(&err, &["\"arr\"", &n.to_string(), "more than"]);
        }
    }
    // An array inside an array.
    let mut s = Spec::header(3, 0, 1);
    s.string("outer", "").u32(9, "").u32(9, "").u64(2, "").u32(4, "").u64(u64::MAX, "");
    let err = parse_err(s.data(1, 64).bytes.clone());
    assert!(matches!(
        err,
        FormatError::CountTooLarge { what, count: u64::MAX, .. } if what == "the array \"outer\""
    ));
}

#[test]
fn unknown_value_types() {
    for type_id in [13, 100, u32::MAX] {
        let mut s = Spec::header(3, 0, 1);
        s.string("k", "").u32(type_id, "");
        let err = parse_err(s.data(1, 32).bytes.clone());
        assert_err(&err, &FormatError::UnknownValueType { key: "k".into(), type_id });
        assert_one_line(&err, &["\"k\"", "unknown value type", &type_id.to_string()]);
        // As the element type of an array.
        let mut s = Spec::header(3, 0, 1);
        s.string("k", "").u32(9, "").u32(type_id, "").u64(1, "");
        let err = parse_err(s.data(1, 32).bytes.clone());
        assert_err(&err, &FormatError::UnknownValueType { key: "k".into(), type_id });
    }
}

#[test]
fn arrays_nested_too_deep() {
    fn nest(levels: usize) -> ArrayValue {
        (1..levels).fold(ArrayValue::U8(vec![42]), |a, _| ArrayValue::Array(vec![a]))
    }
    // Eight levels are allowed.
    let mut w = GgufWriter::new();
    w.add("deep", Value::Array(nest(8)));
    let g = parse(w.to_bytes()).unwrap();
    assert_eq!(g.get("deep"), Some(&Value::Array(nest(8))));

    for levels in [9, 10, 100_000] {
        let mut bytes = Spec::header(3, 0, 1).bytes;
        bytes.extend(8u64.to_le_bytes());
        bytes.extend(b"too.deep");
        bytes.extend(9u32.to_le_bytes());
        for _ in 1..levels {
            bytes.extend(9u32.to_le_bytes());
            bytes.extend(1u64.to_le_bytes());
        }
        bytes.extend(0u32.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        bytes.push(42);
        let err = parse_err(bytes);
        assert_err(&err, &FormatError::NestingTooDeep { key: "too.deep".into(), max: 8 });
        assert_one_line(&err, &["\"too.deep\"", "8 levels"]);
    }
}

// 7. Files that are not GGUF ----------------------------------------------------------------------

#[test]
fn files_that_are_not_gguf() {
    let mut safetensors = 19u64.to_le_bytes().to_vec();
    safetensors.extend(br#"{"__metadata__":{}}"#);
    let cases: [(&str, Vec<u8>); 7] = [
        ("text", b"hello, this is not a model\n".to_vec()),
        ("empty", Vec::new()),
        ("one byte", b"G".to_vec()),
        ("GGU", b"GGU".to_vec()),
        ("safetensors", safetensors),
        ("old ggjt", b"tjggxxxxxxxxxxxxxxxxxxxxxxxxxxxx".to_vec()),
        ("lowercase", b"gguf\x03\0\0\0".to_vec()),
    ];
    for (what, bytes) in cases {
        let found = bytes[..bytes.len().min(4)].to_vec();
        let err = Gguf::parse(baimo_formats::Bytes::from_vec(bytes)).expect_err(what);
        assert_err(&err, &FormatError::NotGguf { found });
        assert_one_line(&err, &["not a GGUF file", "GGUF"]);
    }
}

#[test]
fn big_endian_and_unsupported_versions() {
    for version in [2u32, 3] {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(version.to_be_bytes());
        bytes.extend(1u64.to_be_bytes());
        bytes.extend(0u64.to_be_bytes());
        let err = parse_err(bytes);
        assert_err(&err, &FormatError::BigEndian);
        assert_one_line(&err, &["big-endian"]);
    }
    for version in [0, 1, 4, 5, 0x0100_0000, u32::MAX] {
        let mut bytes = Spec::header(version, 0, 0).bytes;
        bytes.resize(64, 0);
        let err = parse_err(bytes);
        assert_err(&err, &FormatError::UnsupportedVersion(version));
        assert_one_line(&err, &["version", &version.to_string(), "not supported"]);
    }
    // Version 2 files are read.
    let g = parse(Spec::header(2, 0, 0).bytes).unwrap();
    assert_eq!(g.version, 2);
}

// 8. Alignment and duplicates ---------------------------------------------------------------------

#[test]
fn misaligned_tensor_offsets() {
    let err = parse_err(build(&[], &[("w", &[1], f32_id(), 4)], 64));
    assert_err(&err, &FormatError::Misaligned { tensor: "w".into(), offset: 4, alignment: 32 });
    assert_one_line(&err, &["\"w\"", "offset 4", "32 bytes"]);

    let align64 = [("general.alignment", Value::U32(64))];
    let err = parse_err(build(&align64, &[("w", &[1], f32_id(), 32)], 128));
    assert_err(&err, &FormatError::Misaligned { tensor: "w".into(), offset: 32, alignment: 64 });
    // With 64-byte alignment a second tensor at 64 is fine (the first one, 4 bytes, is padded to
    // 64), and with 1-byte alignment tensors follow each other without padding.
    let g = parse(build(&align64, &[("a", &[1], f32_id(), 0), ("w", &[1], f32_id(), 64)], 128)).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.tensors()[1].offset % 64, 0);
    let align1 = [("general.alignment", Value::U8(1))];
    let bytes = build(&align1, &[("a", &[3], GgmlType::I8.id(), 0), ("w", &[1], f32_id(), 3)], 7);
    let file_len = bytes.len();
    let g = parse(bytes).unwrap();
    assert_eq!(g.tensors()[1].offset, file_len as u64 - 4);
}

#[test]
fn tensors_must_follow_one_another() {
    // A gap before the first tensor, and a second tensor overlapping the first, as llama.cpp's
    // reader refuses them.
    let err = parse_err(build(&[], &[("w", &[1], f32_id(), 32)], 64));
    assert_err(&err, &FormatError::OutOfOrder { tensor: "w".into(), offset: 32, expected: 0 });
    assert_one_line(&err, &["\"w\"", "offset 32", "end at 0"]);
    let err = parse_err(build(&[], &[("a", &[16], f32_id(), 0), ("b", &[16], f32_id(), 32)], 128));
    assert_err(&err, &FormatError::OutOfOrder { tensor: "b".into(), offset: 32, expected: 64 });
}

#[test]
fn bad_general_alignment() {
    for a in [0u64, 3, 48, 1 << 63 | 1, u64::MAX] {
        let err = parse_err(build(&[("general.alignment", Value::U64(a))], &[], 64));
        assert_err(&err, &FormatError::BadAlignment(a));
        assert_one_line(&err, &["general.alignment", &a.to_string(), "power of two"]);
    }
    for (value, found) in [
        (Value::String("32".into()), "a string"),
        (Value::I32(-32), "i32"),
        (Value::F32(32.0), "f32"),
        (Value::Array(ArrayValue::U32(vec![32])), "an array of u32"),
    ] {
        let err = parse_err(build(&[("general.alignment", value)], &[], 64));
        assert_err(
            &err,
            &FormatError::WrongType {
                key: "general.alignment".into(),
                expected: "an unsigned integer",
                found: found.into(),
            },
        );
        assert_one_line(&err, &["general.alignment", found]);
    }
    // The largest power of two is accepted, but then the data section starts 2^63 bytes in, past
    // the end of any file, so even an empty tensor lies out of bounds.
    let g = parse(build(&[("general.alignment", Value::U64(1 << 63))], &[], 0)).unwrap();
    assert_eq!(g.alignment, 1 << 63);
    let err = parse_err(build(&[("general.alignment", Value::U64(1 << 63))], &[("t", &[0], f32_id(), 0)], 0));
    assert!(matches!(err, FormatError::TensorOutOfBounds { offset, .. } if offset == 1 << 63));
}

#[test]
fn duplicate_tensor_names_and_keys() {
    let err = parse_err(build(&[], &[("w", &[1], f32_id(), 0), ("w", &[1], f32_id(), 32)], 64));
    assert_err(&err, &FormatError::DuplicateTensor("w".into()));
    assert_one_line(&err, &["\"w\"", "twice"]);

    let mut w = GgufWriter::new();
    w.add("k", Value::U32(1)).add("k", Value::U32(1));
    let err = parse_err(w.to_bytes());
    assert_err(&err, &FormatError::DuplicateKey("k".into()));
    assert_one_line(&err, &["\"k\"", "twice"]);

    // Names with line breaks are quoted, so the message stays on one line.
    let mut w = GgufWriter::new();
    w.add("a\nb", Value::Bool(true)).add("a\nb", Value::String("x".into()));
    let err = parse_err(w.to_bytes());
    assert_err(&err, &FormatError::DuplicateKey("a\nb".into()));
    assert_one_line(&err, &["\"a\\nb\""]);
}

// 9. Paths ---------------------------------------------------------------------------------------

#[test]
fn missing_paths_directories_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    match Gguf::open(&missing) {
        Err(e @ FormatError::Io { .. }) => {
            let FormatError::Io { path, source } = &e else { unreachable!() };
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            assert_one_line(&e, &["nope.gguf", "cannot read"]);
        }
        other => panic!("{other:?}"),
    }
    match Gguf::open(dir.path()) {
        Err(e @ FormatError::IsADirectory(_)) => {
            assert_err(&e, &FormatError::IsADirectory(dir.path().to_path_buf()));
            assert_one_line(&e, &["is a directory"]);
        }
        other => panic!("{other:?}"),
    }
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert_err(&Gguf::open(&empty).unwrap_err(), &FormatError::NotGguf { found: vec![] });
    // A file that is fine on disk parses through the memory map.
    let good = dir.path().join("good.gguf");
    std::fs::write(&good, common::tiny_llama().to_bytes()).unwrap();
    let g = Gguf::open(&good).unwrap();
    check_parsed(&g);
    assert_eq!(g.tensors().len(), 11);
}

// Real files -------------------------------------------------------------------------------------

#[test]
fn the_llama_spm_vocabulary_parses_and_its_metadata_round_trips() {
    let path = vocab_path("ggml-vocab-llama-spm.gguf");
    let g = Gguf::open(&path).unwrap();
    check_parsed(&g);
    assert_eq!(g.version, 3);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "llama");
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 32_000);
    assert_eq!(tokens[..3], ["<unk>", "<s>", "</s>"]);
    assert_eq!(g.get_f32_array("tokenizer.ggml.scores").unwrap().len(), 32_000);
    assert_eq!(g.get_u64("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert!(g.tensors().is_empty());
    assert!(matches!(
        g.get_u64("tokenizer.ggml.model"),
        Err(FormatError::WrongType { expected: "an unsigned integer", .. })
    ));

    let bytes = rewrite(&g).to_bytes();
    let again = parse(bytes.clone()).unwrap();
    assert_eq!(again.metadata(), g.metadata());
    assert_eq!(again.tensors(), g.tensors());
    // GgufWriter lays the file out as llama.cpp did, but pads the end to the alignment even
    // when no tensor data follows.
    let original = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), original.len().next_multiple_of(32));
    assert_eq!(bytes[..original.len()], original[..]);
    assert!(bytes[original.len()..].iter().all(|&b| b == 0));
}

#[test]
fn every_reference_vocabulary_and_synthetic_file_parses() {
    for name in VOCABS {
        let g = Gguf::open(&vocab_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_parsed(&g);
        assert!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len() > 1000);
    }
    for (name, bytes) in common::synthetic_ggufs() {
        let g = parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_parsed(&g);
        let again = parse(rewrite(&g).to_bytes()).unwrap();
        assert_eq!(again.metadata(), g.metadata(), "{name}");
        assert_eq!(again.tensors(), g.tensors(), "{name}");
        for t in g.tensors() {
            assert_eq!(*again.tensor_data(t), *g.tensor_data(t), "{name}: {}", t.name);
        }
    }
}

/// A damaged length on a key or a tensor name is refused before the name is read: the error
/// stays one short line, whatever the file holds (a 100 MB file once gave a 95 MB message).
#[test]
fn a_damaged_name_length_gives_a_short_error() {
    let mut bytes = common::tiny_llama().to_bytes();
    // The first key's length sits right after the header (magic, version, tensor and key counts).
    let at = 4 + 4 + 8 + 8;
    let filler_len = 200_000u64;
    bytes[at..at + 8].copy_from_slice(&filler_len.to_le_bytes());
    bytes.extend(std::iter::repeat_n(b'A', filler_len as usize));
    let err = parse_err(bytes);
    assert!(matches!(err, FormatError::NameTooLong { len: 200_000, max: 65_535, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.len() < 200, "{} bytes: {message:.300}", message.len());
    assert_one_line(&err, &["metadata key", "200000 bytes", "damaged"]);
}
