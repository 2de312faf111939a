//! Anthropic's legacy Text Completions API (Claude 1 and 2, 2023): `POST /v1/complete` with
//! `x-api-key` and `anthropic-version`, the whole conversation as one `prompt` string of
//! `\n\nHuman:` / `\n\nAssistant:` turns (system text before the first Human turn) ending with an
//! open Assistant turn, `max_tokens_to_sample`; the answer is `{type:"completion", completion,
//! stop_reason}` with no usage, and a stream is `completion` events each carrying a text piece,
//! the last one with a `stop_reason`. No tools. Errors use the Messages API's envelope.

use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::anthropic::{API_VERSION, Anthropic, classify_error_object};
use super::{BoxFuture, EventStream, Protocol, StreamTranslator, Upstream, http, json_body, ready};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError};
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, FinishReason, Role, StreamEvent, Usage};

const NAME: &str = "anthropic-legacy";
/// What the API (and the SDK's `HUMAN_PROMPT` / `AI_PROMPT`) mark turns with.
pub const HUMAN_PROMPT: &str = "\n\nHuman:";
pub const AI_PROMPT: &str = "\n\nAssistant:";
/// `max_tokens_to_sample` is required; OpenAI clients often leave `max_tokens` out.
const DEFAULT_MAX_TOKENS: u64 = 4096;

pub struct AnthropicLegacy;

/// The text a turn of the conversation contributes, and who speaks it. Tool turns become text:
/// the API has no tools, but a history that used them elsewhere should still read sensibly.
fn turn_text(m: &crate::types::Message) -> Option<(&'static str, String)> {
    let text = m.content.clone().unwrap_or_default();
    match m.role {
        Role::System | Role::Developer => None,
        Role::User => Some((HUMAN_PROMPT, text)),
        Role::Tool | Role::Function => {
            let call = m.tool_call_id.as_deref().or(m.name.as_deref()).unwrap_or("a tool call");
            Some((HUMAN_PROMPT, format!("[result of {call}: {text}]")))
        }
        Role::Assistant => {
            let mut parts: Vec<String> = Vec::new();
            if !text.is_empty() {
                parts.push(text);
            }
            for c in &m.tool_calls {
                parts.push(format!("[tool call {}: {}({})]", c.id, c.name, c.arguments));
            }
            Some((AI_PROMPT, parts.join("\n")))
        }
    }
}

/// The prompt for `req`: system text first (Anthropic's documented place for it with Claude 2.1),
/// then alternating turns (consecutive messages of one speaker joined, as the model was trained
/// on alternation), ending with an open Assistant turn — unless the conversation already ends
/// with an assistant message, which Claude then continues ("putting words in its mouth").
/// The first turn is always a Human one (empty if the conversation begins with the assistant):
/// the API refuses any other opening.
pub fn prompt(req: &ChatRequest) -> String {
    let mut turns: Vec<(&'static str, String)> = Vec::new();
    for (speaker, text) in req.messages.iter().filter_map(turn_text) {
        match turns.last_mut() {
            Some((last, existing)) if *last == speaker => {
                if !text.is_empty() {
                    if !existing.is_empty() {
                        existing.push_str("\n\n");
                    }
                    existing.push_str(&text);
                }
            }
            _ => turns.push((speaker, text)),
        }
    }
    if turns.first().is_none_or(|(speaker, _)| *speaker != HUMAN_PROMPT) {
        turns.insert(0, (HUMAN_PROMPT, String::new()));
    }
    let mut out = req.system_text().unwrap_or_default();
    for (speaker, text) in &turns {
        out.push_str(speaker);
        if !text.is_empty() {
            out.push(' ');
            out.push_str(text);
        }
    }
    if turns.last().is_some_and(|(speaker, _)| *speaker == HUMAN_PROMPT) {
        out.push_str(AI_PROMPT);
    }
    out
}

/// The Text Completions request body for `req`.
pub fn request_body(model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("prompt".into(), prompt(req).into());
    body.insert("max_tokens_to_sample".into(), req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).into());
    if !req.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(req.stop));
    }
    // OpenAI's temperature runs to 2, Anthropic's to 1. OpenAI has no top_k: never sent.
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), t.clamp(0.0, 1.0).into());
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), p.into());
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if stream {
        body.insert("stream".into(), true.into());
    }
    Value::Object(body)
}

/// An ESTIMATE of a text's tokens: the API reports no usage for completions. About four ASCII
/// characters a token (the usual rule of thumb for English with Claude's tokenizer), and one
/// token for every other character (CJK and the like take at least one each).
pub fn estimate_tokens(text: &str) -> u64 {
    let (ascii, other) =
        text.chars().fold((0u64, 0u64), |(a, o), c| if c.is_ascii() { (a + 1, o) } else { (a, o + 1) });
    ascii.div_ceil(4) + other
}

fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "max_tokens" => FinishReason::Length,
        _ => FinishReason::Stop, // stop_sequence (a given one, or the built-in "\n\nHuman:")
    }
}

fn protocol_error(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(NAME, ErrorKind::Protocol, msg)
}

