//! Zhipu AI (智谱 GLM, open.bigmodel.cn). Keys are `{id}.{secret}`; requests carry a short-lived
//! HS256 JWT (header `sign_type: "SIGN"`, claims `api_key`, `exp` and `timestamp` in
//! MILLISECONDS) signed with the secret, cached per channel. v4 ([`Zhipu`]) is OpenAI-like at
//! `/api/paas/v4/chat/completions` with errors `{"error": {"code": "1113", message}}` (the code
//! decides: 1113 arrears, 1302/1303/1305 throttling, 1261 prompt too long) and mid-stream failures
//! shown as `finish_reason: "network_error"`. v3 ([`ZhipuV3`], 2023) is `…/v3/model-api/{model}/
//! invoke` (`prompt` list, errors inside a 200) and `/sse-invoke` (`event: add` plain-text deltas,
//! `event: finish` with usage on a `meta:` line).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::http::{self, ByteStream};
use super::openai::{self, OpenAi};
use super::{BoxFuture, EventStream, Protocol, StreamTranslator, Upstream, json_body};
use crate::channel::{Channel, Secret};
use crate::error::{ErrorKind, UpstreamError, retry_after_from_headers};
use crate::sse::{MAX_EVENT_BYTES, SseEvent};
use crate::types::{ChatRequest, ChatResponse, FinishReason, Role, StreamEvent, ToolChoice, Usage};

const NAME: &str = "zhipu";
const V3_NAME: &str = "zhipu-v3";
pub const V4_PATH: &str = "/api/paas/v4/chat/completions";
pub const V3_PREFIX: &str = "/api/paas/v3/model-api";
/// How long a signed token is valid; the cache renews it well before (`TOKEN_CACHE_LIFETIME`).
const TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 60);
const TOKEN_CACHE_LIFETIME: Duration = Duration::from_secs(25 * 60);
/// Zhipu's sampling ranges were open intervals (0, 1) (GLM-4 now takes [0, 1]): stay inside.
const MIN_SAMPLING: f64 = 0.01;
const MAX_SAMPLING: f64 = 0.99;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An HS256 JWT for key `{id}.{secret}`, valid until `now_ms + lifetime`: Zhipu's own header
/// (`sign_type: "SIGN"`) and millisecond claims. `None` when the key has no secret part.
pub fn sign_token(api_key: &str, now_ms: u64, lifetime: Duration) -> Option<String> {
    let (id, secret) = api_key.split_once('.').filter(|(id, s)| !id.is_empty() && !s.is_empty())?;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","sign_type":"SIGN"}"#);
    let claims = json!({"api_key": id, "exp": now_ms + lifetime.as_millis() as u64, "timestamp": now_ms});
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(signing_input.as_bytes());
    Some(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())))
}

/// The credential to send: a cached JWT for an `{id}.{secret}` key, else the key itself (v4 also
/// takes a raw key as the Bearer token).
async fn credential(up: &Upstream, channel: &Channel) -> Result<Secret, UpstreamError> {
    let key = channel.api_key.expose();
    if !key.contains('.') {
        return Ok(channel.api_key.clone());
    }
    up.tokens
        .get_or_fetch(&channel.name, || async {
            let token = sign_token(key, now_ms(), TOKEN_LIFETIME).ok_or_else(|| {
                UpstreamError::new(NAME, ErrorKind::Auth, "the API key is not of the form id.secret")
            })?;
            Ok((Secret::new(token), TOKEN_CACHE_LIFETIME))
        })
        .await
}

/// The kind a Zhipu business code stands for (§ error codes), when the code alone says it.
fn kind_of_code(code: u64) -> Option<ErrorKind> {
    Some(match code {
        1113 | 1304 => ErrorKind::QuotaExhausted, // arrears; the daily call limit
        1000..=1004 | 1110..=1121 | 1220 => ErrorKind::Auth,
        1211 | 1221 | 1222 => ErrorKind::NotFound,
        1261 => ErrorKind::ContextLength,
        1302 | 1303 | 1305 => ErrorKind::RateLimited,
        1234 | 500 => ErrorKind::Server,
        1210..=1215 | 1230 | 1231 | 1301 => ErrorKind::BadRequest,
        _ => return None,
    })
}

/// A code given as a string (the usual) or a number.
fn code_of(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.trim().parse().ok(),
        other => other.as_u64(),
    }
}

