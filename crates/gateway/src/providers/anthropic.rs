//! Anthropic's Messages API: `POST /v1/messages` with `x-api-key` and `anthropic-version`, the
//! system prompt as a top-level field, tool calls as `tool_use` / `tool_result` blocks, a stream of
//! named events (`message_start` … `message_stop`) whose usage is cumulative, and errors as
//! `{"type":"error","error":{type, message}}` — also as an `error` event after a 200.

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::{BoxFuture, Protocol, StreamTranslator, Upstream, json_body, ready};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError, retry_after_from_headers};
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, FinishReason, Role, StreamEvent, ToolCall, ToolChoice, Usage};

const NAME: &str = "anthropic";
pub const API_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; OpenAI clients often leave it out.
const DEFAULT_MAX_TOKENS: u64 = 4096;

pub struct Anthropic;

/// The Messages request for `req`: system text lifted out, tool results as user blocks, each
/// role's consecutive messages merged (the API wants user and assistant to alternate).
pub fn request_body(model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => continue,
            Role::User => {
                let mut blocks = vec![json!({"type": "text", "text": m.content.clone().unwrap_or_default()})];
                for image in &m.images {
                    blocks.push(match image.base64() {
                        Some((media_type, data)) => json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
                        None => json!({"type": "image", "source": {"type": "url", "url": image.url()}}),
                    });
                }
                ("user", blocks)
            }
            Role::Tool | Role::Function => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().or(m.name.clone()).unwrap_or_default(),
                    "content": m.content.clone().unwrap_or_default(),
                })],
            ),
            Role::Assistant => {
                let mut blocks = Vec::new();
                if let Some(text) = m.content.as_deref().filter(|t| !t.is_empty()) {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for c in &m.tool_calls {
                    let input: Value = serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
                    blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
                }
                ("assistant", blocks)
            }
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> =
        turns.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("messages".into(), messages.into());
    body.insert("max_tokens".into(), req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).into());
    if let Some(system) = req.system_text() {
        body.insert("system".into(), system.into());
    }
    // OpenAI's temperature runs to 2, Anthropic's to 1.
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), t.clamp(0.0, 1.0).into());
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), p.into());
    }
    if let Some(k) = req.top_k {
        body.insert("top_k".into(), k.into());
    }
    if !req.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(req.stop));
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let schema =
                    if t.parameters.is_object() { t.parameters.clone() } else { json!({"type": "object"}) };
                let mut tool = json!({"name": t.name, "input_schema": schema});
                if let Some(d) = &t.description {
                    tool["description"] = d.clone().into();
                }
                tool
            })
            .collect();
        body.insert("tools".into(), tools.into());
    }
    if let Some(choice) = &req.tool_choice {
        let choice = match choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
        };
        body.insert("tool_choice".into(), choice);
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if stream {
        body.insert("stream".into(), true.into());
    }
    Value::Object(body)
}

pub(crate) fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop, // end_turn, stop_sequence, pause_turn
    }
}

fn protocol_error(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(NAME, ErrorKind::Protocol, msg)
}

/// An error object (`{"type": "...", "message": "..."}`) and the HTTP status it came with.
fn error_from(status: Option<u16>, error: &Value, retry_after: Option<std::time::Duration>) -> UpstreamError {
    let message = error.get("message").and_then(Value::as_str).unwrap_or("(no message)").to_string();
    let lower = message.to_lowercase();
    let kind = match (error.get("type").and_then(Value::as_str).unwrap_or(""), status) {
        (_, _) if lower.contains("prompt is too long") => ErrorKind::ContextLength,
        ("billing_error", _) | (_, Some(402)) => ErrorKind::QuotaExhausted,
        (_, _) if lower.contains("credit balance") => ErrorKind::QuotaExhausted,
        ("authentication_error" | "permission_error", _) | (_, Some(401 | 403)) => ErrorKind::Auth,
        ("not_found_error", _) | (_, Some(404)) => ErrorKind::NotFound,
        ("rate_limit_error", _) | (_, Some(429)) => ErrorKind::RateLimited,
        ("overloaded_error" | "api_error", _) => ErrorKind::Server,
        (_, Some(s)) if s >= 500 => ErrorKind::Server,
        (_, None) => ErrorKind::Server,
        _ => ErrorKind::BadRequest,
    };
    let mut e = UpstreamError::new(NAME, kind, message).with_retry_after(retry_after);
    e.status = status;
    e
}

