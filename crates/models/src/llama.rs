//! LLaMA and the decoders built like it: Qwen2 / Qwen2.5 (the same plus q/k/v biases), Qwen3
//! (RMSNorm on each query and key head before RoPE).
//!
//! Per layer, with pre-normalisation (Touvron et al. 2023, "LLaMA"):
//! ```text
//! h = x + W_o · Attn(RoPE(W_q·n), RoPE(W_k·n), W_v·n),   n = RMSNorm(x)
//! x = h + W_down · (silu(W_gate·m) ⊙ W_up·m),            m = RMSNorm(h)
//! ```
//! then a final RMSNorm and the output projection (tied to the embeddings in small models).
//! Attention is grouped-query: `n_kv_heads` key/value heads each serve `n_heads / n_kv_heads`
//! query heads. llama.cpp's `llama` GGUFs store q/k rows permuted for interleaved RoPE pairs;
//! `qwen2` GGUFs keep Hugging Face's rotate-half layout.
//!
//! Reference: transformers `modeling_llama.py`, `modeling_qwen2.py`, `modeling_qwen3.py`;
//! llama.cpp `build_llama`.

use baimo_formats::{Gguf, HfFolder};
use baimo_kernels::GgmlType;
use baimo_kernels::ops::{RopeStyle, rms_norm, rope_angles};
use baimo_threads::{SharedMut, ThreadPool};

use crate::attention::{Heads, MAX_HEAD_DIM, alibi_slopes};
use crate::driver::{Batch, Pass};
use crate::gemma::GemmaConfig;
use crate::hf::{HfSource, JsonConfig};
use crate::moe::{self, Moe, MoeConfig};
use crate::parallel::{Glu, SharedActs, Store, fill_rows, matmul, matmul_glu, needs, requantize};
use crate::state::{Activations, KvCache, KvPrecision};
use crate::weights::{GgufTensors, SplitRows, TensorSource, Weight};
use crate::{ModelError, ModelInfo};

/// Hyper-parameters, named as in Hugging Face `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// Leading dimensions of each head that are rotated (all of them in these families).
    pub rope_dims: usize,
    pub rope_style: RopeStyle,
    /// Linear RoPE scaling (`rope_scaling = {type: linear, factor}`): positions are divided by it.
    pub rope_linear_factor: f32,
    /// Rotary positions, or ALiBi biases (Baichuan-13B; then `rope_dims` is 0).
    pub positions: Positions,
    /// A RoPE base that grows with the length, if any.
    pub rope_dynamic: Option<DynamicRope>,
    /// Qwen v1's logn attention: queries at positions past this length are scaled by
    /// `log(position + 1) / log(length)`.
    pub logn_seq_length: Option<usize>,
    /// Sliding-window attention (Mistral; Qwen2 past `max_window_layers`): each query sees
    /// only this many positions, itself included.
    pub sliding_window: Option<usize>,
    /// Which layers use the window (one flag per layer); empty: all of them.
    pub sliding_layers: Vec<bool>,
    /// A mixture of experts in place of the feed-forward (in the layers whose file has a
    /// router).
    pub moe: Option<MoeConfig>,
    /// Gemma's departures from LLaMA (scaled embeddings, GeGLU, soft-capping, …).
    pub gemma: Option<GemmaConfig>,
}

/// RoPE bases that depend on the sequence's length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DynamicRope {
    /// transformers' dynamic NTK (`rope_scaling = {type: dynamic, factor}`): past
    /// `max_position_embeddings` the base grows with the length the pass reaches
    /// (`_compute_dynamic_ntk_parameters`).
    Ntk { factor: f32 },
    /// Qwen v1 (`use_dynamic_ntk`): when a prompt of `n` tokens is read into an empty cache,
    /// `α = max(2^⌈log₂(n / seq_length) + 1⌉ − 1, 1)` and the base becomes `base · α^(d/(d−2))`;
    /// the sequence's later steps keep that base.
    QwenNtk { seq_length: usize },
}

impl Config {
    pub fn from_gguf(gguf: &Gguf) -> Result<Config, ModelError> {
        let arch = gguf.get_str("general.architecture")?.to_string();
        let rope_style = match arch.as_str() {
            "llama" | "baichuan" | "chatglm" => RopeStyle::Interleaved,
            "qwen" | "qwen2" | "qwen3" | "qwen2moe" | "qwen3moe" | "phi3" | "gemma2" | "gemma3" => {
                RopeStyle::Neox
            }
            other => return Err(ModelError::UnknownArchitecture(other.into())),
        };
        let key = |k: &str| format!("{arch}.{k}");
        let usize_or = |k: &str, default: usize| -> Result<usize, ModelError> {
            match gguf.get(&key(k)) {
                None => Ok(default),
                Some(_) => Ok(gguf.get_usize(&key(k))?),
            }
        };
        let hidden_size = gguf.get_usize(&key("embedding_length"))?;
        let num_attention_heads = gguf.get_usize(&key("attention.head_count"))?;
        let num_key_value_heads = usize_or("attention.head_count_kv", num_attention_heads)?;
        let head_dim = usize_or("attention.key_length", hidden_size / num_attention_heads.max(1))?;
        let rope_linear_factor = match gguf.get(&key("rope.scaling.type")) {
            Some(_) if gguf.get_str(&key("rope.scaling.type"))? == "linear" => {
                gguf.get_f32(&key("rope.scaling.factor"))?
            }
            Some(_) if gguf.get_str(&key("rope.scaling.type"))? != "none" => {
                let kind = gguf.get_str(&key("rope.scaling.type"))?;
                return Err(ModelError::Unsupported(format!("rope scaling type {kind:?}")));
            }
            _ => 1.0,
        };
        let config = Config {
            hidden_size,
            intermediate_size: gguf.get_usize(&key("feed_forward_length"))?,
            num_hidden_layers: gguf.get_usize(&key("block_count"))?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            // Taken from the embedding matrix's shape by `Llama::from_gguf`.
            vocab_size: 0,
            max_position_embeddings: gguf.get_usize(&key("context_length"))?,
            rms_norm_eps: gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: match gguf.get(&key("rope.freq_base")) {
                None => 10_000.0,
                Some(_) => gguf.get_f32(&key("rope.freq_base"))?,
            },
            rope_dims: usize_or("rope.dimension_count", head_dim)?,
            rope_style,
            rope_linear_factor,
            positions: Positions::Rope,
            rope_dynamic: None,
            logn_seq_length: None,
            sliding_window: match gguf.get(&key("attention.sliding_window")) {
                None => None,
                Some(_) => Some(gguf.get_usize(&key("attention.sliding_window"))?).filter(|&w| w > 0),
            },
            sliding_layers: Vec::new(),
            moe: match gguf.get(&key("expert_count")) {
                None => None,
                Some(_) => Some(MoeConfig {
                    num_experts: gguf.get_usize(&key("expert_count"))?,
                    num_experts_per_tok: gguf.get_usize(&key("expert_used_count"))?,
                    // Mixtral (`llama` files) gives its experts' width as feed_forward_length.
                    moe_intermediate_size: usize_or("expert_feed_forward_length", 0)?,
                    shared_expert_intermediate_size: usize_or("expert_shared_feed_forward_length", 0)?,
                    // llama.cpp's choice per architecture (qwen2moe does not renormalize).
                    norm_topk_prob: match gguf.get(&key("expert_weights_norm")) {
                        Some(_) => gguf.get_bool(&key("expert_weights_norm"))?,
                        None => arch != "qwen2moe",
                    },
                }),
            },
            gemma: None,
            architecture: arch,
        };
        let mut config = config;
        if let Some(moe) = &mut config.moe
            && moe.moe_intermediate_size == 0
        {
            moe.moe_intermediate_size = config.intermediate_size;
        }
        if matches!(config.architecture.as_str(), "gemma2" | "gemma3") {
            crate::gemma::config_from_gguf(gguf, &mut config)?;
        }
        // llama.cpp's rule for `baichuan` files: 40 layers are Baichuan-13B's (ALiBi).
        if config.architecture == "baichuan" && config.num_hidden_layers == 40 {
            config.positions = Positions::Alibi;
            config.rope_dims = 0;
        }
        config.validate()?;
        Ok(config)
    }

