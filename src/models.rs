//! `baimo pull MODEL` and `baimo list`.

use anyhow::{Context, Result};
use baimo_hub::{Fetcher, find_known, known_models, known_names_summary};

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// A known model name.
    model: String,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {}

pub fn pull(args: PullArgs) -> Result<()> {
    let known = find_known(&args.model)
        .with_context(|| format!("unknown model {:?} (known: {})", args.model, known_names_summary()))?;
    let path = Fetcher::new().fetch(known)?;
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
