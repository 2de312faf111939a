//! baimo's one chat request and answer, and the two wire fronts that speak it.
//!
//! A request arrives as OpenAI's chat completion (`openai`) or as Anthropic's message
//! (`anthropic`); each front parses it once into a [`ChatRequest`] and writes the answer once
//! from an [`Answer`] or a stream of [`StreamEvent`]s. Between the two, a backend answers: the
//! local engine or a hosted provider (the gateway), behind the same interface, reading the same
//! fields, so a field reaches every backend or is refused by name.

pub mod answer;
pub mod anthropic;
pub mod openai;
pub mod types;

pub use answer::{Answer, Choice, ChoiceCollector};
pub use types::{
    ChatRequest, ChatResponse, FinishReason, Image, Message, RequestError, ResponseFormat, Role, StreamEvent,
    TokenLogprob, Tool, ToolCall, ToolChoice, Usage,
};