    /// From a Hugging Face `config.json` (`model_type` llama, mistral, mixtral, qwen2, qwen3,
    /// qwen2_moe or qwen3_moe). Returns the config and Llama 3's per-frequency RoPE divisors when
    /// `rope_scaling` asks for them.
    pub fn from_hf(json: &serde_json::Value) -> Result<(Config, Option<Vec<f32>>), ModelError> {
        let j = JsonConfig { json };
        let arch = j.str("model_type").unwrap_or_default().to_string();
        if !HF_MODEL_TYPES.contains(&arch.as_str()) {
            return Err(ModelError::UnknownModelType(arch));
        }
        let hidden_size = j.usize("hidden_size")?;
        let num_attention_heads = j.usize("num_attention_heads")?;
        let head_dim = match j.usize_or("head_dim", 0)? {
            0 => hidden_size / num_attention_heads.max(1),
            d => d,
        };
        // transformers 5 writes `rope_parameters` (with the base inside); older files
        // `rope_theta` and `rope_scaling`.
        let scaling = j.object("rope_parameters").or_else(|| j.object("rope_scaling"));
        let rope_theta = match &scaling {
            Some(s) if s.has("rope_theta") => s.f32_or("rope_theta", 10_000.0)?,
            _ => j.f32_or("rope_theta", 10_000.0)?,
        };
        let max_position_embeddings = j.usize_or("max_position_embeddings", 2048)?;
        let mut config = Config {
            hidden_size,
            intermediate_size: j.usize("intermediate_size")?,
            num_hidden_layers: j.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: j.usize_or("num_key_value_heads", num_attention_heads)?,
            head_dim,
            vocab_size: j.usize("vocab_size")?,
            max_position_embeddings,
            rms_norm_eps: j.f32_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_dims: head_dim,
            rope_style: RopeStyle::Neox,
            rope_linear_factor: 1.0,
            positions: Positions::Rope,
            rope_dynamic: None,
            logn_seq_length: None,
            sliding_window: None,
            sliding_layers: Vec::new(),
            moe: None,
            gemma: None,
            architecture: arch,
        };
        config.read_hf_window_and_experts(&j)?;
        let mut freq_factors = None;
        if let Some(s) = scaling {
            let kind = s.str("rope_type").or_else(|| s.str("type")).unwrap_or("default");
            let factor = s.f32_or("factor", 1.0)?;
            match kind {
                "default" => {}
                "linear" => config.rope_linear_factor = factor,
                "dynamic" => config.rope_dynamic = Some(DynamicRope::Ntk { factor }),
                "llama3" => {
                    let original = s.usize_or("original_max_position_embeddings", 8192)? as f32;
                    let low = s.f32_or("low_freq_factor", 1.0)?;
                    let high = s.f32_or("high_freq_factor", 4.0)?;
                    if !(factor > 0.0 && high > low && low > 0.0) {
                        return Err(ModelError::InvalidConfig(format!(
                            "llama3 RoPE scaling with factor {factor}, low {low}, high {high}"
                        )));
                    }
                    freq_factors =
                        Some(llama3_freq_divisors(head_dim, rope_theta, factor, low, high, original));
                }
                other => return Err(ModelError::Unsupported(format!("rope scaling type {other:?}"))),
            }
        }
        config.validate()?;
        Ok((config, freq_factors))
    }

    /// Sliding windows and experts, as the Hugging Face families name them.
    fn read_hf_window_and_experts(&mut self, j: &JsonConfig<'_>) -> Result<(), ModelError> {
        let arch = self.architecture.as_str();
        let layers = self.num_hidden_layers;
        // transformers 5 writes the layers' kinds out; older configs give a rule per family.
        let window = j.usize_or("sliding_window", 0)?;
        if window > 0 {
            if let Some(kinds) = j.json.get("layer_types").and_then(|v| v.as_array()) {
                self.sliding_layers = kinds.iter().map(|k| k.as_str() == Some("sliding_attention")).collect();
                if self.sliding_layers.len() != layers {
                    return Err(ModelError::InvalidConfig(format!(
                        "{} layer_types for {layers} layers",
                        self.sliding_layers.len()
                    )));
                }
                self.sliding_window = self.sliding_layers.contains(&true).then_some(window);
            } else if matches!(arch, "mistral" | "mixtral") {
                self.sliding_window = Some(window);
            } else if j.bool_or("use_sliding_window", false)? {
                let from = j.usize_or("max_window_layers", 0)?;
                self.sliding_layers = (0..layers).map(|l| l >= from).collect();
                self.sliding_window = Some(window);
            }
        }
        self.moe = match arch {
            "mixtral" => Some(MoeConfig {
                num_experts: j.usize("num_local_experts")?,
                num_experts_per_tok: j.usize("num_experts_per_tok")?,
                moe_intermediate_size: self.intermediate_size,
                shared_expert_intermediate_size: 0,
                norm_topk_prob: true,
            }),
            "qwen2_moe" | "qwen3_moe" => Some(MoeConfig {
                num_experts: j.usize("num_experts")?,
                num_experts_per_tok: j.usize("num_experts_per_tok")?,
                moe_intermediate_size: j.usize("moe_intermediate_size")?,
                shared_expert_intermediate_size: j.usize_or("shared_expert_intermediate_size", 0)?,
                norm_topk_prob: j.bool_or("norm_topk_prob", false)?,
            }),
            _ => None,
        };
        Ok(())
    }

