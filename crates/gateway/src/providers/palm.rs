//! Google's PaLM 2 API (decommissioned in 2024; kept for the 2023 names): chat models
//! (`chat-bison-001`) through `POST /v1beta2/models/{model}:generateMessage`, text models
//! (`text-bison-001`) through `:generateText`, with the `x-goog-api-key` header. The system prompt
//! goes in `prompt.context`, the conversation in `prompt.messages` of alternating authors ("0" the
//! user, "1" the model); answers are `candidates[].content` (`.output` for text). There is no
//! streaming (a stream is the whole answer sent as events), no function calling and no token
//! count (usage is estimated); errors are google.rpc statuses, as Gemini's.

use futures_util::stream;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::gemini::{classify_body, model_path, status_error};
use super::{BoxFuture, EventStream, Protocol, StreamTranslator, Upstream, json_body};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError};
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, FinishReason, Role, StreamEvent, ToolChoice, Usage};

const NAME: &str = "palm";
pub const API_VERSION: &str = "v1beta2";
/// generateText takes at most this many stop sequences.
const MAX_STOP_SEQUENCES: usize = 5;
/// The user's author name in generateMessage (any alternating strings work; one-api uses these).
const USER: &str = "0";
const MODEL: &str = "1";
/// Largest answer read (as the shared HTTP path's bound).
const MAX_ANSWER_BODY: usize = 64 << 20;

pub struct Palm;

/// Text models answer generateText; every other model is a chat model.
pub fn is_text_model(model: &str) -> bool {
    model.trim_start_matches("models/").starts_with("text-")
}

/// Each message as (author, text): tool results and calls, which PaLM has no form for, written
/// out as text, so a conversation that had them still reads whole.
fn turns(req: &ChatRequest) -> Vec<(&'static str, String)> {
    let mut turns: Vec<(&'static str, String)> = Vec::new();
    for m in &req.messages {
        let (author, text) = match m.role {
            Role::System | Role::Developer => continue,
            Role::User => (USER, m.content.clone().unwrap_or_default()),
            Role::Tool | Role::Function => {
                let name = m.name.as_deref().or(m.tool_call_id.as_deref()).unwrap_or("tool");
                (USER, format!("[result of {name}] {}", m.content.as_deref().unwrap_or("")))
            }
            Role::Assistant => {
                let mut text = m.content.clone().unwrap_or_default();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format!("[call {}({})]", c.name, c.arguments));
                }
                (MODEL, text)
            }
        };
        if text.is_empty() {
            continue; // PaLM refuses empty messages
        }
        match turns.last_mut() {
            // Authors must alternate.
            Some((last, existing)) if *last == author => {
                existing.push_str("\n\n");
                existing.push_str(&text);
            }
            _ => turns.push((author, text)),
        }
    }
    turns
}

/// The generateMessage request. It has no output limit and no stop sequences: those are applied
/// to the answer instead (see [`apply_stop`]).
pub fn message_body(req: &ChatRequest) -> Value {
    let messages: Vec<Value> = turns(req)
        .into_iter()
        .map(|(author, content)| json!({"author": author, "content": content}))
        .collect();
    let mut prompt = Map::new();
    if let Some(system) = req.system_text() {
        prompt.insert("context".into(), system.into());
    }
    prompt.insert("messages".into(), messages.into());
    let mut body = Map::new();
    body.insert("prompt".into(), prompt.into());
    // PaLM's temperature runs 0-1.
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), t.clamp(0.0, 1.0).into());
    }
    if let Some(p) = req.top_p {
        body.insert("topP".into(), p.into());
    }
    body.insert("candidateCount".into(), 1.into());
    Value::Object(body)
}

/// The generateText request: the conversation as one prompt (a lone user message as it is, more
/// as a transcript ending where the model should go on).
pub fn text_body(req: &ChatRequest) -> Value {
    let turns = turns(req);
    let mut text = req.system_text().map(|s| s + "\n\n").unwrap_or_default();
    match turns.as_slice() {
        [(USER, only)] => text.push_str(only),
        _ => {
            for (author, content) in &turns {
                let who = if *author == USER { "User" } else { "Assistant" };
                text.push_str(&format!("{who}: {content}\n"));
            }
            text.push_str("Assistant:");
        }
    }
    let mut body = Map::new();
    body.insert("prompt".into(), json!({"text": text}));
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), t.clamp(0.0, 1.0).into());
    }
    if let Some(p) = req.top_p {
        body.insert("topP".into(), p.into());
    }
    if let Some(n) = req.max_tokens {
        body.insert("maxOutputTokens".into(), n.into());
    }
    if !req.stop.is_empty() {
        let stops: Vec<&String> = req.stop.iter().take(MAX_STOP_SEQUENCES).collect();
        body.insert("stopSequences".into(), json!(stops));
    }
    body.insert("candidateCount".into(), 1.into());
    Value::Object(body)
}

