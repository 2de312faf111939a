//! Alibaba DashScope (通义千问, hosted Qwen), native API: `POST /api/v1/services/aigc/text-generation/generation`
//! with a Bearer key, `{model, input: {messages}, parameters: {...}}` asking for
//! `result_format: "message"` (answers in `output.choices[0].message`). Streams need
//! `X-DashScope-SSE: enable`: SSE events `event:result` each carrying a delta (we always send
//! `incremental_output: true`), `finish_reason` the string `"null"` until the last, cumulative
//! usage, no `[DONE]`. Errors are `{code, message, request_id}`, also as `event:error` after a 200.
//! [`DashScopeCompatible`] is the OpenAI-compatible mode at `/compatible-mode/v1/chat/completions`.

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::openai::{self, OpenAi};
use super::{BoxFuture, Protocol, StreamTranslator, Upstream, json_body, ready};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError, retry_after_from_headers};
use crate::sse::SseEvent;
use crate::types::{
    ChatRequest, ChatResponse, FinishReason, Message, Role, StreamEvent, ToolCall, ToolChoice, Usage,
    tool_calls_json,
};

const NAME: &str = "dashscope";
const COMPATIBLE_NAME: &str = "dashscope-compatible";
pub const GENERATION_PATH: &str = "/api/v1/services/aigc/text-generation/generation";
pub const COMPATIBLE_PATH: &str = "/compatible-mode/v1/chat/completions";
/// DashScope refuses `top_p >= 1` and `temperature >= 2`; these are the largest values it takes.
const MAX_TOP_P: f64 = 0.9999;
const MAX_TEMPERATURE: f64 = 1.99;

pub struct DashScope;

fn message_json(m: &Message) -> Value {
    let role = match m.role {
        Role::System | Role::Developer => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        // DashScope has only `tool` for results; the 2023 `function` role maps onto it.
        Role::Tool | Role::Function => "tool",
    };
    let mut out = Map::new();
    out.insert("role".into(), role.into());
    // DashScope wants a string even for an assistant turn that only calls tools.
    out.insert("content".into(), m.content.clone().unwrap_or_default().into());
    if !m.tool_calls.is_empty() {
        out.insert("tool_calls".into(), tool_calls_json(&m.tool_calls));
    }
    if let Some(id) = &m.tool_call_id {
        out.insert("tool_call_id".into(), id.clone().into());
    }
    if let Some(name) = &m.name {
        out.insert("name".into(), name.clone().into());
    }
    Value::Object(out)
}

/// The native request body. `incremental_output` is always on, so a stream's events are deltas
/// (the historic default sent the whole text so far in every event).
pub fn request_body(model: &str, req: &ChatRequest) -> Value {
    let mut parameters = Map::new();
    parameters.insert("result_format".into(), "message".into());
    parameters.insert("incremental_output".into(), true.into());
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            parameters.insert(k.into(), v);
        }
    };
    put("max_tokens", req.max_tokens.map(Value::from));
    put("temperature", req.temperature.map(|t| t.clamp(0.0, MAX_TEMPERATURE).into()));
    put("top_p", req.top_p.map(|p| p.clamp(f64::MIN_POSITIVE, MAX_TOP_P).into()));
    put("presence_penalty", req.presence_penalty.map(Value::from));
    // DashScope's seed is an unsigned 32-bit number.
    put("seed", req.seed.map(|s| (s & u64::from(u32::MAX)).into()));
    put("stop", (!req.stop.is_empty()).then(|| json!(req.stop)));
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description.clone().unwrap_or_default(), "parameters": t.parameters}}))
            .collect();
        put("tools", Some(tools.into()));
    }
    put(
        "tool_choice",
        req.tool_choice.as_ref().map(|c| match c {
            ToolChoice::None => json!("none"),
            ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
            // DashScope has no "required" (❓ not in its reference): "auto" is the nearest.
            ToolChoice::Auto | ToolChoice::Required => json!("auto"),
        }),
    );
    json!({
        "model": model,
        "input": {"messages": req.messages.iter().map(message_json).collect::<Vec<_>>()},
        "parameters": parameters,
    })
}

/// `None` while generating: DashScope sends the string `"null"` (or a JSON null) until the end.
fn finish_reason(v: Option<&Value>) -> Option<FinishReason> {
    match v.and_then(Value::as_str)? {
        "null" | "" => None,
        "length" => Some(FinishReason::Length),
        "tool_calls" => Some(FinishReason::ToolCalls),
        _ => Some(FinishReason::Stop),
    }
}

