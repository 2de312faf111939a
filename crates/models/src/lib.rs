//! Model families: each binds the tensors of a model file to its forward pass.
//!
//! A [`Model`] is immutable and shared; the state of one sequence (its KV cache and working
//! buffers) lives in a [`Sequence`], so several sequences can run on one model.

mod attention;
pub mod baichuan;
pub mod chatglm;
mod driver;
pub mod gemma;
pub mod glm;
pub mod gpt2;
mod hf;
pub mod llama;
mod moe;
mod parallel;
pub mod phi3;
pub mod qwen;
mod state;
mod weights;

use baimo_formats::{FormatError, Gguf, HfFolder};
use baimo_kernels::GgmlType;
use baimo_threads::ThreadPool;
use driver::Pass;

pub use state::{KvCache, KvPrecision};
pub use weights::Weight;

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last token's (generation).
    Last,
    /// One row per token (perplexity, scoring).
    All,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("unknown model architecture {0:?} (baimo runs: {archs})", archs = supported_architectures().join(", "))]
    UnknownArchitecture(String),
    #[error("unknown model_type {0:?} in config.json (baimo runs: {types})", types = supported_model_types().join(", "))]
    UnknownModelType(String),
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {tensor:?} has shape {found}, expected {expected}")]
    ShapeMismatch { tensor: String, expected: String, found: String },
    #[error("{0}")]
    Shape(String),
    #[error("tensor {tensor:?} has type {dtype}, which baimo cannot compute with")]
    UnsupportedType { tensor: String, dtype: String },
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    #[error("unsupported model feature: {0}")]
    Unsupported(String),
    #[error("token id {token} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange { token: u32, vocab_size: usize },
    #[error("the context is full: {needed} positions needed, {max} available")]
    ContextFull { needed: usize, max: usize },
}

/// How a family's files are read: its names in GGUF (`general.architecture`) and in Hugging
/// Face `config.json` (`model_type`), and the loaders. The one place a family is registered: a
/// new family computed by an existing pass is its own file plus one line here.
struct Family {
    gguf: &'static [&'static str],
    hf: &'static [&'static str],
    from_gguf: Option<GgufLoader>,
    from_hf: Option<HfLoader>,
}

type GgufLoader = fn(&Gguf) -> Result<Model, ModelError>;
type HfLoader = fn(&HfFolder, Option<GgmlType>) -> Result<Model, ModelError>;

fn llama_gguf(g: &Gguf) -> Result<Model, ModelError> {
    Ok(Model::Llama(llama::Llama::from_gguf(g)?))
}

const FAMILIES: &[Family] = &[
    // LLaMA and the decoders written like it: Mistral (sliding window), Mixtral and the Qwen
    // mixtures (experts), Qwen2/3; Mistral and Mixtral GGUFs say `llama`.
    Family {
        gguf: &["llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe"],
        hf: &["llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"],
        from_gguf: Some(llama_gguf),
        from_hf: Some(|f, q| Ok(Model::Llama(llama::Llama::from_hf(f, q)?))),
    },
    Family {
        gguf: &["qwen"],
        hf: &["qwen"],
        from_gguf: Some(llama_gguf),
        from_hf: Some(|f, q| Ok(Model::Llama(qwen::from_hf(f, q)?))),
    },
    Family {
        gguf: &["baichuan"],
        hf: &["baichuan"],
        from_gguf: Some(llama_gguf),
        from_hf: Some(|f, q| Ok(Model::Llama(baichuan::from_hf(f, q)?))),
    },
    Family {
        gguf: &["phi3"],
        hf: &["phi3"],
        from_gguf: Some(llama_gguf),
        from_hf: Some(|f, q| Ok(Model::Llama(phi3::from_hf(f, q)?))),
    },
    Family {
        gguf: &["gemma2", "gemma3"],
        hf: &["gemma2", "gemma3_text"],
        from_gguf: Some(llama_gguf),
        from_hf: Some(|f, q| Ok(Model::Llama(gemma::from_hf(f, q)?))),
    },
    // ChatGLM-6B (GLM's own pass) and ChatGLM2/3, GLM-4 (the LLaMA pass) share `chatglm`.
    Family {
        gguf: &["chatglm"],
        hf: &["chatglm", "glm"],
        from_gguf: Some(llama_gguf),
        from_hf: Some(|f, q| {
            if chatglm::is_glm_v1(&f.config) {
                Ok(Model::Glm(glm::Glm::from_hf(f, q)?))
            } else {
                Ok(Model::Llama(chatglm::from_hf(f, q)?))
            }
        }),
    },
    Family {
        gguf: &["gpt2"],
        hf: &["gpt2"],
        from_gguf: Some(|g| Ok(Model::Gpt2(gpt2::Gpt2::from_gguf(g)?))),
        from_hf: Some(|f, q| Ok(Model::Gpt2(gpt2::Gpt2::from_hf(f, q)?))),
    },
];

/// `general.architecture` values baimo can run from GGUF.
pub fn supported_architectures() -> Vec<&'static str> {
    FAMILIES.iter().filter(|f| f.from_gguf.is_some()).flat_map(|f| f.gguf.iter().copied()).collect()
}

/// Hugging Face `model_type` values baimo can run from a model folder.
pub fn supported_model_types() -> Vec<&'static str> {
    FAMILIES.iter().filter(|f| f.from_hf.is_some()).flat_map(|f| f.hf.iter().copied()).collect()
}