/// `text` cut before the first stop sequence in it (generateMessage takes none).
pub fn apply_stop(text: &str, stop: &[String]) -> String {
    let cut = stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min();
    cut.map_or(text, |at| &text[..at]).to_string()
}

/// A token estimate, since PaLM reports none: about four characters of ASCII text a token,
/// one token for each other character (CJK text runs near that).
pub fn estimate_tokens(text: &str) -> u64 {
    let ascii = text.bytes().filter(u8::is_ascii).count() as u64;
    let other = text.chars().filter(|c| !c.is_ascii()).count() as u64;
    ascii.div_ceil(4) + other
}

fn protocol_error(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(NAME, ErrorKind::Protocol, msg)
}

impl Palm {
    /// An answer of either method: the first candidate's `content` (generateMessage) or
    /// `output` (generateText); none, with `filters`, when PaLM blocked it. `stop` is applied
    /// here, and `prompt_tokens` is the request's estimate.
    fn read(&self, body: &[u8], stop: &[String], prompt_tokens: u64) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(NAME, body)?;
        if let Some(error) = v.get("error") {
            return Err(status_error(NAME, None, error, None));
        }
        let candidate = v.pointer("/candidates/0");
        let Some(text) =
            candidate.and_then(|c| c.get("content").or_else(|| c.get("output"))).and_then(Value::as_str)
        else {
            if candidate.is_none() {
                // Blocked: PaLM then answers with no candidate and `filters` saying why.
                return Ok(ChatResponse {
                    content: None,
                    tool_calls: Vec::new(),
                    finish_reason: FinishReason::ContentFilter,
                    usage: Usage { prompt_tokens, completion_tokens: 0 },
                });
            }
            return Err(protocol_error("a candidate without content"));
        };
        let text = apply_stop(text, stop);
        Ok(ChatResponse {
            usage: Usage { prompt_tokens, completion_tokens: estimate_tokens(&text) },
            content: Some(text),
            tool_calls: Vec::new(),
            finish_reason: FinishReason::Stop,
        })
    }
}

/// The estimated prompt size: every message's text.
fn prompt_tokens(req: &ChatRequest) -> u64 {
    req.messages.iter().filter_map(|m| m.content.as_deref()).map(estimate_tokens).sum()
}

impl Protocol for Palm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
        _stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>> {
        Box::pin(async move {
            if !req.tools.is_empty() && req.tool_choice != Some(ToolChoice::None) {
                return Err(UpstreamError::new(NAME, ErrorKind::BadRequest, "PaLM models cannot call tools"));
            }
            let (method, body) = if is_text_model(model) {
                ("generateText", text_body(req))
            } else {
                ("generateMessage", message_body(req))
            };
            let url = format!("{}/{API_VERSION}/{}:{method}", channel.base_url(), model_path(model));
            Ok(up.http.post(url).header("x-goog-api-key", channel.api_key.expose()).json(&body))
        })
    }

    /// Without the request, stop sequences are not applied and the prompt is not counted: the
    /// gateway goes through [`Protocol::chat`], which does both.
    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        self.read(body, &[], 0)
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        classify_body(NAME, status, headers, body)
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(NoStream)
    }

    fn chat<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>> {
        Box::pin(async move {
            let response = super::http::send(self, up, channel, model, req, false).await?;
            let body = tokio::time::timeout(up.timeout, super::http::read_limited(response, MAX_ANSWER_BODY))
                .await
                .map_err(|_| UpstreamError::new(NAME, ErrorKind::Timeout, "the answer stopped arriving"))??;
            self.read(&body, &req.stop, prompt_tokens(req)).map_err(|e| super::http::scrub(channel, e))
        })
    }

    /// PaLM cannot stream: the whole answer, then sent as the events of a stream.
    fn chat_stream<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, UpstreamError>> {
        Box::pin(async move {
            let answer = self.chat(up, channel, model, req).await?;
            let mut events = Vec::with_capacity(3);
            if let Some(text) = answer.content.filter(|t| !t.is_empty()) {
                events.push(Ok(StreamEvent::Text(text)));
            }
            events.push(Ok(StreamEvent::Finish(answer.finish_reason)));
            events.push(Ok(StreamEvent::Usage(answer.usage)));
            Ok(Box::pin(stream::iter(events)) as EventStream)
        })
    }
}