fn error_from(
    provider: &'static str,
    status: Option<u16>,
    code: Option<u64>,
    message: &str,
    retry_after: Option<Duration>,
) -> UpstreamError {
    let kind = code.and_then(kind_of_code).unwrap_or(match status {
        Some(401 | 403) => ErrorKind::Auth,
        Some(404) => ErrorKind::NotFound,
        Some(429) => ErrorKind::RateLimited,
        Some(s) if s >= 500 => ErrorKind::Server,
        Some(_) => ErrorKind::BadRequest,
        None => ErrorKind::Server,
    });
    let text = match code {
        Some(c) => format!("{c}: {message}"),
        None => message.to_string(),
    };
    let mut e = UpstreamError::new(provider, kind, text).with_retry_after(retry_after);
    e.status = status;
    e
}

fn protocol_error(provider: &'static str, msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(provider, ErrorKind::Protocol, msg)
}

fn clamp_sampling(v: f64) -> f64 {
    v.clamp(MIN_SAMPLING, MAX_SAMPLING)
}

/// The v4 body: OpenAI's, with Zhipu's differences — roles it knows, sampling inside its ranges
/// (temperature 0 becomes `do_sample: false`, greedy), `tool_choice` only "auto", `user_id`.
pub fn request_body(model: &str, req: &ChatRequest, stream: bool) -> Value {
    let mut body = openai::request_body(model, req, stream);
    let Some(obj) = body.as_object_mut() else { return body };
    for m in obj.get_mut("messages").and_then(Value::as_array_mut).into_iter().flatten() {
        match m["role"].as_str() {
            Some("developer") => m["role"] = "system".into(),
            Some("function") => m["role"] = "tool".into(),
            _ => {}
        }
    }
    // Not in Zhipu's reference: left out rather than risk a 1210 (bad parameter).
    for unknown in ["stream_options", "seed", "presence_penalty", "frequency_penalty"] {
        obj.remove(unknown);
    }
    if let Some(user) = obj.remove("user") {
        obj.insert("user_id".into(), user);
    }
    if req.temperature.is_some_and(|t| t <= 0.0) {
        obj.remove("temperature");
        obj.remove("top_p");
        obj.insert("do_sample".into(), false.into());
    } else {
        if let Some(t) = req.temperature {
            obj.insert("temperature".into(), clamp_sampling(t).into());
        }
        if let Some(p) = req.top_p {
            obj.insert("top_p".into(), clamp_sampling(p).into());
        }
    }
    match req.tool_choice {
        // No "none" in v4: not offering the tools is the same.
        Some(ToolChoice::None) => {
            obj.remove("tools");
            obj.remove("tool_choice");
        }
        // Only "auto" exists; a forced choice is weakened to it (the model usually complies).
        Some(_) => _ = obj.insert("tool_choice".into(), "auto".into()),
        None => {}
    }
    body
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "sensitive" => FinishReason::ContentFilter,
        "model_context_window_exceeded" => FinishReason::Length,
        other => openai::finish_reason(other),
    }
}

/// Zhipu v4: OpenAI-like chat completions with JWT auth and Zhipu's codes.
pub struct Zhipu;

impl Protocol for Zhipu {
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
        Box::pin(async move {
            let token = credential(up, channel).await?;
            Ok(up
                .http
                .post(format!("{}{V4_PATH}", channel.base_url()))
                .bearer_auth(token.expose())
                .json(&request_body(model, req, stream)))
        })
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(NAME, body)?;
        if let Some(error) = v.get("error") {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("(no message)");
            return Err(error_from(NAME, None, code_of(error.get("code")), message, None));
        }
        let mut answer = OpenAi.parse_response(body).map_err(|mut e| {
            e.provider = NAME;
            e
        })?;
        match v.pointer("/choices/0/finish_reason").and_then(Value::as_str) {
            Some("network_error") => {
                return Err(UpstreamError::new(NAME, ErrorKind::Server, "inference failed (network_error)"));
            }
            Some(reason) => answer.finish_reason = finish_reason(reason),
            None => {}
        }
        Ok(answer)
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let retry_after = retry_after_from_headers(headers);
        let v = serde_json::from_slice::<Value>(body).ok();
        let error = v.as_ref().and_then(|v| v.get("error"));
        match error {
            Some(e) => {
                let message = e.get("message").and_then(Value::as_str).unwrap_or("(no message)");
                error_from(NAME, Some(status), code_of(e.get("code")), message, retry_after)
            }
            None => {
                let text =
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
                error_from(NAME, Some(status), None, &text, retry_after)
            }
        }
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(ZhipuStream { inner: OpenAi.stream() })
    }
}

