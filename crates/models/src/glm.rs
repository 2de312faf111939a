//! GLM / ChatGLM-6B (Du et al. 2022, "GLM: General Language Model Pretraining with
//! Autoregressive Blank Infilling"; THUDM `modeling_chatglm.py` of ChatGLM-6B).
//!
//! A prompt is a context with a mask token — `[MASK]` for a short span, `[gMASK]` for a long
//! generation at the end — followed by `<sop>`; the model writes the span after `<sop>` until
//! `<eop>`. What sets the architecture apart:
//! - **2-D positions**: each head's first half is rotated (rotate-half RoPE over `d/2`) by the
//!   *position id*, its second half by the *block id*. Context tokens have position `t` and block
//!   0; `<sop>` and every generated token keep the mask token's position and count blocks 1, 2, …
//! - **Prefix-LM mask**: the context (everything before `<sop>`) attends in both directions; the
//!   span is causal.
//! - **Post-LN-style residuals scaled by α = √(2·layers)**, LayerNorm with bias, GELU:
//! ```text
//! a = LN₁(h);  h₁ = α·a + W_o·Attn(a) + b_o;  m = LN₂(h₁);  h = α·m + W_down·gelu(W_up·m + b_up) + b_down
//! ```
//! - `query_key_value` rows are interleaved per head (`q_h | k_h | v_h` for each head `h`); they
//!   are taken as 3·heads row ranges of the one matrix, reordered to `q | k | v`, without a copy.
//! - The output projection is the word embedding matrix.
//!
//! The released code builds its rotary tables in fp16 even for an fp32 model; baimo (and its
//! reference fixture) use f32 tables, which moves logits by about 1e-3 relative to that code.

use baimo_formats::HfFolder;
use baimo_kernels::GgmlType;
use baimo_kernels::ops::{RopeStyle, gelu, layer_norm, rope_angles, rope_apply};
use baimo_threads::{Ctx, SharedMut, ThreadPool};

use crate::attention::{Accumulate, Heads, MAX_HEAD_DIM, attend_prefix_lm};
use crate::driver::{Batch, LayerRows, Pass};
use crate::hf::{HfSource, JsonConfig};
use crate::parallel::{SharedActs, Store, fill_rows, matmul, needs, requantize};
use crate::state::{Activations, KvCache, KvPrecision};
use crate::weights::{TensorSource, Weight};
use crate::{InfillTokens, ModelError, ModelInfo};

/// Hyper-parameters, named as in ChatGLM-6B's `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub hidden_size: usize,
    pub inner_hidden_size: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub vocab_size: usize,
    pub max_sequence_length: usize,
    pub layernorm_epsilon: f32,
    pub mask_token_id: u32,
    pub gmask_token_id: u32,
    /// `<sop>`, which starts the span (the tokenizer's BOS).
    pub bos_token_id: u32,
    /// `<eop>`, which ends it.
    pub eos_token_id: u32,
}

impl Config {
    fn from_hf(json: &serde_json::Value) -> Result<Config, ModelError> {
        let j = JsonConfig { json };
        if !j.bool_or("position_encoding_2d", true)? {
            return Err(ModelError::Unsupported("GLM without 2-D positions".into()));
        }
        if j.usize_or("quantization_bit", 0)? != 0 || j.usize_or("pre_seq_len", 0)? != 0 {
            return Err(ModelError::Unsupported("ChatGLM-6B quantized or P-tuning checkpoints".into()));
        }
        let id = |key: &str, default: usize| -> Result<u32, ModelError> {
            u32::try_from(j.usize_or(key, default)?).map_err(|_| ModelError::InvalidConfig(key.into()))
        };
        let hidden_size = j.usize("hidden_size")?;
        let config = Config {
            hidden_size,
            inner_hidden_size: j.usize_or("inner_hidden_size", 4 * hidden_size)?,
            num_layers: j.usize("num_layers")?,
            num_attention_heads: j.usize("num_attention_heads")?,
            vocab_size: j.usize("vocab_size")?,
            max_sequence_length: j.usize_or("max_sequence_length", 2048)?,
            layernorm_epsilon: j.f32_or("layernorm_epsilon", 1e-5)?,
            mask_token_id: id("mask_token_id", 130_000)?,
            gmask_token_id: id("gmask_token_id", 130_001)?,
            bos_token_id: id("bos_token_id", 130_004)?,
            eos_token_id: id("eos_token_id", 130_005)?,
        };
        let bad = |m: &str| Err(ModelError::InvalidConfig(m.into()));
        if [config.hidden_size, config.inner_hidden_size, config.num_layers, config.num_attention_heads]
            .contains(&0)
        {
            return bad("zero width, depth or heads");
        }
        let head_dim = config.hidden_size / config.num_attention_heads;
        if !config.hidden_size.is_multiple_of(config.num_attention_heads)
            || !head_dim.is_multiple_of(4)
            || head_dim > MAX_HEAD_DIM
        {
            return bad("heads must split hidden_size into dimensions divisible by 4");
        }
        if config.hidden_size > 1 << 16 || config.inner_hidden_size > 1 << 18 {
            return bad("sizes too large");
        }
        if !(config.layernorm_epsilon >= 0.0 && config.layernorm_epsilon.is_finite()) {
            return bad("layernorm_epsilon");
        }
        Ok(config)
    }

