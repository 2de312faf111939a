//! GPT-2 (Radford et al. 2019), the open root of the GPT line.
//!
//! Learned absolute positions and pre-LayerNorm blocks:
//! ```text
//! x = wte[token] + wpe[position]
//! h = x + W_o · Attn(W_qkv · LN₁(x) + b_qkv) + b_o
//! x = h + W_down · gelu(W_up · LN₂(h) + b_up) + b_down
//! ```
//! then a final LayerNorm and the output projection tied to `wte`. Hugging Face stores the
//! projections as `Conv1D` (`[in, out]`): they are transposed once at load time.
//!
//! Reference: transformers `modeling_gpt2.py`; llama.cpp `build_gpt2`.

use baimo_formats::{Gguf, HfFolder};
use baimo_kernels::GgmlType;
use baimo_kernels::ops::{RopeStyle, gelu, layer_norm};
use baimo_threads::{SharedMut, ThreadPool};

use crate::attention::{Heads, MAX_HEAD_DIM};
use crate::driver::{Batch, Pass};
use crate::hf::{HfSource, JsonConfig};
use crate::parallel::{SharedActs, Store, fill_rows, matmul, needs, requantize};
use crate::state::{Activations, KvCache, KvPrecision};
use crate::weights::{GgufTensors, TensorSource, Weight};
use crate::{ModelError, ModelInfo};

/// Hyper-parameters, named as in Hugging Face `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: usize,
    pub n_positions: usize,
    pub vocab_size: usize,
    pub layer_norm_epsilon: f32,
}

impl Config {
    fn from_hf(json: &serde_json::Value) -> Result<Config, ModelError> {
        let j = JsonConfig { json };
        if let Some(act) = j.str("activation_function")
            && !matches!(act, "gelu_new" | "gelu_pytorch_tanh")
        {
            return Err(ModelError::Unsupported(format!("GPT-2 activation {act:?}")));
        }
        for flag in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"] {
            if j.bool_or(flag, false)? {
                return Err(ModelError::Unsupported(format!("GPT-2 with {flag}")));
            }
        }
        if !j.bool_or("scale_attn_weights", true)? {
            return Err(ModelError::Unsupported("GPT-2 without scaled attention".into()));
        }
        let n_embd = j.usize("n_embd")?;
        let config = Config {
            n_embd,
            n_layer: j.usize("n_layer")?,
            n_head: j.usize("n_head")?,
            n_inner: j.usize_or("n_inner", 4 * n_embd)?,
            n_positions: j.usize("n_positions")?,
            vocab_size: j.usize("vocab_size")?,
            layer_norm_epsilon: j.f32_or("layer_norm_epsilon", 1e-5)?,
        };
        config.validate()?;
        Ok(config)
    }

    fn from_gguf(gguf: &Gguf) -> Result<Config, ModelError> {
        let config = Config {
            n_embd: gguf.get_usize("gpt2.embedding_length")?,
            n_layer: gguf.get_usize("gpt2.block_count")?,
            n_head: gguf.get_usize("gpt2.attention.head_count")?,
            n_inner: gguf.get_usize("gpt2.feed_forward_length")?,
            n_positions: gguf.get_usize("gpt2.context_length")?,
            vocab_size: 0, // from the embedding's shape
            layer_norm_epsilon: gguf.get_f32("gpt2.attention.layer_norm_epsilon")?,
        };
        Ok(config)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if [self.n_embd, self.n_layer, self.n_head, self.n_inner, self.n_positions].contains(&0) {
            return bad("zero width, depth, heads, inner size or positions".into());
        }
        if !self.n_embd.is_multiple_of(self.n_head) || self.n_embd / self.n_head > MAX_HEAD_DIM {
            return bad(format!("{} dimensions over {} heads", self.n_embd, self.n_head));
        }
        if self.n_embd > 1 << 16 || self.n_inner > 1 << 18 || self.n_positions > 1 << 24 {
            return bad("sizes too large".into());
        }
        if !(self.layer_norm_epsilon >= 0.0 && self.layer_norm_epsilon.is_finite()) {
            return bad("layer_norm_epsilon".into());
        }
        Ok(())
    }

    fn heads(&self) -> Heads {
        Heads {
            n_heads: self.n_head,
            n_kv_heads: self.n_head,
            head_dim: self.n_embd / self.n_head,
            window: None,
            scale: None,
            softcap: None,
        }
    }
}