/// Which order of floating-point roundings a forward pass follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arithmetic {
    /// llama.cpp's own order of every rounding where baimo reproduces it (the default): on
    /// AVX-512 VNNI, for batches of fewer than 64 tokens (every decoding step), the logits are
    /// llama.cpp's bit for bit. Larger batches take the fast kernels either way.
    #[default]
    LlamaCpp,
    /// baimo's fastest kernels everywhere: integer sums as llama.cpp's, float sums in another
    /// order. Logits stay within a few tenths of llama.cpp's, but where two tokens are nearly
    /// tied greedy decoding may pick the other one sooner than with `LlamaCpp`.
    Fast,
}

/// `$body` with `$m` bound to the model's pass, whichever it is (each implements
/// `driver::Pass`).
macro_rules! each_pass {
    ($model:expr, $m:ident => $body:expr) => {
        match $model {
            Model::Llama($m) => $body,
            Model::Gpt2($m) => $body,
            Model::Glm($m) => $body,
        }
    };
}

/// A loaded model of any supported family: one variant per forward pass (most families are
/// computed by the LLaMA pass).
pub enum Model {
    Llama(llama::Llama),
    Gpt2(gpt2::Gpt2),
    Glm(glm::Glm),
}

/// The special tokens of GLM's blank infilling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfillTokens {
    /// `[MASK]`: a short span in the text.
    pub mask: u32,
    /// `[gMASK]`: a long generation at the end.
    pub gmask: u32,
    /// `<sop>`: the span starts.
    pub sop: u32,
    /// `<eop>`: the span ends.
    pub eop: u32,
}

/// Facts about a loaded model that callers need without knowing its family.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub architecture: String,
    pub vocab_size: usize,
    pub context_length: usize,
    pub n_layers: usize,
    pub hidden_size: usize,
    /// Bytes of weight data the forward pass uses (what the model holds in memory).
    pub weight_bytes: usize,
    /// Bytes of weight data one decoding step reads: `weight_bytes` but for mixtures of
    /// experts, which read only the experts each token is routed to.
    pub active_weight_bytes: usize,
}

enum Scratch {
    Llama(llama::Scratch),
    Gpt2(gpt2::Scratch),
    Glm(glm::Scratch),
}

/// One sequence's state: its KV cache and the buffers its forward passes work in.
pub struct Sequence {
    pub kv: KvCache,
    /// The arithmetic of this sequence's forward passes.
    pub arithmetic: Arithmetic,
    scratch: Scratch,
}

impl Sequence {
    /// Positions processed so far.
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }
}

/// Tokens processed per pass of the layer loop when a prompt is read: larger batches reuse each
/// weight row for more tokens; the buffers grow with it.
pub const DEFAULT_BATCH: usize = 64;

impl Model {
    pub fn from_gguf(gguf: &Gguf) -> Result<Model, ModelError> {
        let arch = gguf.get_str("general.architecture")?;
        match FAMILIES.iter().find(|f| f.gguf.contains(&arch)).and_then(|f| f.from_gguf) {
            Some(load) => load(gguf),
            None => Err(ModelError::UnknownArchitecture(arch.into())),
        }
    }

    /// From a Hugging Face model folder; `quantize` encodes the float matrices in that type at
    /// load time (Q8_0, Q4_0, Q4_K, ...).
    pub fn from_hf(folder: &HfFolder, quantize: Option<GgmlType>) -> Result<Model, ModelError> {
        let model_type = folder.config.get("model_type").and_then(|v| v.as_str()).unwrap_or_default();
        match FAMILIES.iter().find(|f| f.hf.contains(&model_type)).and_then(|f| f.from_hf) {
            Some(load) => load(folder, quantize),
            None => Err(ModelError::UnknownModelType(model_type.into())),
        }
    }

    pub fn info(&self) -> ModelInfo {
        each_pass!(self, m => m.info())
    }

    /// One decoding step for several sequences at once (continuous batching): `tokens[i]` is
    /// the next token of `seqs[i]`. Returns the logits, one row of `vocab_size` per sequence,
    /// as each sequence would get them alone (every family decodes in batches through the one
    /// driver, `driver.rs`).
    pub fn decode_batch(
        &self,
        pool: &ThreadPool,
        seqs: &mut [&mut Sequence],
        tokens: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        each_pass!(self, m => driver::decode(m, pool, seqs, tokens))
    }

    /// Whether the cached state of a prompt's first tokens stays valid when other tokens follow
    /// them (true for causal models; GLM's context attends both ways).
    pub fn causal_prefix(&self) -> bool {
        each_pass!(self, m => m.causal_prefix())
    }

    /// Whether a prompt read in several `forward` calls whose lengths are multiples of
    /// [`DEFAULT_BATCH`] (the last one at least [`DEFAULT_BATCH`] long, unless it is the only
    /// one) gets exactly the state one call gives it. Not for GLM (its context attends both
    /// ways) nor for dynamic NTK scaling (Qwen v1 takes the base from the first call's length).
    pub fn reads_prompt_in_pieces(&self) -> bool {
        each_pass!(self, m => m.reads_prompt_in_pieces())
    }

    /// GLM's blank-infilling tokens, for the models that have them.
    pub fn infill_tokens(&self) -> Option<InfillTokens> {
        each_pass!(self, m => m.infill_tokens())
    }

    /// State for a new sequence of at most `max_len` positions.
    pub fn new_sequence(&self, max_len: usize) -> Sequence {
        each_pass!(self, m => driver::new_sequence(m, max_len, DEFAULT_BATCH))
    }

    /// Runs `tokens` at the sequence's next positions; returns the logits asked for (rows of
    /// `vocab_size`).
    pub fn forward<'s>(
        &self,
        pool: &ThreadPool,
        seq: &'s mut Sequence,
        tokens: &[u32],
        want: LogitsFor,
    ) -> Result<&'s [f32], ModelError> {
        each_pass!(self, m => driver::forward(m, pool, seq, tokens, want))
    }
}