    fn heads(&self) -> Heads {
        let n = self.num_attention_heads;
        Heads {
            n_heads: n,
            n_kv_heads: n,
            head_dim: self.hidden_size / n,
            window: None,
            scale: None,
            softcap: None,
        }
    }
}

struct Layer {
    input_layernorm: (Vec<f32>, Vec<f32>), // (hidden) weight, bias
    qkv: Vec<Weight>,                      // 3·heads row ranges of (3·hidden, hidden), q | k | v order
    qkv_bias: Vec<f32>,                    // (3·hidden), q | k | v order
    dense: Weight,                         // (hidden, hidden)
    dense_bias: Vec<f32>,                  // (hidden)
    post_attention_layernorm: (Vec<f32>, Vec<f32>),
    dense_h_to_4h: Weight,        // (inner, hidden)
    dense_h_to_4h_bias: Vec<f32>, // (inner)
    dense_4h_to_h: Weight,        // (hidden, inner)
    dense_4h_to_h_bias: Vec<f32>, // (hidden)
}

pub struct Glm {
    pub config: Config,
    word_embeddings: Weight, // (vocab, hidden)
    layers: Vec<Layer>,
    final_layernorm: (Vec<f32>, Vec<f32>),
    lm_head: Weight, // (vocab, hidden): the word embeddings
    kv_precision: KvPrecision,
}

/// Where a sequence stands in GLM's layout: the mask token it fills and where `<sop>` came.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Layout {
    /// Index of the first `[MASK]`, else the first `[gMASK]`, among the context tokens.
    mask: Option<usize>,
    gmask: Option<usize>,
    /// Index of `<sop>`: the context is everything before it.
    sop: Option<usize>,
}

impl Layout {
    /// Records where the mask tokens and `<sop>` of `tokens` (at indices from `pos0`) are.
    fn note(&mut self, c: &Config, pos0: usize, tokens: &[u32]) {
        for (i, &token) in tokens.iter().enumerate() {
            if self.sop.is_none() {
                if token == c.mask_token_id && self.mask.is_none() {
                    self.mask = Some(pos0 + i);
                } else if token == c.gmask_token_id && self.gmask.is_none() {
                    self.gmask = Some(pos0 + i);
                } else if token == c.bos_token_id {
                    self.sop = Some(pos0 + i);
                }
            }
        }
    }

    /// Position id and block id of the token at index `p`.
    fn ids(&self, p: usize) -> (usize, usize) {
        match self.sop {
            Some(sop) if p >= sop => (self.mask.or(self.gmask).unwrap_or(sop), p - sop + 1),
            _ => (p, 0),
        }
    }
}

/// Buffers of one sequence's forward pass.
pub struct Scratch {
    batch: usize,
    layout: Layout,
    x: Vec<f32>,           // (batch, hidden) the residual stream
    attn_in: Activations,  // (batch, hidden) LN₁
    qkv: Vec<f32>,         // (batch, 3·hidden) q | k | v
    attn_out: Activations, // (batch, hidden)
    ffn_in: Activations,   // (batch, hidden) LN₂
    ffn_mid: Activations,  // (batch, inner)
    head_in: Activations,  // (batch, hidden)
    cos_sin: Vec<f32>,     // (batch, 2 · d/2): position angles, then block angles
    logits: Vec<f32>,
}