struct Layer {
    ln_1: (Vec<f32>, Vec<f32>), // (n_embd) weight, bias
    c_attn: Weight,             // (3·n_embd, n_embd)
    c_attn_bias: Vec<f32>,      // (3·n_embd)
    attn_proj: Weight,          // (n_embd, n_embd)
    attn_proj_bias: Vec<f32>,   // (n_embd)
    ln_2: (Vec<f32>, Vec<f32>), // (n_embd)
    c_fc: Weight,               // (n_inner, n_embd)
    c_fc_bias: Vec<f32>,        // (n_inner)
    mlp_proj: Weight,           // (n_embd, n_inner)
    mlp_proj_bias: Vec<f32>,    // (n_embd)
}

impl Gpt2 {
    /// `x[t] = wte[tokens[t]] + wpe[position(t)]` for every token.
    fn embed(
        &self,
        ctx: &baimo_threads::Ctx<'_>,
        x: &SharedMut<'_, f32>,
        tokens: &[u32],
        position: impl Fn(usize) -> usize + Sync,
    ) {
        let h = self.config.n_embd;
        ctx.for_each_chunk(tokens.len(), 1, |rows| {
            let mut wpe = vec![0f32; h];
            for t in rows {
                // SAFETY: row t of x is written by the thread that claimed it.
                let row = unsafe { x.slice_mut(t * h..(t + 1) * h) };
                self.wte.dequantize_row(tokens[t] as usize, row);
                self.wpe.dequantize_row(position(t), &mut wpe);
                row.iter_mut().zip(&wpe).for_each(|(a, &p)| *a += p);
            }
        });
    }
}

impl Layer {
    /// The rest of the block once attention has filled `attn_out`:
    /// `h = x + W_o · a + b_o;  x = h + W_down · gelu(W_up · LN₂(h) + b_up) + b_down`.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        ctx: &baimo_threads::Ctx<'_>,
        c: &Config,
        attn_out: &SharedActs<'_>,
        ffn_in: &SharedActs<'_>,
        ffn_mid: &SharedActs<'_>,
        n: usize,
        x: &SharedMut<'_, f32>,
    ) {
        let h = c.n_embd;
        requantize(ctx, attn_out, n);
        let bias = Some(&self.attn_proj_bias[..]);
        matmul(ctx, &[&self.attn_proj], attn_out, n, x, h, Store::Add { bias });
        // SAFETY: x is only read while ffn_in is written.
        let x_row = |t: usize| unsafe { &x.get()[t * h..(t + 1) * h] };
        fill_rows(ctx, ffn_in, n, |t, out| {
            layer_norm(x_row(t), &self.ln_2.0, &self.ln_2.1, c.layer_norm_epsilon, out)
        });
        let bias = Some(&self.c_fc_bias[..]);
        matmul(ctx, &[&self.c_fc], ffn_in, n, ffn_mid.f32_shared(), c.n_inner, Store::Write { bias });
        fill_rows(ctx, ffn_mid, n, |_, row| row.iter_mut().for_each(|v| *v = gelu(*v)));
        let bias = Some(&self.mlp_proj_bias[..]);
        matmul(ctx, &[&self.mlp_proj], ffn_mid, n, x, h, Store::Add { bias });
    }
}

pub struct Gpt2 {
    pub config: Config,
    wte: Weight, // (vocab, n_embd)
    wpe: Weight, // (n_positions, n_embd)
    layers: Vec<Layer>,
    ln_f: (Vec<f32>, Vec<f32>), // (n_embd)
    lm_head: Weight,            // (vocab, n_embd): wte
    kv_precision: KvPrecision,
}

/// Buffers of one sequence's forward pass, for up to `batch` tokens at a time.
pub struct Scratch {
    batch: usize,
    x: Vec<f32>,           // (batch, n_embd) the residual stream
    attn_in: Activations,  // (batch, n_embd) LN₁(x)
    qkv: Vec<f32>,         // (batch, 3·n_embd)
    attn_out: Activations, // (batch, n_embd)
    ffn_in: Activations,   // (batch, n_embd) LN₂(h)
    ffn_mid: Activations,  // (batch, n_inner)
    head_in: Activations,  // (batch, n_embd)
    logits: Vec<f32>,
}

/// The GGUF names of a layer's tensors, as llama.cpp's converter writes them.
const LAYER_TENSORS: [(&str, &str); 12] = [
    ("attn_norm.weight", "ln_1.weight"),
    ("attn_norm.bias", "ln_1.bias"),
    ("attn_qkv.weight", "attn.c_attn.weight"),
    ("attn_qkv.bias", "attn.c_attn.bias"),
    ("attn_output.weight", "attn.c_proj.weight"),
    ("attn_output.bias", "attn.c_proj.bias"),
    ("ffn_norm.weight", "ln_2.weight"),
    ("ffn_norm.bias", "ln_2.bias"),
    ("ffn_up.weight", "mlp.c_fc.weight"),
    ("ffn_up.bias", "mlp.c_fc.bias"),
    ("ffn_down.weight", "mlp.c_proj.weight"),
    ("ffn_down.bias", "mlp.c_proj.bias"),
];

