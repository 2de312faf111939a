//! What the subcommands share: finding and loading the model, the thread pool, sampling flags,
//! Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use baimo_engine::{GenerateOptions, LoadedModel, SamplingParams};
use baimo_hub::Fetcher;
use baimo_threads::ThreadPool;

/// Logs go to stderr: warnings, and the server's line per request (errors only when quiet;
/// `BAIMO_LOG` overrides, in `tracing`'s filter syntax). Colours only on a terminal: a log file
/// or journal gets plain text.
pub fn init_logging(quiet: bool) {
    use std::io::IsTerminal;
    let default = if quiet { "error" } else { "warn,baimo_server=info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAIMO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Options every command that runs a model takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelOptions {
    /// Threads to compute with (default: one per core).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Longest context (prompt + answer) in tokens (default: the model's own limit).
    #[arg(long = "ctx", value_name = "TOKENS")]
    pub ctx: Option<usize>,
    /// Print nothing on stderr but errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Rounding order of the computation: `llama-cpp` reproduces llama.cpp's (identical logits
    /// on AVX-512 VNNI for prompts under 64 tokens and every generated token); `fast` takes
    /// baimo's quickest kernels, whose results differ from llama.cpp's in the last bits
    /// [default: llama-cpp; for `serve`, fast (batches of requests run ~1.5× faster)].
    #[arg(long, value_enum)]
    pub arithmetic: Option<ArithmeticArg>,
    /// Quantize a Hugging Face folder's float weights at load time (a GGUF file is used as it is).
    #[arg(long, value_enum, value_name = "TYPE")]
    pub quantize: Option<QuantizeArg>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizeArg {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_k")]
    Q4K,
}

impl From<QuantizeArg> for baimo_kernels::GgmlType {
    fn from(q: QuantizeArg) -> Self {
        match q {
            QuantizeArg::Q8_0 => baimo_kernels::GgmlType::Q8_0,
            QuantizeArg::Q4_0 => baimo_kernels::GgmlType::Q4_0,
            QuantizeArg::Q4K => baimo_kernels::GgmlType::Q4_K,
        }
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArithmeticArg {
    LlamaCpp,
    Fast,
}

impl ModelOptions {
    /// The arithmetic asked for, else llama.cpp's (what every command but `serve` defaults to).
    pub fn arithmetic(&self) -> baimo_models::Arithmetic {
        self.arithmetic.unwrap_or(ArithmeticArg::LlamaCpp).into()
    }
}

impl From<ArithmeticArg> for baimo_models::Arithmetic {
    fn from(a: ArithmeticArg) -> Self {
        match a {
            ArithmeticArg::LlamaCpp => baimo_models::Arithmetic::LlamaCpp,
            ArithmeticArg::Fast => baimo_models::Arithmetic::Fast,
        }
    }
}

/// `[MODEL] THING`: the model is optional, so one positional is the thing and two are both.
pub fn model_and(positionals: &[String], what: &str) -> Result<(Option<String>, Option<String>)> {
    match positionals {
        [] => Ok((None, None)),
        [thing] => Ok((None, Some(thing.clone()))),
        [model, thing] => Ok((Some(model.clone()), Some(thing.clone()))),
        _ => anyhow::bail!("expected [MODEL] {what}, got {} arguments (quote the {what})", positionals.len()),
    }
}

/// A GGUF path, a Hugging Face model folder, or a known model name fetched into the cache on
/// first use.
pub fn resolve_model(spec: Option<&str>, quiet: bool) -> Result<PathBuf> {
    let spec = spec.unwrap_or(baimo_hub::DEFAULT_MODEL);
    let fetcher = Fetcher::new().quiet(quiet);
    fetcher.resolve(spec).with_context(|| format!("model {spec:?}"))
}

pub fn load_model(spec: Option<&str>, opts: &ModelOptions) -> Result<Arc<LoadedModel>> {
    let path = resolve_model(spec, opts.quiet)?;
    let started = Instant::now();
    let model = LoadedModel::load_with(&path, opts.quantize.map(Into::into))
        .with_context(|| format!("loading {}", path.display()))?;
    if !opts.quiet {
        eprintln!(
            "loaded {} ({}, {} layers, {:.0} MB of weights) in {:.2} s",
            model.name,
            model.info.architecture,
            model.info.n_layers,
            model.info.weight_bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(Arc::new(model))
}

pub fn thread_pool(opts: &ModelOptions) -> Arc<ThreadPool> {
    Arc::new(match opts.threads {
        Some(n) => ThreadPool::new(n.max(1)),
        None => ThreadPool::with_available_parallelism(),
    })
}

/// The context a session gets: the user's `--ctx`, else the model's limit.
pub fn context_len(model: &LoadedModel, opts: &ModelOptions) -> usize {
    opts.ctx.unwrap_or(model.info.context_length).min(model.info.context_length)
}

#[derive(clap::Args, Debug, Clone)]
pub struct SamplingOptions {
    /// Randomness: 0 always takes the most likely token.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample from the K most likely tokens only (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Sample from the smallest set of tokens whose probability reaches P (1: all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalize tokens seen in the last --repeat-last-n tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Seed for sampling: the same seed gives the same answer (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 512)]
    pub max_tokens: usize,
    /// Stop when this text appears (may be given several times).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl SamplingOptions {
    pub fn generate_options(&self) -> GenerateOptions {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        GenerateOptions {
            logprobs: None,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                seed,
            },
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            stop_at_eog: true,
            logit_bias: Vec::new(),
            shown_tokens: Vec::new(),
            grammar: None,
        }
    }
}

/// Set by Ctrl-C; generation checks it between tokens.
pub static CANCEL: AtomicBool = AtomicBool::new(false);

/// The first Ctrl-C stops the current answer; a second one within a generation ends the
/// program, for when the first went unnoticed.
pub fn install_ctrlc() {
    let _ = ctrlc::set_handler(|| {
        if CANCEL.swap(true, Ordering::SeqCst) {
            eprintln!();
            std::process::exit(130);
        }
    });
}
