//! OpenAI's chat completions (and any OpenAI-compatible service): `POST /v1/chat/completions`,
//! Bearer key, SSE `data:` chunks ending with `data: [DONE]`, usage in a last chunk when
//! `stream_options.include_usage` is set, errors as `{"error": {message, type, code}}`.

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::{BoxFuture, Protocol, StreamTranslator, Upstream, json_body, ready};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError, retry_after_from_headers};
use crate::sse::SseEvent;
use crate::types::{
    ChatRequest, ChatResponse, FinishReason, Message, ResponseFormat, Role, StreamEvent, ToolCall,
    ToolChoice, Usage, tool_calls_json,
};

const NAME: &str = "openai";

pub struct OpenAi;

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::Developer => "developer",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
        Role::Function => "function",
    }
}

fn message_json(m: &Message) -> Value {
    let mut out = Map::new();
    out.insert("role".into(), role_name(m.role).into());
    let content = match (&m.content, m.images.is_empty()) {
        (text, true) => text.clone().map_or(Value::Null, Value::String),
        // Images as OpenAI's content parts, after the text.
        (text, false) => {
            let mut parts: Vec<Value> =
                text.iter().filter(|t| !t.is_empty()).map(|t| json!({"type": "text", "text": t})).collect();
            parts
                .extend(m.images.iter().map(|i| json!({"type": "image_url", "image_url": {"url": i.url()}})));
            Value::Array(parts)
        }
    };
    out.insert("content".into(), content);
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

/// The request body OpenAI expects (also what baimo's own API reads).
pub fn request_body(model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("messages".into(), req.messages.iter().map(message_json).collect());
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    };
    put("max_tokens", req.max_tokens.map(Value::from));
    put("temperature", req.temperature.map(Value::from));
    put("top_p", req.top_p.map(Value::from));
    put("presence_penalty", req.presence_penalty.map(Value::from));
    put("frequency_penalty", req.frequency_penalty.map(Value::from));
    put("seed", req.seed.map(Value::from));
    put("user", req.user.clone().map(Value::from));
    put("stop", (!req.stop.is_empty()).then(|| json!(req.stop)));
    put("n", (req.n != 1).then(|| json!(req.n)));
    put("logprobs", req.logprobs.map(|_| json!(true)));
    put("top_logprobs", req.logprobs.filter(|&k| k > 0).map(Value::from));
    if !req.logit_bias.is_empty() {
        let bias: Map<String, Value> =
            req.logit_bias.iter().map(|(t, b)| (t.to_string(), json!(b))).collect();
        put("logit_bias", Some(Value::Object(bias)));
    }
    put(
        "response_format",
        req.response_format.as_ref().map(|f| match f {
            ResponseFormat::Text => json!({"type": "text"}),
            ResponseFormat::JsonObject => json!({"type": "json_object"}),
            ResponseFormat::JsonSchema { name, schema, strict } => {
                json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}})
            }
        }),
    );
    if !req.parallel_tool_calls && !req.tools.is_empty() {
        put("parallel_tool_calls", Some(false.into()));
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
            .collect();
        put("tools", Some(tools.into()));
    }
    put(
        "tool_choice",
        req.tool_choice.as_ref().map(|c| match c {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
        }),
    );
    if stream {
        put("stream", Some(true.into()));
        // Always asked for, so usage is known even when the client did not ask.
        put("stream_options", Some(json!({"include_usage": true})));
    }
    Value::Object(body)
}

/// An OpenAI-shaped chat request to `path` of the channel with its key as Bearer: what every
/// OpenAI-compatible service takes (they differ in the path, and some in extra headers).
pub(crate) fn compatible_request(
    up: &Upstream,
    channel: &Channel,
    path: &str,
    model: &str,
    req: &ChatRequest,
    stream: bool,
) -> reqwest::RequestBuilder {
    up.http
        .post(format!("{}{path}", channel.base_url()))
        .bearer_auth(channel.api_key.expose())
        .json(&request_body(model, req, stream))
}

