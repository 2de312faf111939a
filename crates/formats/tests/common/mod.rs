//! Helpers shared by the integration tests of the GGUF reader: small synthetic GGUF files, the
//! llama.cpp vocabulary files, and a check that a parsed file is consistent and all its
//! accessors work.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::path::PathBuf;

use baimo_formats::gguf::GgufWriter;
use baimo_formats::{ArrayValue, Bytes, FormatError, Gguf, Value};
use baimo_kernels::GgmlType;

pub fn parse(bytes: Vec<u8>) -> Result<Gguf, FormatError> {
    Gguf::parse(Bytes::from_vec(bytes))
}

/// A vocabulary file from llama.cpp's test models, in the shared reference directory.
pub fn vocab_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/vocab/").join(name)
}

pub const VOCABS: &[&str] = &[
    "ggml-vocab-llama-spm.gguf",
    "ggml-vocab-llama-bpe.gguf",
    "ggml-vocab-qwen2.gguf",
    "ggml-vocab-gpt-2.gguf",
    "ggml-vocab-baichuan.gguf",
];

/// Asserts that an error's message is a single non-empty line that contains every `needle`.
#[track_caller]
pub fn assert_one_line(err: &dyn std::fmt::Display, needles: &[&str]) {
    let msg = err.to_string();
    assert!(!msg.is_empty(), "empty error message");
    assert!(!msg.contains('\n') && !msg.contains('\r'), "message is not one line: {msg:?}");
    for needle in needles {
        assert!(msg.contains(needle), "message {msg:?} does not name {needle:?}");
    }
}

/// Deterministic filler bytes for tensor data.
pub fn filler(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// `n` elements' worth of bytes of `dtype`.
pub fn tensor_bytes(dtype: GgmlType, ne: &[u64], seed: u8) -> Vec<u8> {
    let n: u64 = ne.iter().product();
    filler(dtype.row_bytes(n).expect("whole blocks") as usize, seed)
}

fn add_tensor(w: &mut GgufWriter, name: &str, ne: &[u64], dtype: GgmlType) {
    let data = tensor_bytes(dtype, ne, name.len() as u8);
    w.add_tensor(name, ne, dtype, data);
}

/// Metadata of every value type, including arrays of every element type and nested arrays.
pub fn every_value_type(w: &mut GgufWriter) {
    w.add("general.architecture", Value::String("llama".into()))
        .add("general.name", Value::String("synthetic ✓".into()))
        .add("t.u8", Value::U8(200))
        .add("t.i8", Value::I8(-100))
        .add("t.u16", Value::U16(60_000))
        .add("t.i16", Value::I16(-30_000))
        .add("t.u32", Value::U32(4_000_000_000))
        .add("t.i32", Value::I32(-2_000_000_000))
        .add("t.f32", Value::F32(1.5))
        .add("t.bool", Value::Bool(true))
        .add("t.u64", Value::U64(u64::MAX))
        .add("t.i64", Value::I64(i64::MIN))
        .add("t.f64", Value::F64(-0.25))
        .add("a.u8", Value::Array(ArrayValue::U8(vec![1, 2, 255])))
        .add("a.i8", Value::Array(ArrayValue::I8(vec![-1, 0, 1])))
        .add("a.u16", Value::Array(ArrayValue::U16(vec![1, 65_535])))
        .add("a.i16", Value::Array(ArrayValue::I16(vec![-2, 2])))
        .add("a.u32", Value::Array(ArrayValue::U32(vec![7, 8, 9])))
        .add("a.i32", Value::Array(ArrayValue::I32(vec![-7, 8])))
        .add("a.f32", Value::Array(ArrayValue::F32(vec![0.5, -1.0, 3.25])))
        .add("a.bool", Value::Array(ArrayValue::Bool(vec![true, false])))
        .add("a.string", Value::Array(ArrayValue::String(vec!["a".into(), "".into(), "ccc".into()])))
        .add("a.u64", Value::Array(ArrayValue::U64(vec![0, u64::MAX])))
        .add("a.i64", Value::Array(ArrayValue::I64(vec![i64::MIN, 1])))
        .add("a.f64", Value::Array(ArrayValue::F64(vec![2.0])))
        .add("a.empty", Value::Array(ArrayValue::U32(vec![])))
        .add(
            "a.nested",
            Value::Array(ArrayValue::Array(vec![
                ArrayValue::U8(vec![1]),
                ArrayValue::String(vec!["x".into()]),
                ArrayValue::Array(vec![ArrayValue::I32(vec![-1, -2])]),
            ])),
        );
}

/// Small GGUF files that parse: every value type, tensors of several types (plain, block
/// quantized, k-quants, zero-sized), non-default alignments, a tiny LLaMA-shaped model, and a
/// file with nothing in it.
pub fn synthetic_ggufs() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();

    let mut w = GgufWriter::new();
    every_value_type(&mut w);
    add_tensor(&mut w, "f32", &[4, 2], GgmlType::F32);
    add_tensor(&mut w, "f16", &[8], GgmlType::F16);
    add_tensor(&mut w, "bf16", &[3], GgmlType::BF16);
    add_tensor(&mut w, "q4_0", &[32, 2], GgmlType::Q4_0);
    add_tensor(&mut w, "q8_0", &[32], GgmlType::Q8_0);
    add_tensor(&mut w, "q4_k", &[256], GgmlType::Q4_K);
    add_tensor(&mut w, "q6_k", &[256], GgmlType::Q6_K);
    add_tensor(&mut w, "i32", &[5], GgmlType::I32);
    add_tensor(&mut w, "f64", &[1, 1, 1, 1], GgmlType::F64);
    add_tensor(&mut w, "empty", &[0, 3], GgmlType::F32);
    add_tensor(&mut w, "scalar", &[], GgmlType::F32);
    out.push(("every_type", w.to_bytes()));

    let mut w = GgufWriter::new();
    w.add("general.alignment", Value::U32(1));
    w.add("general.architecture", Value::String("qwen2".into()));
    add_tensor(&mut w, "a", &[3], GgmlType::I8);
    add_tensor(&mut w, "b", &[5], GgmlType::F16);
    add_tensor(&mut w, "c", &[32], GgmlType::Q5_0);
    out.push(("align1", w.to_bytes()));

    let mut w = GgufWriter::new();
    w.add("general.alignment", Value::U64(64));
    add_tensor(&mut w, "x", &[32, 3], GgmlType::Q8_0);
    add_tensor(&mut w, "y", &[256, 1, 1], GgmlType::Q5_K);
    add_tensor(&mut w, "z", &[32], GgmlType::MXFP4);
    out.push(("align64", w.to_bytes()));

    out.push(("tiny_llama", tiny_llama().to_bytes()));
    out.push(("empty", GgufWriter::new().to_bytes()));
    out
}

