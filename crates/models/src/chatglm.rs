//! ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B (智谱 GLM, the "ChatGLMModel v2" architecture), loaded
//! onto the LLaMA forward pass.
//!
//! Per layer: RMSNorm pre-norm; one fused `query_key_value` projection with bias, rows
//! `Q (n_heads·d) | K (groups·d) | V (groups·d)` (multi-query attention with
//! `multi_query_group_num` key/value heads); rotary embeddings on the **first half** of each head
//! with **interleaved** pairs (`θ_i = base^(−2i/(d/2))`, base `10000 · rope_ratio`); `dense`
//! without bias; a fused `dense_h_to_4h` whose first half is the SwiGLU gate; `dense_4h_to_h`.
//! A final RMSNorm and an untied `output_layer`. transformers' `GlmForCausalLM` (model_type
//! `glm`) is the same computation under other names, and is read too.
//!
//! The released INT8/INT4 checkpoints (`quantization_bit`) keep each linear weight as int8 with
//! one f16 scale per output row (`weight_scale`); INT4 packs two signed nibbles per byte, the
//! even element in the high nibble. They are widened to f32 at load time (`W = q · scale`), then
//! treated like any float checkpoint (so `--quantize` applies).
//!
//! Reference: THUDM `modeling_chatglm.py` (ChatGLM2/3), `quantization.py`; transformers
//! `modeling_glm.py`; llama.cpp `build_chatglm`.

use baimo_formats::{HfFolder, StorageType};
use baimo_kernels::GgmlType;
use baimo_kernels::ops::RopeStyle;
use half::f16;

use crate::ModelError;
use crate::hf::{HfSource, JsonConfig};
use crate::llama::{Config, Llama, Positions};

/// Whether a `model_type: chatglm` config is the first GLM architecture (ChatGLM-6B), which has
/// its own module.
pub fn is_glm_v1(config: &serde_json::Value) -> bool {
    config.get("position_encoding_2d").is_some() || config.get("inner_hidden_size").is_some()
}