    /// The head geometry of layer `l` (its attention window).
    fn layer_heads(&self, l: usize) -> Heads {
        let windowed = self.sliding_layers.get(l).copied().unwrap_or(true);
        Heads {
            window: self.sliding_window.filter(|_| windowed),
            scale: self.gemma.as_ref().map(|g| 1.0 / g.query_pre_attn_scalar.sqrt()),
            softcap: self.gemma.as_ref().and_then(|g| g.attn_logit_softcapping),
            ..self.heads()
        }
    }

    /// Whether layer `l` rotates with the local RoPE table (Gemma 3's sliding layers).
    fn local_rope(&self, l: usize) -> bool {
        self.gemma.as_ref().is_some_and(|g| g.rope_local_base_freq.is_some())
            && self.sliding_window.is_some()
            && self.sliding_layers.get(l).copied().unwrap_or(true)
    }

    /// The RoPE base for a pass ending at position `len` (dynamic NTK grows it past the trained
    /// length).
    fn rope_base(&self, len: usize) -> f32 {
        match self.rope_dynamic {
            Some(DynamicRope::Ntk { factor }) if len > self.max_position_embeddings => {
                let d = self.rope_dims as f64;
                let ratio =
                    factor as f64 * len as f64 / self.max_position_embeddings as f64 - (factor as f64 - 1.0);
                (self.rope_theta as f64 * ratio.powf(d / (d - 2.0))) as f32
            }
            _ => self.rope_theta,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if self.hidden_size == 0 || self.intermediate_size == 0 || self.num_hidden_layers == 0 {
            return bad("zero hidden size, feed-forward size or layer count".into());
        }
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return bad("zero attention heads".into());
        }
        // Sizes derived from these are used for buffers: they must not wrap.
        let q_dim = self.num_attention_heads.checked_mul(self.head_dim);
        if q_dim.is_none_or(|d| d > 1 << 24) {
            return bad(format!(
                "{} heads of {} dimensions is too wide",
                self.num_attention_heads, self.head_dim
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "{} query heads cannot be grouped over {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) || self.head_dim > MAX_HEAD_DIM {
            return bad(format!("head dimension {} (must be even, at most {MAX_HEAD_DIM})", self.head_dim));
        }
        if !self.rope_dims.is_multiple_of(2) || self.rope_dims > self.head_dim {
            return bad(format!("RoPE dimension count {} for heads of {}", self.rope_dims, self.head_dim));
        }
        // Comparisons that NaN fails too.
        let numbers_ok = self.rope_theta > 0.0
            && self.rope_linear_factor > 0.0
            && match self.rope_dynamic {
                Some(DynamicRope::Ntk { factor }) => factor >= 1.0,
                Some(DynamicRope::QwenNtk { seq_length }) => seq_length > 0 && self.rope_dims > 2,
                None => true,
            }
            && self.logn_seq_length.is_none_or(|l| l > 1)
            && self.rms_norm_eps >= 0.0
            && self.rms_norm_eps.is_finite();
        if !numbers_ok {
            return bad("RoPE base, RoPE scaling factor and RMSNorm epsilon must be positive".into());
        }
        if self.sliding_window == Some(0) {
            return bad("a sliding window of 0 positions".into());
        }
        if let Some(moe) = &self.moe {
            moe.validate()?;
        }
        Ok(())
    }

    fn heads(&self) -> Heads {
        Heads {
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            window: None,
            scale: None,
            softcap: None,
        }
    }
}

/// How attention learns where tokens are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// Rotary embeddings on queries and keys.
    Rope,
    /// A linear bias on the attention scores, one slope per head (Press et al. 2022).
    Alibi,
}

/// Llama 3.1's `rope_type = llama3`: each frequency's divisor (1 for short wavelengths, `factor`
/// for long ones, interpolated between), as llama.cpp stores them in `rope_freqs`.
fn llama3_freq_divisors(dims: usize, base: f32, factor: f32, low: f32, high: f32, original: f32) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    (0..dims / 2)
        .map(|i| {
            let freq = 1.0 / base.powf(2.0 * i as f32 / dims as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

struct Layer {
    attn_norm: Vec<f32>,        // (hidden)
    q_proj: Weight,             // (n_heads·head_dim, hidden)
    k_proj: Weight,             // (n_kv_heads·head_dim, hidden)
    v_proj: Weight,             // (n_kv_heads·head_dim, hidden)
    qkv_bias: Option<Vec<f32>>, // (q_dim + 2·kv_dim), Qwen2 only
    q_norm: Option<Vec<f32>>,   // (head_dim), Qwen3 only
    k_norm: Option<Vec<f32>>,   // (head_dim), Qwen3 only
    o_proj: Weight,             // (hidden, n_heads·head_dim)
    /// Gemma: RMSNorm of the attention's output before the residual add.
    post_attn_norm: Option<Vec<f32>>, // (hidden)
    ffn_norm: Vec<f32>,         // (hidden)
    ffn: Ffn,
    /// Gemma: RMSNorm of the feed-forward's output before the residual add.
    post_ffn_norm: Option<Vec<f32>>, // (hidden)
    /// The activation of the gated feed-forward.
    glu: Glu,
}

/// A layer's feed-forward: SwiGLU, or a mixture of SwiGLU experts. (One per layer: the size of
/// the variants does not matter.)
#[allow(clippy::large_enum_variant)]
enum Ffn {
    Dense {
        gate_proj: Weight, // (intermediate, hidden)
        up_proj: Weight,   // (intermediate, hidden)
        down_proj: Weight, // (hidden, intermediate)
    },
    Experts(Moe),
}

impl Ffn {
    fn input_weights(&self) -> Vec<&Weight> {
        match self {
            Ffn::Dense { gate_proj, up_proj, .. } => vec![gate_proj, up_proj],
            Ffn::Experts(m) => m.input_weights(),
        }
    }

    fn down_weights(&self) -> Vec<&Weight> {
        match self {
            Ffn::Dense { down_proj, .. } => vec![down_proj],
            Ffn::Experts(_) => Vec::new(),
        }
    }
}

/// `model_type` values of the Hugging Face families this file computes directly.
const HF_MODEL_TYPES: &[&str] = &["llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"];

pub struct Llama {
    pub config: Config,
    embed_tokens: Weight, // (vocab, hidden)
    layers: Vec<Layer>,
    norm: Vec<f32>,                      // (hidden)
    lm_head: Weight,                     // (vocab, hidden); the embedding matrix when tied
    rope_freq_factors: Option<Vec<f32>>, // (rope_dims / 2), Llama 3.1 long-context scaling
    /// Phi-3's LongRoPE, replacing `rope_freq_factors` when set.
    pub(crate) long_rope: Option<LongRope>,
    /// f32 when the weights are (so results follow the f32 reference), else f16.
    kv_precision: KvPrecision,
    alibi_slopes: Vec<f32>, // (n_heads), ALiBi models only
}

/// The Hugging Face name of a tensor (transformers' Llama / Qwen2 / Qwen3 naming).
pub(crate) fn hf_name(gguf_name: &str) -> Option<String> {
    Some(match gguf_name {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf_name.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            if let Some((kind, e)) = expert_part(part) {
                return Some(format!("model.layers.{layer}.mlp.experts.{e}.{kind}_proj.weight"));
            }
            let hf = match part {
                "attn_norm.weight" => "input_layernorm.weight",
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_q.bias" => "self_attn.q_proj.bias",
                "attn_k.bias" => "self_attn.k_proj.bias",
                "attn_v.bias" => "self_attn.v_proj.bias",
                "attn_q_norm.weight" => "self_attn.q_norm.weight",
                "attn_k_norm.weight" => "self_attn.k_norm.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                "ffn_gate_inp.weight" => "mlp.gate.weight",
                "ffn_gate_shexp.weight" => "mlp.shared_expert.gate_proj.weight",
                "ffn_up_shexp.weight" => "mlp.shared_expert.up_proj.weight",
                "ffn_down_shexp.weight" => "mlp.shared_expert.down_proj.weight",
                "ffn_gate_inp_shexp.weight" => "mlp.shared_expert_gate.weight",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}")
        }
    })
}

/// `ffn_gate.3.weight` → `("gate", 3)`: one expert's matrix, as older GGUFs name them and as
/// the loader asks Hugging Face checkpoints for them.
fn expert_part(part: &str) -> Option<(&str, usize)> {
    let rest = part.strip_prefix("ffn_")?.strip_suffix(".weight")?;
    let (kind, e) = rest.split_once('.')?;
    matches!(kind, "gate" | "up" | "down").then_some((kind, e.parse().ok()?))
}

/// Mixtral's names: the mixture is `block_sparse_moe`, its experts' matrices `w1` (gate), `w3`
/// (up) and `w2` (down).
fn mixtral_hf_name(gguf_name: &str) -> Option<String> {
    let Some((layer, part)) = gguf_name.strip_prefix("blk.").and_then(|r| r.split_once('.')) else {
        return hf_name(gguf_name);
    };
    let moe = |rest: String| Some(format!("model.layers.{layer}.block_sparse_moe.{rest}"));
    match (part, expert_part(part)) {
        ("ffn_gate_inp.weight", _) => moe("gate.weight".into()),
        (_, Some((kind, e))) => {
            let w = match kind {
                "gate" => "w1",
                "down" => "w2",
                _ => "w3",
            };
            moe(format!("experts.{e}.{w}.weight"))
        }
        _ => hf_name(gguf_name),
    }
}

/// Buffers of one sequence's forward pass, for up to `batch` tokens at a time.
pub struct Scratch {
    batch: usize,
    x: Vec<f32>,             // (batch, hidden) the residual stream
    attn_in: Activations,    // (batch, hidden) RMSNorm(x), input of q/k/v
    qkv: Vec<f32>,           // (batch, q_dim + 2·kv_dim)
    attn_out: Activations,   // (batch, q_dim), input of o_proj
    ffn_in: Activations,     // (batch, hidden) RMSNorm(h), input of gate/up
    ffn_mid: Activations,    // (batch, intermediate), input of down_proj
    head_in: Activations,    // (rows, hidden) final RMSNorm, input of lm_head
    cos_sin: Vec<f32>,       // (batch, rope_dims)
    cos_sin_local: Vec<f32>, // (batch, rope_dims) Gemma 3's sliding layers
    sublayer_out: Vec<f32>,  // (batch, hidden) an output to normalize before the residual add
    logits: Vec<f32>,        // (rows, vocab)
    moe: Box<moe::Scratch>,  // a mixture's buffers (empty without one)
    /// The RoPE base fixed when the sequence's prompt was read (Qwen v1's dynamic NTK).
    rope_base: f32,
}

impl Llama {
    pub fn from_gguf(gguf: &Gguf) -> Result<Llama, ModelError> {
        let mut config = Config::from_gguf(gguf)?;
        let info = gguf
            .tensor_info("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        config.vocab_size = usize::try_from(info.ne.get(1).copied().unwrap_or(0))
            .map_err(|_| ModelError::InvalidConfig("vocabulary size".into()))?;
        let t = GgufTensors { gguf };
        let rope_freq_factors = t.optional_vector("rope_freqs.weight", config.rope_dims / 2)?;
        if !matches!(config.architecture.as_str(), "qwen" | "chatglm" | "phi3") {
            return Llama::load(config, &t, true, rope_freq_factors, gguf.tensors().len());
        }
        // Qwen v1, ChatGLM and Phi-3: q, k and v fused in attn_qkv (with its bias). Qwen's
        // feed_forward_length counts both halves of the MLP (llama.cpp's converter writes
        // `intermediate_size`); ChatGLM's and Phi-3's ffn_up hold the gate and then the up
        // projection.
        if config.architecture == "qwen" {
            config.intermediate_size /= 2;
        }
        let (q_dim, kv_dim) = (config.heads().q_dim(), config.heads().kv_dim());
        let total = q_dim + 2 * kv_dim;
        let mut parts = std::collections::HashMap::new();
        for i in 0..config.num_hidden_layers {
            for kind in ["weight", "bias"] {
                let fused = format!("blk.{i}.attn_qkv.{kind}");
                if !t.has(&fused) {
                    continue; // separate attn_q/k/v are accepted too
                }
                for (part, start, rows) in
                    [("q", 0, q_dim), ("k", q_dim, kv_dim), ("v", q_dim + kv_dim, kv_dim)]
                {
                    parts.insert(format!("blk.{i}.attn_{part}.{kind}"), (fused.clone(), start, rows, total));
                }
            }
            if matches!(config.architecture.as_str(), "chatglm" | "phi3") {
                let (ffn, fused) = (config.intermediate_size, format!("blk.{i}.ffn_up.weight"));
                parts.insert(format!("blk.{i}.ffn_gate.weight"), (fused.clone(), 0, ffn, 2 * ffn));
                parts.insert(fused.clone(), (fused, ffn, ffn, 2 * ffn));
            }
        }
        let split = SplitRows { base: &t, parts };
        let mut model = Llama::load(config, &split, true, rope_freq_factors, gguf.tensors().len())?;
        if model.config.architecture == "phi3" && t.has("rope_factors_long.weight") {
            let half = model.config.rope_dims / 2;
            let key = |k: &str| format!("phi3.rope.scaling.{k}");
            let long_rope = LongRope {
                short: t.vector("rope_factors_short.weight", half)?,
                long: t.vector("rope_factors_long.weight", half)?,
                original: gguf.get_usize(&key("original_context_length"))?,
                attention_factor: match gguf.get(&key("attn_factor")) {
                    Some(_) => gguf.get_f32(&key("attn_factor"))?,
                    None => 1.0,
                },
            };
            model.set_long_rope(long_rope)?;
        }
        Ok(model)
    }

    /// From a Hugging Face folder (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
    /// `Qwen3ForCausalLM`), optionally quantizing the matrices at load time.
    pub fn from_hf(folder: &HfFolder, quantize: Option<GgmlType>) -> Result<Llama, ModelError> {
        let (config, rope_freq_factors) = Config::from_hf(&folder.config)?;
        let tied = JsonConfig { json: &folder.config }.bool_or("tie_word_embeddings", false)?;
        let rename: &crate::hf::Rename =
            if config.architecture == "mixtral" { &mixtral_hf_name } else { &hf_name };
        let t = HfSource::new(&folder.tensors, rename, quantize);
        Llama::load(config, &t, tied, rope_freq_factors, folder.tensors.len())
    }

    /// Binds the tensors (GGUF names) to the layers. `tied`: without an output matrix, the
    /// embeddings serve as one.
    pub(crate) fn load(
        config: Config,
        t: &dyn TensorSource,
        tied: bool,
        rope_freq_factors: Option<Vec<f32>>,
        n_tensors: usize,
    ) -> Result<Llama, ModelError> {
        let c = &config;
        let hidden = c.hidden_size;
        let (q_dim, kv_dim) = (c.heads().q_dim(), c.heads().kv_dim());

        let embed_tokens = t.table("token_embd.weight", c.vocab_size, hidden)?;
        let lm_head = if t.has("output.weight") || !tied {
            t.matrix("output.weight", c.vocab_size, hidden)?
        } else {
            embed_tokens.clone().with_tiles()
        };
        if rope_freq_factors.as_ref().is_some_and(|f| f.iter().any(|&x| x.is_nan() || x <= 0.0)) {
            return Err(ModelError::InvalidConfig("RoPE frequency factors must be positive".into()));
        }
        let mut layers = Vec::with_capacity(c.num_hidden_layers.min(n_tensors));
        for i in 0..c.num_hidden_layers {
            let name = |n: &str| format!("blk.{i}.{n}");
            // The projections first: their shapes are checked against the file, which bounds
            // the zero-filled biases below.
            let (q_proj, k_proj, v_proj) = (
                t.matrix(&name("attn_q.weight"), q_dim, hidden)?,
                t.matrix(&name("attn_k.weight"), kv_dim, hidden)?,
                t.matrix(&name("attn_v.weight"), kv_dim, hidden)?,
            );
            let biases = [
                t.optional_vector(&name("attn_q.bias"), q_dim)?,
                t.optional_vector(&name("attn_k.bias"), kv_dim)?,
                t.optional_vector(&name("attn_v.bias"), kv_dim)?,
            ];
            let qkv_bias = match biases {
                [None, None, None] => None,
                [q, k, v] => Some(
                    [
                        q.unwrap_or_else(|| vec![0.0; q_dim]),
                        k.unwrap_or_else(|| vec![0.0; kv_dim]),
                        v.unwrap_or_else(|| vec![0.0; kv_dim]),
                    ]
                    .concat(),
                ),
            };
            layers.push(Layer {
                attn_norm: t.vector(&name("attn_norm.weight"), hidden)?,
                q_proj,
                k_proj,
                v_proj,
                qkv_bias,
                q_norm: t.optional_vector(&name("attn_q_norm.weight"), c.head_dim)?,
                k_norm: t.optional_vector(&name("attn_k_norm.weight"), c.head_dim)?,
                o_proj: t.matrix(&name("attn_output.weight"), hidden, q_dim)?,
                post_attn_norm: t.optional_vector(&name("post_attention_norm.weight"), hidden)?,
                post_ffn_norm: t.optional_vector(&name("post_ffw_norm.weight"), hidden)?,
                glu: if c.gemma.is_some() { Glu::Gelu } else { Glu::Silu },
                ffn_norm: t.vector(&name("ffn_norm.weight"), hidden)?,
                // A router makes the layer a mixture (Qwen2-MoE's dense layers have none).
                ffn: match &c.moe {
                    Some(moe) if t.has(&name("ffn_gate_inp.weight")) => {
                        Ffn::Experts(Moe::load(t, i, moe, hidden)?)
                    }
                    _ => Ffn::Dense {
                        gate_proj: t.matrix(&name("ffn_gate.weight"), c.intermediate_size, hidden)?,
                        up_proj: t.matrix(&name("ffn_up.weight"), c.intermediate_size, hidden)?,
                        down_proj: t.matrix(&name("ffn_down.weight"), hidden, c.intermediate_size)?,
                    },
                },
            });
        }
        let kv_precision = if [&embed_tokens, &lm_head]
            .into_iter()
            .chain(layers.iter().flat_map(|l| [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj]))
            .all(|w| w.dtype == GgmlType::F32)
        {
            KvPrecision::F32
        } else {
            KvPrecision::F16
        };
        Ok(Llama {
            norm: t.vector("output_norm.weight", hidden)?,
            rope_freq_factors,
            long_rope: None,
            embed_tokens,
            lm_head,
            layers,
            alibi_slopes: match config.positions {
                Positions::Alibi => alibi_slopes(config.num_attention_heads),
                Positions::Rope => Vec::new(),
            },
            config,
            kv_precision,
        })
    }

    /// Bytes of all the weights the forward pass uses.
    pub fn weight_bytes(&self) -> usize {
        self.layer_bytes(Moe::total_bytes) + self.lm_head.n_bytes()
    }

    /// Bytes one decoding step reads: a mixture counts only the experts a token runs. (One
    /// embedding row is read per token; the output matrix is read whole.)
    pub fn active_weight_bytes(&self) -> usize {
        self.layer_bytes(Moe::active_bytes) + self.lm_head.n_bytes()
    }

    fn layer_bytes(&self, mixture: fn(&Moe) -> usize) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let attention: usize =
                    [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj].map(Weight::n_bytes).iter().sum();
                let ffn = match &l.ffn {
                    Ffn::Dense { gate_proj, up_proj, down_proj } => {
                        gate_proj.n_bytes() + up_proj.n_bytes() + down_proj.n_bytes()
                    }
                    Ffn::Experts(m) => mixture(m),
                };
                attention + ffn
            })
            .sum()
    }

    pub fn new_cache(&self, max_len: usize) -> KvCache {
        KvCache::new(
            self.config.num_hidden_layers,
            self.config.heads().n_kv_heads,
            self.config.heads().kv_dim(),
            max_len,
            self.kv_precision,
        )
    }

    pub fn new_scratch(&self, batch: usize) -> Scratch {
        let c = &self.config;
        let (q_dim, kv_dim) = (c.heads().q_dim(), c.heads().kv_dim());
        let all = |f: fn(&Layer) -> Vec<&Weight>| self.layers.iter().flat_map(f).collect::<Vec<_>>();
        let acts = |n: usize, rows: usize, weights: Vec<&Weight>| {
            let (q32, q256) = needs(&weights);
            Activations::new(n, rows, q32, q256)
        };
        Scratch {
            batch,
            x: vec![0.0; batch * c.hidden_size],
            attn_in: acts(c.hidden_size, batch, all(|l| vec![&l.q_proj, &l.k_proj, &l.v_proj])),
            qkv: vec![0.0; batch * (q_dim + 2 * kv_dim)],
            attn_out: acts(q_dim, batch, all(|l| vec![&l.o_proj])),
            ffn_in: acts(c.hidden_size, batch, all(|l| l.ffn.input_weights())),
            ffn_mid: acts(c.intermediate_size, batch, all(|l| l.ffn.down_weights())),
            moe: Box::new(moe::Scratch::new(
                self.layers.iter().filter_map(|l| match &l.ffn {
                    Ffn::Experts(m) => Some(m),
                    Ffn::Dense { .. } => None,
                }),
                c.hidden_size,
                batch,
            )),
            head_in: acts(c.hidden_size, batch, vec![&self.lm_head]),
            cos_sin: vec![0.0; batch * c.rope_dims],
            cos_sin_local: vec![0.0; if c.gemma.is_some() { batch * c.rope_dims } else { 0 }],
            sublayer_out: vec![0.0; if c.gemma.is_some() { batch * c.hidden_size } else { 0 }],
            logits: Vec::new(),
            rope_base: c.rope_theta,
        }
    }
}

/// The driver's side of the LLaMA pass (see `driver.rs`); a row's fact is its RoPE base.
impl Pass for Llama {
    type Scratch = Scratch;
    type Row = f32;

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn info(&self) -> ModelInfo {
        let c = &self.config;
        ModelInfo {
            architecture: c.architecture.clone(),
            vocab_size: c.vocab_size,
            context_length: c.max_position_embeddings,
            n_layers: c.num_hidden_layers,
            hidden_size: c.hidden_size,
            weight_bytes: self.weight_bytes(),
            active_weight_bytes: self.active_weight_bytes(),
        }
    }