/// OpenAI's chunk translation, with Zhipu's error chunks and finish reasons.
struct ZhipuStream {
    inner: Box<dyn StreamTranslator>,
}

impl StreamTranslator for ZhipuStream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        let v: Option<Value> = serde_json::from_str(&event.data).ok();
        if let Some(error) = v.as_ref().and_then(|v| v.get("error")) {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("(no message)");
            return Err(error_from(NAME, None, code_of(error.get("code")), message, None));
        }
        let start = out.len();
        let last = self.inner.on_event(event, out).map_err(|mut e| {
            e.provider = NAME;
            e
        })?;
        let reason = v.as_ref().and_then(|v| v.pointer("/choices/0/finish_reason")).and_then(Value::as_str);
        if let Some(reason) = reason {
            // A failed inference mid-stream shows only here: no error code, no error event.
            if reason == "network_error" {
                out.retain(|e| !matches!(e, StreamEvent::Finish(_)));
                return Err(UpstreamError::new(NAME, ErrorKind::Server, "inference failed (network_error)"));
            }
            for e in &mut out[start..] {
                if let StreamEvent::Finish(r) = e {
                    *r = finish_reason(reason);
                }
            }
        }
        Ok(last)
    }
}

/// Zhipu v3 (the 2023 API): `prompt` instead of `messages`, no system role, no tools.
pub struct ZhipuV3;

/// The v3 body. The early API had no system role: the system text becomes a first user turn
/// answered by the assistant (⚠️ a common client convention, not documented). Tool turns become
/// user turns: v3 had no function calling.
pub fn v3_request_body(req: &ChatRequest, stream: bool) -> Value {
    let mut prompt: Vec<Value> = Vec::new();
    if let Some(system) = req.system_text() {
        prompt.push(json!({"role": "user", "content": system}));
        prompt.push(json!({"role": "assistant", "content": "好的。"}));
    }
    for m in &req.messages {
        let role = match m.role {
            Role::System | Role::Developer => continue,
            Role::Assistant => "assistant",
            Role::User | Role::Tool | Role::Function => "user",
        };
        let content = m.content.clone().unwrap_or_default();
        match prompt.last_mut() {
            // Consecutive turns of one role are merged: v3 wants them to alternate.
            Some(last) if last["role"] == role => {
                let joined = format!("{}\n{content}", last["content"].as_str().unwrap_or(""));
                last["content"] = joined.into();
            }
            _ => prompt.push(json!({"role": role, "content": content})),
        }
    }
    let mut body = Map::new();
    body.insert("prompt".into(), prompt.into());
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), clamp_sampling(t).into());
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), clamp_sampling(p).into());
    }
    if stream {
        // Each `add` event then carries only the new text.
        body.insert("incremental".into(), true.into());
    }
    Value::Object(body)
}

fn v3_usage(v: Option<&Value>) -> Usage {
    let n = |k: &str| v.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    Usage { prompt_tokens: n("prompt_tokens"), completion_tokens: n("completion_tokens") }
}

/// v3 answers wrap the text in literal quotes (a JSON string literal): unwrap it.
fn unquote(content: &str) -> String {
    if content.len() >= 2 && content.starts_with('"') && content.ends_with('"') {
        serde_json::from_str::<String>(content).unwrap_or_else(|_| content[1..content.len() - 1].to_string())
    } else {
        content.to_string()
    }
}

impl ZhipuV3 {
    fn url(channel: &Channel, model: &str, stream: bool) -> String {
        let action = if stream { "sse-invoke" } else { "invoke" };
        format!("{}{V3_PREFIX}/{model}/{action}", channel.base_url())
    }
}