pub fn from_hf(folder: &HfFolder, quantize: Option<GgmlType>) -> Result<Llama, ModelError> {
    let j = JsonConfig { json: &folder.config };
    let native = j.str("model_type") == Some("glm");
    let hidden_size = j.usize("hidden_size")?;
    let heads = j.usize("num_attention_heads")?;
    let (config, names): (Config, &'static Rename) = if native {
        let head_dim = j.usize_or("head_dim", hidden_size / heads.max(1))?;
        let rope = j.object("rope_parameters");
        let partial = rope.as_ref().map_or(Ok(0.5), |r| r.f32_or("partial_rotary_factor", 0.5))?;
        let theta = match &rope {
            Some(r) if r.has("rope_theta") => r.f32_or("rope_theta", 10_000.0)?,
            _ => j.f32_or("rope_theta", 10_000.0)?,
        };
        let config = Config {
            architecture: "glm".into(),
            hidden_size,
            intermediate_size: j.usize("intermediate_size")?,
            num_hidden_layers: j.usize("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: j.usize_or("num_key_value_heads", heads)?,
            head_dim,
            vocab_size: j.usize("vocab_size")?,
            max_position_embeddings: j.usize_or("max_position_embeddings", 8192)?,
            rms_norm_eps: j.f32_or("rms_norm_eps", 1e-5)?,
            rope_theta: theta,
            rope_dims: ((head_dim as f32 * partial) as usize) & !1,
            rope_style: RopeStyle::Interleaved,
            rope_linear_factor: 1.0,
            positions: Positions::Rope,
            rope_dynamic: None,
            logn_seq_length: None,
            sliding_window: None,
            sliding_layers: Vec::new(),
            moe: None,
            gemma: None,
        };
        (config, &glm_name)
    } else {
        if !j.bool_or("rmsnorm", true)? || j.bool_or("apply_residual_connection_post_layernorm", false)? {
            return Err(ModelError::Unsupported(
                "ChatGLM variant with LayerNorm or post-norm residuals".into(),
            ));
        }
        if j.bool_or("add_bias_linear", false)? {
            return Err(ModelError::Unsupported("ChatGLM with biases on dense layers".into()));
        }
        if j.usize_or("pre_seq_len", 0)? > 0 {
            return Err(ModelError::Unsupported("P-tuning v2 prefix checkpoints (pre_seq_len)".into()));
        }
        let head_dim = j.usize_or("kv_channels", hidden_size / heads.max(1))?;
        let groups = if j.bool_or("multi_query_attention", false)? {
            j.usize("multi_query_group_num")?
        } else {
            heads
        };
        let config = Config {
            architecture: "chatglm".into(),
            hidden_size,
            intermediate_size: j.usize("ffn_hidden_size")?,
            num_hidden_layers: j.usize("num_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: groups,
            head_dim,
            vocab_size: j.usize("padded_vocab_size")?,
            max_position_embeddings: j.usize_or("seq_length", 2048)?,
            rms_norm_eps: j.f32_or("layernorm_epsilon", 1e-5)?,
            rope_theta: 10_000.0 * j.f32_or("rope_ratio", 1.0)?,
            rope_dims: head_dim / 2,
            rope_style: RopeStyle::Interleaved,
            rope_linear_factor: 1.0,
            positions: Positions::Rope,
            rope_dynamic: None,
            logn_seq_length: None,
            sliding_window: None,
            sliding_layers: Vec::new(),
            moe: None,
            gemma: None,
        };
        (config, &chatglm_name)
    };
    config.validate()?;
    let c = &config;

    let mut t = HfSource::new(&folder.tensors, names, quantize);
    if let Some(bits) = j.usize_or("quantization_bit", 0).ok().filter(|&b| b != 0) {
        widen_quantized(&mut t, c, bits)?;
    }
    let (q_dim, kv_dim) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    for i in 0..c.num_hidden_layers {
        let part = |p: &str| format!("blk.{i}.{p}");
        if !native {
            for kind in ["weight", "bias"] {
                let [q, k, v] = ["q", "k", "v"].map(|x| part(&format!("attn_{x}.{kind}")));
                t.split_rows(&part(&format!("attn_qkv.{kind}")), &[(&q, q_dim), (&k, kv_dim), (&v, kv_dim)])?;
            }
        }
        let (gate, up) = (part("ffn_gate.weight"), part("ffn_up.weight"));
        let ffn = c.intermediate_size;
        t.split_rows(&part("ffn_gate_up.weight"), &[(&gate, ffn), (&up, ffn)])?;
    }
    let tied = j.bool_or("tie_word_embeddings", false)?;
    Llama::load(config, &t, tied, None, folder.tensors.len())
}

type Rename = dyn Fn(&str) -> Option<String>;

/// THUDM's names (`transformer.encoder.layers.N…`).
fn chatglm_name(gguf_name: &str) -> Option<String> {
    Some(match gguf_name {
        "token_embd.weight" => "transformer.embedding.word_embeddings.weight".into(),
        "output_norm.weight" => "transformer.encoder.final_layernorm.weight".into(),
        "output.weight" => "transformer.output_layer.weight".into(),
        _ => {
            let (layer, part) = gguf_name.strip_prefix("blk.")?.split_once('.')?;
            let hf = match part {
                "attn_norm.weight" => "input_layernorm.weight",
                "attn_qkv.weight" => "self_attention.query_key_value.weight",
                "attn_qkv.bias" => "self_attention.query_key_value.bias",
                "attn_output.weight" => "self_attention.dense.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "ffn_gate_up.weight" => "mlp.dense_h_to_4h.weight",
                "ffn_down.weight" => "mlp.dense_4h_to_h.weight",
                _ => return None,
            };
            format!("transformer.encoder.layers.{layer}.{hf}")
        }
    })
}

/// transformers' `GlmForCausalLM` names.
fn glm_name(gguf_name: &str) -> Option<String> {
    match gguf_name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        Some((layer, "ffn_gate_up.weight")) => Some(format!("model.layers.{layer}.mlp.gate_up_proj.weight")),
        _ => crate::llama::hf_name(gguf_name),
    }
}

/// Widens the int8/int4 linear weights of a `quantization_bit` checkpoint to f32 (registered
/// under their GGUF names, ahead of the file's tensors).
fn widen_quantized(t: &mut HfSource<'_>, c: &Config, bits: usize) -> Result<(), ModelError> {
    if bits != 4 && bits != 8 {
        return Err(ModelError::Unsupported(format!("quantization_bit {bits} (4 or 8)")));
    }
    let h = c.hidden_size;
    let qkv_rows = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim;
    for i in 0..c.num_hidden_layers {
        for (part, rows, cols) in [
            ("attn_qkv.weight", qkv_rows, h),
            ("attn_output.weight", h, c.num_attention_heads * c.head_dim),
            ("ffn_gate_up.weight", 2 * c.intermediate_size, h),
            ("ffn_down.weight", h, c.intermediate_size),
        ] {
            let name = format!("blk.{i}.{part}");
            let file_name = chatglm_name(&name).unwrap_or_default();
            let values = dequantize_rows(t, &file_name, rows, cols, bits)?;
            t.insert_f32(&name, &file_name, vec![rows, cols], &values);
        }
    }
    Ok(())
}

/// `W[r, c] = q[r, c] · scale[r]` from an int8 tensor (`[rows, cols]`, or `[rows, cols/2]` of
/// packed nibbles) and its `weight_scale`.
fn dequantize_rows(
    t: &HfSource<'_>,
    file_name: &str,
    rows: usize,
    cols: usize,
    bits: usize,
) -> Result<Vec<f32>, ModelError> {
    let missing = |n: &str| ModelError::MissingTensor(n.to_string());
    let q = t.file_tensor(file_name).ok_or_else(|| missing(file_name))?;
    let scale_name = format!("{file_name}_scale");
    let s = t.file_tensor(&scale_name).ok_or_else(|| missing(&scale_name))?;
    let packed_cols = cols * bits / 8;
    if q.dtype != StorageType::I8 || q.shape != [rows, packed_cols] {
        return Err(ModelError::ShapeMismatch {
            tensor: file_name.into(),
            expected: format!("I8 [{rows}, {packed_cols}]"),
            found: format!("{} {:?}", q.dtype, q.shape),
        });
    }
    let scales: Vec<f32> = match (&s.dtype, s.shape.as_slice()) {
        (StorageType::F16, [n]) if *n == rows => {
            s.data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        (StorageType::F32, [n]) if *n == rows => {
            s.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        _ => {
            return Err(ModelError::ShapeMismatch {
                tensor: scale_name,
                expected: format!("F16 [{rows}]"),
                found: format!("{} {:?}", s.dtype, s.shape),
            });
        }
    };
    let mut out = Vec::with_capacity(rows * cols);
    for (row, &scale) in q.data.chunks_exact(packed_cols).zip(&scales) {
        for &byte in row {
            let byte = byte as i8;
            if bits == 8 {
                out.push(byte as f32 * scale);
            } else {
                // Two signed nibbles, the even element in the high one.
                let (hi, lo) = (byte >> 4, (byte << 4) >> 4);
                out.push(hi as f32 * scale);
                out.push(lo as f32 * scale);
            }
        }
    }
    Ok(out)
}
