//! Gemma 2 and Gemma 3 (text), loaded onto the LLaMA forward pass with Gemma's departures
//! (Gemma Team 2024, "Gemma 2: Improving Open Language Models at a Practical Size"; 2025,
//! "Gemma 3 Technical Report"):
//! ```text
//! x = √d · E[token]
//! h = x + RMSNorm_post(W_o · Attn(n)),          n = RMSNorm(x)
//! x = h + RMSNorm_post(W_down · (gelu(W_gate·m) ⊙ W_up·m)),   m = RMSNorm(h)
//! RMSNorm(v) = v / rms(v) ⊙ (1 + w)            (the checkpoints store w; GGUFs store 1 + w)
//! scores = q·k / √query_pre_attn_scalar,  Gemma 2: cap · tanh(scores / cap), cap = 50
//! logits = W_E · RMSNorm(x),               Gemma 2: 30 · tanh(logits / 30)
//! ```
//! Layers alternate sliding-window attention (window 4096 for Gemma 2, 512–1024 for Gemma 3)
//! and global attention: Gemma 2 every other layer, Gemma 3 five local layers to one global.
//! Gemma 3 also normalizes each query and key head (like Qwen3), and its local layers rotate
//! with their own RoPE base (10,000) while the global ones use `rope_theta` (10⁶), linearly
//! scaled in the larger models.
//!
//! Reference: transformers `modeling_gemma2.py`, `modeling_gemma3.py`; llama.cpp
//! `build_gemma2_iswa`, `build_gemma3_iswa`.

use baimo_formats::{Gguf, HfFolder};
use baimo_kernels::GgmlType;
use baimo_kernels::ops::RopeStyle;

use crate::ModelError;
use crate::hf::{HfSource, JsonConfig};
use crate::llama::{Config, Llama, Positions, hf_name};
use crate::weights::{TensorSource, Weight};

/// What Gemma changes in the LLaMA computation (see the file head).
#[derive(Clone, Debug, PartialEq)]
pub struct GemmaConfig {
    /// Scores are `q·k / √query_pre_attn_scalar` (the head size in most models).
    pub query_pre_attn_scalar: f32,
    pub attn_logit_softcapping: Option<f32>,
    pub final_logit_softcapping: Option<f32>,
    /// Gemma 3: the sliding layers' RoPE base (their positions unscaled).
    pub rope_local_base_freq: Option<f32>,
}

/// llama.cpp's reading of `gemma2` and `gemma3` files: the soft-caps from their keys, the
/// layer pattern and the local base fixed per architecture, the score scale from the head size
/// (from `hidden / heads` for the 27B models, as llama.cpp decides by the layer count).
pub(crate) fn config_from_gguf(gguf: &Gguf, config: &mut Config) -> Result<(), ModelError> {
    let arch = config.architecture.clone();
    let key = |k: &str| format!("{arch}.{k}");
    let optional_f32 = |k: &str| -> Result<Option<f32>, ModelError> {
        match gguf.get(&key(k)) {
            None => Ok(None),
            Some(_) => Ok(Some(gguf.get_f32(&key(k))?).filter(|&v| v > 0.0)),
        }
    };
    let layers = config.num_hidden_layers;
    let (is_27b, pattern) = match arch.as_str() {
        "gemma2" => (layers == 46, 2),
        _ => (layers == 62, 6),
    };
    // baimo's own key, for files whose scale is neither (the test fixtures); llama.cpp's
    // `granite` files use the same name.
    let query_pre_attn_scalar = match optional_f32("attention.scale")? {
        Some(scale) => 1.0 / (scale * scale),
        None if is_27b => (config.hidden_size / config.num_attention_heads) as f32,
        None => config.head_dim as f32,
    };
    config.sliding_layers = (0..layers).map(|l| (l + 1) % pattern != 0).collect();
    config.gemma = Some(GemmaConfig {
        query_pre_attn_scalar,
        attn_logit_softcapping: optional_f32("attn_logit_softcapping")?,
        final_logit_softcapping: optional_f32("final_logit_softcapping")?,
        rope_local_base_freq: (arch == "gemma3").then_some(10_000.0),
    });
    Ok(())
}

