//! Model files that parse as GGUF but do not describe a model baimo can run give the exact
//! [`ModelError`], with a one-line message naming the problem, and never a panic.

use baimo_formats::gguf::GgufWriter;
use baimo_formats::{Bytes, FormatError, Gguf, Value};
use baimo_kernels::GgmlType;
use baimo_models::{Model, ModelError};

/// A LLaMA-shaped model file, as lists that each test edits before writing it.
struct ModelFile {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType)>,
}

impl ModelFile {
    /// `layers` layers of width `hidden` with `heads` query heads over `kv_heads` key/value
    /// heads, a feed-forward width of `ff` and a vocabulary of 6; all weights F32.
    fn llama(hidden: u64, ff: u64, heads: u64, kv_heads: u64, layers: u64) -> ModelFile {
        let head_dim = hidden / heads;
        let (q_dim, kv_dim) = (heads * head_dim, kv_heads * head_dim);
        let metadata = vec![
            ("general.architecture", Value::String("llama".into())),
            ("llama.embedding_length", Value::U64(hidden)),
            ("llama.feed_forward_length", Value::U64(ff)),
            ("llama.block_count", Value::U64(layers)),
            ("llama.attention.head_count", Value::U64(heads)),
            ("llama.attention.head_count_kv", Value::U64(kv_heads)),
            ("llama.context_length", Value::U32(64)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ];
        let mut tensors = vec![("token_embd.weight".to_string(), vec![hidden, 6])];
        for i in 0..layers {
            for (name, ne) in [
                ("attn_norm.weight", vec![hidden]),
                ("attn_q.weight", vec![hidden, q_dim]),
                ("attn_k.weight", vec![hidden, kv_dim]),
                ("attn_v.weight", vec![hidden, kv_dim]),
                ("attn_output.weight", vec![q_dim, hidden]),
                ("ffn_norm.weight", vec![hidden]),
                ("ffn_gate.weight", vec![hidden, ff]),
                ("ffn_up.weight", vec![hidden, ff]),
                ("ffn_down.weight", vec![ff, hidden]),
            ] {
                tensors.push((format!("blk.{i}.{name}"), ne));
            }
        }
        tensors.push(("output_norm.weight".to_string(), vec![hidden]));
        ModelFile {
            metadata: metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            tensors: tensors.into_iter().map(|(name, ne)| (name, ne, GgmlType::F32)).collect(),
        }
    }

    fn tiny() -> ModelFile {
        ModelFile::llama(8, 16, 2, 1, 1)
    }

    fn set(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.into(), value));
        self
    }

    fn remove_key(&mut self, key: &str) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self
    }

    fn tensor(&mut self, name: &str, ne: &[u64], dtype: GgmlType) -> &mut Self {
        self.remove_tensor(name);
        self.tensors.push((name.into(), ne.to_vec(), dtype));
        self
    }

    fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|(n, ..)| n != name);
        self
    }

    fn gguf(&self) -> Gguf {
        let mut w = GgufWriter::new();
        for (key, value) in &self.metadata {
            w.add(key, value.clone());
        }
        for (name, ne, dtype) in &self.tensors {
            let n_bytes = dtype.row_bytes(ne.iter().product()).unwrap() as usize;
            // Small values, so F32 / F16 weights are finite.
            let data = (0..n_bytes).map(|i| (i % 7) as u8).collect();
            w.add_tensor(name, ne, *dtype, data);
        }
        Gguf::parse(Bytes::from_vec(w.to_bytes())).expect("the file itself is valid GGUF")
    }

    fn load(&self) -> Result<Model, ModelError> {
        Model::from_gguf(&self.gguf())
    }

    #[track_caller]
    fn load_err(&self) -> ModelError {
        match self.load() {
            Ok(_) => panic!("the model loaded"),
            Err(e) => e,
        }
    }
}

/// Asserts the error's variant and fields, and that its message is one line naming `needles`.
#[track_caller]
fn assert_err(actual: &ModelError, expected: &ModelError, needles: &[&str]) {
    assert_eq!(format!("{actual:?}"), format!("{expected:?}"));
    let msg = actual.to_string();
    assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
    for needle in needles {
        assert!(msg.contains(needle), "message {msg:?} does not name {needle:?}");
    }
}