    fn new_state(&self, max_len: usize, batch: usize) -> (KvCache, crate::Scratch) {
        (self.new_cache(max_len), crate::Scratch::Llama(self.new_scratch(batch)))
    }

    /// Not with dynamic NTK scaling: Qwen v1 takes the base from the first call's length.
    fn reads_prompt_in_pieces(&self) -> bool {
        self.config.rope_dynamic.is_none()
    }

    fn scratch(s: &mut crate::Scratch) -> Option<&mut Scratch> {
        match s {
            crate::Scratch::Llama(s) => Some(s),
            _ => None,
        }
    }

    fn batch_size(s: &Scratch) -> usize {
        s.batch
    }

    fn logits(s: &mut Scratch) -> &mut Vec<f32> {
        &mut s.logits
    }

    /// Dynamic NTK scaling takes the base from the length this call reaches, as transformers
    /// does for one forward pass over the whole sequence; Qwen v1 fixes it at the prompt.
    fn begin(&self, s: &mut Scratch, len: usize, tokens: &[u32]) -> f32 {
        let c = &self.config;
        match c.rope_dynamic {
            Some(DynamicRope::QwenNtk { seq_length }) => {
                if len == 0 {
                    s.rope_base = qwen_ntk_base(c.rope_theta, c.rope_dims, tokens.len(), seq_length);
                }
                s.rope_base
            }
            _ => c.rope_base(len + tokens.len()),
        }
    }

