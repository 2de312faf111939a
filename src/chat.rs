//! `baimo chat [MODEL]`: a conversation in the terminal, with line editing and history.
//! The cache keeps the conversation so far; each turn only reads what is new.

use std::io::Write;
use std::sync::atomic::Ordering;

use anyhow::Result;
use baimo_chat::ChatMessage;
use baimo_engine::{FinishReason, Session};
use rustyline::error::ReadlineError;

use crate::common::{self, CANCEL, ModelOptions, SamplingOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A GGUF path, a Hugging Face model folder, a known model name (default smollm2-135m), or a
    /// hub address: `owner/name`, `owner/name:QUANT`, `hf.co/owner/name[:QUANT]`, `owner/name/file.gguf`.
    model_spec: Option<String>,
    /// The system message the conversation starts with.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingOptions,
    #[command(flatten)]
    model: ModelOptions,
}

const HELP: &str = "/clear forgets the conversation, /system TEXT sets the system message, \
/exit (or Ctrl-D) leaves; Ctrl-C stops an answer";

/// What the user typed: a turn to answer, or a command that changes the conversation.
enum Input {
    Turn(String),
    Clear,
    System(Option<String>),
    Exit,
}

/// Reads lines until one is a turn or a command the caller must act on (help, mistyped
/// commands and empty lines are dealt with here; the messages are printed here too).
fn next_input(editor: &mut rustyline::DefaultEditor) -> Result<Input> {
    loop {
        let line = match editor.readline(">>> ") {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                eprintln!("(Ctrl-D or /exit to leave)");
                continue;
            }
            Err(ReadlineError::Eof) => return Ok(Input::Exit),
            Err(e) => return Err(e.into()),
        };
        let input = line.trim();
        if input.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(input);
        match input.split_once(' ').map_or((input, ""), |(c, rest)| (c, rest.trim())) {
            ("/exit" | "/quit" | "/bye", _) => return Ok(Input::Exit),
            ("/clear", _) => {
                eprintln!("(conversation cleared)");
                return Ok(Input::Clear);
            }
            ("/system", text) => {
                let system = (!text.is_empty()).then(|| text.to_string());
                eprintln!(
                    "(system message {}; conversation cleared)",
                    if system.is_some() { "set" } else { "removed" }
                );
                return Ok(Input::System(system));
            }
            ("/help" | "/?", _) => eprintln!("{HELP}"),
            // A word like "/foo" is a mistyped command; "/usr/lib/x" is text.
            (command, _) if command.len() > 1 && command.starts_with('/') && !command[1..].contains('/') => {
                eprintln!("unknown command {command}; {HELP}");
            }
            _ => return Ok(Input::Turn(input.to_string())),
        }
    }
}

pub fn main(args: Args) -> Result<()> {
    if let Some(hosted) = crate::hosted::find(args.model_spec.as_deref())? {
        return chat_hosted(&hosted, &args);
    }
    let model = common::load_model(args.model_spec.as_deref(), &args.model)?;
    let pool = common::thread_pool(&args.model);
    let mut session = Session::new(model.clone(), pool, common::context_len(&model, &args.model));
    session.set_arithmetic(args.model.arithmetic());
    let options = args.sampling.generate_options();
    let mut system = args.system.clone();
    let mut history: Vec<ChatMessage> = Vec::new();
    common::install_ctrlc();

    let mut editor = rustyline::DefaultEditor::new()?;
    eprintln!("chatting with {}: {HELP}", model.name);
    loop {
        let input = match next_input(&mut editor)? {
            Input::Exit => break,
            Input::Clear => {
                history.clear();
                session.clear();
                continue;
            }
            Input::System(text) => {
                system = text;
                history.clear();
                session.clear();
                continue;
            }
            Input::Turn(text) => text,
        };
        let input = input.as_str();
        history.push(ChatMessage::user(input));
        let mut messages: Vec<ChatMessage> = system.iter().map(|s| ChatMessage::system(s.clone())).collect();
        messages.extend(history.iter().cloned());
        let prompt = match model.chat_prompt(&messages) {
            Ok(p) => p,
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
                continue;
            }
        };
        CANCEL.store(false, Ordering::SeqCst);
        let mut stdout = std::io::stdout().lock();
        let result = session.generate(
            &prompt,
            &options,
            &mut |piece| {
                let _ = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush());
            },
            Some(&CANCEL),
        );
        let _ = writeln!(stdout);
        drop(stdout);
        match result {
            Ok(answer) => {
                if answer.finish_reason == FinishReason::Cancelled {
                    eprintln!("(stopped)");
                }
                history.push(ChatMessage::assistant(answer.text));
            }
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
                if matches!(e, baimo_engine::EngineError::PromptTooLong { .. }) {
                    eprintln!("(the conversation no longer fits in the context; /clear starts a new one)");
                }
            }
        }
        CANCEL.store(false, Ordering::SeqCst);
    }
    Ok(())
}

/// The conversation with a hosted model (a channel in the database serves the name): the same
/// commands, the history sent whole each turn.
fn chat_hosted(hosted: &crate::hosted::Hosted, args: &Args) -> Result<()> {
    use baimo_gateway::types::Role;
    let mut system = args.system.clone();
    let mut history: Vec<(Role, String)> = Vec::new();
    common::install_ctrlc();
    let mut editor = rustyline::DefaultEditor::new()?;
    eprintln!("chatting with {} (hosted): {HELP}", hosted.model);
    loop {
        let input = match next_input(&mut editor)? {
            Input::Exit => break,
            Input::Clear => {
                history.clear();
                continue;
            }
            Input::System(text) => {
                system = text;
                history.clear();
                continue;
            }
            Input::Turn(text) => text,
        };
        history.push((Role::User, input));
        CANCEL.store(false, Ordering::SeqCst);
        let messages = crate::hosted::messages(system.as_deref(), &history);
        let mut stdout = std::io::stdout().lock();
        let result = hosted.answer(messages, &args.sampling, &mut stdout);
        let _ = writeln!(stdout);
        drop(stdout);
        match result {
            Ok(answer) => {
                if answer.cancelled {
                    eprintln!("(stopped)");
                }
                history.push((Role::Assistant, answer.text));
            }
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
            }
        }
        CANCEL.store(false, Ordering::SeqCst);
    }
    Ok(())
}
