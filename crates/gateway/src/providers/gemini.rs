//! Google's Gemini API: `POST /v1beta/models/{model}:generateContent` (and
//! `:streamGenerateContent?alt=sse`) with the `x-goog-api-key` header; `contents` of `user` and
//! `model` turns made of parts (`text`, `functionCall`, `functionResponse`), the system prompt in
//! `systemInstruction`, sampling in `generationConfig`. Function calls carry no id, so the gateway
//! makes one up. Each stream event is a whole response holding only the new text, with cumulative
//! `usageMetadata`; the chunk with `finishReason` is the last (there is no end marker). Errors are
//! google.rpc statuses, whose retry hint is a `RetryInfo.retryDelay` detail in the body.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::{BoxFuture, Protocol, StreamTranslator, Upstream, json_body, ready};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError, retry_after_from_headers};
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, FinishReason, Role, StreamEvent, ToolCall, ToolChoice, Usage};

const NAME: &str = "gemini";
/// The version that has `systemInstruction`, tools and every current model.
pub const API_VERSION: &str = "v1beta";
/// The longest retry hint honoured (a per-day quota can ask for hours).
const MAX_RETRY_HINT: Duration = Duration::from_secs(60);

pub struct Gemini;

/// `model` as a path: `gemini-pro` and `models/gemini-pro` both name `models/gemini-pro`; a tuned
/// model (`tunedModels/...`) keeps its collection. Anything outside the characters model names
/// use is percent-encoded, so a name cannot reach another path or a query.
pub(crate) fn model_path(model: &str) -> String {
    let (collection, name) = match model.split_once('/') {
        Some((c @ ("models" | "tunedModels"), name)) => (c, name),
        _ => ("models", model),
    };
    let mut out = String::with_capacity(collection.len() + 1 + name.len());
    out.push_str(collection);
    out.push('/');
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A JSON Schema as Gemini's function declarations take it: the OpenAPI subset has no `$schema`
/// or `additionalProperties`, and the API refuses a request that uses them.
fn declaration_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "$schema" | "additionalProperties" | "strict"))
                .map(|(k, v)| (k.clone(), declaration_schema(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(declaration_schema).collect()),
        other => other.clone(),
    }
}

/// A tool result as `functionResponse.response`, which must be a JSON object: an object result
/// is sent as it is, anything else under `output` (the key Google's SDKs use).
fn function_response(content: Option<&str>) -> Value {
    let content = content.unwrap_or("");
    match serde_json::from_str::<Value>(content) {
        Ok(v @ Value::Object(_)) => v,
        Ok(v) => json!({"output": v}),
        Err(_) => json!({"output": content}),
    }
}