impl Glm {
    pub fn from_hf(folder: &HfFolder, quantize: Option<GgmlType>) -> Result<Glm, ModelError> {
        let config = Config::from_hf(&folder.config)?;
        let t = HfSource::new(&folder.tensors, &glm_name, quantize);
        Glm::load(config, &t)
    }

    fn load(config: Config, t: &dyn TensorSource) -> Result<Glm, ModelError> {
        let c = &config;
        let (h, inner) = (c.hidden_size, c.inner_hidden_size);
        let heads = c.heads();
        let hd = heads.head_dim;
        let norm = |name: &str| -> Result<(Vec<f32>, Vec<f32>), ModelError> {
            Ok((t.vector(&format!("{name}.weight"), h)?, t.vector(&format!("{name}.bias"), h)?))
        };
        let word_embeddings = t.table("token_embd.weight", c.vocab_size, h)?;
        let lm_head = word_embeddings.clone().with_tiles();
        let mut layers = Vec::with_capacity(c.num_layers.min(4096));
        for i in 0..c.num_layers {
            let name = |n: &str| format!("blk.{i}.{n}");
            // Head-interleaved rows: head j's q, k and v start at rows 3·j·d, (3j+1)·d, (3j+2)·d.
            let fused = t.matrix_unpacked(&name("attn_qkv.weight"), 3 * h, h)?;
            let fused_bias = t.vector(&name("attn_qkv.bias"), 3 * h)?;
            let (mut qkv, mut qkv_bias) = (Vec::with_capacity(3 * heads.n_heads), Vec::with_capacity(3 * h));
            for which in 0..3 {
                for head in 0..heads.n_heads {
                    let start = (3 * head + which) * hd;
                    qkv.push(fused.row_range(&fused.name, start, hd)?.with_tiles());
                    qkv_bias.extend_from_slice(&fused_bias[start..start + hd]);
                }
            }
            layers.push(Layer {
                input_layernorm: norm(&name("attn_norm"))?,
                qkv,
                qkv_bias,
                dense: t.matrix(&name("attn_output.weight"), h, h)?,
                dense_bias: t.vector(&name("attn_output.bias"), h)?,
                post_attention_layernorm: norm(&name("ffn_norm"))?,
                dense_h_to_4h: t.matrix(&name("ffn_up.weight"), inner, h)?,
                dense_h_to_4h_bias: t.vector(&name("ffn_up.bias"), inner)?,
                dense_4h_to_h: t.matrix(&name("ffn_down.weight"), h, inner)?,
                dense_4h_to_h_bias: t.vector(&name("ffn_down.bias"), h)?,
            });
        }
        let all_f32 =
            word_embeddings.dtype == GgmlType::F32 && layers.iter().all(|l| l.dense.dtype == GgmlType::F32);
        Ok(Glm {
            final_layernorm: norm("output_norm")?,
            kv_precision: if all_f32 { KvPrecision::F32 } else { KvPrecision::F16 },
            word_embeddings,
            lm_head,
            layers,
            config,
        })
    }

    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .flat_map(|l| l.qkv.iter().chain([&l.dense, &l.dense_h_to_4h, &l.dense_4h_to_h]))
            .map(Weight::n_bytes)
            .sum();
        layers + self.lm_head.n_bytes()
    }

    pub fn new_cache(&self, max_len: usize) -> KvCache {
        let c = &self.config;
        KvCache::new(
            c.num_layers,
            c.heads().n_kv_heads,
            c.hidden_size,
            max_len.min(c.max_sequence_length),
            self.kv_precision,
        )
    }

    pub fn new_scratch(&self, batch: usize) -> Scratch {
        let c = &self.config;
        let acts = |n: usize, weights: Vec<&Weight>| {
            let (q32, q256) = needs(&weights);
            Activations::new(n, batch, q32, q256)
        };
        let qkv: Vec<&Weight> = self.layers.iter().flat_map(|l| l.qkv.iter()).collect();
        Scratch {
            batch,
            layout: Layout::default(),
            x: vec![0.0; batch * c.hidden_size],
            attn_in: acts(c.hidden_size, qkv),
            qkv: vec![0.0; batch * 3 * c.hidden_size],
            attn_out: acts(c.hidden_size, self.layers.iter().map(|l| &l.dense).collect()),
            ffn_in: acts(c.hidden_size, self.layers.iter().map(|l| &l.dense_h_to_4h).collect()),
            ffn_mid: acts(c.inner_hidden_size, self.layers.iter().map(|l| &l.dense_4h_to_h).collect()),
            head_in: acts(c.hidden_size, vec![&self.lm_head]),
            cos_sin: vec![0.0; batch * c.heads().head_dim],
            logits: Vec::new(),
        }
    }
}