fn usage_of(v: Option<&Value>) -> Usage {
    let n = |k: &str| v.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    Usage { prompt_tokens: n("input_tokens"), completion_tokens: n("output_tokens") }
}

/// Message content: a string, or (multimodal models) a list of `{"text": …}` parts.
fn content_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect())
        }
        _ => None,
    }
}

/// A call id: DashScope's own, or one made up when it sent none.
pub(crate) fn call_id(given: Option<&str>) -> String {
    match given.filter(|id| !id.is_empty()) {
        Some(id) => id.to_string(),
        None => format!("call_{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..)),
    }
}

fn protocol_error(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(NAME, ErrorKind::Protocol, msg)
}

/// The kind a DashScope error code stands for, when the code alone says it.
fn kind_of_code(code: &str, message: &str) -> Option<ErrorKind> {
    let lower = message.to_lowercase();
    Some(match code {
        "Arrearage" => ErrorKind::QuotaExhausted,
        "InvalidApiKey" | "invalid_api_key" => ErrorKind::Auth,
        c if c.starts_with("AccessDenied") => ErrorKind::Auth,
        c if c.starts_with("Throttling") => ErrorKind::RateLimited,
        "ModelNotFound" | "model_not_found" => ErrorKind::NotFound,
        "RequestTimeOut" => ErrorKind::Timeout,
        c if c.starts_with("InternalError") => ErrorKind::Server,
        // A content-moderation refusal: the request's fault, never retried.
        "DataInspectionFailed" | "data_inspection_failed" => ErrorKind::BadRequest,
        "InvalidParameter" | "invalid_parameter_error"
            if lower.contains("input length") || lower.contains("too long") =>
        {
            ErrorKind::ContextLength
        }
        "InvalidParameter" | "invalid_parameter_error" if lower.contains("model not exist") => {
            ErrorKind::NotFound
        }
        c if c.starts_with("InvalidParameter") || c.starts_with("BadRequest") || c == "InvalidURL" => {
            ErrorKind::BadRequest
        }
        _ => return None,
    })
}

/// A `{code, message, request_id}` error and the HTTP status it came with (none: inside a stream).
fn error_from(
    provider: &'static str,
    status: Option<u16>,
    error: &Value,
    retry_after: Option<std::time::Duration>,
) -> UpstreamError {
    let code = error.get("code").and_then(Value::as_str).unwrap_or("");
    let message = error.get("message").and_then(Value::as_str).unwrap_or("(no message)");
    let kind = kind_of_code(code, message).unwrap_or(match status {
        Some(401 | 403) => ErrorKind::Auth,
        Some(404) => ErrorKind::NotFound,
        Some(408) => ErrorKind::Timeout,
        Some(429) => ErrorKind::RateLimited,
        Some(s) if s >= 500 => ErrorKind::Server,
        Some(_) => ErrorKind::BadRequest,
        None => ErrorKind::Server,
    });
    let text = if code.is_empty() { message.to_string() } else { format!("{code}: {message}") };
    let mut e = UpstreamError::new(provider, kind, text).with_retry_after(retry_after);
    e.status = status;
    e
}

/// An error body: JSON, or (seen on some 400s) the SSE error frame labelled as JSON.
fn error_body(body: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Some(v);
    }
    let text = std::str::from_utf8(body).ok()?;
    text.lines().find_map(|l| l.strip_prefix("data:")).and_then(|d| serde_json::from_str(d.trim()).ok())
}

fn tool_calls_of(message: &Value) -> Vec<ToolCall> {
    let mut calls = Vec::new();
    for c in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        calls.push(ToolCall {
            id: call_id(c.get("id").and_then(Value::as_str)),
            name: c.pointer("/function/name").and_then(Value::as_str).unwrap_or_default().into(),
            arguments: c.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}").into(),
        });
    }
    calls
}