/// A LLaMA-shaped model with 1 layer, hidden size 8 and a 6-token vocabulary.
pub fn tiny_llama() -> GgufWriter {
    let mut w = GgufWriter::new();
    let tokens: Vec<String> =
        ["<unk>", "<s>", "</s>", "▁a", "b", "<0x0A>"].iter().map(|s| s.to_string()).collect();
    w.add("general.architecture", Value::String("llama".into()))
        .add("llama.embedding_length", Value::U32(8))
        .add("llama.feed_forward_length", Value::U32(16))
        .add("llama.block_count", Value::U32(1))
        .add("llama.attention.head_count", Value::U32(2))
        .add("llama.attention.head_count_kv", Value::U32(1))
        .add("llama.context_length", Value::U32(32))
        .add("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .add("tokenizer.ggml.model", Value::String("llama".into()))
        .add("tokenizer.ggml.tokens", Value::Array(ArrayValue::String(tokens)))
        .add("tokenizer.ggml.scores", Value::Array(ArrayValue::F32(vec![0.0, 0.0, 0.0, -1.0, -2.0, -3.0])))
        .add("tokenizer.ggml.token_type", Value::Array(ArrayValue::I32(vec![2, 3, 3, 1, 1, 6])));
    for (name, ne) in [
        ("token_embd.weight", &[8, 6][..]),
        ("blk.0.attn_norm.weight", &[8]),
        ("blk.0.attn_q.weight", &[8, 8]),
        ("blk.0.attn_k.weight", &[8, 4]),
        ("blk.0.attn_v.weight", &[8, 4]),
        ("blk.0.attn_output.weight", &[8, 8]),
        ("blk.0.ffn_norm.weight", &[8]),
        ("blk.0.ffn_gate.weight", &[8, 16]),
        ("blk.0.ffn_up.weight", &[8, 16]),
        ("blk.0.ffn_down.weight", &[16, 8]),
        ("output_norm.weight", &[8]),
    ] {
        add_tensor(&mut w, name, ne, GgmlType::F32);
    }
    w
}

/// A real vocabulary's metadata with every array cut to its first `keep` elements, re-written
/// with [`GgufWriter`]: a llama.cpp header small enough to mutate quickly that still parses.
pub fn shrunk_vocab(name: &str, keep: usize) -> Vec<u8> {
    let g = Gguf::open(&vocab_path(name)).expect("vocabulary parses");
    let mut w = GgufWriter::new();
    for (key, value) in g.metadata() {
        let value = match value {
            Value::Array(a) => Value::Array(shrink(a, keep)),
            v => v.clone(),
        };
        w.add(key, value);
    }
    w.to_bytes()
}

fn shrink(a: &ArrayValue, keep: usize) -> ArrayValue {
    fn cut<T: Clone>(v: &[T], keep: usize) -> Vec<T> {
        v[..v.len().min(keep)].to_vec()
    }
    match a {
        ArrayValue::U8(v) => ArrayValue::U8(cut(v, keep)),
        ArrayValue::I8(v) => ArrayValue::I8(cut(v, keep)),
        ArrayValue::U16(v) => ArrayValue::U16(cut(v, keep)),
        ArrayValue::I16(v) => ArrayValue::I16(cut(v, keep)),
        ArrayValue::U32(v) => ArrayValue::U32(cut(v, keep)),
        ArrayValue::I32(v) => ArrayValue::I32(cut(v, keep)),
        ArrayValue::F32(v) => ArrayValue::F32(cut(v, keep)),
        ArrayValue::Bool(v) => ArrayValue::Bool(cut(v, keep)),
        ArrayValue::String(v) => ArrayValue::String(cut(v, keep)),
        ArrayValue::Array(v) => ArrayValue::Array(cut(v, keep)),
        ArrayValue::U64(v) => ArrayValue::U64(cut(v, keep)),
        ArrayValue::I64(v) => ArrayValue::I64(cut(v, keep)),
        ArrayValue::F64(v) => ArrayValue::F64(cut(v, keep)),
    }
}

/// Re-writes a parsed file with [`GgufWriter`]: the same metadata (in order) and tensors.
pub fn rewrite(g: &Gguf) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (key, value) in g.metadata() {
        w.add(key, value.clone());
    }
    for t in g.tensors() {
        w.add_tensor(&t.name, &t.ne, t.dtype, g.tensor_data(t).to_vec());
    }
    w
}