pub(crate) fn finish_reason(s: &str) -> FinishReason {
    match s {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn usage_of(v: &Value) -> Usage {
    Usage {
        prompt_tokens: v.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        completion_tokens: v.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
    }
}

fn protocol_error(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(NAME, ErrorKind::Protocol, msg)
}

/// An `{"error": {...}}` object's kind, from its type, code and the HTTP status.
fn error_from(status: Option<u16>, error: &Value, retry_after: Option<std::time::Duration>) -> UpstreamError {
    let message = error.get("message").and_then(Value::as_str).unwrap_or("(no message)").to_string();
    let code = error.get("code").and_then(Value::as_str).unwrap_or("");
    let kind_str = error.get("type").and_then(Value::as_str).unwrap_or("");
    let kind = if code == "insufficient_quota" || kind_str == "insufficient_quota" {
        ErrorKind::QuotaExhausted
    } else if code == "context_length_exceeded" {
        ErrorKind::ContextLength
    } else {
        match status {
            Some(401 | 403) => ErrorKind::Auth,
            Some(404) => ErrorKind::NotFound,
            Some(408) => ErrorKind::Timeout,
            Some(429) => ErrorKind::RateLimited,
            Some(s) if s >= 500 => ErrorKind::Server,
            Some(_) => ErrorKind::BadRequest,
            None => ErrorKind::Server, // an error event inside a stream
        }
    };
    let mut e = UpstreamError::new(NAME, kind, message).with_retry_after(retry_after);
    e.status = status;
    e
}

impl Protocol for OpenAi {
    fn name(&self) -> &'static str {
        NAME
    }

    fn honours(&self) -> &'static [&'static str] {
        &["logit_bias", "response_format"]
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
        ready(Ok(compatible_request(up, channel, "/v1/chat/completions", model, req, stream)))
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(NAME, body)?;
        if let Some(error) = v.get("error") {
            return Err(error_from(None, error, None));
        }
        let choice = v.pointer("/choices/0").ok_or_else(|| protocol_error("an answer without choices"))?;
        let message = choice.get("message").ok_or_else(|| protocol_error("a choice without a message"))?;
        let mut tool_calls = Vec::new();
        for c in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            tool_calls.push(ToolCall {
                id: c.get("id").and_then(Value::as_str).unwrap_or_default().into(),
                name: c.pointer("/function/name").and_then(Value::as_str).unwrap_or_default().into(),
                arguments: c.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}").into(),
            });
        }
        if let Some(f) = message.get("function_call").filter(|f| f.is_object()) {
            tool_calls.push(ToolCall {
                id: String::new(),
                name: f.get("name").and_then(Value::as_str).unwrap_or_default().into(),
                arguments: f.get("arguments").and_then(Value::as_str).unwrap_or("{}").into(),
            });
        }
        Ok(ChatResponse {
            content: message.get("content").and_then(Value::as_str).map(String::from),
            tool_calls,
            finish_reason: finish_reason(
                choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop"),
            ),
            usage: v.get("usage").map(usage_of).unwrap_or_default(),
        })
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let retry_after = retry_after_from_headers(headers);
        match serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("error").cloned()) {
            Some(error) => error_from(Some(status), &error, retry_after),
            None => error_from(
                Some(status),
                &json!({"message": format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]))}),
                retry_after,
            ),
        }
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(OpenAiStream::default())
    }
}

#[derive(Default)]
struct OpenAiStream {
    finished: bool,
}