/// PaLM never sends a stream; the translator exists only because every protocol has one.
struct NoStream;

impl StreamTranslator for NoStream {
    fn on_event(&mut self, _: &SseEvent, _: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        Err(protocol_error("PaLM has no streaming"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Tool;

    fn chat(body: Value) -> ChatRequest {
        ChatRequest::from_openai(&body).unwrap()
    }

    #[test]
    fn messages_alternate_with_the_system_prompt_as_context() {
        let req = chat(json!({"model": "chat-bison-001", "temperature": 1.5, "messages": [
            {"role": "system", "content": "brief"},
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "three"}
        ]}));
        assert_eq!(
            message_body(&req),
            json!({"prompt": {"context": "brief", "messages": [
                {"author": "0", "content": "one\n\ntwo"}, {"author": "1", "content": "ok"}, {"author": "0", "content": "three"}
            ]}, "temperature": 1.0, "candidateCount": 1})
        );
        let text = text_body(&chat(
            json!({"model": "text-bison-001", "max_tokens": 9, "stop": ["a","b","c","d","e","f"],
            "messages": [{"role": "user", "content": "Say hi"}]}),
        ));
        assert_eq!(
            text,
            json!({"prompt": {"text": "Say hi"}, "maxOutputTokens": 9, "stopSequences": ["a","b","c","d","e"], "candidateCount": 1})
        );
        assert!(is_text_model("models/text-bison-001") && !is_text_model("chat-bison-001"));
    }

    #[test]
    fn answers_blocks_and_stops() {
        let req = chat(
            json!({"model": "chat-bison-001", "stop": ["\n\n"], "messages": [{"role": "user", "content": "hello there"}]}),
        );
        let body = br#"{"candidates":[{"author":"1","content":"Hi!\n\nMore text"}],"messages":[{"author":"0","content":"hello there"}]}"#;
        let r = Palm.read(body, &req.stop, prompt_tokens(&req)).unwrap();
        assert_eq!((r.content.as_deref(), r.finish_reason), (Some("Hi!"), FinishReason::Stop));
        assert_eq!(r.usage, Usage { prompt_tokens: 3, completion_tokens: 1 });
        let blocked = br#"{"filters":[{"reason":"OTHER"}],"messages":[]}"#;
        let r = Palm.read(blocked, &req.stop, 3).unwrap();
        assert_eq!((r.content, r.finish_reason), (None, FinishReason::ContentFilter));
        let text = br#"{"candidates":[{"output":"generated","safetyRatings":[]}]}"#;
        assert_eq!(Palm.parse_response(text).unwrap().content.as_deref(), Some("generated"));
        assert_eq!(estimate_tokens("你好 hi"), 3);
        let e = Palm.classify(
            400,
            &HeaderMap::new(),
            br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#,
        );
        assert_eq!((e.kind, e.provider), (ErrorKind::Auth, "palm"));
    }

    #[test]
    fn tool_requests_are_refused_before_sending() {
        let mut req =
            chat(json!({"model": "chat-bison-001", "messages": [{"role": "user", "content": "x"}]}));
        req.tools.push(Tool { name: "f".into(), description: None, parameters: json!({}) });
        // reqwest is built without a TLS provider of its own (as `Gateway::new` does it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let up = Upstream {
            http: reqwest::Client::new(),
            tokens: Default::default(),
            timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
        };
        let ch: Channel = serde_json::from_value(
            json!({"name": "p", "provider": "palm", "api_key": "k", "models": ["chat-bison-001"]}),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let e = rt.block_on(Palm.request(&up, &ch, "chat-bison-001", &req, false)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        req.tool_choice = Some(ToolChoice::None);
        assert!(rt.block_on(Palm.request(&up, &ch, "chat-bison-001", &req, false)).is_ok());
    }
}
