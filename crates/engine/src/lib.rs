//! Generation on top of the models: a model file opened with its tokenizer and chat template,
//! sampling, stop conditions, text streamed piece by piece, perplexity, and the engine thread that
//! decodes concurrent requests together (`worker`: continuous batching and the prefix cache).

pub mod chat;
pub mod constrain;
pub mod infill;
mod loaded;
pub mod perplexity;
pub mod sampler;
mod session;
pub mod stop;
mod stream;
pub mod tools;
pub mod worker;

pub use chat::{EngineLimits, PrepareError, PreparedChat, ToolPlan};
pub use infill::{Infill, InfillSpan, infill, infill_span};
pub use loaded::{FALLBACK_CHAT_TEMPLATE, LoadedModel, builtin_format};
pub use perplexity::{Perplexity, perplexity};
pub use sampler::{Sampler, SamplingParams};
pub use session::{FinishReason, GenerateOptions, Generation, Session};
pub use stream::{StreamEnd, TokenLogprob, TokenStream};
pub use worker::{Counters, Event, Job, Worker, WorkerConfig};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Format(#[from] baimo_formats::FormatError),
    #[error(transparent)]
    Model(#[from] baimo_models::ModelError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] baimo_tokenizer::TokenizerError),
    #[error("chat template: {0}")]
    Chat(#[from] baimo_chat::ChatError),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens; the context holds {max}")]
    PromptTooLong { prompt: usize, max: usize },
    #[error("{0}")]
    Mismatch(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
