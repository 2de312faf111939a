//! `baimo perplexity [MODEL] FILE --ctx 512`

use std::io::Write;

use anyhow::{Context, Result};

use crate::common::{self, ModelOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// [MODEL] FILE: the text file to score.
    #[arg(value_name = "MODEL_AND_FILE", num_args = 1..=2, required = true)]
    positionals: Vec<String>,
    #[command(flatten)]
    model: ModelOptions,
}

pub fn main(args: Args) -> Result<()> {
    let (model_spec, file) = common::model_and(&args.positionals, "FILE")?;
    let file = file.context("no text file given")?;
    let text = std::fs::read(&file).with_context(|| format!("reading {file}"))?;
    let text = String::from_utf8_lossy(&text);
    let ctx = args.model.ctx.unwrap_or(512);
    let model = common::load_model(model_spec.as_deref(), &args.model)?;
    let pool = common::thread_pool(&args.model);
    let started = std::time::Instant::now();
    let quiet = args.model.quiet;
    let mut progress = |done: usize, total: usize, ppl: f64| {
        if !quiet {
            eprint!("[{done}/{total}] {ppl:.4}  ");
            let _ = std::io::stderr().flush();
        }
    };
    let result = baimo_engine::perplexity(&model, &pool, &text, ctx, args.model.arithmetic(), &mut progress)?;
    if !quiet {
        eprintln!();
        eprintln!(
            "{} tokens, {} chunks of {ctx}, {} scored, in {:.1} s",
            result.n_tokens,
            result.n_chunks,
            result.n_scored,
            started.elapsed().as_secs_f64()
        );
    }
    println!("± {:.5}", result.error);
    println!("PPL = {:.4}", result.ppl);
    Ok(())
}