impl Gpt2 {
    pub fn from_gguf(gguf: &Gguf) -> Result<Gpt2, ModelError> {
        let mut config = Config::from_gguf(gguf)?;
        let info = gguf
            .tensor_info("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        config.vocab_size = usize::try_from(info.ne.get(1).copied().unwrap_or(0))
            .map_err(|_| ModelError::InvalidConfig("vocabulary size".into()))?;
        config.validate()?;
        Gpt2::load(config, &GgufTensors { gguf })
    }

    pub fn from_hf(folder: &HfFolder, quantize: Option<GgmlType>) -> Result<Gpt2, ModelError> {
        let config = Config::from_hf(&folder.config)?;
        // Some checkpoints name tensors `transformer.h.0…`, others `h.0…`.
        let prefix = if folder.tensors.get("transformer.wte.weight").is_some() { "transformer." } else { "" };
        let rename = move |gguf_name: &str| -> Option<String> {
            Some(match gguf_name {
                "token_embd.weight" => format!("{prefix}wte.weight"),
                "position_embd.weight" => format!("{prefix}wpe.weight"),
                "output_norm.weight" => format!("{prefix}ln_f.weight"),
                "output_norm.bias" => format!("{prefix}ln_f.bias"),
                _ => {
                    let (layer, part) = gguf_name.strip_prefix("blk.")?.split_once('.')?;
                    let hf = LAYER_TENSORS.iter().find(|(g, _)| *g == part)?.1;
                    format!("{prefix}h.{layer}.{hf}")
                }
            })
        };
        let mut t = HfSource::new(&folder.tensors, &rename, quantize);
        let (h, inner) = (config.n_embd, config.n_inner);
        for i in 0..config.n_layer {
            for (gguf_part, n_in, n_out) in [
                ("attn_qkv.weight", h, 3 * h),
                ("attn_output.weight", h, h),
                ("ffn_up.weight", h, inner),
                ("ffn_down.weight", inner, h),
            ] {
                let name = format!("blk.{i}.{gguf_part}");
                let file_name = rename(&name).unwrap_or_default();
                t.insert_transposed(&name, &file_name, n_in, n_out)?;
            }
        }
        Gpt2::load(config, &t)
    }

    fn load(config: Config, t: &dyn TensorSource) -> Result<Gpt2, ModelError> {
        let c = &config;
        let (h, inner) = (c.n_embd, c.n_inner);
        let norm = |name: &str| -> Result<(Vec<f32>, Vec<f32>), ModelError> {
            Ok((t.vector(&format!("{name}.weight"), h)?, t.vector(&format!("{name}.bias"), h)?))
        };
        let wte = t.table("token_embd.weight", c.vocab_size, h)?;
        let lm_head = if t.has("output.weight") {
            t.matrix("output.weight", c.vocab_size, h)?
        } else {
            wte.clone().with_tiles()
        };
        let mut layers = Vec::with_capacity(c.n_layer.min(4096));
        for i in 0..c.n_layer {
            let name = |n: &str| format!("blk.{i}.{n}");
            layers.push(Layer {
                c_attn: t.matrix(&name("attn_qkv.weight"), 3 * h, h)?,
                c_attn_bias: t.vector(&name("attn_qkv.bias"), 3 * h)?,
                attn_proj: t.matrix(&name("attn_output.weight"), h, h)?,
                attn_proj_bias: t.vector(&name("attn_output.bias"), h)?,
                c_fc: t.matrix(&name("ffn_up.weight"), inner, h)?,
                c_fc_bias: t.vector(&name("ffn_up.bias"), inner)?,
                mlp_proj: t.matrix(&name("ffn_down.weight"), h, inner)?,
                mlp_proj_bias: t.vector(&name("ffn_down.bias"), h)?,
                ln_1: norm(&name("attn_norm"))?,
                ln_2: norm(&name("ffn_norm"))?,
            });
        }
        let all_f32 = [&wte, &lm_head]
            .into_iter()
            .chain(layers.iter().map(|l| &l.c_attn))
            .all(|w| w.dtype == GgmlType::F32);
        Ok(Gpt2 {
            wpe: t.table("position_embd.weight", c.n_positions, h)?,
            ln_f: norm("output_norm")?,
            kv_precision: if all_f32 { KvPrecision::F32 } else { KvPrecision::F16 },
            wte,
            lm_head,
            layers,
            config,
        })
    }

    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .flat_map(|l| [&l.c_attn, &l.attn_proj, &l.c_fc, &l.mlp_proj])
            .map(Weight::n_bytes)
            .sum();
        layers + self.lm_head.n_bytes()
    }

