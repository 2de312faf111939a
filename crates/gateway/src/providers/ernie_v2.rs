//! Baidu ERNIE Bot (文心一言) on Qianfan, API v2 (`ernie-v2`): OpenAI's protocol at
//! `/v2/chat/completions` with a `bce-v3/…` bearer key, errors refined by Qianfan's `error.code`.

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::openai::{self, OpenAi};
use super::{BoxFuture, Protocol, StreamTranslator, Upstream, ready};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError, retry_after_from_headers};
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, StreamEvent};

const NAME_V2: &str = "ernie-v2";

/// Qianfan v2 (OpenAI-compatible).
pub struct ErnieV2;

/// A v2 error's kind, refined from the `error.code` Qianfan v2 sends (OpenAI's status-based
/// kind otherwise).
fn v2_error(mut e: UpstreamError, body: &[u8]) -> UpstreamError {
    e.provider = NAME_V2;
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/code").and_then(Value::as_str).map(String::from))
        .unwrap_or_default();
    match code.as_str() {
        "tokens_too_long" | "characters_too_long" | "context_length_exceeded" => {
            e.kind = ErrorKind::ContextLength
        }
        "rpm_rate_limit_exceeded" | "tpm_rate_limit_exceeded" | "qps_rate_limit_exceeded" => {
            e.kind = ErrorKind::RateLimited
        }
        "invalid_model" | "model_not_found" => e.kind = ErrorKind::NotFound,
        "access_denied" | "invalid_iam_token" | "invalid_api_key" => e.kind = ErrorKind::Auth,
        c if c.contains("arrear") || c.contains("quota") || c.contains("balance") => {
            e.kind = ErrorKind::QuotaExhausted
        }
        _ => {}
    }
    e
}

/// OpenAI's translator, its errors named as v2's.
struct ErnieV2Stream(Box<dyn StreamTranslator>);

impl StreamTranslator for ErnieV2Stream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        self.0.on_event(event, out).map_err(|e| v2_error(e, event.data.as_bytes()))
    }
}

impl Protocol for ErnieV2 {
    fn name(&self) -> &'static str {
        NAME_V2
    }

    fn request<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
        stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>> {
        let mut builder = openai::compatible_request(up, channel, "/v2/chat/completions", model, req, stream);
        // The v2 app the key belongs to, when the channel names one.
        if let Some(app) = &channel.app_id {
            builder = builder.header("appid", app);
        }
        ready(Ok(builder))
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        OpenAi.parse_response(body).map_err(|e| v2_error(e, body))
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let e = OpenAi.classify(status, headers, body).with_retry_after(retry_after_from_headers(headers));
        v2_error(e, body)
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(ErnieV2Stream(OpenAi.stream()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_errors_use_its_codes() {
        let h = HeaderMap::new();
        let body = br#"{"error":{"code":"tokens_too_long","message":"too long","type":"invalid_request_error"},"id":"as-1"}"#;
        let e = ErnieV2.classify(400, &h, body);
        assert_eq!((e.kind, e.provider), (ErrorKind::ContextLength, NAME_V2));
        let body = br#"{"error":{"code":"rpm_rate_limit_exceeded","message":"slow","type":"rate_limit_exceeded"},"id":"as-1"}"#;
        assert_eq!(ErnieV2.classify(429, &h, body).kind, ErrorKind::RateLimited);
        let body = br#"{"error":{"code":"access_denied","message":"no","type":"access_denied"},"id":"as-1"}"#;
        assert_eq!(ErnieV2.classify(401, &h, body).kind, ErrorKind::Auth);
    }
}