/// The generateContent request for `req`: system text in `systemInstruction`, assistant turns as
/// `model`, tool results as `functionResponse` parts of a `user` turn named after the function
/// they answer (found by the call id among the earlier assistant turns), consecutive turns of one
/// role merged (the API wants them to alternate).
pub fn request_body(req: &ChatRequest) -> Value {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, parts) = match m.role {
            Role::System | Role::Developer => continue,
            Role::User => ("user", vec![json!({"text": m.content.clone().unwrap_or_default()})]),
            Role::Tool | Role::Function => {
                let called = m.tool_call_id.as_deref().and_then(|id| {
                    req.messages[..i]
                        .iter()
                        .rev()
                        .flat_map(|earlier| earlier.tool_calls.iter())
                        .find(|c| c.id == id)
                        .map(|c| c.name.clone())
                });
                let name =
                    called.or_else(|| m.name.clone()).or_else(|| m.tool_call_id.clone()).unwrap_or_default();
                (
                    "user",
                    vec![
                        json!({"functionResponse": {"name": name, "response": function_response(m.content.as_deref())}}),
                    ],
                )
            }
            Role::Assistant => {
                let mut parts = Vec::new();
                if let Some(text) = m.content.as_deref().filter(|t| !t.is_empty()) {
                    parts.push(json!({"text": text}));
                }
                for c in &m.tool_calls {
                    let args: Value = serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
                    parts.push(json!({"functionCall": {"name": c.name, "args": args}}));
                }
                if parts.is_empty() {
                    continue; // an empty turn: the API refuses turns without parts
                }
                ("model", parts)
            }
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    let contents: Vec<Value> =
        turns.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect();
    let mut body = Map::new();
    body.insert("contents".into(), contents.into());
    if let Some(system) = req.system_text() {
        body.insert("systemInstruction".into(), json!({"parts": [{"text": system}]}));
    }
    let mut config = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            config.insert(k.into(), v);
        }
    };
    // Gemini's temperature runs 0-2 like OpenAI's.
    put("temperature", req.temperature.map(Value::from));
    put("topP", req.top_p.map(Value::from));
    put("maxOutputTokens", req.max_tokens.map(Value::from));
    put("stopSequences", (!req.stop.is_empty()).then(|| json!(req.stop)));
    put("presencePenalty", req.presence_penalty.map(Value::from));
    put("frequencyPenalty", req.frequency_penalty.map(Value::from));
    put("seed", req.seed.map(Value::from));
    if !config.is_empty() {
        body.insert("generationConfig".into(), config.into());
    }
    if !req.tools.is_empty() {
        let declarations: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name});
                if let Some(desc) = &t.description {
                    d["description"] = desc.clone().into();
                }
                // A function without arguments has no schema (an empty object one is refused).
                let has_properties =
                    t.parameters.get("properties").and_then(Value::as_object).is_some_and(|p| !p.is_empty());
                if has_properties {
                    d["parameters"] = declaration_schema(&t.parameters);
                }
                d
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    if let Some(choice) = &req.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Function(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body.insert("toolConfig".into(), json!({"functionCallingConfig": config}));
    }
    Value::Object(body)
}

/// A `finishReason`, or the error it stands for (a function call the model could not form is a
/// failed answer, not a finished one; a retry may well succeed).
fn finish_reason(reason: &str, finish_message: Option<&str>) -> Result<FinishReason, UpstreamError> {
    Ok(match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY"
        | "LANGUAGE" => FinishReason::ContentFilter,
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" => {
            let detail = finish_message.map(|m| format!(": {m}")).unwrap_or_default();
            return Err(UpstreamError::new(
                NAME,
                ErrorKind::Server,
                format!("the model produced an unusable function call ({reason}){detail}"),
            ));
        }
        _ => FinishReason::Stop, // STOP, OTHER, FINISH_REASON_UNSPECIFIED
    })
}

/// `usageMetadata`: thinking tokens are billed as output, so they count as completion.
fn usage_of(v: &Value) -> Usage {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        prompt_tokens: n("promptTokenCount"),
        completion_tokens: n("candidatesTokenCount") + n("thoughtsTokenCount"),
    }
}

fn protocol_error(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(NAME, ErrorKind::Protocol, msg)
}

/// An id for a function call (Gemini gives none; newer models sometimes do, and theirs is kept).
fn call_id(call: &Value) -> String {
    match call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty()) {
        Some(id) => id.to_string(),
        None => format!("call_{:016x}", fastrand::u64(..)),
    }
}

/// A protobuf `Duration` in JSON: `"1.5s"` (or, rarely, `{"seconds": 1, "nanos": 500000000}`).
pub(crate) fn parse_duration(v: &Value) -> Option<Duration> {
    let secs = match v {
        Value::String(s) => s.trim().strip_suffix('s')?.parse::<f64>().ok()?,
        Value::Object(o) => {
            let seconds = match o.get("seconds") {
                Some(Value::String(s)) => s.parse::<f64>().ok()?,
                Some(n) => n.as_f64()?,
                None => 0.0,
            };
            seconds + o.get("nanos").and_then(Value::as_f64).unwrap_or(0.0) / 1e9
        }
        _ => return None,
    };
    // Capped before converting: a huge figure would not fit a Duration.
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_HINT.as_secs_f64())))
}

