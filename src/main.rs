//! `baimo`: run, chat with, measure and serve large language models.
//!
//! stdout carries only what was asked for (the model's text, token ids, figures); logs and
//! progress go to stderr.

mod bench;
mod chat;
mod common;
mod hosted;
mod infill;
mod mock_provider;
mod models;
mod perplexity;
mod quantize;
mod records;
mod run;
mod serve;
mod tokenize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "baimo", version, about = "百模: one program for the common large language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt, streaming the text (the model's chat template is applied).
    Run(run::Args),
    /// Talk with a model: a multi-turn chat in the terminal.
    Chat(chat::Args),
    /// Print the token ids of a text as a JSON array.
    Tokenize(tokenize::Args),
    /// Measure prompt-processing and generation speed (tokens/s).
    Bench(bench::Args),
    /// Perplexity of a text file, computed as llama.cpp's llama-perplexity does.
    Perplexity(perplexity::Args),
    /// Fill the [MASK] spans of a text with a GLM model (blank infilling).
    Infill(infill::Args),
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(Box<serve::Args>),
    /// Download a model into the cache (a known name or a hub address).
    Pull(models::PullArgs),
    /// List the models in the cache: size, architecture, parameters, quantization.
    List(models::ListArgs),
    /// Show a model's metadata: architecture, parameters, quantization, context, template...
    Show(models::ShowArgs),
    /// Remove models from the cache.
    Rm(models::RmArgs),
    /// Write a GGUF with its weight matrices in another type (F16, Q8_0, Q4_0, Q4_K...).
    Quantize(quantize::Args),
    /// The models a running `baimo serve` has, and which are loaded.
    Ps(models::PsArgs),
    /// Imitate a hosted provider's API on loopback (for demos and tests).
    MockProvider(mock_provider::Args),
    /// Client API keys, with quotas and per-minute limits, for `baimo serve`.
    Keys(records::KeysArgs),
    /// Upstream channels (hosted providers' accounts) for `baimo serve`.
    Channels(records::ChannelsArgs),
    /// Usage records of the requests `baimo serve` answered.
    Usage(records::UsageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve -q` prints errors only (its request lines too are left out).
    common::init_logging(matches!(&cli.command, Command::Serve(args) if args.quiet()));
    let result = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Chat(args) => chat::main(args),
        Command::Tokenize(args) => tokenize::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Perplexity(args) => perplexity::main(args),
        Command::Infill(args) => infill::main(args),
        Command::Serve(args) => serve::main(*args),
        Command::Pull(args) => models::pull(args),
        Command::List(args) => models::list(args),
        Command::Show(args) => models::show(args),
        Command::Rm(args) => models::rm(args),
        Command::Quantize(args) => quantize::main(args),
        Command::Ps(args) => models::ps(args),
        Command::MockProvider(args) => mock_provider::main(args),
        Command::Keys(args) => records::keys(args),
        Command::Channels(args) => records::channels(args),
        Command::Usage(args) => records::usage(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the error and its causes, outermost first.
            let chain: Vec<String> = error.chain().map(|e| e.to_string()).collect();
            eprintln!("error: {}", dedup_chain(&chain).join(": "));
            ExitCode::FAILURE
        }
    }
}

/// Drops causes whose text the previous message already includes.
fn dedup_chain(chain: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for message in chain {
        if out.last().is_none_or(|prev| !prev.contains(message.as_str())) {
            out.push(message.clone());
        }
    }
    out
}