/// What a successful parse promises: every tensor's data lies inside the file and has the size
/// its shape and type give, and every accessor answers without panicking.
pub fn check_parsed(g: &Gguf) {
    let file_len = g.file_len();
    assert!(g.version == 2 || g.version == 3);
    assert!(g.alignment.is_power_of_two());
    for t in g.tensors() {
        let end = t.offset.checked_add(t.n_bytes).expect("end fits in u64");
        assert!(end <= file_len, "{} ends at {end} > {file_len}", t.name);
        assert!(t.ne.len() <= 4);
        assert_eq!(t.offset % g.alignment, 0, "{} is not aligned", t.name);
        let n = t.n_elements();
        assert_eq!(t.dtype.row_bytes(n), Some(t.n_bytes));
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes);
        assert_eq!(g.tensor_info(&t.name), Some(t));
    }
    for (key, value) in g.metadata() {
        // Keys are unique, so `get` finds this very entry (compared by address: NaN != NaN).
        assert!(g.get(key).is_some_and(|v| std::ptr::eq(v, value)), "{key:?}");
        let _ = value.as_u64();
        let _ = value.as_f64();
        let results = [
            g.get_str(key).err(),
            g.get_u64(key).err(),
            g.get_usize(key).err(),
            g.get_f32(key).err(),
            g.get_bool(key).err(),
            g.get_array(key).err(),
            g.get_str_array(key).err(),
            g.get_f32_array(key).err(),
        ];
        for e in results.iter().flatten() {
            assert!(matches!(e, FormatError::WrongType { key: k, .. } if k == key), "{e:?}");
            assert_one_line(e, &[]);
        }
        if let Value::Array(a) = value {
            assert_eq!(a.is_empty(), matches!(a.len(), 0));
            if let Some(v) = a.to_i64_vec() {
                assert_eq!(v.len(), a.len());
            }
        }
    }
    let missing = "\u{0}no such key";
    if g.get(missing).is_none() {
        assert!(matches!(g.get_str(missing), Err(FormatError::MissingKey(k)) if k == missing));
    }
}
