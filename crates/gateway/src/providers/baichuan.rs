//! Baichuan (百川). Current API ([`Baichuan`], Dec 2023+): OpenAI's chat completions at
//! `/v1/chat/completions` with a Bearer key (sampling ranges narrower: temperature [0, 1], top_p
//! [0, 1)); some chunks were seen wrapped in a `data` object. Legacy API ([`BaichuanLegacy`],
//! Sept–Nov 2023, ⚠️ from client code): `/v1/chat` and `/v1/stream/chat`, each request signed with
//! `X-BC-Signature = md5_hex(secret_key + body + timestamp)`; answers and errors are
//! `{code, msg, data: {messages}}` in a 200, the stream is newline-delimited JSON, not SSE.

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use md5::{Digest, Md5};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::http::{self, ByteStream};
use super::openai::{self, OpenAi};
use super::{BoxFuture, EventStream, Protocol, StreamTranslator, Upstream, json_body, ready};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError};
use crate::sse::{MAX_EVENT_BYTES, SseEvent};
use crate::types::{ChatRequest, ChatResponse, FinishReason, StreamEvent, Usage};

const NAME: &str = "baichuan";
const LEGACY_NAME: &str = "baichuan-legacy";
pub const CHAT_PATH: &str = "/v1/chat/completions";
pub const LEGACY_PATH: &str = "/v1/chat";
pub const LEGACY_STREAM_PATH: &str = "/v1/stream/chat";
const MAX_TOP_P: f64 = 0.99;

/// What a legacy numeric code (also seen in some current answers ❓) stands for.
fn kind_of_code(code: u64) -> Option<ErrorKind> {
    Some(match code {
        10100..=10106 | 10200..=10202 | 10301 => ErrorKind::Auth,
        10203 => ErrorKind::RateLimited,
        10300 => ErrorKind::QuotaExhausted,
        10000 | 10400 | 10401 => ErrorKind::BadRequest,
        1 | 10500 => ErrorKind::Server,
        _ => return None,
    })
}

/// The current API's body: OpenAI's, sampling kept inside Baichuan's ranges.
pub fn request_body(model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut body = openai::request_body(model, req, stream);
    if let Some(t) = req.temperature {
        body["temperature"] = t.clamp(0.0, 1.0).into();
    }
    if let Some(p) = req.top_p {
        body["top_p"] = p.clamp(0.0, MAX_TOP_P).into();
    }
    body
}

/// Baichuan's current API: OpenAI's protocol with its own error codes and chunk quirk.
pub struct Baichuan;

impl Protocol for Baichuan {
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
        ready(Ok(up
            .http
            .post(format!("{}{CHAT_PATH}", channel.base_url()))
            .bearer_auth(channel.api_key.expose())
            .json(&request_body(model, req, stream))))
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        OpenAi.parse_response(body).map_err(|e| e.reported_by(NAME))
    }

    /// OpenAI's reading, corrected where Baichuan's code says more: running out of balance is
    /// quota, not throttling (❓ code names as seen in client code).
    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let mut e = OpenAi.classify(status, headers, body).reported_by(NAME);
        let v = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        let error = v.get("error").unwrap_or(&v);
        let code = error.get("code");
        let text = |k: &str| error.get(k).and_then(Value::as_str).unwrap_or("").to_lowercase();
        let numeric = code.and_then(|c| c.as_u64().or_else(|| c.as_str().and_then(|s| s.parse().ok())));
        if let Some(kind) = numeric.and_then(kind_of_code) {
            e.kind = kind;
        } else if ["insufficient_quota", "insufficient_balance"]
            .iter()
            .any(|q| text("code") == *q || text("type") == *q)
            || text("message").contains("余额不足")
            || text("message").contains("insufficient balance")
        {
            e.kind = ErrorKind::QuotaExhausted;
        }
        e
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(BaichuanStream { inner: OpenAi.stream() })
    }
}

/// OpenAI's chunks; a chunk wrapped in `{"data": {…}}` (seen by one gateway) is unwrapped first.
struct BaichuanStream {
    inner: Box<dyn StreamTranslator>,
}