/// The detail of type `google.rpc.<kind>` in a status's `details`.
fn detail<'a>(error: &'a Value, kind: &str) -> Option<&'a Value> {
    error
        .get("details")
        .and_then(Value::as_array)?
        .iter()
        .find(|d| d.get("@type").and_then(Value::as_str).is_some_and(|t| t.rsplit('/').next() == Some(kind)))
}

/// A google.rpc status (`{"code", "message", "status", "details"}`) as an error, for Gemini and
/// PaLM alike. `http` is the HTTP status, absent for an error inside a stream.
pub(crate) fn status_error(
    provider: &'static str,
    http: Option<u16>,
    error: &Value,
    header_hint: Option<Duration>,
) -> UpstreamError {
    let message = error.get("message").and_then(Value::as_str).unwrap_or("(no message)").to_string();
    let status = error.get("status").and_then(Value::as_str).unwrap_or("");
    let code = http.or_else(|| error.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()));
    let lower = message.to_lowercase();
    let reason = detail(error, "google.rpc.ErrorInfo").and_then(|d| d.get("reason")).and_then(Value::as_str);
    let per_day = detail(error, "google.rpc.QuotaFailure")
        .and_then(|d| d.get("violations"))
        .and_then(Value::as_array)
        .is_some_and(|v| {
            v.iter().any(|v| v.get("quotaId").and_then(Value::as_str).is_some_and(|q| q.contains("PerDay")))
        });
    let retry_after = detail(error, "google.rpc.RetryInfo")
        .and_then(|d| d.get("retryDelay"))
        .and_then(parse_duration)
        .or(header_hint);
    let kind = if matches!(reason, Some("API_KEY_INVALID" | "API_KEY_EXPIRED" | "API_KEY_SERVICE_BLOCKED"))
        || lower.contains("api key not valid")
        || lower.contains("api key expired")
    {
        // Google answers a bad key with 400 INVALID_ARGUMENT: only the detail tells.
        ErrorKind::Auth
    } else if lower.contains("input token count") && lower.contains("exceeds") {
        ErrorKind::ContextLength
    } else {
        match (status, code) {
            ("UNAUTHENTICATED" | "PERMISSION_DENIED", _) | (_, Some(401 | 403)) => ErrorKind::Auth,
            // A free tier not offered in the channel's region: the channel's problem.
            ("FAILED_PRECONDITION", _) => ErrorKind::Auth,
            ("RESOURCE_EXHAUSTED", _) | (_, Some(429)) if per_day => ErrorKind::QuotaExhausted,
            ("RESOURCE_EXHAUSTED", _) | (_, Some(429)) => ErrorKind::RateLimited,
            ("NOT_FOUND", _) | (_, Some(404)) => ErrorKind::NotFound,
            ("DEADLINE_EXCEEDED", _) | (_, Some(504)) => ErrorKind::Timeout,
            ("INTERNAL" | "UNAVAILABLE" | "UNKNOWN", _) => ErrorKind::Server,
            (_, Some(c)) if c >= 500 => ErrorKind::Server,
            (_, None) => ErrorKind::Server,
            _ => ErrorKind::BadRequest,
        }
    };
    // A quota that resets tomorrow is not worth waiting for.
    let retry_after = retry_after.filter(|_| kind == ErrorKind::RateLimited);
    let mut e = UpstreamError::new(provider, kind, message).with_retry_after(retry_after);
    e.status = http;
    e
}

/// An unsuccessful answer: the status object, also when wrapped in an array (the JSON-array
/// stream form), else the bare HTTP status.
pub(crate) fn classify_body(
    provider: &'static str,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> UpstreamError {
    let hint = retry_after_from_headers(headers);
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error").or_else(|| v.pointer("/0/error")));
    let fallback = json!({"message": format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]))});
    status_error(provider, Some(status), error.unwrap_or(&fallback), hint)
}

