//! One module per provider protocol: how to build its request from a [`ChatRequest`], read its
//! answer, translate its stream event by event, and classify its errors.

use reqwest::header::HeaderMap;

use crate::channel::{Channel, ProviderKind};
use crate::error::UpstreamError;
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, StreamEvent};

pub mod anthropic;
pub mod openai;

/// A provider's wire protocol over HTTP with server-sent events.
pub trait Protocol: Send + Sync {
    fn name(&self) -> &'static str;

    /// The upstream request for `req` (sent to `channel`, as `model`).
    fn request(
        &self,
        http: &reqwest::Client,
        channel: &Channel,
        model: &str,
        req: &ChatRequest,
        stream: bool,
    ) -> reqwest::RequestBuilder;

    /// A successful whole answer. Some providers report errors inside a 200: those come back as
    /// errors here.
    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError>;

    /// An unsuccessful HTTP answer.
    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError;

    /// A fresh translator for one stream.
    fn stream(&self) -> Box<dyn StreamTranslator>;
}

/// Turns a provider's stream events into [`StreamEvent`]s, keeping what it must between events
/// (tool call indices, usage that arrives in pieces).
pub trait StreamTranslator: Send {
    /// Translates one event; `Ok(true)` when it was the last.
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError>;
}

pub fn protocol(kind: ProviderKind) -> &'static dyn Protocol {
    match kind {
        ProviderKind::OpenAi => &openai::OpenAi,
        ProviderKind::Anthropic => &anthropic::Anthropic,
    }
}

/// Reads a JSON body, or says the provider sent something unreadable.
pub(crate) fn json_body(provider: &'static str, body: &[u8]) -> Result<serde_json::Value, UpstreamError> {
    serde_json::from_slice(body).map_err(|e| {
        UpstreamError::new(provider, crate::error::ErrorKind::Protocol, format!("unreadable answer: {e}"))
    })
}