impl StreamTranslator for BaichuanStream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        let unwrapped = serde_json::from_str::<Value>(&event.data)
            .ok()
            .and_then(|v| v.get("data").filter(|d| d.get("choices").is_some()).cloned());
        let result = match unwrapped {
            Some(inner) => {
                self.inner.on_event(&SseEvent { event: event.event.clone(), data: inner.to_string() }, out)
            }
            None => self.inner.on_event(event, out),
        };
        result.map_err(|e| e.reported_by(NAME))
    }
}

/// The legacy signature: lowercase hex MD5 of `secret_key + body + timestamp`.
pub fn legacy_signature(secret_key: &str, body: &str, timestamp: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(secret_key.as_bytes());
    md5.update(body.as_bytes());
    md5.update(timestamp.as_bytes());
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The legacy body: user/assistant turns (no system role: its text opens the first user turn,
/// ⚠️), sampling under `parameters`.
pub fn legacy_request_body(model: &str, req: &ChatRequest) -> Value {
    let mut messages = super::alternating_turns(Vec::new(), req);
    if let Some(system) = req.system_text()
        && let Some(first) = messages.iter_mut().find(|m| m["role"] == "user")
    {
        first["content"] = format!("{system}\n\n{}", first["content"].as_str().unwrap_or("")).into();
    }
    let mut parameters = serde_json::Map::new();
    if let Some(t) = req.temperature {
        parameters.insert("temperature".into(), t.clamp(0.0, 1.0).into());
    }
    if let Some(p) = req.top_p {
        parameters.insert("top_p".into(), p.clamp(0.0, MAX_TOP_P).into());
    }
    json!({"model": model, "messages": messages, "parameters": parameters})
}

fn legacy_usage(v: Option<&Value>) -> Usage {
    let n = |k: &str| v.and_then(|u| u.get(k)).and_then(Value::as_u64);
    Usage {
        prompt_tokens: n("prompt_tokens").unwrap_or(0),
        // Reported as `answer_tokens` by clients of the time (❓ not confirmed).
        completion_tokens: n("answer_tokens").or(n("completion_tokens")).unwrap_or(0),
    }
}

/// A legacy envelope with `code != 0` as an error.
fn legacy_error(v: &Value) -> Option<UpstreamError> {
    let code = v.get("code").and_then(Value::as_u64)?;
    if code == 0 {
        return None;
    }
    let message = v.get("msg").and_then(Value::as_str).unwrap_or("(no message)");
    let kind = kind_of_code(code).unwrap_or(ErrorKind::BadRequest);
    Some(UpstreamError::new(LEGACY_NAME, kind, format!("{code}: {message}")))
}

fn legacy_finish(reason: &str) -> FinishReason {
    match reason {
        "max_tokens" | "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// Baichuan's 2023 API, signed with the channel's secret key.
pub struct BaichuanLegacy;

impl Protocol for BaichuanLegacy {
    fn check(&self, channel: &Channel) -> Result<(), String> {
        super::require(&channel.secret_key, "baichuan-legacy", "secret_key", " (it signs each request)")
            .map(drop)
    }

    fn name(&self) -> &'static str {
        LEGACY_NAME
    }

    fn request<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
        stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>> {
        let Some(secret) = channel.secret_key.as_ref() else {
            return ready(Err(UpstreamError::new(
                LEGACY_NAME,
                ErrorKind::Auth,
                "the channel has no secret_key to sign requests with",
            )));
        };
        if let Err(e) = super::refuse_tools(LEGACY_NAME, req) {
            return ready(Err(e));
        }
        // The signature covers these exact bytes: the body is sent as this string.
        let body = legacy_request_body(model, req).to_string();
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string();
        let signature = legacy_signature(secret.expose(), &body, &timestamp);
        let path = if stream { LEGACY_STREAM_PATH } else { LEGACY_PATH };
        ready(Ok(up
            .http
            .post(format!("{}{path}", channel.base_url()))
            .bearer_auth(channel.api_key.expose())
            .header("Content-Type", "application/json")
            .header("X-BC-Request-Id", format!("{:016x}", fastrand::u64(..)))
            .header("X-BC-Timestamp", timestamp)
            .header("X-BC-Signature", signature)
            .header("X-BC-Sign-Algo", "MD5")
            .body(body)))
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(LEGACY_NAME, body)?;
        if let Some(e) = legacy_error(&v) {
            return Err(e);
        }
        let message =
            v.pointer("/data/messages").and_then(Value::as_array).and_then(|m| m.last()).ok_or_else(
                || UpstreamError::new(LEGACY_NAME, ErrorKind::Protocol, "an answer without messages"),
            )?;
        Ok(ChatResponse {
            content: Some(message.get("content").and_then(Value::as_str).unwrap_or("").to_string()),
            tool_calls: Vec::new(),
            finish_reason: legacy_finish(
                message.get("finish_reason").and_then(Value::as_str).unwrap_or("stop"),
            ),
            usage: legacy_usage(v.get("usage")),
        })
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let v = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        let mut e = legacy_error(&v)
            .unwrap_or_else(|| OpenAi.classify(status, headers, body).reported_by(LEGACY_NAME));
        if status >= 500 {
            e.kind = ErrorKind::Server;
        }
        e.status = Some(status);
        e.retry_after = crate::error::retry_after_from_headers(headers);
        e
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(LegacyStream)
    }

    /// The stream is one JSON object a line: each line is handed on as one SSE event.
    fn chat_stream<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, UpstreamError>> {
        Box::pin(async move {
            let response = http::send(self, up, channel, model, req, true).await?;
            Ok(http::event_stream(
                lines_as_events(Box::pin(response.bytes_stream())),
                LEGACY_NAME,
                self.stream(),
                up.idle_timeout,
                channel.secrets().into_iter().map(String::from).collect(),
            ))
        })
    }
}

/// Newline-delimited JSON as SSE: each non-empty line becomes `data:<line>` and a blank line.
fn lines_as_events(bytes: ByteStream) -> ByteStream {
    let state = (bytes, Vec::<u8>::new(), false);
    Box::pin(futures_util::stream::unfold(state, |(mut bytes, mut line, ended)| async move {
        if ended {
            return None;
        }
        let emit = |line: &mut Vec<u8>, out: &mut Vec<u8>| {
            let text = std::mem::take(line);
            let text = text.strip_suffix(b"\r").unwrap_or(&text);
            if !text.iter().all(u8::is_ascii_whitespace) {
                out.extend_from_slice(b"data:");
                out.extend_from_slice(text);
                out.extend_from_slice(b"\n\n");
            }
        };
        loop {
            let mut out = Vec::new();
            match bytes.next().await {
                Some(Ok(chunk)) => {
                    for &b in chunk.iter() {
                        if b == b'\n' {
                            emit(&mut line, &mut out);
                        } else if line.len() < MAX_EVENT_BYTES {
                            line.push(b);
                        } else {
                            // Past an event's size: pass it on for the decoder to refuse.
                            out.extend_from_slice(b"data:");
                            out.append(&mut line);
                        }
                    }
                }
                Some(Err(e)) => return Some((Err(e), (bytes, line, true))),
                None => {
                    emit(&mut line, &mut out);
                    return Some((Ok(bytes::Bytes::from(out)), (bytes, line, true)));
                }
            }
            if !out.is_empty() {
                return Some((Ok(bytes::Bytes::from(out)), (bytes, line, false)));
            }
        }
    }))
}

struct LegacyStream;

impl StreamTranslator for LegacyStream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        let v: Value = serde_json::from_str(&event.data).map_err(|e| {
            UpstreamError::new(LEGACY_NAME, ErrorKind::Protocol, format!("a bad stream line: {e}"))
        })?;
        if let Some(e) = legacy_error(&v) {
            return Err(e);
        }
        let message = v.pointer("/data/messages").and_then(Value::as_array).and_then(|m| m.last());
        let message = message.unwrap_or(&Value::Null);
        if let Some(text) = message.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            out.push(StreamEvent::Text(text.to_string()));
        }
        match message.get("finish_reason").and_then(Value::as_str).filter(|r| !r.is_empty()) {
            Some(reason) => {
                out.push(StreamEvent::Finish(legacy_finish(reason)));
                out.push(StreamEvent::Usage(legacy_usage(v.get("usage"))));
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1321's test suite, then the signature's concatenation order.
    #[test]
    fn signatures_are_md5_of_secret_body_and_timestamp() {
        assert_eq!(legacy_signature("", "", ""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(legacy_signature("a", "b", "c"), "900150983cd24fb0d6963f7d28e17f72"); // md5("abc")
        assert_eq!(
            legacy_signature("message ", "digest", ""),
            "f96b697d7cb7938d525a2f31aaf161d0" // md5("message digest")
        );
    }

    #[test]
    fn legacy_requests_have_no_system_role_and_nest_parameters() {
        let req = ChatRequest::from_openai(&json!({"model": "Baichuan2-53B", "temperature": 1.5, "top_p": 1,
            "messages": [{"role": "system", "content": "brief"}, {"role": "user", "content": "hi"}]}))
        .unwrap();
        let body = legacy_request_body("Baichuan2-53B", &req);
        assert_eq!(body["messages"], json!([{"role": "user", "content": "brief\n\nhi"}]));
        assert_eq!(body["parameters"], json!({"temperature": 1.0, "top_p": MAX_TOP_P}));
    }

    #[test]
    fn legacy_answers_and_errors_come_in_a_200() {
        let ok = br#"{"code":0,"msg":"success","data":{"messages":[{"role":"assistant","content":"hi","finish_reason":"stop"}]},"usage":{"prompt_tokens":3,"answer_tokens":1,"total_tokens":4}}"#;
        let r = BaichuanLegacy.parse_response(ok).unwrap();
        assert_eq!(
            (r.content.as_deref(), r.usage),
            (Some("hi"), Usage { prompt_tokens: 3, completion_tokens: 1 })
        );
        let e = |code: u64| {
            let body = json!({"code": code, "msg": "m"}).to_string();
            BaichuanLegacy.parse_response(body.as_bytes()).unwrap_err().kind
        };
        assert_eq!(e(10105), ErrorKind::Auth);
        assert_eq!(e(10203), ErrorKind::RateLimited);
        assert_eq!(e(10300), ErrorKind::QuotaExhausted);
        assert_eq!(e(10401), ErrorKind::BadRequest);
        assert_eq!(e(10500), ErrorKind::Server);
    }

    #[test]
    fn legacy_stream_lines_become_events() {
        let mut s = BaichuanLegacy.stream();
        let mut out = Vec::new();
        let line = |content: &str, finish: &str| {
            SseEvent {
            event: None,
            data: json!({"code": 0, "msg": "success", "data": {"messages": [{"role": "assistant", "content": content, "finish_reason": finish}]},
                "usage": {"prompt_tokens": 2, "answer_tokens": 2}}).to_string(),
        }
        };
        assert!(!s.on_event(&line("a ", ""), &mut out).unwrap());
        assert!(s.on_event(&line("b", "stop"), &mut out).unwrap());
        assert_eq!(
            out,
            vec![
                StreamEvent::Text("a ".into()),
                StreamEvent::Text("b".into()),
                StreamEvent::Finish(FinishReason::Stop),
                StreamEvent::Usage(Usage { prompt_tokens: 2, completion_tokens: 2 }),
            ]
        );
        let err = SseEvent { event: None, data: r#"{"code":10203,"msg":"too frequent"}"#.into() };
        assert_eq!(s.on_event(&err, &mut out).unwrap_err().kind, ErrorKind::RateLimited);
    }

    #[test]
    fn current_errors_and_wrapped_chunks() {
        let h = HeaderMap::new();
        let quota =
            br#"{"error":{"code":"insufficient_quota","message":"no balance","type":"insufficient_quota"}}"#;
        assert_eq!(Baichuan.classify(429, &h, quota).kind, ErrorKind::QuotaExhausted);
        let rate = br#"{"error":{"code":"rate_limit_exceeded","message":"slow","type":"rate_limit_error"}}"#;
        assert_eq!(Baichuan.classify(429, &h, rate).kind, ErrorKind::RateLimited);
        let numeric = r#"{"error":{"code":10300,"message":"余额不足"}}"#.as_bytes();
        assert_eq!(Baichuan.classify(400, &h, numeric).kind, ErrorKind::QuotaExhausted);
        let mut s = Baichuan.stream();
        let mut out = Vec::new();
        let wrapped = SseEvent {
            event: None,
            data: r#"{"data":{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}}"#.into(),
        };
        s.on_event(&wrapped, &mut out).unwrap();
        assert_eq!(out, vec![StreamEvent::Text("x".into())]);
    }
}