impl Protocol for ZhipuV3 {
    fn name(&self) -> &'static str {
        V3_NAME
    }

    fn request<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
        stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>> {
        Box::pin(async move {
            super::refuse_tools(V3_NAME, req)?;
            let token = credential(up, channel).await?;
            let mut builder = up
                .http
                .post(ZhipuV3::url(channel, model, stream))
                // v3 took the bare token, without "Bearer " (as one-api sends it).
                .header("Authorization", token.expose())
                .json(&v3_request_body(req, stream));
            if stream {
                builder = builder.header("Accept", "text/event-stream");
            }
            Ok(builder)
        })
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(V3_NAME, body)?;
        if v.get("success").and_then(Value::as_bool) != Some(true) {
            let message = v.get("msg").and_then(Value::as_str).unwrap_or("(no message)");
            return Err(error_from(V3_NAME, None, code_of(v.get("code")), message, None));
        }
        let data = v.get("data").ok_or_else(|| protocol_error(V3_NAME, "an answer without data"))?;
        let content = data
            .pointer("/choices/0/content")
            .and_then(Value::as_str)
            .ok_or_else(|| protocol_error(V3_NAME, "an answer without choices"))?;
        Ok(ChatResponse {
            content: Some(unquote(content)),
            tool_calls: Vec::new(),
            finish_reason: FinishReason::Stop,
            usage: v3_usage(data.get("usage")),
        })
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let retry_after = retry_after_from_headers(headers);
        let v = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        let message = match v.get("msg").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
        };
        error_from(V3_NAME, Some(status), code_of(v.get("code")), &message, retry_after)
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(V3Stream::default())
    }

    /// The SSE path, with each `meta:` line (usage, which standard SSE would drop) moved into an
    /// event of its own named `meta` at the end of its block.
    fn chat_stream<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, UpstreamError>> {
        Box::pin(async move {
            let response = http::send(self, up, channel, model, req, true).await?;
            let bytes = meta_as_events(Box::pin(response.bytes_stream()));
            Ok(http::event_stream(
                bytes,
                V3_NAME,
                self.stream(),
                up.idle_timeout,
                channel.secrets().into_iter().map(String::from).collect(),
            ))
        })
    }
}

/// Rewrites a v3 SSE body so `meta: {…}` lines arrive as `event:meta` / `data:{…}` events of their
/// own, after the rest of their block. Lines are held until complete (at most an SSE event's size;
/// a longer line is passed on for the decoder to refuse).
fn meta_as_events(bytes: ByteStream) -> ByteStream {
    struct Rewriter {
        line: Vec<u8>,
        meta: Option<Vec<u8>>,
    }
    impl Rewriter {
        fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
            for &b in chunk {
                self.line.push(b);
                if b == b'\n' {
                    self.end_line(out);
                } else if self.line.len() > MAX_EVENT_BYTES {
                    out.append(&mut self.line);
                }
            }
        }
        fn end_line(&mut self, out: &mut Vec<u8>) {
            let line = std::mem::take(&mut self.line);
            let content = line.strip_suffix(b"\n").unwrap_or(&line);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            if let Some(meta) = content.strip_prefix(b"meta:") {
                self.meta = Some(meta.to_vec());
            } else if content.is_empty() {
                out.push(b'\n');
                self.flush_meta(out);
            } else {
                out.extend_from_slice(&line);
            }
        }
        fn flush_meta(&mut self, out: &mut Vec<u8>) {
            if let Some(meta) = self.meta.take() {
                out.extend_from_slice(b"event:meta\ndata:");
                out.extend_from_slice(&meta);
                out.extend_from_slice(b"\n\n");
            }
        }
        fn finish(&mut self, out: &mut Vec<u8>) {
            if !self.line.is_empty() {
                self.line.push(b'\n');
                self.end_line(out);
            }
            if self.meta.is_some() {
                out.push(b'\n');
                self.flush_meta(out);
            }
        }
    }
    let state = (bytes, Rewriter { line: Vec::new(), meta: None }, false);
    Box::pin(futures_util::stream::unfold(state, |(mut bytes, mut rw, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let mut out = Vec::new();
            match bytes.next().await {
                Some(Ok(chunk)) => rw.feed(&chunk, &mut out),
                Some(Err(e)) => return Some((Err(e), (bytes, rw, true))),
                None => {
                    rw.finish(&mut out);
                    return Some((Ok(bytes::Bytes::from(out)), (bytes, rw, true)));
                }
            }
            if !out.is_empty() {
                return Some((Ok(bytes::Bytes::from(out)), (bytes, rw, false)));
            }
        }
    }))
}

#[derive(Default)]
struct V3Stream {
    finished: bool,
}