/// An error object of the shared envelope, classified as the Messages API's, named as ours.
fn error_from(status: Option<u16>, error: &Value) -> UpstreamError {
    let mut e = classify_error_object(status, error, None);
    e.provider = NAME;
    e
}

impl Protocol for AnthropicLegacy {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
        stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>> {
        if let Err(e) = super::refuse_tools(NAME, req) {
            return ready(Err(e));
        }
        ready(Ok(up
            .http
            .post(format!("{}/v1/complete", channel.base_url()))
            .header("x-api-key", channel.api_key.expose())
            .header("anthropic-version", API_VERSION)
            .json(&request_body(model, req, stream))))
    }

    /// The answer, with completion tokens ESTIMATED from its text (prompt tokens are added by
    /// `chat`, which knows the prompt).
    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(NAME, body)?;
        if v.get("type").and_then(Value::as_str) == Some("error") {
            return Err(error_from(None, v.get("error").unwrap_or(&Value::Null)));
        }
        let text = v
            .get("completion")
            .and_then(Value::as_str)
            .ok_or_else(|| protocol_error("an answer without a completion"))?;
        Ok(ChatResponse {
            content: Some(text.to_string()),
            tool_calls: Vec::new(),
            finish_reason: finish_reason(v.get("stop_reason").and_then(Value::as_str).unwrap_or("")),
            usage: Usage { prompt_tokens: 0, completion_tokens: estimate_tokens(text) },
        })
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        // The same envelope, types and retry headers as the Messages API.
        let mut e = Anthropic.classify(status, headers, body);
        e.provider = NAME;
        e
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(LegacyStream::default())
    }

    fn chat<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>> {
        Box::pin(async move {
            let mut answer = http::chat(self, up, channel, model, req).await?;
            answer.usage.prompt_tokens = estimate_tokens(&prompt(req));
            Ok(answer)
        })
    }

    fn chat_stream<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, UpstreamError>> {
        Box::pin(async move {
            let prompt_tokens = estimate_tokens(&prompt(req));
            let events = http::chat_stream(self, up, channel, model, req).await?;
            let with_prompt = events.map(move |item| {
                item.map(|event| match event {
                    StreamEvent::Usage(u) => StreamEvent::Usage(Usage { prompt_tokens, ..u }),
                    other => other,
                })
            });
            Ok(Box::pin(with_prompt) as EventStream)
        })
    }
}

/// Keeps the text so far, to estimate the completion's tokens when it ends.
#[derive(Default)]
struct LegacyStream {
    text: String,
}