    fn step_row(&self, s: &Scratch, len: usize, _token: u32) -> f32 {
        match self.config.rope_dynamic {
            Some(DynamicRope::QwenNtk { .. }) => s.rope_base,
            _ => self.config.rope_base(len + 1),
        }
    }

    fn run(&self, pool: &ThreadPool, s: &mut Scratch, b: &Batch<'_, f32>) {
        let c = &self.config;
        let heads = c.heads();
        let (n, hidden, vocab) = (b.len(), c.hidden_size, c.vocab_size);
        let (q_dim, kv_dim) = (heads.q_dim(), heads.kv_dim());
        let eps = c.rms_norm_eps;
        for t in 0..n {
            let pos = b.position(t);
            let cs = &mut s.cos_sin[t * c.rope_dims..(t + 1) * c.rope_dims];
            self.rotary(pos as f32 / c.rope_linear_factor, b.row(t), b.max_len(t), cs);
            // Gemma 3's sliding layers: their own base, unscaled positions.
            if let Some(base) = c.gemma.as_ref().and_then(|g| g.rope_local_base_freq) {
                let cs = &mut s.cos_sin_local[t * c.rope_dims..(t + 1) * c.rope_dims];
                rope_angles(pos as f32, c.rope_dims, base, None, cs);
            }
        }
        // Qwen v1: q ·= log(p + 1) / log(seq_length) past the trained length
        let logn = c.logn_seq_length.filter(|&trained| (0..n).any(|t| b.position(t) + 1 > trained));
        let cos_sin = &s.cos_sin[..n * c.rope_dims];
        let cos_sin_local = &s.cos_sin_local[..if c.gemma.is_some() { n * c.rope_dims } else { 0 }];
        let sublayer_out = SharedMut::new(&mut s.sublayer_out);
        let exact = b.exact;
        let x = SharedMut::new(&mut s.x);
        let attn_in = SharedActs::new(&mut s.attn_in, exact);
        let qkv = SharedMut::new(&mut s.qkv);
        let attn_out = SharedActs::new(&mut s.attn_out, exact);
        let ffn_in = SharedActs::new(&mut s.ffn_in, exact);
        let ffn_mid = SharedActs::new(&mut s.ffn_mid, exact);
        let head_in = SharedActs::new(&mut s.head_in, exact);
        let moe = s.moe.shared(exact);
        let logits = b.logits(&mut s.logits, vocab);

        pool.run(|ctx| {
            // x = embed_tokens[tokens]
            ctx.for_each_chunk(n, 1, |rows| {
                for t in rows {
                    // SAFETY: row t of x is written by the thread that claimed it.
                    let row = unsafe { x.slice_mut(t * hidden..(t + 1) * hidden) };
                    self.embed_tokens.dequantize_row(b.tokens[t] as usize, row);
                    // Gemma: x = √hidden · embedding
                    if c.gemma.is_some() {
                        let scale = (hidden as f32).sqrt();
                        row.iter_mut().for_each(|v| *v *= scale);
                    }
                }
            });
            // SAFETY (here and below): x is only read while other buffers are written.
            let x_row = |t: usize| unsafe { &x.get()[t * hidden..(t + 1) * hidden] };
            for (l, layer) in self.layers.iter().enumerate() {
                let rows = b.rows.layer(l);
                // n = RMSNorm(x);  q|k|v = W_qkv · n (+ b)
                fill_rows(ctx, &attn_in, n, |t, out| rms_norm(x_row(t), &layer.attn_norm, eps, out));
                let bias = layer.qkv_bias.as_deref();
                let parts = [&layer.q_proj, &layer.k_proj, &layer.v_proj];
                matmul(ctx, &parts, &attn_in, n, &qkv, q_dim + 2 * kv_dim, Store::Write { bias });
                // Qwen3: q, k = RMSNorm per head
                if let (Some(q_norm), Some(k_norm)) = (&layer.q_norm, &layer.k_norm) {
                    head_norms(ctx, heads, &qkv, n, q_norm, k_norm, eps);
                }
                // RoPE(q), RoPE(k); k, v → cache
                let table = if c.local_rope(l) { cos_sin_local } else { cos_sin };
                rows.rope_and_cache(ctx, heads, &qkv, table, c.rope_style);
                if let Some(trained) = logn {
                    ctx.for_each_chunk(n, 1, |items| {
                        for t in items {
                            logn_scale_row(heads, &qkv, t, b.position(t), trained);
                        }
                    });
                }
                // a = softmax(q·Kᵀ/√d (+ ALiBi))·V;  h = x + W_o · a
                match c.positions {
                    Positions::Rope => {
                        rows.attend(ctx, c.layer_heads(l), &qkv, b.accumulate, attn_out.f32_shared())
                    }
                    Positions::Alibi => {
                        rows.attend_alibi(ctx, heads, &qkv, &self.alibi_slopes, attn_out.f32_shared())
                    }
                }
                requantize(ctx, &attn_out, n);
                layer.attention_output(ctx, &attn_out, n, &x, &sublayer_out, eps);
                // m = RMSNorm(h);  x = h + W_down · (silu(W_gate·m) ⊙ W_up·m)
                fill_rows(ctx, &ffn_in, n, |t, out| rms_norm(x_row(t), &layer.ffn_norm, eps, out));
                layer.feed_forward(ctx, &ffn_in, &ffn_mid, &moe, n, &x, &sublayer_out, eps);
            }
            // logits = lm_head · RMSNorm(x), for the rows asked for
            let n_out = b.n_out();
            if n_out > 0 {
                let first = b.first_out;
                fill_rows(ctx, &head_in, n_out, |t, out| rms_norm(x_row(first + t), &self.norm, eps, out));
                matmul(ctx, &[&self.lm_head], &head_in, n_out, &logits, vocab, Store::Write { bias: None });
                self.soft_cap_logits(ctx, &logits, n_out);
            }
        });
    }
}

/// LongRoPE (Ding et al. 2024; Phi-3): per-frequency divisors for sequences within the trained
/// length and others for longer ones, and cos/sin scaled by `attention_factor`. The choice
/// follows the sequence's capacity, as llama.cpp's follows its context size (transformers'
/// follows the length of each forward call; the same for a sequence run in one call).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LongRope {
    pub short: Vec<f32>, // (rope_dims / 2)
    pub long: Vec<f32>,  // (rope_dims / 2)
    /// `original_max_position_embeddings`: longer sequences take `long`.
    pub original: usize,
    pub attention_factor: f32,
}

