//! Baichuan (百川): Baichuan-7B, Baichuan-13B, Baichuan2-7B and Baichuan2-13B.
//!
//! A LLaMA block (RMSNorm pre-norm, SwiGLU, no biases) with three differences, all handled at
//! load time or by the LLaMA forward pass's options:
//! - one fused projection `W_pack` (`[3H, H]`): rows `[0, H)` are W_q, `[H, 2H)` W_k, `[2H, 3H)` W_v;
//! - positions: rotary (rotate-half) in the 7B models, ALiBi in the 13B models (no rotation;
//!   `slope_h · (j − i)` added to the scaled scores);
//! - Baichuan2's NormHead: the output rows are L2-normalised before use
//!   (`logits = h · normalize(W)ᵀ`), which the checkpoints leave to load time.
//!
//! `config.json` says neither which positions nor whether the head is normalised. As vLLM does:
//! `BaiChuanForCausalLM` (Baichuan-7B's class) or `hidden_size` 4096 means rotary, anything else
//! ALiBi; a vocabulary of 125,696 means Baichuan2 (NormHead). The keys `position_embedding`
//! (`"rope"` / `"alibi"`) and `norm_head` (bool), when present, say it outright (baimo's test
//! fixtures use them: tiny models have neither the real widths nor the real vocabulary).
//!
//! Reference: `modeling_baichuan.py` of the four releases; llama.cpp `build_baichuan`.

use baimo_formats::HfFolder;
use baimo_kernels::GgmlType;

use crate::ModelError;
use crate::hf::{HfSource, JsonConfig};
use crate::llama::{Config, Llama, Positions, hf_name};

/// Baichuan2's vocabulary size, by which its NormHead is recognised.
const BAICHUAN2_VOCAB: usize = 125_696;

pub fn from_hf(folder: &HfFolder, quantize: Option<GgmlType>) -> Result<Llama, ModelError> {
    let j = JsonConfig { json: &folder.config };
    let hidden_size = j.usize("hidden_size")?;
    let heads = j.usize("num_attention_heads")?;
    let vocab_size = j.usize("vocab_size")?;
    let class =
        folder.config.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str()).unwrap_or("");
    let positions = match j.str("position_embedding") {
        Some("rope") => Positions::Rope,
        Some("alibi") => Positions::Alibi,
        Some(other) => return Err(ModelError::InvalidConfig(format!("position_embedding {other:?}"))),
        None if class == "BaiChuanForCausalLM" || hidden_size == 4096 => Positions::Rope,
        None => Positions::Alibi,
    };
    let norm_head = j.bool_or("norm_head", vocab_size == BAICHUAN2_VOCAB)?;
    let head_dim = hidden_size / heads.max(1);
    let max_positions = j.usize_or("max_position_embeddings", j.usize_or("model_max_length", 4096)?)?;
    let mut config = Config {
        architecture: "baichuan".into(),
        hidden_size,
        intermediate_size: j.usize("intermediate_size")?,
        num_hidden_layers: j.usize("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim,
        vocab_size,
        max_position_embeddings: max_positions,
        rms_norm_eps: j.f32_or("rms_norm_eps", 1e-6)?,
        rope_theta: j.f32_or("rope_theta", 10_000.0)?,
        rope_dims: head_dim,
        rope_style: baimo_kernels::ops::RopeStyle::Neox,
        rope_linear_factor: 1.0,
        positions,
        rope_dynamic: None,
        logn_seq_length: None,
        sliding_window: None,
        sliding_layers: Vec::new(),
        moe: None,
        gemma: None,
    };
    if positions == Positions::Alibi {
        config.rope_dims = 0;
    }
    config.validate()?;

    let mut t = HfSource::new(&folder.tensors, &baichuan_name, quantize);
    let h = hidden_size;
    for i in 0..config.num_hidden_layers {
        let part = |p: &str| format!("blk.{i}.{p}");
        let (q, k, v) = (part("attn_q.weight"), part("attn_k.weight"), part("attn_v.weight"));
        t.split_rows(&part("attn_qkv.weight"), &[(&q, h), (&k, h), (&v, h)])?;
    }
    if norm_head {
        let mut w = t.matrix_f32("output.weight", vocab_size, h)?;
        normalize_rows(&mut w, h);
        t.insert_f32("output.weight", "lm_head.weight", vec![vocab_size, h], &w);
    }
    Llama::load(config, &t, false, None, folder.tensors.len())
}

/// `F.normalize(W, dim=1)`: each row divided by its L2 norm (at least 1e-12).
fn normalize_rows(w: &mut [f32], cols: usize) {
    for row in w.chunks_exact_mut(cols) {
        let norm = row.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    }
}

/// Baichuan's names are LLaMA's but for the fused `W_pack`.
fn baichuan_name(gguf_name: &str) -> Option<String> {
    match gguf_name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        Some((layer, "attn_qkv.weight")) => Some(format!("model.layers.{layer}.self_attn.W_pack.weight")),
        _ => hf_name(gguf_name),
    }
}