/// The driver's side of the GLM pass (see `driver.rs`); a row's fact is its sequence's layout.
impl Pass for Glm {
    type Scratch = Scratch;
    type Row = Layout;

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn info(&self) -> ModelInfo {
        let c = &self.config;
        ModelInfo {
            architecture: "chatglm-6b".into(),
            vocab_size: c.vocab_size,
            context_length: c.max_sequence_length,
            n_layers: c.num_layers,
            hidden_size: c.hidden_size,
            weight_bytes: self.weight_bytes(),
            active_weight_bytes: self.weight_bytes(),
        }
    }

    fn new_state(&self, max_len: usize, batch: usize) -> (KvCache, crate::Scratch) {
        (self.new_cache(max_len), crate::Scratch::Glm(self.new_scratch(batch)))
    }

    /// The context attends both ways: a cached prefix changes when other tokens follow it.
    fn causal_prefix(&self) -> bool {
        false
    }

    fn reads_prompt_in_pieces(&self) -> bool {
        false
    }

    fn infill_tokens(&self) -> Option<InfillTokens> {
        let c = &self.config;
        Some(InfillTokens {
            mask: c.mask_token_id,
            gmask: c.gmask_token_id,
            sop: c.bos_token_id,
            eop: c.eos_token_id,
        })
    }

    fn max_positions(&self) -> usize {
        self.config.max_sequence_length
    }

    fn scratch(s: &mut crate::Scratch) -> Option<&mut Scratch> {
        match s {
            crate::Scratch::Glm(s) => Some(s),
            _ => None,
        }
    }

    fn batch_size(s: &Scratch) -> usize {
        s.batch
    }

    fn logits(s: &mut Scratch) -> &mut Vec<f32> {
        &mut s.logits
    }

    /// The whole context (up to and including `<sop>`) must come in one call, since it attends
    /// in both directions: the scratch grows to hold it.
    fn begin(&self, s: &mut Scratch, len: usize, tokens: &[u32]) -> Layout {
        if len == 0 {
            s.layout = Layout::default();
        }
        if tokens.len() > s.batch {
            let layout = s.layout;
            *s = self.new_scratch(tokens.len());
            s.layout = layout;
        }
        s.layout.note(&self.config, len, tokens);
        s.layout
    }

    /// A decoding step is causal, as the span after `<sop>` is; the row keeps its sequence's
    /// 2-D positions.
    fn step_row(&self, s: &Scratch, len: usize, token: u32) -> Layout {
        let mut layout = s.layout;
        layout.note(&self.config, len, &[token]);
        layout
    }

    fn end_step(s: &mut Scratch, layout: Layout) {
        s.layout = layout;
    }

