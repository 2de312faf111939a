//! `baimo tokenize [MODEL] TEXT`: token ids as one JSON array on stdout.

use std::io::{IsTerminal, Read};

use anyhow::{Context, Result};

use crate::common::{self, ModelOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// [MODEL] TEXT (TEXT from stdin when absent).
    #[arg(value_name = "MODEL_AND_TEXT", num_args = 0..=2)]
    positionals: Vec<String>,
    /// Parse special tokens written in the text (such as <|im_start|>) as those tokens.
    #[arg(long)]
    special: bool,
    /// Also print each token's text, one per line on stderr.
    #[arg(long)]
    show: bool,
    #[command(flatten)]
    model: ModelOptions,
}

pub fn main(args: Args) -> Result<()> {
    let (model_spec, text) = common::model_and(&args.positionals, "TEXT")?;
    let text = match text {
        Some(t) => t,
        None if !std::io::stdin().is_terminal() => {
            let mut t = String::new();
            std::io::stdin().read_to_string(&mut t).context("reading the text from stdin")?;
            t
        }
        None => anyhow::bail!("no text: give one after the model, or pipe it to stdin"),
    };
    // Only the tokenizer is needed, but loading the model validates the file the same way.
    let model = common::load_model(model_spec.as_deref(), &ModelOptions { quiet: true, ..args.model })?;
    let ids = model.tokenizer.encode(&text, args.special);
    println!("{}", serde_json::to_string(&ids)?);
    if args.show {
        for &id in &ids {
            let piece = String::from_utf8_lossy(&model.tokenizer.token_bytes(id, true)).into_owned();
            eprintln!("{id:>8} {piece:?}");
        }
    }
    Ok(())
}