impl Protocol for Gemini {
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
        let method = if stream { "streamGenerateContent?alt=sse" } else { "generateContent" };
        let url = format!("{}/{API_VERSION}/{}:{method}", channel.base_url(), model_path(model));
        ready(Ok(up
            .http
            .post(url)
            .header("x-goog-api-key", channel.api_key.expose())
            .json(&request_body(req))))
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(NAME, body)?;
        if let Some(error) = v.get("error") {
            return Err(status_error(NAME, None, error, None));
        }
        let usage = v.get("usageMetadata").map(usage_of).unwrap_or_default();
        let Some(candidate) = v.pointer("/candidates/0") else {
            // No candidate: the prompt itself was blocked (promptFeedback.blockReason says why).
            if v.pointer("/promptFeedback/blockReason").is_some() {
                return Ok(ChatResponse {
                    content: None,
                    tool_calls: Vec::new(),
                    finish_reason: FinishReason::ContentFilter,
                    usage,
                });
            }
            return Err(protocol_error("an answer without candidates"));
        };
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for part in candidate.pointer("/content/parts").and_then(Value::as_array).into_iter().flatten() {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue; // a thinking summary, not the answer
            }
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                text.push_str(t);
            } else if let Some(call) = part.get("functionCall") {
                tool_calls.push(ToolCall {
                    id: call_id(call),
                    name: call.get("name").and_then(Value::as_str).unwrap_or_default().into(),
                    arguments: call.get("args").map_or("{}".into(), Value::to_string),
                });
            }
        }
        let reason = candidate.get("finishReason").and_then(Value::as_str).unwrap_or("STOP");
        let mut finish = finish_reason(reason, candidate.get("finishMessage").and_then(Value::as_str))?;
        // Gemini says STOP after a function call; OpenAI clients look for tool_calls.
        if finish == FinishReason::Stop && !tool_calls.is_empty() {
            finish = FinishReason::ToolCalls;
        }
        Ok(ChatResponse {
            content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
            tool_calls,
            finish_reason: finish,
            usage,
        })
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        classify_body(NAME, status, headers, body)
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(GeminiStream::default())
    }
}

#[derive(Default)]
struct GeminiStream {
    /// Function calls seen so far (each arrives whole, in one part).
    tool_calls: usize,
    /// The latest `usageMetadata`: cumulative, so it replaces rather than adds.
    usage: Usage,
}

