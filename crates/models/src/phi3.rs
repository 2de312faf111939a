//! Phi-3, Phi-3.5 and Phi-4-mini (`Phi3ForCausalLM`), loaded onto the LLaMA forward pass.
//!
//! The block is LLaMA's with two fused projections, split at load time:
//! ```text
//! q | k | v = W_qkv · n          qkv_proj, rows q, then k, then v
//! g | u     = W_gate_up · m      gate_up_proj, rows gate, then up;  FFN = W_down · (silu(g) ⊙ u)
//! ```
//! Rotary embeddings turn the first `partial_rotary_factor · head_dim` dimensions of each head
//! (Phi-4-mini: 0.75) in NeoX order, and the long-context models scale them with LongRoPE: one
//! divisor per frequency, `short_factor` within `original_max_position_embeddings` and
//! `long_factor` past it, cos and sin multiplied by
//! `attention_factor = √(1 + ln(s) / ln(original))`, `s = max_position_embeddings / original`.
//! Phi-3-mini-4k attends through a sliding window (`sliding_window`).
//!
//! Reference: transformers `modeling_phi3.py`, `_compute_longrope_parameters`; llama.cpp
//! `build_phi3`.

use baimo_formats::HfFolder;
use baimo_kernels::GgmlType;
use baimo_kernels::ops::RopeStyle;

use crate::ModelError;
use crate::hf::{HfSource, JsonConfig};
use crate::llama::{Config, Llama, LongRope, Positions, hf_name};

pub fn from_hf(folder: &HfFolder, quantize: Option<GgmlType>) -> Result<Llama, ModelError> {
    let j = JsonConfig { json: &folder.config };
    let hidden_size = j.usize("hidden_size")?;
    let heads = j.usize("num_attention_heads")?;
    let head_dim = match j.usize_or("head_dim", 0)? {
        0 => hidden_size / heads.max(1),
        d => d,
    };
    let partial = j.f32_or("partial_rotary_factor", 1.0)?;
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(ModelError::InvalidConfig(format!("partial_rotary_factor {partial}")));
    }
    let rope_dims = ((head_dim as f32 * partial) as usize) & !1;
    // transformers 5 writes `rope_parameters` (with the base inside); older files
    // `rope_theta` and `rope_scaling`.
    let scaling = j.object("rope_parameters").or_else(|| j.object("rope_scaling"));
    let rope_theta = match &scaling {
        Some(s) if s.has("rope_theta") => s.f32_or("rope_theta", 10_000.0)?,
        _ => j.f32_or("rope_theta", 10_000.0)?,
    };
    let max_position_embeddings = j.usize_or("max_position_embeddings", 4096)?;
    let config = Config {
        architecture: "phi3".into(),
        hidden_size,
        intermediate_size: j.usize("intermediate_size")?,
        num_hidden_layers: j.usize("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: j.usize_or("num_key_value_heads", heads)?,
        head_dim,
        vocab_size: j.usize("vocab_size")?,
        max_position_embeddings,
        rms_norm_eps: j.f32_or("rms_norm_eps", 1e-5)?,
        rope_theta,
        rope_dims,
        rope_style: RopeStyle::Neox,
        rope_linear_factor: 1.0,
        positions: Positions::Rope,
        rope_dynamic: None,
        logn_seq_length: None,
        sliding_window: Some(j.usize_or("sliding_window", 0)?).filter(|&w| w > 0),
        sliding_layers: Vec::new(),
        moe: None,
        gemma: None,
    };
    config.validate()?;
    let long_rope = match &scaling {
        Some(s) => match s.str("rope_type").or_else(|| s.str("type")).unwrap_or("default") {
            "default" => None,
            "longrope" | "su" => {
                let original = match s.usize_or("original_max_position_embeddings", 0)? {
                    0 => j.usize_or("original_max_position_embeddings", max_position_embeddings)?,
                    o => o,
                };
                let ratio = max_position_embeddings as f64 / original as f64;
                let attention_factor = match s.f32_or("attention_factor", 0.0)? {
                    f if f > 0.0 => f,
                    _ if ratio <= 1.0 => 1.0,
                    _ => (1.0 + ratio.ln() / (original as f64).ln()).sqrt() as f32,
                };
                let factors = |key: &str| -> Result<Vec<f32>, ModelError> {
                    let list = s.json.get(key).and_then(|v| v.as_array()).ok_or_else(|| {
                        ModelError::InvalidConfig(format!("LongRoPE scaling without {key}"))
                    })?;
                    if list.len() != rope_dims / 2 {
                        return Err(ModelError::InvalidConfig(format!(
                            "{} values in {key} for {rope_dims} rotary dimensions",
                            list.len()
                        )));
                    }
                    list.iter()
                        .map(|v| v.as_f64().map(|x| x as f32))
                        .collect::<Option<Vec<f32>>>()
                        .ok_or_else(|| ModelError::InvalidConfig(format!("{key} holds a non-number")))
                };
                Some(LongRope {
                    short: factors("short_factor")?,
                    long: factors("long_factor")?,
                    original,
                    attention_factor,
                })
            }
            other => return Err(ModelError::Unsupported(format!("rope scaling type {other:?} for Phi-3"))),
        },
        None => None,
    };
    let tied = j.bool_or("tie_word_embeddings", false)?;

    let mut t = HfSource::new(&folder.tensors, &phi3_name, quantize);
    let (q_dim, kv_dim) = (heads * head_dim, config.num_key_value_heads * head_dim);
    let ffn = config.intermediate_size;
    for i in 0..config.num_hidden_layers {
        let part = |p: &str| format!("blk.{i}.{p}");
        let (q, k, v) = (part("attn_q.weight"), part("attn_k.weight"), part("attn_v.weight"));
        t.split_rows(&part("attn_qkv.weight"), &[(&q, q_dim), (&k, kv_dim), (&v, kv_dim)])?;
        let (gate, up) = (part("ffn_gate.weight"), part("ffn_up.weight"));
        t.split_rows(&part("ffn_gate_up.weight"), &[(&gate, ffn), (&up, ffn)])?;
    }
    let mut model = Llama::load(config, &t, tied, None, folder.tensors.len())?;
    if let Some(lr) = long_rope {
        model.set_long_rope(lr)?;
    }
    Ok(model)
}

/// The checkpoint's names: LLaMA's, with the fused `qkv_proj` and `gate_up_proj`.
fn phi3_name(gguf_name: &str) -> Option<String> {
    let (layer, part) = gguf_name.strip_prefix("blk.").and_then(|r| r.split_once('.')).unzip();
    match part {
        Some("attn_qkv.weight") => Some(format!("model.layers.{}.self_attn.qkv_proj.weight", layer?)),
        Some("ffn_gate_up.weight") => Some(format!("model.layers.{}.mlp.gate_up_proj.weight", layer?)),
        _ => hf_name(gguf_name),
    }
}
