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
    };
    let app = Arc::new(App::new(model, pool, names.clone(), config));
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
