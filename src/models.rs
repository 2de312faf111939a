//! `baimo pull MODEL` and `baimo list`.

use anyhow::{Context, Result};
use baimo_hub::{Fetcher, known_models};

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// A known model name, or a hub address: `owner/name` (a model folder, or the Q4_K_M GGUF
    /// of a GGUF repository), `owner/name:QUANT`, `hf.co/owner/name[:QUANT]`,
    /// `owner/name/file.gguf`.
    model: String,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {}

pub fn pull(args: PullArgs) -> Result<()> {
    let path = Fetcher::new().resolve(&args.model).with_context(|| format!("model {:?}", args.model))?;
    println!("{}", path.display());
    Ok(())
}

pub fn list(_args: ListArgs) -> Result<()> {
    let fetcher = Fetcher::new();
    for model in known_models() {
        let state = match fetcher.cached_path(model) {
            Some(path) => format!("cached at {}", path.display()),
            None => "not downloaded".to_string(),
        };
        let default = if model.name == baimo_hub::DEFAULT_MODEL { " (default)" } else { "" };
        println!(
            "{:<22} {:>7.1} MB  {}{default}  [{state}]",
            model.name,
            model.size as f64 / 1e6,
            model.description
        );
    }
    Ok(())
}
