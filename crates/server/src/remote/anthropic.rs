//! `POST /v1/messages` for a hosted model: Anthropic's request read into the gateway's request
//! (system prompt, text / tool_use / tool_result blocks, tools and tool_choice), the answer
//! written back as Anthropic's message or event sequence, whichever provider answered.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use baimo_gateway::types::{Message, Role, Tool, ToolCall, ToolChoice};
use baimo_gateway::{ChatRequest, ChatResponse, ErrorKind, FinishReason, StreamEvent, UpstreamError, Usage};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Tally, retry_after_secs, served_headers};
use crate::App;

/// Anthropic's error envelope.
pub(crate) fn error_json(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(error_json("invalid_request_error", &message.into()))).into_response()
}

fn error_kind(e: &UpstreamError) -> &'static str {
    match e.kind {
        ErrorKind::RateLimited | ErrorKind::QuotaExhausted => "rate_limit_error",
        ErrorKind::ContextLength | ErrorKind::BadRequest => "invalid_request_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::Timeout | ErrorKind::Server | ErrorKind::Connection => "api_error",
        ErrorKind::Auth | ErrorKind::Protocol => "api_error",
    }
}

fn upstream_error_response(e: &UpstreamError) -> Response {
    let status = StatusCode::from_u16(e.client_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, Json(error_json(error_kind(e), &e.to_string()))).into_response();
    if let Some(secs) = retry_after_secs(e) {
        response.headers_mut().insert("retry-after", HeaderValue::from(secs));
    }
    response
}

/// The text of a `content` (a string or blocks), refusing blocks that are not text.
fn text_of(content: &Value, what: &str) -> Result<String, String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = String::new();
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => out.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                    other => return Err(format!("{what}: blocks of type {other:?} are not supported here")),
                }
            }
            Ok(out)
        }
        Value::Null => Ok(String::new()),
        _ => Err(format!("{what}: content must be a string or an array of blocks")),
    }
}

/// Anthropic's request as the gateway's.
pub(crate) fn request_from_anthropic(body: &Value) -> Result<ChatRequest, String> {
    let body = body.as_object().ok_or("the body must be a JSON object")?;
    let model = body.get("model").and_then(Value::as_str).ok_or("model: Field required")?;
    let max_tokens = body.get("max_tokens").and_then(Value::as_u64).ok_or("max_tokens: Field required")?;
    let raw = body.get("messages").and_then(Value::as_array).ok_or("messages: Field required")?;
    let mut messages = Vec::with_capacity(raw.len() + 1);
    if let Some(system) = body.get("system").filter(|s| !s.is_null()) {
        messages.push(Message::text(Role::System, text_of(system, "system")?));
    }
    for m in raw {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        let blocks = match content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(b) => b.clone(),
            _ => return Err("messages: content must be a string or an array of blocks".into()),
        };
        match role {
            "user" => {
                // Tool results become tool messages (before the user's text, as they answer
                // the previous turn); the text blocks one user message.
                let mut text = String::new();
                for b in &blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                        Some("tool_result") => {
                            let result = text_of(b.get("content").unwrap_or(&Value::Null), "tool_result")?;
                            messages.push(Message {
                                role: Role::Tool,
                                content: Some(result),
                                tool_calls: Vec::new(),
                                tool_call_id: b.get("tool_use_id").and_then(Value::as_str).map(String::from),
                                name: None,
                            });
                        }
                        other => {
                            return Err(format!("messages: blocks of type {other:?} are not supported here"));
                        }
                    }
                }
                if !text.is_empty() || blocks.is_empty() {
                    messages.push(Message::text(Role::User, text));
                }
            }
            "assistant" => {
                let mut text = String::new();
                let mut tool_calls = Vec::new();
                for b in &blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                        Some("tool_use") => tool_calls.push(ToolCall {
                            id: b.get("id").and_then(Value::as_str).unwrap_or_default().into(),
                            name: b.get("name").and_then(Value::as_str).unwrap_or_default().into(),
                            arguments: b.get("input").unwrap_or(&json!({})).to_string(),
                        }),
                        other => {
                            return Err(format!("messages: blocks of type {other:?} are not supported here"));
                        }
                    }
                }
                messages.push(Message {
                    role: Role::Assistant,
                    content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                    tool_calls,
                    tool_call_id: None,
                    name: None,
                });
            }
            other => return Err(format!("messages: role must be \"user\" or \"assistant\", not {other:?}")),
        }
    }
    if raw.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    let mut tools = Vec::new();
    for t in body.get("tools").and_then(Value::as_array).into_iter().flatten() {
        tools.push(Tool {
            name: t.get("name").and_then(Value::as_str).ok_or("tools: a tool has no name")?.into(),
            description: t.get("description").and_then(Value::as_str).map(String::from),
            parameters: t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
        });
    }
    let tool_choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(c) => Some(match c.get("type").and_then(Value::as_str) {
            Some("auto") => ToolChoice::Auto,
            Some("any") => ToolChoice::Required,
            Some("none") => ToolChoice::None,
            Some("tool") => ToolChoice::Function(
                c.get("name").and_then(Value::as_str).ok_or("tool_choice: name required")?.into(),
            ),
            other => return Err(format!("tool_choice: unknown type {other:?}")),
        }),
    };
    let number = |k: &str| body.get(k).and_then(Value::as_f64);
    Ok(ChatRequest {
        model: model.to_string(),
        messages,
        max_tokens: Some(max_tokens),
        temperature: number("temperature"),
        top_p: number("top_p"),
        stop: body
            .get("stop_sequences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
            .unwrap_or_default(),
        presence_penalty: None,
        frequency_penalty: None,
        seed: None,
        user: body.get("metadata").and_then(|m| m.get("user_id")).and_then(Value::as_str).map(String::from),
        tools,
        tool_choice,
        legacy_functions: false,
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: true,
    })
}