impl StreamTranslator for V3Stream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        match event.event.as_deref().unwrap_or("add") {
            "add" => {
                if !event.data.is_empty() {
                    out.push(StreamEvent::Text(event.data.clone()));
                }
                Ok(false)
            }
            "finish" => {
                if !event.data.is_empty() {
                    out.push(StreamEvent::Text(event.data.clone()));
                }
                self.finished = true;
                out.push(StreamEvent::Finish(FinishReason::Stop));
                Ok(false)
            }
            // Generation stopped by moderation (⚠️ as the v3 docs described it).
            "interrupted" => {
                out.push(StreamEvent::Finish(FinishReason::ContentFilter));
                Ok(true)
            }
            "error" => {
                let message = if event.data.is_empty() { "an error event" } else { event.data.as_str() };
                Err(error_from(V3_NAME, None, None, message, None))
            }
            "meta" => {
                let meta: Value = serde_json::from_str(&event.data)
                    .map_err(|e| protocol_error(V3_NAME, format!("a bad meta line: {e}")))?;
                out.push(StreamEvent::Usage(v3_usage(meta.get("usage"))));
                // Usage comes with the finish event: the stream is over.
                Ok(self.finished)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::SseDecoder;

    /// A token decodes to Zhipu's header and millisecond claims, and its signature is HMAC-SHA256
    /// of `header.claims` under the secret (checked against an independent computation).
    #[test]
    fn tokens_carry_millisecond_claims_and_a_valid_signature() {
        let token = sign_token("myid.mysecret", 1_700_000_000_000, Duration::from_secs(60)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "HS256", "sign_type": "SIGN"}));
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            json!({"api_key": "myid", "exp": 1_700_000_060_000u64, "timestamp": 1_700_000_000_000u64})
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"mysecret").unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        assert!(sign_token("no-secret", 0, Duration::ZERO).is_none());
        assert!(sign_token("id.", 0, Duration::ZERO).is_none());
    }

    /// RFC 4231 test case 2, so the HMAC itself is known right.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn v4_requests_keep_zhipus_ranges_and_tool_choice() {
        let req = ChatRequest::from_openai(&json!({
            "model": "glm-4", "temperature": 0, "top_p": 1, "seed": 3, "user": "u-123456", "stream": true,
            "messages": [{"role": "developer", "content": "brief"}, {"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {}}}],
            "tool_choice": "required"
        }))
        .unwrap();
        let body = request_body("glm-4", &req, true);
        assert_eq!(body["do_sample"], false);
        assert!(
            body.get("temperature").is_none() && body.get("top_p").is_none() && body.get("seed").is_none()
        );
        assert!(body.get("stream_options").is_none());
        assert_eq!(
            (body["tool_choice"].as_str(), body["user_id"].as_str()),
            (Some("auto"), Some("u-123456"))
        );
        assert_eq!(body["messages"][0]["role"], "system");
        let hot = ChatRequest::from_openai(&json!({"model": "glm-4", "temperature": 1.7, "top_p": 0.0,
            "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "w"}}],
            "tool_choice": "none"}))
        .unwrap();
        let body = request_body("glm-4", &hot, false);
        assert_eq!(
            (body["temperature"].as_f64(), body["top_p"].as_f64()),
            (Some(MAX_SAMPLING), Some(MIN_SAMPLING))
        );
        assert!(body.get("tools").is_none() && body.get("tool_choice").is_none());
    }

    #[test]
    fn v4_errors_are_classified_by_code() {
        let h = HeaderMap::new();
        let e = |status, code: Value| {
            let body = json!({"error": {"code": code, "message": "m"}}).to_string();
            Zhipu.classify(status, &h, body.as_bytes()).kind
        };
        assert_eq!(e(429, json!("1113")), ErrorKind::QuotaExhausted);
        assert_eq!(e(429, json!("1302")), ErrorKind::RateLimited);
        assert_eq!(e(429, json!(1305)), ErrorKind::RateLimited);
        assert_eq!(e(401, json!("1003")), ErrorKind::Auth);
        assert_eq!(e(400, json!("1261")), ErrorKind::ContextLength);
        assert_eq!(e(400, json!("1301")), ErrorKind::BadRequest);
        assert_eq!(e(400, json!("1211")), ErrorKind::NotFound);
        assert_eq!(e(500, json!("500")), ErrorKind::Server);
        assert_eq!(e(429, json!("9999")), ErrorKind::RateLimited);
        assert!(!UpstreamError::new(NAME, e(429, json!("1113")), "").retryable());
    }

    #[test]
    fn v4_streams_map_zhipus_finish_reasons() {
        let mut s = Zhipu.stream();
        let mut out = Vec::new();
        let chunk = |delta: Value, finish: Option<&str>| SseEvent {
            event: None,
            data: json!({"id": "1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                .to_string(),
        };
        s.on_event(&chunk(json!({"role": "assistant", "content": "a"}), None), &mut out).unwrap();
        s.on_event(&chunk(json!({"content": ""}), Some("sensitive")), &mut out).unwrap();
        assert_eq!(
            out,
            vec![StreamEvent::Text("a".into()), StreamEvent::Finish(FinishReason::ContentFilter)]
        );
        let mut s = Zhipu.stream();
        let err = s.on_event(&chunk(json!({"content": "b"}), Some("network_error")), &mut out).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Server);
        let mut s = Zhipu.stream();
        let in_band = SseEvent { event: None, data: r#"{"error":{"code":"1302","message":"busy"}}"#.into() };
        assert_eq!(s.on_event(&in_band, &mut out).unwrap_err().kind, ErrorKind::RateLimited);
    }

    #[test]
    fn v3_requests_use_prompt_without_a_system_role() {
        let req = ChatRequest::from_openai(&json!({"model": "chatglm_turbo", "temperature": 0,
            "messages": [{"role": "system", "content": "brief"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}))
        .unwrap();
        let body = v3_request_body(&req, true);
        assert_eq!(
            body["prompt"],
            json!([{"role": "user", "content": "brief"}, {"role": "assistant", "content": "好的。"}, {"role": "user", "content": "a\nb"}])
        );
        assert_eq!(
            (body["temperature"].as_f64(), body["incremental"].as_bool()),
            (Some(MIN_SAMPLING), Some(true))
        );
    }

    #[test]
    fn v3_answers_are_unquoted_and_errors_in_a_200_are_errors() {
        let ok = r#"{"code":200,"msg":"操作成功","success":true,"data":{"request_id":"r","task_id":"t","task_status":"SUCCESS","choices":[{"role":"assistant","content":"\"line\\none\""}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}}"#;
        let r = ZhipuV3.parse_response(ok.as_bytes()).unwrap();
        assert_eq!(r.content.as_deref(), Some("line\none"));
        assert_eq!(r.usage, Usage { prompt_tokens: 3, completion_tokens: 2 });
        let bad = r#"{"code":1113,"msg":"您的账户已欠费","success":false}"#;
        assert_eq!(ZhipuV3.parse_response(bad.as_bytes()).unwrap_err().kind, ErrorKind::QuotaExhausted);
    }

    /// The raw v3 stream, cut anywhere, gives the text (multi-line data joined), the finish and
    /// the usage from the `meta:` line.
    #[tokio::test]
    async fn v3_streams_read_meta_lines_in_any_split() {
        let body = "id: 1\nevent: add\ndata: Hel\n\nid: 2\nevent: add\ndata: lo\ndata: there\n\nid: 3\nevent: finish\nmeta: {\"task_status\":\"SUCCESS\",\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":3,\"total_tokens\":7}}\ndata: !\n\n";
        for piece in 1..body.len() {
            let chunks: Vec<reqwest::Result<bytes::Bytes>> =
                body.as_bytes().chunks(piece).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
            let rewritten: Vec<u8> = meta_as_events(Box::pin(futures_util::stream::iter(chunks)))
                .map(|c| c.unwrap().to_vec())
                .concat()
                .await;
            let mut events = Vec::new();
            let mut decoder = SseDecoder::new();
            decoder.feed(&rewritten, &mut events).unwrap();
            decoder.finish(&mut events).unwrap();
            let mut s = ZhipuV3.stream();
            let mut out = Vec::new();
            let ends: Vec<bool> = events.iter().map(|e| s.on_event(e, &mut out).unwrap()).collect();
            assert_eq!(ends.last(), Some(&true), "piece {piece}");
            assert_eq!(
                out,
                vec![
                    StreamEvent::Text("Hel".into()),
                    StreamEvent::Text("lo\nthere".into()),
                    StreamEvent::Text("!".into()),
                    StreamEvent::Finish(FinishReason::Stop),
                    StreamEvent::Usage(Usage { prompt_tokens: 4, completion_tokens: 3 }),
                ],
                "piece {piece}"
            );
        }
        let mut s = ZhipuV3.stream();
        let err = SseEvent { event: Some("error".into()), data: "server busy".into() };
        assert_eq!(s.on_event(&err, &mut Vec::new()).unwrap_err().kind, ErrorKind::Server);
    }
}