impl Protocol for DashScope {
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
        let mut builder = up
            .http
            .post(format!("{}{GENERATION_PATH}", channel.base_url()))
            .bearer_auth(channel.api_key.expose())
            .json(&request_body(model, req));
        if stream {
            builder = builder.header("X-DashScope-SSE", "enable").header("Accept", "text/event-stream");
        }
        ready(Ok(builder))
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(NAME, body)?;
        let output = match v.get("output") {
            Some(output) if output.is_object() => output,
            // An error object in a 200 (not documented, but cheap to recognise).
            _ if v.get("code").and_then(Value::as_str).is_some_and(|c| !c.is_empty()) => {
                return Err(error_from(NAME, None, &v, None));
            }
            _ => return Err(protocol_error("an answer without output")),
        };
        let usage = usage_of(v.get("usage"));
        if let Some(choice) = output.pointer("/choices/0") {
            let message =
                choice.get("message").ok_or_else(|| protocol_error("a choice without a message"))?;
            let tool_calls = tool_calls_of(message);
            let content =
                content_text(message.get("content")).filter(|t| !t.is_empty() || tool_calls.is_empty());
            return Ok(ChatResponse {
                content,
                tool_calls,
                finish_reason: finish_reason(choice.get("finish_reason")).unwrap_or(FinishReason::Stop),
                usage,
            });
        }
        // `result_format: "text"` (the old default), should a proxy in between drop ours.
        let text = output.get("text").and_then(Value::as_str).ok_or_else(|| protocol_error("no choices"))?;
        Ok(ChatResponse {
            content: Some(text.to_string()),
            tool_calls: Vec::new(),
            finish_reason: finish_reason(output.get("finish_reason")).unwrap_or(FinishReason::Stop),
            usage,
        })
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let retry_after = retry_after_from_headers(headers);
        let fallback = json!({"message": format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]))});
        let error = error_body(body).filter(|v| v.get("code").is_some() || v.get("message").is_some());
        error_from(NAME, Some(status), error.as_ref().unwrap_or(&fallback), retry_after)
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(DashScopeStream::default())
    }
}

#[derive(Default)]
struct DashScopeStream {
    /// Tool call indices seen (only the first fragment of each gets an id and a name).
    tools_seen: Vec<usize>,
}

impl StreamTranslator for DashScopeStream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        let v: Value =
            serde_json::from_str(&event.data).map_err(|e| protocol_error(format!("a bad event: {e}")))?;
        if event.event.as_deref() == Some("error") {
            return Err(error_from(NAME, None, &v, None));
        }
        let Some(choice) = v.pointer("/output/choices/0") else {
            return Err(protocol_error("an event without choices"));
        };
        let message = choice.get("message").unwrap_or(&Value::Null);
        if let Some(text) = content_text(message.get("content")).filter(|t| !t.is_empty()) {
            out.push(StreamEvent::Text(text));
        }
        for (position, c) in
            message.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            let index = c.get("index").and_then(Value::as_u64).map_or(position, |i| i as usize);
            // DashScope repeats `id` (often as "") and `type` on every fragment: only the first
            // fragment of a call carries its id and name here.
            let first = !self.tools_seen.contains(&index);
            if first {
                self.tools_seen.push(index);
            }
            let name = c.pointer("/function/name").and_then(Value::as_str).filter(|n| !n.is_empty());
            out.push(StreamEvent::ToolCall {
                index,
                id: first.then(|| call_id(c.get("id").and_then(Value::as_str))),
                name: if first { Some(name.unwrap_or_default().to_string()) } else { None },
                arguments: c.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("").into(),
            });
        }
        match finish_reason(choice.get("finish_reason")) {
            Some(reason) => {
                out.push(StreamEvent::Finish(reason));
                // Cumulative in every event: the last one is the total.
                out.push(StreamEvent::Usage(usage_of(v.get("usage"))));
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// DashScope's OpenAI-compatible mode: OpenAI's request, answer and stream at
/// `/compatible-mode/v1/chat/completions`; its errors use OpenAI's envelope with DashScope's
/// codes in `code` / `type` (`Arrearage`, `data_inspection_failed`, … ❓ seen in client code).
pub struct DashScopeCompatible;

impl Protocol for DashScopeCompatible {
    fn name(&self) -> &'static str {
        COMPATIBLE_NAME
    }

    fn request<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
        stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>> {
        ready(Ok(openai::compatible_request(up, channel, COMPATIBLE_PATH, model, req, stream)))
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        OpenAi.parse_response(body).map_err(|e| e.reported_by(COMPATIBLE_NAME))
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let openai_view = OpenAi.classify(status, headers, body).reported_by(COMPATIBLE_NAME);
        let error = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("error").cloned());
        let code = error.as_ref().and_then(|e| {
            let code = e.get("code").and_then(Value::as_str).filter(|c| !c.is_empty());
            code.or_else(|| e.get("type").and_then(Value::as_str))
        });
        match code.and_then(|c| kind_of_code(c, &openai_view.message)) {
            Some(kind) => UpstreamError { kind, ..openai_view },
            None => openai_view,
        }
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        let mut inner = OpenAi.stream();
        Box::new(RenamedStream(move |event: &SseEvent, out: &mut Vec<StreamEvent>| {
            inner.on_event(event, out).map_err(|e| e.reported_by(COMPATIBLE_NAME))
        }))
    }
}