impl Llama {
    pub(crate) fn set_long_rope(&mut self, lr: LongRope) -> Result<(), ModelError> {
        let half = self.config.rope_dims / 2;
        if lr.short.len() != half || lr.long.len() != half {
            return Err(ModelError::InvalidConfig(format!("LongRoPE factors for {half} frequencies")));
        }
        let bad = |f: &f32| !(f.is_finite() && *f > 0.0);
        if lr.short.iter().chain(&lr.long).any(bad) || bad(&lr.attention_factor) {
            return Err(ModelError::InvalidConfig("LongRoPE factors must be positive".into()));
        }
        self.long_rope = Some(lr);
        Ok(())
    }

    /// `cos_sin` of the rotation at `pos` (already scaled) in a sequence of capacity `max_len`.
    fn rotary(&self, pos: f32, base: f32, max_len: usize, cos_sin: &mut [f32]) {
        let dims = self.config.rope_dims;
        match &self.long_rope {
            None => rope_angles(pos, dims, base, self.rope_freq_factors.as_deref(), cos_sin),
            Some(lr) => {
                let factors = if max_len > lr.original { &lr.long } else { &lr.short };
                rope_angles(pos, dims, base, Some(factors), cos_sin);
                cos_sin.iter_mut().for_each(|x| *x *= lr.attention_factor);
            }
        }
    }
}

