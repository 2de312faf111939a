//! `baimo run [MODEL] PROMPT`

use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use baimo_chat::ChatMessage;
use baimo_engine::{FinishReason, Session};

use crate::common::{self, CANCEL, ModelOptions, SamplingOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// [MODEL] PROMPT. MODEL is a GGUF path or a known name (default smollm2-135m); without
    /// PROMPT it is read from stdin.
    #[arg(value_name = "MODEL_AND_PROMPT", num_args = 0..=2)]
    positionals: Vec<String>,
    /// Feed the prompt as it is (special tokens parsed), without the chat template.
    #[arg(long)]
    raw: bool,
    /// A system message to put before the prompt (chat template only).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingOptions,
    #[command(flatten)]
    model: ModelOptions,
}

pub fn main(args: Args) -> Result<()> {
    let (mut model_spec, mut prompt) = common::model_and(&args.positionals, "PROMPT")?;
    // `echo text | baimo run MODEL`: one word that names a model, with the prompt on stdin.
    if let (None, Some(only)) = (&model_spec, &prompt)
        && !std::io::stdin().is_terminal()
        && names_a_model(only)?
    {
        model_spec = prompt.take();
    }
    let prompt = match prompt {
        Some(p) => p,
        None if !std::io::stdin().is_terminal() => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading the prompt from stdin")?;
            text
        }
        None => anyhow::bail!("no prompt: give one after the model, or pipe it to stdin"),
    };
    if let Some(hosted) = crate::hosted::find(model_spec.as_deref())? {
        return run_hosted(&hosted, &args, prompt);
    }
    let model = common::load_model(model_spec.as_deref(), &args.model)?;
    let pool = common::thread_pool(&args.model);
    let tokens = if args.raw {
        model.tokenize_prompt(&prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::system(system.clone()));
        }
        messages.push(ChatMessage::user(prompt));
        model.chat_prompt(&messages)?
    };
    let mut session = Session::new(model.clone(), pool, common::context_len(&model, &args.model));
    session.set_arithmetic(args.model.arithmetic());
    common::install_ctrlc();
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let result = session.generate(
        &tokens,
        &args.sampling.generate_options(),
        &mut |piece| {
            if write_error.is_none() {
                // A closed pipe (`baimo run … | head`) ends the output, not the program with a panic.
                if let Err(e) = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush()) {
                    write_error = Some(e);
                    CANCEL.store(true, Ordering::SeqCst);
                }
            }
        },
        Some(&CANCEL),
    )?;
    if write_error.is_none() {
        let _ = writeln!(stdout);
    }
    if !args.model.quiet {
        let note = match result.finish_reason {
            FinishReason::Length => " (stopped at the token limit)",
            FinishReason::Cancelled => " (interrupted)",
            FinishReason::Stop => "",
        };
        eprintln!(
            "[prompt {} tokens at {:.1} tok/s, answer {} tokens at {:.1} tok/s, first token after {:.0} ms{note}]",
            result.prompt_tokens,
            result.prompt_tokens_per_second(),
            result.tokens.len(),
            result.tokens_per_second(),
            result.time_to_first_token.as_secs_f64() * 1e3,
        );
    }
    match write_error {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

/// Whether `word` is a model file or folder, a known model or a hosted one.
fn names_a_model(word: &str) -> Result<bool> {
    Ok(std::path::Path::new(word).exists()
        || baimo_hub::find_known(word).is_some()
        || crate::hosted::find(Some(word))?.is_some())
}

/// The prompt answered by a hosted model (a channel in the database serves the name).
fn run_hosted(hosted: &crate::hosted::Hosted, args: &Args, prompt: String) -> Result<()> {
    if args.raw {
        anyhow::bail!("--raw needs a local model: hosted models take chat messages");
    }
    let messages =
        crate::hosted::messages(args.system.as_deref(), &[(baimo_gateway::types::Role::User, prompt)]);
    common::install_ctrlc();
    let mut stdout = std::io::stdout().lock();
    let answer = hosted.answer(messages, &args.sampling, &mut stdout)?;
    let _ = writeln!(stdout);
    if !args.model.quiet {
        eprintln!("{}", hosted.summary(&answer));
    }
    Ok(())
}
