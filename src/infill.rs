//! `baimo infill`: GLM's blank infilling — fill each `[MASK]` of a text, or write on after
//! `[gMASK]` / the end.

use anyhow::Result;

use crate::common::{self, ModelOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// [MODEL] TEXT: a GLM model (ChatGLM-6B folder) and the text with `[MASK]` spans (or a
    /// `[gMASK]`, or neither, for a long generation at the end).
    #[arg(required = true, num_args = 1..=2, value_name = "[MODEL] TEXT")]
    positionals: Vec<String>,
    #[command(flatten)]
    model: ModelOptions,
    /// Most tokens per span.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 64)]
    max_tokens: usize,
    /// Print each span's token ids as JSON lines on stderr.
    #[arg(long)]
    show_tokens: bool,
}

pub fn main(args: Args) -> Result<()> {
    let (model_spec, text) = common::model_and(&args.positionals, "TEXT")?;
    let text = text.unwrap_or_default();
    let model = common::load_model(model_spec.as_deref(), &args.model)?;
    let pool = common::thread_pool(&args.model);
    let result = baimo_engine::infill(&model, &pool, &text, args.max_tokens)?;
    if args.show_tokens {
        for span in &result.spans {
            eprintln!(
                "{}",
                serde_json::json!({ "tokens": span.tokens, "text": span.text, "ended": span.ended })
            );
        }
    }
    println!("{}", result.text);
    Ok(())
}