impl StreamTranslator for LegacyStream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        let v: Value =
            serde_json::from_str(&event.data).map_err(|e| protocol_error(format!("a bad event: {e}")))?;
        let kind = event.event.as_deref().or_else(|| v.get("type").and_then(Value::as_str)).unwrap_or("");
        match kind {
            "completion" => {
                let piece = v.get("completion").and_then(Value::as_str).unwrap_or("");
                if !piece.is_empty() {
                    self.text.push_str(piece);
                    out.push(StreamEvent::Text(piece.into()));
                }
                // The last event carries the stop reason; the connection closes after it.
                if let Some(reason) = v.get("stop_reason").and_then(Value::as_str) {
                    out.push(StreamEvent::Finish(finish_reason(reason)));
                    out.push(StreamEvent::Usage(Usage {
                        prompt_tokens: 0,
                        completion_tokens: estimate_tokens(&self.text),
                    }));
                    return Ok(true);
                }
            }
            "error" => return Err(error_from(None, v.get("error").unwrap_or(&Value::Null))),
            _ => {} // ping
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Tool;

    fn req(body: Value) -> ChatRequest {
        ChatRequest::from_openai(&body).unwrap()
    }

    #[test]
    fn system_text_precedes_the_first_human_turn() {
        let r = req(json!({"model": "claude-2.1", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"}
        ]}));
        assert_eq!(prompt(&r), "Be brief.\n\nHuman: Hello\n\nAssistant:");
        let r = req(json!({"model": "claude-2", "messages": [{"role": "user", "content": "Hi"}]}));
        assert_eq!(prompt(&r), "\n\nHuman: Hi\n\nAssistant:");
    }

    #[test]
    fn turns_alternate_and_tool_turns_become_text() {
        let r = req(json!({"model": "claude-2", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "user", "content": "in Paris"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "thanks"}
        ]}));
        assert_eq!(
            prompt(&r),
            "\n\nHuman: weather?\n\nin Paris\n\nAssistant: [tool call call_1: w({\"c\":\"Paris\"})]\n\nHuman: [result of call_1: sunny]\n\nAssistant: It is sunny.\n\nHuman: thanks\n\nAssistant:"
        );
        // An assistant opening gets an empty Human turn before it; a trailing assistant message
        // is continued, not followed by another turn.
        let r = req(json!({"model": "claude-2", "messages": [
            {"role": "assistant", "content": "Hi, how can I help?"},
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "The color is"}
        ]}));
        assert_eq!(
            prompt(&r),
            "\n\nHuman:\n\nAssistant: Hi, how can I help?\n\nHuman: Name a color.\n\nAssistant: The color is"
        );
    }

    #[test]
    fn the_body_names_the_legacy_fields() {
        let r = req(json!({"model": "x", "temperature": 1.5, "top_p": 0.9, "stop": ["END"], "user": "u1",
            "messages": [{"role": "user", "content": "Hi"}]}));
        let body = request_body("claude-instant-1.2", &r, true);
        assert_eq!(
            body,
            json!({"model": "claude-instant-1.2", "prompt": "\n\nHuman: Hi\n\nAssistant:",
                "max_tokens_to_sample": 4096, "stop_sequences": ["END"], "temperature": 1.0, "top_p": 0.9,
                "metadata": {"user_id": "u1"}, "stream": true})
        );
        let mut r = r;
        r.tools.push(Tool { name: "w".into(), description: None, parameters: json!({}) });
        assert_eq!(refuse_tools_kind(&r), Some(ErrorKind::BadRequest));
    }

    fn refuse_tools_kind(r: &ChatRequest) -> Option<ErrorKind> {
        super::super::refuse_tools(NAME, r).err().map(|e| e.kind)
    }

    #[test]
    fn whole_answers_and_estimated_usage() {
        let body = br#"{"type":"completion","id":"compl_1","completion":" Hello there","stop_reason":"max_tokens","model":"claude-2.1"}"#;
        let a = AnthropicLegacy.parse_response(body).unwrap();
        assert_eq!(a.content.as_deref(), Some(" Hello there"));
        assert_eq!(a.finish_reason, FinishReason::Length);
        assert_eq!(a.usage.completion_tokens, 3); // 12 ASCII characters
        assert_eq!(estimate_tokens("你好 a"), 3);
        let err = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(AnthropicLegacy.parse_response(err).unwrap_err().kind, ErrorKind::Server);
        assert_eq!(AnthropicLegacy.parse_response(b"{}").unwrap_err().kind, ErrorKind::Protocol);
    }

    #[test]
    fn completion_events_become_text_then_finish_and_usage() {
        let mut s = AnthropicLegacy.stream();
        let mut out = Vec::new();
        let ev = |name: &str, data: &str| SseEvent { event: Some(name.into()), data: data.into() };
        for e in [
            ev(
                "completion",
                r#"{"type":"completion","completion":" Hello","stop_reason":null,"model":"claude-2.0"}"#,
            ),
            ev("ping", r#"{"type":"ping"}"#),
            ev(
                "completion",
                r#"{"type":"completion","completion":"!","stop_reason":null,"model":"claude-2.0"}"#,
            ),
        ] {
            assert!(!s.on_event(&e, &mut out).unwrap());
        }
        let last = ev(
            "completion",
            r#"{"type":"completion","completion":"","stop_reason":"stop_sequence","model":"claude-2.0"}"#,
        );
        assert!(s.on_event(&last, &mut out).unwrap());
        assert_eq!(
            out,
            vec![
                StreamEvent::Text(" Hello".into()),
                StreamEvent::Text("!".into()),
                StreamEvent::Finish(FinishReason::Stop),
                StreamEvent::Usage(Usage { prompt_tokens: 0, completion_tokens: 2 }),
            ]
        );
        let mut s = AnthropicLegacy.stream();
        let err =
            ev("error", r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
        let e = s.on_event(&err, &mut out).unwrap_err();
        assert_eq!((e.kind, e.provider), (ErrorKind::Server, NAME));
        assert_eq!(
            s.on_event(&ev("completion", "not json"), &mut out).unwrap_err().kind,
            ErrorKind::Protocol
        );
    }

    #[test]
    fn errors_are_classified_like_the_messages_api() {
        let mut h = HeaderMap::new();
        let e = |h: &HeaderMap, status, ty: &str, msg: &str| {
            let body = json!({"type": "error", "error": {"type": ty, "message": msg}}).to_string();
            AnthropicLegacy.classify(status, h, body.as_bytes())
        };
        let bad_prompt =
            e(&h, 400, "invalid_request_error", "prompt must end with \"\\n\\nAssistant:\" turn");
        assert_eq!((bad_prompt.kind, bad_prompt.provider), (ErrorKind::BadRequest, NAME));
        assert_eq!(e(&h, 401, "authentication_error", "invalid x-api-key").kind, ErrorKind::Auth);
        assert_eq!(
            e(&h, 400, "invalid_request_error", "Your credit balance is too low").kind,
            ErrorKind::QuotaExhausted
        );
        assert_eq!(e(&h, 529, "overloaded_error", "Overloaded").kind, ErrorKind::Server);
        assert_eq!(e(&h, 404, "not_found_error", "model: claude-9").kind, ErrorKind::NotFound);
        h.insert("retry-after", "3".parse().unwrap());
        let throttled = e(&h, 429, "rate_limit_error", "slow down");
        assert_eq!(throttled.kind, ErrorKind::RateLimited);
        assert_eq!(throttled.retry_after, Some(std::time::Duration::from_secs(3)));
        assert_eq!(AnthropicLegacy.classify(502, &h, b"<html>bad gateway</html>").kind, ErrorKind::Server);
    }
}