    fn run(&self, pool: &ThreadPool, s: &mut Scratch, b: &Batch<'_, Layout>) {
        let c = &self.config;
        let heads = c.heads();
        let (n, h, vocab, eps) = (b.len(), c.hidden_size, c.vocab_size, c.layernorm_epsilon);
        let (hd, half) = (heads.head_dim, heads.head_dim / 2);
        let alpha = (2.0 * c.num_layers as f32).sqrt();
        // Angles for both halves of every token: (position id), then (block id), over d/2.
        for t in 0..n {
            let (position, block) = b.row(t).ids(b.position(t));
            let cs = &mut s.cos_sin[t * hd..(t + 1) * hd];
            rope_angles(position as f32, half, 10_000.0, None, &mut cs[..half]);
            rope_angles(block as f32, half, 10_000.0, None, &mut cs[half..]);
        }
        let cos_sin = &s.cos_sin[..n * hd];
        let exact = b.exact;
        let x = SharedMut::new(&mut s.x);
        let attn_in = SharedActs::new(&mut s.attn_in, exact);
        let qkv = SharedMut::new(&mut s.qkv);
        let attn_out = SharedActs::new(&mut s.attn_out, exact);
        let ffn_in = SharedActs::new(&mut s.ffn_in, exact);
        let ffn_mid = SharedActs::new(&mut s.ffn_mid, exact);
        let head_in = SharedActs::new(&mut s.head_in, exact);
        let logits = b.logits(&mut s.logits, vocab);

        pool.run(|ctx| {
            ctx.for_each_chunk(n, 1, |rows| {
                for t in rows {
                    // SAFETY: row t of x is written by the thread that claimed it.
                    let row = unsafe { x.slice_mut(t * h..(t + 1) * h) };
                    self.word_embeddings.dequantize_row(b.tokens[t] as usize, row);
                }
            });
            // SAFETY (here and below): x is only read while other buffers are written.
            let x_row = |t: usize| unsafe { &x.get()[t * h..(t + 1) * h] };
            for (l, layer) in self.layers.iter().enumerate() {
                let rows = b.rows.layer(l);
                // a = LN₁(h);  q|k|v = W_qkv·a + b
                let (w, bias) = &layer.input_layernorm;
                fill_rows(ctx, &attn_in, n, |t, out| layer_norm(x_row(t), w, bias, eps, out));
                let parts: Vec<&Weight> = layer.qkv.iter().collect();
                matmul(ctx, &parts, &attn_in, n, &qkv, 3 * h, Store::Write { bias: Some(&layer.qkv_bias) });
                // 2-D RoPE on q and k, then k and v into the cache.
                rope_2d(ctx, heads, &qkv, n, cos_sin);
                rows.rope_and_cache(ctx, heads, &qkv, &[], RopeStyle::Neox);
                match &rows {
                    // The context attends both ways: every query sees the keys before <sop>.
                    LayerRows::Run { cache, pos0, n } => {
                        let prefix = b.row(0).sop.unwrap_or(0);
                        attend_prefix_lm(ctx, heads, &qkv, *n, *pos0, cache, prefix, attn_out.f32_shared())
                    }
                    // Steps of several sequences are causal, in f32 as a step alone.
                    LayerRows::Step(_) => {
                        rows.attend(ctx, heads, &qkv, Accumulate::F32, attn_out.f32_shared())
                    }
                }
                layer.finish(ctx, c, &attn_in, &attn_out, &ffn_in, &ffn_mid, n, &x, alpha);
            }
            let n_out = b.n_out();
            if n_out > 0 {
                let (w, bias) = &self.final_layernorm;
                fill_rows(ctx, &head_in, n_out, |t, out| {
                    layer_norm(x_row(b.first_out + t), w, bias, eps, out)
                });
                matmul(ctx, &[&self.lm_head], &head_in, n_out, &logits, vocab, Store::Write { bias: None });
            }
        });
    }
}