impl Layer {
    /// `x += W_o · a` for the `n` rows of `attn_out`, through Gemma's post-attention norm
    /// where the layer has one.
    fn attention_output(
        &self,
        ctx: &baimo_threads::Ctx<'_>,
        attn_out: &SharedActs<'_>,
        n: usize,
        x: &SharedMut<'_, f32>,
        sublayer_out: &SharedMut<'_, f32>,
        eps: f32,
    ) {
        let hidden = self.o_proj.rows;
        match &self.post_attn_norm {
            None => matmul(ctx, &[&self.o_proj], attn_out, n, x, hidden, Store::Add { bias: None }),
            Some(norm) => {
                matmul(ctx, &[&self.o_proj], attn_out, n, sublayer_out, hidden, Store::Write { bias: None });
                add_normed(ctx, x, sublayer_out, norm, eps, n, hidden);
            }
        }
    }

    /// `x += FFN(m)` for the `n` rows of `ffn_in` (`m = RMSNorm(h)`): SwiGLU
    /// `W_down · (silu(W_gate·m) ⊙ W_up·m)` (GeGLU for Gemma, then its post-feed-forward norm),
    /// or the mixture of experts.
    #[allow(clippy::too_many_arguments)]
    fn feed_forward(
        &self,
        ctx: &baimo_threads::Ctx<'_>,
        ffn_in: &SharedActs<'_>,
        ffn_mid: &SharedActs<'_>,
        moe: &moe::SharedScratch<'_>,
        n: usize,
        x: &SharedMut<'_, f32>,
        sublayer_out: &SharedMut<'_, f32>,
        eps: f32,
    ) {
        match &self.ffn {
            Ffn::Dense { gate_proj, up_proj, down_proj } => {
                matmul_glu(
                    ctx,
                    gate_proj,
                    up_proj,
                    ffn_in,
                    n,
                    ffn_mid.f32_shared(),
                    gate_proj.rows,
                    self.glu,
                );
                requantize(ctx, ffn_mid, n);
                let hidden = down_proj.rows;
                match &self.post_ffn_norm {
                    None => matmul(ctx, &[down_proj], ffn_mid, n, x, hidden, Store::Add { bias: None }),
                    Some(norm) => {
                        matmul(
                            ctx,
                            &[down_proj],
                            ffn_mid,
                            n,
                            sublayer_out,
                            hidden,
                            Store::Write { bias: None },
                        );
                        add_normed(ctx, x, sublayer_out, norm, eps, n, hidden);
                    }
                }
            }
            Ffn::Experts(m) => m.forward(ctx, ffn_in, n, x, moe),
        }
    }
}

