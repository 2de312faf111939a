//! Qwen v1 (通义千问: Qwen-7B, Qwen-14B; `QWenLMHeadModel`), the first release, loaded onto the
//! LLaMA forward pass.
//!
//! The block is LLaMA's with a fused, biased `c_attn` (`[3H, H]`, rows q | k | v), no bias on
//! `c_proj`, and an MLP written `c_proj(w1(x) ⊙ silu(w2(x)))`: the gated branch is `w2`, and
//! `intermediate_size` counts both halves (11,008 wide for Qwen-7B's 22,016). Two tricks carry it
//! past its trained length `seq_length`:
//! - dynamic NTK: a prompt of `n` tokens sets `α = max(2^⌈log₂(n / seq_length) + 1⌉ − 1, 1)` and
//!   the RoPE base `base · α^(d/(d−2))` for the whole sequence;
//! - logn attention: queries at position `p ≥ seq_length` are scaled by
//!   `log(p + 1) / log(seq_length)`.
//!
//! Reference: `modeling_qwen.py` (Qwen-7B, August 2023).

use baimo_formats::HfFolder;
use baimo_kernels::GgmlType;
use baimo_kernels::ops::RopeStyle;

use crate::ModelError;
use crate::hf::{HfSource, JsonConfig};
use crate::llama::{Config, DynamicRope, Llama, Positions};

pub fn from_hf(folder: &HfFolder, quantize: Option<GgmlType>) -> Result<Llama, ModelError> {
    let j = JsonConfig { json: &folder.config };
    let hidden_size = j.usize("hidden_size")?;
    let heads = j.usize("num_attention_heads")?;
    let head_dim = j.usize_or("kv_channels", hidden_size / heads.max(1))?;
    let rotary_pct = j.f32_or("rotary_pct", 1.0)?;
    let rope_dims = ((head_dim as f32 * rotary_pct) as usize) & !1;
    let seq_length = j.usize_or("seq_length", 2048)?;
    let config = Config {
        architecture: "qwen".into(),
        hidden_size,
        intermediate_size: j.usize("intermediate_size")? / 2,
        num_hidden_layers: j.usize("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim,
        vocab_size: j.usize("vocab_size")?,
        max_position_embeddings: j.usize_or("max_position_embeddings", seq_length)?,
        rms_norm_eps: j.f32_or("layer_norm_epsilon", 1e-6)?,
        rope_theta: j.f32_or("rotary_emb_base", 10_000.0)?,
        rope_dims,
        rope_style: RopeStyle::Neox,
        rope_linear_factor: 1.0,
        positions: Positions::Rope,
        rope_dynamic: j.bool_or("use_dynamic_ntk", false)?.then_some(DynamicRope::QwenNtk { seq_length }),
        logn_seq_length: j.bool_or("use_logn_attn", false)?.then_some(seq_length),
        sliding_window: None,
        sliding_layers: Vec::new(),
        moe: None,
        gemma: None,
    };
    config.validate()?;
    let tied = j.bool_or("tie_word_embeddings", false)?;

    let mut t = HfSource::new(&folder.tensors, &qwen_name, quantize);
    let (q_dim, kv_dim) = (heads * head_dim, heads * head_dim);
    for i in 0..config.num_hidden_layers {
        let part = |p: &str| format!("blk.{i}.{p}");
        let parts = |kind: &str| {
            [
                part(&format!("attn_q.{kind}")),
                part(&format!("attn_k.{kind}")),
                part(&format!("attn_v.{kind}")),
            ]
        };
        for kind in ["weight", "bias"] {
            let [q, k, v] = parts(kind);
            t.split_rows(&part(&format!("attn_qkv.{kind}")), &[(&q, q_dim), (&k, kv_dim), (&v, kv_dim)])?;
        }
    }
    Llama::load(config, &t, tied, None, folder.tensors.len())
}

/// The checkpoint's name of a tensor (GGUF name → `transformer.h.N…`).
fn qwen_name(gguf_name: &str) -> Option<String> {
    Some(match gguf_name {
        "token_embd.weight" => "transformer.wte.weight".into(),
        "output_norm.weight" => "transformer.ln_f.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let (layer, part) = gguf_name.strip_prefix("blk.")?.split_once('.')?;
            let hf = match part {
                "attn_norm.weight" => "ln_1.weight",
                "attn_qkv.weight" => "attn.c_attn.weight",
                "attn_qkv.bias" => "attn.c_attn.bias",
                "attn_output.weight" => "attn.c_proj.weight",
                "ffn_norm.weight" => "ln_2.weight",
                // c_proj(w1(x) · silu(w2(x))): w2 is the gate, w1 the up projection.
                "ffn_gate.weight" => "mlp.w2.weight",
                "ffn_up.weight" => "mlp.w1.weight",
                "ffn_down.weight" => "mlp.c_proj.weight",
                _ => return None,
            };
            format!("transformer.h.{layer}.{hf}")
        }
    })
}