fn stop_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::ContentFilter => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
    }
}

fn message_id() -> String {
    format!("msg_{}", crate::openai::completion_id().trim_start_matches("chatcmpl-"))
}

fn tool_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
}

/// The whole answer as Anthropic's message.
pub(crate) fn message_json(model: &str, answer: &ChatResponse, id: &str) -> Value {
    let mut content = Vec::new();
    if let Some(text) = answer.content.as_deref().filter(|t| !t.is_empty() || answer.tool_calls.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for c in &answer.tool_calls {
        content
            .push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(&c.arguments)}));
    }
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason(answer.finish_reason), "stop_sequence": null,
        "usage": {"input_tokens": answer.usage.prompt_tokens, "output_tokens": answer.usage.completion_tokens},
    })
}

/// Which content block is open in the stream being written.
#[derive(PartialEq)]
enum Open {
    None,
    Text,
    Tool(usize),
}

pub(crate) async fn messages(app: Arc<App>, key_id: Option<i64>, body: Value) -> Response {
    let Some(gateway) = app.gateway() else {
        return bad_request("no gateway is configured");
    };
    let req = match request_from_anthropic(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let tally = Tally::new(key_id, &req.model, req.stream);
    let id = message_id();
    if !req.stream {
        return match gateway.chat(&req).await {
            Ok(served) => {
                tally.finish(&app, &served.channel, served.value.usage, 200, served.failed.len());
                let mut response = Json(message_json(&req.model, &served.value, &id)).into_response();
                served_headers(&mut response, &served.channel, served.failed.len());
                response
            }
            Err(failed) => {
                tally.failed(&app, &failed);
                upstream_error_response(&failed.error)
            }
        };
    }
    let served = match gateway.chat_stream(&req).await {
        Ok(s) => s,
        Err(failed) => {
            tally.failed(&app, &failed);
            return upstream_error_response(&failed.error);
        }
    };
    let (channel, retries) = (served.channel.clone(), served.failed.len());
    let mut events = served.value;
    let (sse, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let model = req.model.clone();
    let task_channel = channel.clone();
    tokio::spawn(async move {
        let event = |name: &str, data: Value| Ok(SseEvent::default().event(name).data(data.to_string()));
        let start = json!({
            "type": "message_start",
            "message": {"id": id, "type": "message", "role": "assistant", "content": [], "model": model,
                        "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": 0, "output_tokens": 0}},
        });
        let mut usage = Usage::default();
        let mut finish = None;
        let mut open = Open::None;
        let mut blocks = 0usize;
        let mut out: Vec<Result<SseEvent, Infallible>> =
            vec![event("message_start", start), event("ping", json!({"type": "ping"}))];
        let mut failure = None;
        loop {
            for e in out.drain(..) {
                if sse.send(e).await.is_err() {
                    tally.finish(&app, &task_channel, usage, 499, retries);
                    return;
                }
            }
            let Some(item) = events.next().await else { break };
            match item {
                Ok(StreamEvent::Text(text)) => {
                    if open != Open::Text {
                        if open != Open::None {
                            out.push(event(
                                "content_block_stop",
                                json!({"type": "content_block_stop", "index": blocks - 1}),
                            ));
                        }
                        out.push(event("content_block_start", json!({"type": "content_block_start", "index": blocks, "content_block": {"type": "text", "text": ""}})));
                        blocks += 1;
                        open = Open::Text;
                    }
                    out.push(event("content_block_delta", json!({"type": "content_block_delta", "index": blocks - 1, "delta": {"type": "text_delta", "text": text}})));
                }
                Ok(StreamEvent::ToolCall { index, id, name, arguments }) => {
                    if open != Open::Tool(index) {
                        if open != Open::None {
                            out.push(event(
                                "content_block_stop",
                                json!({"type": "content_block_stop", "index": blocks - 1}),
                            ));
                        }
                        let block = json!({"type": "tool_use", "id": id.unwrap_or_default(), "name": name.unwrap_or_default(), "input": {}});
                        out.push(event(
                            "content_block_start",
                            json!({"type": "content_block_start", "index": blocks, "content_block": block}),
                        ));
                        blocks += 1;
                        open = Open::Tool(index);
                    }
                    if !arguments.is_empty() {
                        out.push(event("content_block_delta", json!({"type": "content_block_delta", "index": blocks - 1, "delta": {"type": "input_json_delta", "partial_json": arguments}})));
                    }
                }
                Ok(StreamEvent::Finish(reason)) => finish = finish.or(Some(reason)),
                Ok(StreamEvent::Usage(u)) => usage = u,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            let _ = sse.send(event("error", error_json(error_kind(&e), &e.to_string()))).await;
            tally.finish(&app, &task_channel, usage, e.client_status(), retries);
            return;
        }
        let mut tail: Vec<_> = Vec::new();
        if open != Open::None {
            tail.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": blocks - 1}),
            ));
        }
        tail.push(event(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason(finish.unwrap_or(FinishReason::Stop)), "stop_sequence": null},
                   "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}}),
        ));
        tail.push(event("message_stop", json!({"type": "message_stop"})));
        for e in tail {
            let _ = sse.send(e).await;
        }
        tally.finish(&app, &task_channel, usage, 200, retries);
    });
    let mut response = Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default()).into_response();
    served_headers(&mut response, &channel, retries);
    response
}