pub fn from_hf(folder: &HfFolder, quantize: Option<GgmlType>) -> Result<Llama, ModelError> {
    let j = JsonConfig { json: &folder.config };
    let model_type = j.str("model_type").unwrap_or_default().to_string();
    let gemma3 = model_type == "gemma3_text";
    let act = j.str("hidden_activation").or_else(|| j.str("hidden_act")).unwrap_or("gelu_pytorch_tanh");
    if act != "gelu_pytorch_tanh" {
        return Err(ModelError::Unsupported(format!("Gemma with the activation {act:?}")));
    }
    let hidden_size = j.usize("hidden_size")?;
    let heads = j.usize("num_attention_heads")?;
    let head_dim = j.usize_or("head_dim", hidden_size / heads.max(1))?;
    let layers = j.usize("num_hidden_layers")?;
    // RoPE: transformers 5 writes `rope_parameters` (Gemma 3: one set per layer kind); older
    // configs `rope_theta`, `rope_local_base_freq` and `rope_scaling`.
    let params = j.object("rope_parameters");
    let global =
        params.as_ref().and_then(|p| p.object("full_attention")).or_else(|| j.object("rope_parameters"));
    let local = params.as_ref().and_then(|p| p.object("sliding_attention"));
    let rope_theta = match &global {
        Some(g) if g.has("rope_theta") => g.f32_or("rope_theta", 10_000.0)?,
        _ => j.f32_or("rope_theta", 10_000.0)?,
    };
    let scaling = global.or_else(|| j.object("rope_scaling"));
    let rope_linear_factor = match &scaling {
        Some(s) => match s.str("rope_type").or_else(|| s.str("type")).unwrap_or("default") {
            "default" => 1.0,
            "linear" => s.f32_or("factor", 1.0)?,
            other => return Err(ModelError::Unsupported(format!("rope scaling type {other:?} for Gemma"))),
        },
        None => 1.0,
    };
    let rope_local_base_freq = match &local {
        Some(l) => Some(l.f32_or("rope_theta", 10_000.0)?),
        None if gemma3 => Some(j.f32_or("rope_local_base_freq", 10_000.0)?),
        None => None,
    };
    // The layer kinds: written out by transformers 5, else Gemma 2's alternation and Gemma 3's
    // `sliding_window_pattern`.
    let window = Some(j.usize_or("sliding_window", 0)?).filter(|&w| w > 0);
    let sliding_layers = match folder.config.get("layer_types").and_then(|v| v.as_array()) {
        Some(kinds) => kinds.iter().map(|k| k.as_str() == Some("sliding_attention")).collect(),
        None => {
            let pattern = if gemma3 { j.usize_or("sliding_window_pattern", 6)?.max(1) } else { 2 };
            (0..layers).map(|l| (l + 1) % pattern != 0).collect()
        }
    };
    let config = Config {
        architecture: if gemma3 { "gemma3".into() } else { "gemma2".into() },
        hidden_size,
        intermediate_size: j.usize("intermediate_size")?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: j.usize_or("num_key_value_heads", heads)?,
        head_dim,
        vocab_size: j.usize("vocab_size")?,
        max_position_embeddings: j.usize_or("max_position_embeddings", 8192)?,
        rms_norm_eps: j.f32_or("rms_norm_eps", 1e-6)?,
        rope_theta,
        rope_dims: head_dim,
        rope_style: RopeStyle::Neox,
        rope_linear_factor,
        positions: Positions::Rope,
        rope_dynamic: None,
        logn_seq_length: None,
        sliding_window: window,
        sliding_layers,
        moe: None,
        gemma: Some(GemmaConfig {
            query_pre_attn_scalar: j.f32_or("query_pre_attn_scalar", head_dim as f32)?,
            attn_logit_softcapping: Some(j.f32_or("attn_logit_softcapping", 0.0)?).filter(|&c| c > 0.0),
            final_logit_softcapping: Some(j.f32_or("final_logit_softcapping", 0.0)?).filter(|&c| c > 0.0),
            rope_local_base_freq,
        }),
    };
    if config.sliding_layers.len() != layers {
        return Err(ModelError::InvalidConfig(format!(
            "{} layer_types for {layers} layers",
            config.sliding_layers.len()
        )));
    }
    let gemma = config.gemma.as_ref().expect("set above");
    if gemma.query_pre_attn_scalar.is_nan() || gemma.query_pre_attn_scalar <= 0.0 {
        return Err(ModelError::InvalidConfig("query_pre_attn_scalar must be positive".into()));
    }
    config.validate()?;
    let tied = j.bool_or("tie_word_embeddings", true)?;
    let t = NormPlusOne { base: HfSource::new(&folder.tensors, &gemma_name, quantize) };
    Llama::load(config, &t, tied, None, folder.tensors.len())
}

/// The checkpoint's names: LLaMA's, with Gemma's four norms per layer.
fn gemma_name(gguf_name: &str) -> Option<String> {
    let (layer, part) = gguf_name.strip_prefix("blk.").and_then(|r| r.split_once('.')).unzip();
    let norm = match part {
        Some("post_attention_norm.weight") => "post_attention_layernorm",
        Some("ffn_norm.weight") => "pre_feedforward_layernorm",
        Some("post_ffw_norm.weight") => "post_feedforward_layernorm",
        _ => return hf_name(gguf_name),
    };
    Some(format!("model.layers.{}.{norm}.weight", layer?))
}

/// The checkpoint's norm weights as `1 + w` (what Gemma multiplies by, and what GGUFs store).
struct NormPlusOne<'a> {
    base: HfSource<'a>,
}

impl TensorSource for NormPlusOne<'_> {
    fn has(&self, name: &str) -> bool {
        self.base.has(name)
    }

    fn matrix_unpacked(&self, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        self.base.matrix_unpacked(name, rows, cols)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let mut v = self.base.vector(name, len)?;
        if name.ends_with("norm.weight") {
            v.iter_mut().for_each(|w| *w += 1.0);
        }
        Ok(v)
    }
}