impl StreamTranslator for GeminiStream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        let v: Value =
            serde_json::from_str(&event.data).map_err(|e| protocol_error(format!("a bad chunk: {e}")))?;
        if let Some(error) = v.get("error") {
            return Err(status_error(NAME, None, error, None));
        }
        if let Some(u) = v.get("usageMetadata") {
            self.usage = usage_of(u);
        }
        let Some(candidate) = v.pointer("/candidates/0") else {
            if v.pointer("/promptFeedback/blockReason").is_some() {
                out.push(StreamEvent::Finish(FinishReason::ContentFilter));
                out.push(StreamEvent::Usage(self.usage));
                return Ok(true);
            }
            return Ok(false); // a usage-only chunk
        };
        for part in candidate.pointer("/content/parts").and_then(Value::as_array).into_iter().flatten() {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                if !t.is_empty() {
                    out.push(StreamEvent::Text(t.to_string()));
                }
            } else if let Some(call) = part.get("functionCall") {
                out.push(StreamEvent::ToolCall {
                    index: self.tool_calls,
                    id: Some(call_id(call)),
                    name: Some(call.get("name").and_then(Value::as_str).unwrap_or_default().into()),
                    arguments: call.get("args").map_or("{}".into(), Value::to_string),
                });
                self.tool_calls += 1;
            }
        }
        let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) else {
            return Ok(false);
        };
        let mut finish = finish_reason(reason, candidate.get("finishMessage").and_then(Value::as_str))?;
        if finish == FinishReason::Stop && self.tool_calls > 0 {
            finish = FinishReason::ToolCalls;
        }
        out.push(StreamEvent::Finish(finish));
        out.push(StreamEvent::Usage(self.usage));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Tool;

    #[test]
    fn requests_use_gemini_roles_parts_and_config() {
        let mut req = ChatRequest::from_openai(&json!({
            "model": "gemini-pro", "temperature": 0.3, "top_p": 0.9, "max_tokens": 64, "stop": ["END"],
            "messages": [
                {"role": "system", "content": "brief"},
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"c\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
                {"role": "user", "content": "thanks"}
            ],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "tools": [{"type": "function", "function": {"name": "weather"}}]
        }))
        .unwrap();
        req.tools.clear();
        req.tools.push(Tool {
            name: "weather".into(),
            description: Some("w".into()),
            parameters: json!({"$schema": "x", "type": "object", "properties": {"c": {"type": "string"}}, "additionalProperties": false}),
        });
        req.tools.push(Tool {
            name: "now".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {}}),
        });
        let body = request_body(&req);
        assert_eq!(body["systemInstruction"], json!({"parts": [{"text": "brief"}]}));
        assert_eq!(
            body["generationConfig"],
            json!({"temperature": 0.3, "topP": 0.9, "maxOutputTokens": 64, "stopSequences": ["END"]})
        );
        let c = body["contents"].as_array().unwrap();
        assert_eq!(c.len(), 3, "{c:?}"); // user, model, user(functionResponse + text)
        assert_eq!(
            c[1],
            json!({"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {"c": "Paris"}}}]})
        );
        assert_eq!(
            c[2]["parts"],
            json!([{"functionResponse": {"name": "weather", "response": {"output": "sunny"}}}, {"text": "thanks"}])
        );
        let decl = &body["tools"][0]["functionDeclarations"];
        assert_eq!(decl[0]["parameters"], json!({"type": "object", "properties": {"c": {"type": "string"}}}));
        assert_eq!(decl[1], json!({"name": "now"}));
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
        );
    }

    #[test]
    fn model_names_stay_one_path_segment() {
        assert_eq!(model_path("gemini-1.5-flash"), "models/gemini-1.5-flash");
        assert_eq!(model_path("models/gemini-pro"), "models/gemini-pro");
        assert_eq!(model_path("tunedModels/my-model"), "tunedModels/my-model");
        assert_eq!(model_path("x/../y?key=1"), "models/x%2F..%2Fy%3Fkey%3D1");
    }

    #[test]
    fn whole_answers_with_calls_filters_and_thoughts() {
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"thinking...","thought":true},{"text":"Let me see. "},{"functionCall":{"name":"weather","args":{"c":"Paris"}}}]},"finishReason":"STOP","index":0}],
            "usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5,"thoughtsTokenCount":3,"totalTokenCount":18}}"#;
        let r = Gemini.parse_response(body).unwrap();
        assert_eq!(r.content.as_deref(), Some("Let me see. "));
        assert_eq!(
            (r.tool_calls[0].name.as_str(), r.tool_calls[0].arguments.as_str()),
            ("weather", "{\"c\":\"Paris\"}")
        );
        assert!(r.tool_calls[0].id.starts_with("call_"));
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.usage, Usage { prompt_tokens: 10, completion_tokens: 8 });

        let blocked =
            br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":4}}"#;
        let r = Gemini.parse_response(blocked).unwrap();
        assert_eq!((r.content, r.finish_reason), (None, FinishReason::ContentFilter));
        let cut = br#"{"candidates":[{"content":{"parts":[{"text":"a b"}]},"finishReason":"MAX_TOKENS"}]}"#;
        assert_eq!(Gemini.parse_response(cut).unwrap().finish_reason, FinishReason::Length);
        let malformed = br#"{"candidates":[{"content":{"parts":[]},"finishReason":"MALFORMED_FUNCTION_CALL","finishMessage":"bad json"}]}"#;
        let e = Gemini.parse_response(malformed).unwrap_err();
        assert!(e.kind == ErrorKind::Server && e.message.contains("bad json"), "{e}");
        assert_eq!(Gemini.parse_response(b"{}").unwrap_err().kind, ErrorKind::Protocol);
    }

    #[test]
    fn stream_chunks_carry_new_text_and_cumulative_usage() {
        let mut s = Gemini.stream();
        let mut out = Vec::new();
        for data in [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":1,"totalTokenCount":8}}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"lo"}]},"index":0}],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":2,"totalTokenCount":9}}"#,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"f","args":{"a":1}}}]},"index":0}],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":4}}"#,
        ] {
            assert!(!s.on_event(&SseEvent { event: None, data: data.into() }, &mut out).unwrap());
        }
        let last = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":""}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":5,"totalTokenCount":12}}"#;
        assert!(s.on_event(&SseEvent { event: None, data: last.into() }, &mut out).unwrap());
        assert_eq!(out[..2], [StreamEvent::Text("Hel".into()), StreamEvent::Text("lo".into())]);
        let StreamEvent::ToolCall { index: 0, id: Some(id), name: Some(name), arguments } = &out[2] else {
            panic!("{out:?}")
        };
        assert!(id.starts_with("call_") && name == "f" && arguments == "{\"a\":1}");
        assert_eq!(
            out[3..],
            [
                StreamEvent::Finish(FinishReason::ToolCalls),
                // The last figure, not the sum of the chunks' figures.
                StreamEvent::Usage(Usage { prompt_tokens: 7, completion_tokens: 5 }),
            ]
        );

        let mut s = Gemini.stream();
        let err = r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;
        let e = s.on_event(&SseEvent { event: None, data: err.into() }, &mut out).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Server);
        let mut s = Gemini.stream();
        let safety = r#"{"candidates":[{"content":{"parts":[]},"finishReason":"SAFETY"}]}"#;
        let mut out = Vec::new();
        assert!(s.on_event(&SseEvent { event: None, data: safety.into() }, &mut out).unwrap());
        assert_eq!(out[0], StreamEvent::Finish(FinishReason::ContentFilter));
    }

    #[test]
    fn errors_are_classified_with_their_details() {
        let h = HeaderMap::new();
        let c = |status, body: Value| Gemini.classify(status, &h, body.to_string().as_bytes());
        let bad_key = c(
            400,
            json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}),
        );
        assert_eq!(bad_key.kind, ErrorKind::Auth);
        let rate = c(
            429,
            json!({"error": {"code": 429, "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}}),
        );
        assert_eq!(
            (rate.kind, rate.retry_after),
            (ErrorKind::RateLimited, Some(Duration::from_millis(1500)))
        );
        let daily = c(
            429,
            json!({"error": {"code": 429, "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "45.837906927s"}]}}),
        );
        assert_eq!((daily.kind, daily.retry_after), (ErrorKind::QuotaExhausted, None));
        let ctx = c(
            400,
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."}}),
        );
        assert_eq!(ctx.kind, ErrorKind::ContextLength);
        let denied = json!({"error": {"code": 403, "message": "no", "status": "PERMISSION_DENIED"}});
        assert_eq!(c(403, denied).kind, ErrorKind::Auth);
        let wrapped = json!([{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}]);
        assert_eq!(c(503, wrapped).kind, ErrorKind::Server);
        assert_eq!(
            c(
                404,
                json!({"error": {"code": 404, "message": "models/x is not found", "status": "NOT_FOUND"}})
            )
            .kind,
            ErrorKind::NotFound
        );
        let invalid = json!({"error": {"code": 400, "message": "Please use a valid role: user, model.", "status": "INVALID_ARGUMENT"}});
        assert_eq!(c(400, invalid).kind, ErrorKind::BadRequest);
        assert_eq!(Gemini.classify(500, &h, b"<html>").kind, ErrorKind::Server);
        assert_eq!(
            parse_duration(&json!({"seconds": "2", "nanos": 500_000_000})),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(parse_duration(&json!("86400s")), Some(MAX_RETRY_HINT));
        assert_eq!(parse_duration(&json!("1e300s")), Some(MAX_RETRY_HINT));
        assert_eq!(parse_duration(&json!("-1s")), None);
        assert_eq!(parse_duration(&json!("soon")), None);
    }
}