    pub fn new_cache(&self, max_len: usize) -> KvCache {
        KvCache::new(
            self.config.n_layer,
            self.config.n_head,
            self.config.n_embd,
            max_len.min(self.config.n_positions),
            self.kv_precision,
        )
    }

    pub fn new_scratch(&self, batch: usize) -> Scratch {
        let c = &self.config;
        let all = |f: fn(&Layer) -> &Weight| self.layers.iter().map(f).collect::<Vec<_>>();
        let acts = |n: usize, weights: Vec<&Weight>| {
            let (q32, q256) = needs(&weights);
            Activations::new(n, batch, q32, q256)
        };
        Scratch {
            batch,
            x: vec![0.0; batch * c.n_embd],
            attn_in: acts(c.n_embd, all(|l| &l.c_attn)),
            qkv: vec![0.0; batch * 3 * c.n_embd],
            attn_out: acts(c.n_embd, all(|l| &l.attn_proj)),
            ffn_in: acts(c.n_embd, all(|l| &l.c_fc)),
            ffn_mid: acts(c.n_inner, all(|l| &l.mlp_proj)),
            head_in: acts(c.n_embd, vec![&self.lm_head]),
            logits: Vec::new(),
        }
    }
}

/// The driver's side of the GPT-2 pass (see `driver.rs`).
impl Pass for Gpt2 {
    type Scratch = Scratch;
    type Row = ();

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn info(&self) -> ModelInfo {
        let c = &self.config;
        ModelInfo {
            architecture: "gpt2".into(),
            vocab_size: c.vocab_size,
            context_length: c.n_positions,
            n_layers: c.n_layer,
            hidden_size: c.n_embd,
            weight_bytes: self.weight_bytes(),
            active_weight_bytes: self.weight_bytes(),
        }
    }

    fn new_state(&self, max_len: usize, batch: usize) -> (KvCache, crate::Scratch) {
        (self.new_cache(max_len), crate::Scratch::Gpt2(self.new_scratch(batch)))
    }

    /// The learned position table ends at `n_positions`.
    fn max_positions(&self) -> usize {
        self.config.n_positions
    }

    fn scratch(s: &mut crate::Scratch) -> Option<&mut Scratch> {
        match s {
            crate::Scratch::Gpt2(s) => Some(s),
            _ => None,
        }
    }

    fn batch_size(s: &Scratch) -> usize {
        s.batch
    }

    fn logits(s: &mut Scratch) -> &mut Vec<f32> {
        &mut s.logits
    }

    fn begin(&self, _s: &mut Scratch, _len: usize, _tokens: &[u32]) {}

    fn step_row(&self, _s: &Scratch, _len: usize, _token: u32) {}

    fn run(&self, pool: &ThreadPool, s: &mut Scratch, b: &Batch<'_, ()>) {
        let c = &self.config;
        let heads = c.heads();
        let (n, h, vocab, eps) = (b.len(), c.n_embd, c.vocab_size, c.layer_norm_epsilon);
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
            // x = wte[token] + wpe[position]
            self.embed(ctx, &x, b.tokens, |t| b.position(t));
            // SAFETY (here and below): x is only read while other buffers are written.
            let x_row = |t: usize| unsafe { &x.get()[t * h..(t + 1) * h] };
            for (l, layer) in self.layers.iter().enumerate() {
                let rows = b.rows.layer(l);
                // q|k|v = W_qkv · LN₁(x) + b;  no rotation, keys and values to the cache
                fill_rows(ctx, &attn_in, n, |t, out| {
                    layer_norm(x_row(t), &layer.ln_1.0, &layer.ln_1.1, eps, out)
                });
                let bias = Some(&layer.c_attn_bias[..]);
                matmul(ctx, &[&layer.c_attn], &attn_in, n, &qkv, 3 * h, Store::Write { bias });
                rows.rope_and_cache(ctx, heads, &qkv, &[], RopeStyle::Neox);
                // h = x + W_o · softmax(q·Kᵀ/√d)·V + b_o
                rows.attend(ctx, heads, &qkv, b.accumulate, attn_out.f32_shared());
                layer.finish(ctx, c, &attn_out, &ffn_in, &ffn_mid, n, &x);
            }
            // logits = wte · LN_f(x), for the rows asked for
            let n_out = b.n_out();
            if n_out > 0 {
                fill_rows(ctx, &head_in, n_out, |t, out| {
                    layer_norm(x_row(b.first_out + t), &self.ln_f.0, &self.ln_f.1, eps, out)
                });
                matmul(ctx, &[&self.lm_head], &head_in, n_out, &logits, vocab, Store::Write { bias: None });
            }
        });
    }
}