impl Layer {
    /// The block once attention has filled `attn_out` (`attn_in` holds `a = LN₁(h)`):
    /// `h₁ = α·a + W_o·attn + b_o;  m = LN₂(h₁);  h = α·m + W_down·gelu(W_up·m + b_up) + b_down`.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        ctx: &Ctx<'_>,
        c: &Config,
        attn_in: &SharedActs<'_>,
        attn_out: &SharedActs<'_>,
        ffn_in: &SharedActs<'_>,
        ffn_mid: &SharedActs<'_>,
        n: usize,
        x: &SharedMut<'_, f32>,
        alpha: f32,
    ) {
        let (h, eps) = (c.hidden_size, c.layernorm_epsilon);
        requantize(ctx, attn_out, n);
        scale_into(ctx, x, attn_in.f32_shared(), n, h, alpha);
        matmul(ctx, &[&self.dense], attn_out, n, x, h, Store::Add { bias: Some(&self.dense_bias) });
        // SAFETY: x is only read while ffn_in is written.
        let x_row = |t: usize| unsafe { &x.get()[t * h..(t + 1) * h] };
        let (w, b) = &self.post_attention_layernorm;
        fill_rows(ctx, ffn_in, n, |t, out| layer_norm(x_row(t), w, b, eps, out));
        let bias = Some(&self.dense_h_to_4h_bias[..]);
        matmul(
            ctx,
            &[&self.dense_h_to_4h],
            ffn_in,
            n,
            ffn_mid.f32_shared(),
            c.inner_hidden_size,
            Store::Write { bias },
        );
        fill_rows(ctx, ffn_mid, n, |_, row| row.iter_mut().for_each(|v| *v = gelu(*v)));
        scale_into(ctx, x, ffn_in.f32_shared(), n, h, alpha);
        let bias = Some(&self.dense_4h_to_h_bias[..]);
        matmul(ctx, &[&self.dense_4h_to_h], ffn_mid, n, x, h, Store::Add { bias });
    }
}

/// Rotate-half RoPE on each half of every query and key head: the first half by the position
/// angles, the second by the block angles (`cos_sin` rows: position half, then block half).
fn rope_2d(ctx: &Ctx<'_>, heads: Heads, qkv: &SharedMut<'_, f32>, n: usize, cos_sin: &[f32]) {
    let (hd, half) = (heads.head_dim, heads.head_dim / 2);
    let per_token = 2 * heads.n_heads; // query heads, then key heads
    let stride = 3 * heads.q_dim();
    ctx.for_each_chunk(n * per_token, 8, |items| {
        for item in items {
            let (t, h) = (item / per_token, item % per_token);
            let at = t * stride + h * hd;
            let cs = &cos_sin[t * hd..(t + 1) * hd];
            // SAFETY: head h of token t belongs to this item alone.
            let head = unsafe { qkv.slice_mut(at..at + hd) };
            let (first, second) = head.split_at_mut(half);
            rope_apply(first, &cs[..half], RopeStyle::Neox);
            rope_apply(second, &cs[half..], RopeStyle::Neox);
        }
    });
}

/// `x[t] = α · a[t]` for the first `n` rows (the scaled residual GLM adds the sublayer to).
fn scale_into(
    ctx: &Ctx<'_>,
    x: &SharedMut<'_, f32>,
    a: &SharedMut<'_, f32>,
    n: usize,
    width: usize,
    alpha: f32,
) {
    ctx.for_each_chunk(n, 1, |rows| {
        for t in rows {
            // SAFETY: row t of x is written by this thread alone; a is not written in this step.
            let (dst, src) =
                unsafe { (x.slice_mut(t * width..(t + 1) * width), &a.get()[t * width..(t + 1) * width]) };
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = alpha * s);
        }
    });
}

/// ChatGLM-6B's names (`transformer.layers.N…`) under the GGUF-style names used above.
fn glm_name(gguf_name: &str) -> Option<String> {
    Some(match gguf_name {
        "token_embd.weight" => "transformer.word_embeddings.weight".into(),
        "output_norm.weight" => "transformer.final_layernorm.weight".into(),
        "output_norm.bias" => "transformer.final_layernorm.bias".into(),
        _ => {
            let (layer, part) = gguf_name.strip_prefix("blk.")?.split_once('.')?;
            let hf = match part {
                "attn_norm.weight" => "input_layernorm.weight",
                "attn_norm.bias" => "input_layernorm.bias",
                "attn_qkv.weight" => "attention.query_key_value.weight",
                "attn_qkv.bias" => "attention.query_key_value.bias",
                "attn_output.weight" => "attention.dense.weight",
                "attn_output.bias" => "attention.dense.bias",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "ffn_norm.bias" => "post_attention_layernorm.bias",
                "ffn_up.weight" => "mlp.dense_h_to_4h.weight",
                "ffn_up.bias" => "mlp.dense_h_to_4h.bias",
                "ffn_down.weight" => "mlp.dense_4h_to_h.weight",
                "ffn_down.bias" => "mlp.dense_4h_to_h.bias",
                _ => return None,
            };
            format!("transformer.layers.{layer}.{hf}")
        }
    })
}