#[test]
fn the_tiny_model_loads() {
    // The baseline every other test breaks in one place.
    let info = ModelFile::tiny().load().unwrap().info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.vocab_size, 6);
    assert_eq!(info.hidden_size, 8);
    assert_eq!(info.n_layers, 1);
    assert_eq!(info.context_length, 64);

    // The same as Qwen2, with q/k/v biases.
    let mut f = ModelFile::tiny();
    f.set("general.architecture", Value::String("qwen2".into()));
    for (key, _) in &mut f.metadata {
        if let Some(rest) = key.strip_prefix("llama.") {
            *key = format!("qwen2.{rest}");
        }
    }
    f.tensor("blk.0.attn_q.bias", &[8], GgmlType::F32)
        .tensor("blk.0.attn_k.bias", &[4], GgmlType::F32)
        .tensor("blk.0.attn_v.bias", &[4], GgmlType::F32);
    assert_eq!(f.load().unwrap().info().architecture, "qwen2");
}

#[test]
fn unknown_architecture() {
    let mut f = ModelFile::tiny();
    f.set("general.architecture", Value::String("notamodel".into()));
    assert_err(
        &f.load_err(),
        &ModelError::UnknownArchitecture("notamodel".into()),
        &["\"notamodel\"", "llama", "qwen2"],
    );

    f.remove_key("general.architecture");
    assert_err(
        &f.load_err(),
        &ModelError::Format(FormatError::MissingKey("general.architecture".into())),
        &["general.architecture"],
    );

    f.set("general.architecture", Value::U32(1));
    assert_err(
        &f.load_err(),
        &ModelError::Format(FormatError::WrongType {
            key: "general.architecture".into(),
            expected: "a string",
            found: "u32".into(),
        }),
        &["general.architecture", "u32", "a string"],
    );
}

#[test]
fn missing_tensors() {
    for name in [
        "token_embd.weight",
        "blk.0.attn_norm.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_v.weight",
        "blk.0.ffn_norm.weight",
        "blk.0.ffn_down.weight",
        "output_norm.weight",
    ] {
        let mut f = ModelFile::tiny();
        f.remove_tensor(name);
        assert_err(&f.load_err(), &ModelError::MissingTensor(name.into()), &["missing tensor", name]);
    }
    // More layers in the metadata than in the file.
    let mut f = ModelFile::tiny();
    f.set("llama.block_count", Value::U32(2));
    assert_err(
        &f.load_err(),
        &ModelError::MissingTensor("blk.1.attn_q.weight".into()),
        &["blk.1.attn_q.weight"],
    );
    // A missing hyper-parameter.
    let mut f = ModelFile::tiny();
    f.remove_key("llama.feed_forward_length");
    assert_err(
        &f.load_err(),
        &ModelError::Format(FormatError::MissingKey("llama.feed_forward_length".into())),
        &["llama.feed_forward_length"],
    );
}

#[test]
fn tensor_shapes_that_disagree_with_the_metadata() {
    let cases: [(&str, &[u64], &str); 6] = [
        ("blk.0.attn_q.weight", &[8, 6], "[8, 8]"),
        ("blk.0.attn_k.weight", &[4, 8], "[8, 4]"),
        ("blk.0.ffn_up.weight", &[8, 16, 2], "[8, 16]"),
        ("blk.0.ffn_down.weight", &[8, 16], "[16, 8]"),
        ("blk.0.attn_norm.weight", &[7], "[8]"),
        ("output_norm.weight", &[4, 2], "[8]"),
    ];
    for (name, ne, expected) in cases {
        let mut f = ModelFile::tiny();
        f.tensor(name, ne, GgmlType::F32);
        let found = format!("{ne:?}");
        assert_err(
            &f.load_err(),
            &ModelError::ShapeMismatch {
                tensor: name.into(),
                expected: expected.into(),
                found: found.clone(),
            },
            &[name, expected, &found],
        );
    }
    // Trailing dimensions of 1 are the same shape.
    let mut f = ModelFile::tiny();
    f.tensor("blk.0.ffn_up.weight", &[8, 16, 1, 1], GgmlType::F32);
    assert!(f.load().is_ok());

    // The metadata says 16 wide; the tensors are 8 wide.
    let mut f = ModelFile::tiny();
    f.set("llama.embedding_length", Value::U32(16));
    assert_err(
        &f.load_err(),
        &ModelError::ShapeMismatch {
            tensor: "token_embd.weight".into(),
            expected: "[16, 6]".into(),
            found: "[8, 6]".into(),
        },
        &["token_embd.weight"],
    );
}