/// The classification of an Anthropic error object, shared with the legacy Text Completions API
/// (`anthropic_legacy`), which uses the same envelope and types.
pub(crate) fn classify_error_object(
    status: Option<u16>,
    error: &Value,
    retry_after: Option<std::time::Duration>,
) -> UpstreamError {
    error_from(status, error, retry_after)
}

impl Protocol for Anthropic {
    fn name(&self) -> &'static str {
        NAME
    }

    fn honours(&self) -> &'static [&'static str] {
        &["top_k"]
    }

    fn takes_images(&self) -> bool {
        true
    }

    fn request<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
        stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>> {
        ready(Ok(up
            .http
            .post(format!("{}/v1/messages", channel.base_url()))
            .header("x-api-key", channel.api_key.expose())
            .header("anthropic-version", API_VERSION)
            .json(&request_body(model, req, stream))))
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(NAME, body)?;
        if v.get("type").and_then(Value::as_str) == Some("error") {
            return Err(error_from(None, v.get("error").unwrap_or(&Value::Null), None));
        }
        let blocks =
            v.get("content").and_then(Value::as_array).ok_or_else(|| protocol_error("no content"))?;
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for b in blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                Some("tool_use") => tool_calls.push(ToolCall {
                    id: b.get("id").and_then(Value::as_str).unwrap_or_default().into(),
                    name: b.get("name").and_then(Value::as_str).unwrap_or_default().into(),
                    arguments: b.get("input").map_or("{}".into(), Value::to_string),
                }),
                _ => {} // thinking and other blocks have no OpenAI counterpart
            }
        }
        Ok(ChatResponse {
            content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
            tool_calls,
            finish_reason: finish_reason(v.get("stop_reason").and_then(Value::as_str).unwrap_or("end_turn")),
            usage: Usage {
                prompt_tokens: v.pointer("/usage/input_tokens").and_then(Value::as_u64).unwrap_or(0),
                completion_tokens: v.pointer("/usage/output_tokens").and_then(Value::as_u64).unwrap_or(0),
            },
        })
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let retry_after = retry_after_from_headers(headers);
        let error = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("error").cloned());
        let fallback = json!({"message": format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]))});
        error_from(Some(status), error.as_ref().unwrap_or(&fallback), retry_after)
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(AnthropicStream::default())
    }
}

#[derive(Default)]
struct AnthropicStream {
    /// Content block index → tool call index (tool calls are numbered among themselves).
    tool_blocks: Vec<(usize, usize)>,
    usage: Usage,
}