/// `x[t] += RMSNorm(y[t]) ⊙ w` for `n` rows (Gemma's post-norms).
fn add_normed(
    ctx: &baimo_threads::Ctx<'_>,
    x: &SharedMut<'_, f32>,
    y: &SharedMut<'_, f32>,
    w: &[f32],
    eps: f32,
    n: usize,
    hidden: usize,
) {
    ctx.for_each_chunk(n, 1, |rows| {
        let mut normed = vec![0f32; hidden];
        for t in rows {
            // SAFETY: row t of x belongs to this chunk alone; y is not written in this step.
            let (x, y) = unsafe {
                (x.slice_mut(t * hidden..(t + 1) * hidden), &y.get()[t * hidden..(t + 1) * hidden])
            };
            rms_norm(y, w, eps, &mut normed);
            x.iter_mut().zip(&normed).for_each(|(x, v)| *x += v);
        }
    });
}

impl Llama {
    /// Gemma 2's final soft-capping, `cap · tanh(logit / cap)`, on `n` rows of logits.
    fn soft_cap_logits(&self, ctx: &baimo_threads::Ctx<'_>, logits: &SharedMut<'_, f32>, n: usize) {
        let Some(cap) = self.config.gemma.as_ref().and_then(|g| g.final_logit_softcapping) else { return };
        let vocab = self.config.vocab_size;
        ctx.for_each_chunk(n, 1, |rows| {
            for t in rows {
                // SAFETY: row t belongs to this chunk alone.
                let row = unsafe { logits.slice_mut(t * vocab..(t + 1) * vocab) };
                row.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
            }
        });
    }
}

/// RMSNorm over each query head (`q_norm`) and each key head (`k_norm`) of `n` rows of `qkv`, in
/// place.
fn head_norms(
    ctx: &baimo_threads::Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    n: usize,
    q_norm: &[f32],
    k_norm: &[f32],
    eps: f32,
) {
    let (hd, q_dim, kv_dim) = (heads.head_dim, heads.q_dim(), heads.kv_dim());
    let per_token = heads.n_heads + heads.n_kv_heads;
    ctx.for_each_chunk(n * per_token, 8, |items| {
        let mut copy = [0f32; MAX_HEAD_DIM];
        for item in items {
            let (t, h) = (item / per_token, item % per_token);
            let row = t * (q_dim + 2 * kv_dim);
            // Query heads, then key heads: they sit one after the other in the row.
            let (at, weight) =
                if h < heads.n_heads { (row + h * hd, q_norm) } else { (row + h * hd, k_norm) };
            // SAFETY: head h of token t belongs to this item alone.
            let head = unsafe { qkv.slice_mut(at..at + hd) };
            copy[..hd].copy_from_slice(head);
            rms_norm(&copy[..hd], weight, eps, head);
        }
    });
}

/// Scales row `t`'s query heads by `ln(p + 1) / ln(trained)` when its position `p` is past
/// `trained` (Qwen v1's `logn_tensor`).
fn logn_scale_row(heads: Heads, qkv: &SharedMut<'_, f32>, t: usize, p: usize, trained: usize) {
    if p + 1 > trained {
        let stride = heads.q_dim() + 2 * heads.kv_dim();
        let factor = ((p + 1) as f64).ln() / (trained as f64).ln();
        // SAFETY: row t's query heads belong to the caller's item alone.
        let q = unsafe { qkv.slice_mut(t * stride..t * stride + heads.q_dim()) };
        q.iter_mut().for_each(|x| *x = (*x as f64 * factor) as f32);
    }
}

/// Qwen v1's dynamic NTK base for a prompt of `len` tokens (see [`DynamicRope::QwenNtk`]).
fn qwen_ntk_base(base: f32, dims: usize, len: usize, seq_length: usize) -> f32 {
    let context = (len as f64 / seq_length as f64).log2() + 1.0;
    let alpha = (2f64.powf(context.ceil()) - 1.0).max(1.0);
    let d = dims as f64;
    (base as f64 * alpha.powf(d / (d - 2.0))) as f32
}
