//! `baimo serve`: an OpenAI-compatible HTTP API for one model.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use baimo_server::App;

use crate::common::{self, ModelOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A GGUF path, a Hugging Face model folder, or a known model name (default smollm2-135m).
    model_spec: Option<String>,
    #[command(flatten)]
    model: ModelOptions,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests decoded together at most (continuous batching); later ones wait.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Finished conversations kept for the prefix cache (their KV caches), so the next turn reads
    /// only what is new (0: off).
    #[arg(long, default_value_t = 32)]
    cache_entries: usize,
    /// Memory the prefix cache may take, in MiB.
    #[arg(long, default_value_t = 1024)]
    cache_mib: usize,
    /// Requests allowed to wait for the engine; beyond, 429 with Retry-After (0: no limit).
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Accept only requests with this key (repeatable; `Authorization: Bearer` or `x-api-key`).
    /// Keys are kept as SHA-256 digests and compared in constant time. Also read, one per line,
    /// from the file named by --api-keys-file.
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    #[arg(long, value_name = "FILE")]
    api_keys_file: Option<std::path::PathBuf>,
    /// Largest max_tokens a request may ask for (default: the context's room).
    #[arg(long, value_name = "N")]
    max_tokens_limit: Option<usize>,
    /// Allow browsers on this origin to call the API (repeatable; `*` for any).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
}

pub fn main(args: Args) -> Result<()> {
    let model = common::load_model(args.model_spec.as_deref(), &args.model)?;
    let pool = common::thread_pool(&args.model);
    let context = common::context_len(&model, &args.model);
    // Requests may name the model as given on the command line, by its own name or by its
    // file or folder name.
    let mut names = vec![model.name.clone()];
    let spec = args.model_spec.clone().unwrap_or_else(|| baimo_hub::DEFAULT_MODEL.to_string());
    for alias in [
        spec.clone(),
        std::path::Path::new(&spec).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
    ] {
        if !alias.is_empty() && !names.contains(&alias) {
            names.push(alias);
        }
    }
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("listen address {}:{}", args.host, args.port))?;
    let config = baimo_server::WorkerConfig {
        context,
        max_active: args.parallel.clamp(1, 64),
        arithmetic: args.model.arithmetic.into(),
        cache_entries: args.cache_entries,
        cache_bytes: args.cache_mib.saturating_mul(1 << 20),
    };
    let mut keys = args.api_keys.clone();
    if let Some(file) = &args.api_keys_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        keys.extend(
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
        );
    }
    let limits = baimo_server::Limits {
        keys: baimo_server::ApiKeys::new(&keys),
        max_tokens: args.max_tokens_limit,
        queue: args.queue,
        cors_origins: args.cors_origins.clone(),
    };
    let app = Arc::new(App::new(model, pool, names.clone(), config, limits));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let quiet = args.model.quiet;
    runtime.block_on(baimo_server::serve(app, addr, |bound| {
        if !quiet {
            eprintln!("serving {} at http://{bound} (OpenAI API under /v1)", names.join(", "));
        } else {
            eprintln!("listening on http://{bound}");
        }
    }))?;
    Ok(())
}