impl StreamTranslator for OpenAiStream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        if event.data.trim() == "[DONE]" {
            return Ok(true);
        }
        let v: Value =
            serde_json::from_str(&event.data).map_err(|e| protocol_error(format!("a bad chunk: {e}")))?;
        if let Some(error) = v.get("error") {
            return Err(error_from(None, error, None));
        }
        if let Some(choice) = v.pointer("/choices/0") {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                out.push(StreamEvent::Text(text.to_string()));
            }
            for c in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                out.push(StreamEvent::ToolCall {
                    index: c.get("index").and_then(Value::as_u64).unwrap_or(0) as usize,
                    id: c.get("id").and_then(Value::as_str).map(String::from),
                    name: c.pointer("/function/name").and_then(Value::as_str).map(String::from),
                    arguments: c.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("").into(),
                });
            }
            if let Some(f) = delta.get("function_call").filter(|f| f.is_object()) {
                out.push(StreamEvent::ToolCall {
                    index: 0,
                    id: None,
                    name: f.get("name").and_then(Value::as_str).map(String::from),
                    arguments: f.get("arguments").and_then(Value::as_str).unwrap_or("").into(),
                });
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str)
                && !self.finished
            {
                self.finished = true;
                out.push(StreamEvent::Finish(finish_reason(reason)));
            }
        }
        if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
            out.push(StreamEvent::Usage(usage_of(usage)));
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_the_fields_openai_honours_are_passed_on_and_others_refused() {
        let req = ChatRequest::from_openai(&json!({
            "model": "gpt-4o", "logit_bias": {"42": -100}, "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": true}},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
        }))
        .unwrap();
        let body = request_body("gpt-4o", &req, false);
        assert_eq!(
            body["messages"][0]["content"],
            json!([{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
        );
        assert_eq!(
            (body["logit_bias"]["42"].as_f64(), &body["parallel_tool_calls"]),
            (Some(-100.0), &json!(false))
        );
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        assert!(super::super::refuse_unsupported(&OpenAi, &req).is_ok());
        let mut with_top_k = req.clone();
        with_top_k.top_k = Some(5);
        let e = super::super::refuse_unsupported(&OpenAi, &with_top_k).unwrap_err();
        assert!(e.message.contains("`top_k`"), "{e}");
        // A text-only API refuses the image, naming why.
        let e = super::super::refuse_unsupported(&super::super::zhipu_v3::ZhipuV3, &req).unwrap_err();
        assert!(e.message.contains("logit_bias") || e.message.contains("images"), "{e}");
    }

    #[test]
    fn stream_chunks_become_events() {
        let mut s = OpenAi.stream();
        let mut out = Vec::new();
        for data in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_9","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
        ] {
            assert!(!s.on_event(&SseEvent { event: None, data: data.into() }, &mut out).unwrap());
        }
        assert!(s.on_event(&SseEvent { event: None, data: "[DONE]".into() }, &mut out).unwrap());
        assert_eq!(
            out,
            vec![
                StreamEvent::Text("Hel".into()),
                StreamEvent::ToolCall {
                    index: 0,
                    id: Some("call_9".into()),
                    name: Some("f".into()),
                    arguments: "".into()
                },
                StreamEvent::ToolCall { index: 0, id: None, name: None, arguments: "{\"a\":1}".into() },
                StreamEvent::Finish(FinishReason::ToolCalls),
                StreamEvent::Usage(Usage { prompt_tokens: 5, completion_tokens: 7 }),
            ]
        );
    }

    #[test]
    fn errors_are_classified() {
        let h = HeaderMap::new();
        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(OpenAi.classify(429, &h, quota).kind, ErrorKind::QuotaExhausted);
        let rate =
            br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert_eq!(OpenAi.classify(429, &h, rate).kind, ErrorKind::RateLimited);
        let ctx = br#"{"error":{"message":"maximum context length","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        assert_eq!(OpenAi.classify(400, &h, ctx).kind, ErrorKind::ContextLength);
        assert_eq!(OpenAi.classify(401, &h, b"not json").kind, ErrorKind::Auth);
        assert_eq!(OpenAi.classify(503, &h, b"").kind, ErrorKind::Server);
    }
}