/// A translator that names this provider in its errors.
struct RenamedStream<F>(F);

impl<F> StreamTranslator for RenamedStream<F>
where
    F: FnMut(&SseEvent, &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> + Send,
{
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        (self.0)(event, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Tool;

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent { event: Some(name.into()), data: data.into() }
    }

    #[test]
    fn requests_ask_for_messages_and_deltas_and_keep_ranges() {
        let mut req = ChatRequest::from_openai(&json!({
            "model": "qwen-plus", "temperature": 2.0, "top_p": 1.0, "seed": 4294967297u64, "stop": "END",
            "max_tokens": 30, "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "system", "content": "brief"},
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
            ]
        }))
        .unwrap();
        req.tools[0] = Tool { name: "w".into(), description: None, parameters: json!({"type": "object"}) };
        let body = request_body("qwen-plus", &req);
        let p = &body["parameters"];
        assert_eq!(
            (p["result_format"].as_str(), p["incremental_output"].as_bool()),
            (Some("message"), Some(true))
        );
        assert_eq!(
            (p["temperature"].as_f64(), p["top_p"].as_f64()),
            (Some(MAX_TEMPERATURE), Some(MAX_TOP_P))
        );
        assert_eq!((p["seed"].as_u64(), p["max_tokens"].as_u64()), (Some(1), Some(30)));
        assert_eq!(p["stop"], json!(["END"]));
        assert_eq!(p["tool_choice"], "auto");
        assert_eq!(p["tools"][0]["function"]["name"], "w");
        let m = body["input"]["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "brief"}));
        assert_eq!(m[2]["content"], "");
        assert_eq!(m[2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(m[3]["role"], "tool");
        assert_eq!(m[3]["tool_call_id"], "call_1");
    }

    #[test]
    fn whole_answers_read_message_and_text_formats() {
        let body = br#"{"output":{"choices":[{"finish_reason":"tool_calls","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"w","arguments":"{\"c\":1}"},"index":0,"type":"function"}]}}]},"usage":{"input_tokens":22,"output_tokens":17,"total_tokens":39},"request_id":"r"}"#;
        let r = DashScope.parse_response(body).unwrap();
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.content, None);
        assert_eq!((r.tool_calls[0].name.as_str(), r.tool_calls[0].arguments.as_str()), ("w", "{\"c\":1}"));
        assert!(r.tool_calls[0].id.starts_with("call_"), "an id is made up: {}", r.tool_calls[0].id);
        assert_eq!(r.usage, Usage { prompt_tokens: 22, completion_tokens: 17 });
        let text = br#"{"output":{"text":"hi","finish_reason":"length"},"usage":{"input_tokens":1,"output_tokens":1},"request_id":"r"}"#;
        let r = DashScope.parse_response(text).unwrap();
        assert_eq!((r.content.as_deref(), r.finish_reason), (Some("hi"), FinishReason::Length));
        let err = DashScope.parse_response(br#"{"code":"Arrearage","message":"pay","request_id":"r"}"#);
        assert_eq!(err.unwrap_err().kind, ErrorKind::QuotaExhausted);
    }

    #[test]
    fn stream_events_are_deltas_until_a_real_finish_reason() {
        let mut s = DashScope.stream();
        let mut out = Vec::new();
        for data in [
            r#"{"output":{"choices":[{"message":{"content":"Hel","role":"assistant"},"finish_reason":"null"}]},"usage":{"input_tokens":9,"output_tokens":1},"request_id":"r"}"#,
            r#"{"output":{"choices":[{"message":{"content":"","role":"assistant","tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"w","arguments":"{\"c\":"}}]},"finish_reason":"null"}]},"usage":{"input_tokens":9,"output_tokens":3},"request_id":"r"}"#,
            r#"{"output":{"choices":[{"message":{"content":"","role":"assistant","tool_calls":[{"index":0,"id":"","type":"function","function":{"arguments":"1}"}}]},"finish_reason":"null"}]},"usage":{"input_tokens":9,"output_tokens":5},"request_id":"r"}"#,
        ] {
            assert!(!s.on_event(&event("result", data), &mut out).unwrap());
        }
        let last = r#"{"output":{"choices":[{"message":{"content":"","role":"assistant"},"finish_reason":"tool_calls"}]},"usage":{"input_tokens":9,"output_tokens":6},"request_id":"r"}"#;
        assert!(s.on_event(&event("result", last), &mut out).unwrap());
        assert_eq!(
            out,
            vec![
                StreamEvent::Text("Hel".into()),
                StreamEvent::ToolCall {
                    index: 0,
                    id: Some("call_a".into()),
                    name: Some("w".into()),
                    arguments: "{\"c\":".into()
                },
                StreamEvent::ToolCall { index: 0, id: None, name: None, arguments: "1}".into() },
                StreamEvent::Finish(FinishReason::ToolCalls),
                StreamEvent::Usage(Usage { prompt_tokens: 9, completion_tokens: 6 }),
            ]
        );
        let mut s = DashScope.stream();
        let err = event(
            "error",
            r#"{"code":"Throttling.AllocationQuota","message":"Allocated quota exceeded","request_id":"r"}"#,
        );
        assert_eq!(s.on_event(&err, &mut out).unwrap_err().kind, ErrorKind::RateLimited);
    }

    #[test]
    fn errors_are_classified_by_code() {
        let h = HeaderMap::new();
        let e = |status, code: &str, msg: &str| {
            let body = json!({"code": code, "message": msg, "request_id": "r"}).to_string();
            DashScope.classify(status, &h, body.as_bytes()).kind
        };
        assert_eq!(e(401, "InvalidApiKey", "Invalid API-key provided."), ErrorKind::Auth);
        assert_eq!(e(429, "Throttling.RateQuota", "Requests rate limit exceeded"), ErrorKind::RateLimited);
        assert_eq!(
            e(400, "Arrearage", "Access denied, please make sure your account is in good standing."),
            ErrorKind::QuotaExhausted
        );
        assert_eq!(
            e(400, "DataInspectionFailed", "Input data may contain inappropriate content."),
            ErrorKind::BadRequest
        );
        assert_eq!(
            e(400, "InvalidParameter", "Range of input length should be [1, 6000]"),
            ErrorKind::ContextLength
        );
        assert_eq!(e(400, "InvalidParameter", "Model not exist."), ErrorKind::NotFound);
        assert_eq!(e(500, "InternalError.Algo", "oops"), ErrorKind::Server);
        assert_eq!(e(403, "AccessDenied.Unpurchased", "no"), ErrorKind::Auth);
        let framed = b"id:1\nevent:error\n:HTTP_STATUS/400\ndata:{\"code\":\"InvalidParameter\",\"message\":\"bad\",\"request_id\":\"r\"}\n\n";
        let err = DashScope.classify(400, &h, framed);
        assert_eq!((err.kind, err.message.as_str()), (ErrorKind::BadRequest, "InvalidParameter: bad"));
        assert_eq!(DashScope.classify(502, &h, b"<html>").kind, ErrorKind::Server);
    }

    #[test]
    fn compatible_mode_reads_dashscope_codes_in_openai_envelopes() {
        let h = HeaderMap::new();
        let arrears = br#"{"error":{"message":"Access denied, please make sure your account is in good standing.","type":"Arrearage","param":null,"code":"Arrearage"},"request_id":"r"}"#;
        let e = DashScopeCompatible.classify(400, &h, arrears);
        assert_eq!((e.kind, e.provider), (ErrorKind::QuotaExhausted, COMPATIBLE_NAME));
        let key = br#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        assert_eq!(DashScopeCompatible.classify(401, &h, key).kind, ErrorKind::Auth);
        let rate = br#"{"error":{"message":"Requests rate limit exceeded","type":"limit_requests","code":"limit_requests"}}"#;
        assert_eq!(DashScopeCompatible.classify(429, &h, rate).kind, ErrorKind::RateLimited);
    }
}