#[test]
fn weights_of_a_type_baimo_cannot_compute_with() {
    // These types' blocks hold 256 values, so this model is 256 wide.
    let base = ModelFile::llama(256, 256, 2, 1, 1);
    assert!(base.load().is_ok());
    for dtype in [GgmlType::IQ2_XXS, GgmlType::IQ3_S, GgmlType::TQ1_0] {
        let mut f = ModelFile::llama(256, 256, 2, 1, 1);
        f.tensor("blk.0.ffn_gate.weight", &[256, 256], dtype);
        assert_err(
            &f.load_err(),
            &ModelError::UnsupportedType {
                tensor: "blk.0.ffn_gate.weight".into(),
                dtype: dtype.name().into(),
            },
            &["blk.0.ffn_gate.weight", dtype.name(), "cannot compute"],
        );
    }
    // A norm vector of integers.
    let mut f = ModelFile::tiny();
    f.tensor("blk.0.ffn_norm.weight", &[8], GgmlType::I16);
    assert_err(
        &f.load_err(),
        &ModelError::UnsupportedType { tensor: "blk.0.ffn_norm.weight".into(), dtype: "I16".into() },
        &["blk.0.ffn_norm.weight", "I16"],
    );
}

#[test]
fn head_counts_that_cannot_work() {
    let invalid = |edit: &dyn Fn(&mut ModelFile), message: &str| {
        let mut f = ModelFile::tiny();
        edit(&mut f);
        assert_err(
            &f.load_err(),
            &ModelError::InvalidConfig(message.into()),
            &["invalid model configuration", message],
        );
    };
    invalid(
        &|f| {
            f.set("llama.attention.head_count", Value::U32(0));
        },
        "zero attention heads",
    );
    invalid(
        &|f| {
            f.set("llama.attention.head_count_kv", Value::U32(0));
        },
        "zero attention heads",
    );
    invalid(
        &|f| {
            f.set("llama.attention.head_count", Value::U32(3))
                .set("llama.attention.head_count_kv", Value::U32(2));
        },
        "3 query heads cannot be grouped over 2 key/value heads",
    );
    invalid(
        &|f| {
            f.set("llama.attention.head_count_kv", Value::U32(3));
        },
        "2 query heads cannot be grouped over 3 key/value heads",
    );
    invalid(
        &|f| {
            f.set("llama.block_count", Value::U32(0));
        },
        "zero hidden size, feed-forward size or layer count",
    );
    invalid(
        &|f| {
            f.set("llama.attention.key_length", Value::U32(3));
        },
        "head dimension 3 (must be even, at most 512)",
    );
    // A head count of the wrong type, and one that does not fit in memory.
    let mut f = ModelFile::tiny();
    f.set("llama.attention.head_count", Value::F32(2.0));
    assert!(matches!(
        f.load_err(),
        ModelError::Format(FormatError::WrongType { key, .. }) if key == "llama.attention.head_count"
    ));
    let mut f = ModelFile::tiny();
    f.set("llama.attention.head_count", Value::I32(-2));
    assert!(matches!(
        f.load_err(),
        ModelError::Format(FormatError::WrongType { found, .. }) if found == "i32"
    ));
}

/// 2^62 heads of 128 would overflow `n_heads × head_dim` (a panic in debug builds, a width of
/// 0 after wrapping in release builds): the configuration is refused first.
#[test]
fn head_counts_whose_width_overflows() {
    let mut f = ModelFile::tiny();
    f.set("llama.attention.head_count", Value::U64(1 << 62))
        .set("llama.attention.head_count_kv", Value::U64(1 << 62))
        .set("llama.attention.key_length", Value::U32(128));
    assert!(matches!(f.load_err(), ModelError::InvalidConfig(_)));
}

/// Missing q/k/v biases are zero-filled to the metadata's widths; with 2^40 heads of 2 that
/// would be 8 TiB. The widths are refused (and the weights checked against the file) first.
#[test]
fn a_bias_sized_by_an_unchecked_head_count() {
    let mut f = ModelFile::tiny();
    f.set("llama.attention.head_count", Value::U64(1 << 40))
        .set("llama.attention.head_count_kv", Value::U32(1))
        .set("llama.attention.key_length", Value::U32(2))
        .tensor("blk.0.attn_v.bias", &[2], GgmlType::F32);
    assert!(matches!(f.load_err(), ModelError::InvalidConfig(_) | ModelError::ShapeMismatch { .. }));
}
