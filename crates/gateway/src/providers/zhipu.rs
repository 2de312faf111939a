//! Zhipu AI (智谱 GLM, open.bigmodel.cn), API v4 (`zhipu`; v3 is in `zhipu_v3`, sharing the token):
//! keys are `{id}.{secret}`; requests carry a short-lived HS256 JWT (header `sign_type: "SIGN"`, claims
//! `api_key`, `exp` and `timestamp` in MILLISECONDS) signed with the secret, cached per channel. v4
//! ([`Zhipu`], whose doc gives its error codes) is OpenAI-like at `/api/paas/v4/chat/completions`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::Sha256;

use super::openai::{self, OpenAi};
use super::{BoxFuture, Protocol, StreamTranslator, Upstream, json_body};
use crate::channel::{Channel, Secret};
use crate::error::{ErrorKind, UpstreamError, retry_after_from_headers};
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, FinishReason, StreamEvent, ToolChoice};

const NAME: &str = "zhipu";
pub const V4_PATH: &str = "/api/paas/v4/chat/completions";
/// How long a signed token is valid; the cache renews it well before (`TOKEN_CACHE_LIFETIME`).
const TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 60);
const TOKEN_CACHE_LIFETIME: Duration = Duration::from_secs(25 * 60);
/// Zhipu's sampling ranges were open intervals (0, 1) (GLM-4 now takes [0, 1]): stay inside.
pub(crate) const MIN_SAMPLING: f64 = 0.01;
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
pub(crate) async fn credential(up: &Upstream, channel: &Channel) -> Result<Secret, UpstreamError> {
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
pub(crate) fn code_of(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.trim().parse().ok(),
        other => other.as_u64(),
    }
}

pub(crate) fn error_from(
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

pub(crate) fn clamp_sampling(v: f64) -> f64 {
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

/// Zhipu v4: OpenAI-like chat completions with JWT auth and Zhipu's codes. Errors are
/// `{"error": {"code": "1113", message}}` (the code decides: 1113 arrears, 1302/1303/1305
/// throttling, 1261 prompt too long); mid-stream failures show as `finish_reason: "network_error"`.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