impl StreamTranslator for AnthropicStream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        let v: Value =
            serde_json::from_str(&event.data).map_err(|e| protocol_error(format!("a bad event: {e}")))?;
        let kind = event.event.as_deref().or_else(|| v.get("type").and_then(Value::as_str)).unwrap_or("");
        match kind {
            "message_start" => {
                let u = v.pointer("/message/usage");
                self.usage.prompt_tokens =
                    u.and_then(|u| u.get("input_tokens")).and_then(Value::as_u64).unwrap_or(0);
                self.usage.completion_tokens =
                    u.and_then(|u| u.get("output_tokens")).and_then(Value::as_u64).unwrap_or(0);
            }
            "content_block_start" => {
                let block = v.get("content_block").unwrap_or(&Value::Null);
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                    let tool_index = self.tool_blocks.len();
                    self.tool_blocks.push((index, tool_index));
                    out.push(StreamEvent::ToolCall {
                        index: tool_index,
                        id: block.get("id").and_then(Value::as_str).map(String::from),
                        name: block.get("name").and_then(Value::as_str).map(String::from),
                        arguments: String::new(),
                    });
                } else if let Some(text) = block.get("text").and_then(Value::as_str).filter(|t| !t.is_empty())
                {
                    out.push(StreamEvent::Text(text.into()));
                }
            }
            "content_block_delta" => {
                let delta = v.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            out.push(StreamEvent::Text(text.into()));
                        }
                    }
                    Some("input_json_delta") => {
                        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                        let tool = self.tool_blocks.iter().find(|(b, _)| *b == index).map(|&(_, t)| t);
                        let tool =
                            tool.ok_or_else(|| protocol_error("arguments for a block that is no tool call"))?;
                        out.push(StreamEvent::ToolCall {
                            index: tool,
                            id: None,
                            name: None,
                            arguments: delta.get("partial_json").and_then(Value::as_str).unwrap_or("").into(),
                        });
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                // Cumulative: the latest figure replaces the previous one.
                if let Some(n) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.completion_tokens = n;
                }
                if let Some(n) = v.pointer("/usage/input_tokens").and_then(Value::as_u64) {
                    self.usage.prompt_tokens = n;
                }
                if let Some(reason) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.push(StreamEvent::Finish(finish_reason(reason)));
                }
                out.push(StreamEvent::Usage(self.usage));
            }
            "message_stop" => return Ok(true),
            "error" => return Err(error_from(None, v.get("error").unwrap_or(&Value::Null), None)),
            _ => {} // ping, content_block_stop
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Message, Tool};

    #[test]
    fn images_become_image_blocks_and_top_k_is_passed_on() {
        let req = ChatRequest::from_anthropic(&json!({
            "model": "claude-3", "max_tokens": 8, "top_k": 5,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]
        }))
        .unwrap();
        assert!(super::super::refuse_unsupported(&Anthropic, &req).is_ok());
        let body = request_body("claude-3", &req, false);
        assert_eq!(body["top_k"], 5);
        assert_eq!(
            body["messages"][0]["content"],
            json!([{"type": "text", "text": "what is it?"},
                   {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                   {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}])
        );
    }

    #[test]
    fn requests_lift_the_system_prompt_and_turn_tool_turns_into_blocks() {
        let mut req = ChatRequest::from_openai(&json!({
            "model": "claude-2", "temperature": 1.6, "stop": ["X"],
            "messages": [
                {"role": "system", "content": "brief"},
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                {"role": "user", "content": "thanks"}
            ]
        }))
        .unwrap();
        req.tools.push(Tool { name: "w".into(), description: None, parameters: json!({"type": "object"}) });
        let body = request_body("claude-2.1", &req, false);
        assert_eq!(body["system"], "brief");
        assert_eq!(body["max_tokens"], 4096);
        assert_eq!(body["temperature"], 1.0);
        assert_eq!(body["stop_sequences"], json!(["X"]));
        let m = body["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "{m:?}"); // user, assistant, user(tool_result + text)
        assert_eq!(
            m[1]["content"][0],
            json!({"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "Paris"}})
        );
        assert_eq!(m[2]["content"][0]["type"], "tool_result");
        assert_eq!(m[2]["content"][1], json!({"type": "text", "text": "thanks"}));
        assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
        let _ = Message::text(Role::User, "x");
    }

    #[test]
    fn the_event_sequence_becomes_text_tool_calls_and_cumulative_usage() {
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":12,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check"}}"#,
            ),
            ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_7","name":"w","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"c\":"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Paris\"}"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":30}}"#,
            ),
        ];
        let mut s = Anthropic.stream();
        let mut out = Vec::new();
        for (name, data) in events {
            assert!(
                !s.on_event(&SseEvent { event: Some(name.into()), data: data.into() }, &mut out).unwrap()
            );
        }
        let stop = SseEvent { event: Some("message_stop".into()), data: r#"{"type":"message_stop"}"#.into() };
        assert!(s.on_event(&stop, &mut out).unwrap());
        assert_eq!(
            out,
            vec![
                StreamEvent::Text("Let me check".into()),
                StreamEvent::ToolCall {
                    index: 0,
                    id: Some("toolu_7".into()),
                    name: Some("w".into()),
                    arguments: "".into()
                },
                StreamEvent::ToolCall { index: 0, id: None, name: None, arguments: "{\"c\":".into() },
                StreamEvent::ToolCall { index: 0, id: None, name: None, arguments: "\"Paris\"}".into() },
                StreamEvent::Finish(FinishReason::ToolCalls),
                StreamEvent::Usage(Usage { prompt_tokens: 12, completion_tokens: 30 }),
            ]
        );
        let mut s = Anthropic.stream();
        let err = SseEvent {
            event: Some("error".into()),
            data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.into(),
        };
        assert_eq!(s.on_event(&err, &mut out).unwrap_err().kind, ErrorKind::Server);
    }

    #[test]
    fn errors_are_classified() {
        let h = HeaderMap::new();
        let e = |status, ty: &str, msg: &str| {
            let body = json!({"type": "error", "error": {"type": ty, "message": msg}}).to_string();
            Anthropic.classify(status, &h, body.as_bytes()).kind
        };
        assert_eq!(
            e(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
            ErrorKind::ContextLength
        );
        assert_eq!(e(401, "authentication_error", "invalid x-api-key"), ErrorKind::Auth);
        assert_eq!(e(429, "rate_limit_error", "slow down"), ErrorKind::RateLimited);
        assert_eq!(e(529, "overloaded_error", "Overloaded"), ErrorKind::Server);
        assert_eq!(
            e(400, "invalid_request_error", "Your credit balance is too low"),
            ErrorKind::QuotaExhausted
        );
        assert_eq!(e(400, "invalid_request_error", "messages: roles must alternate"), ErrorKind::BadRequest);
    }
}
