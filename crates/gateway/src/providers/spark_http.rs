//! iFlytek Spark (讯飞星火) over HTTP (`spark-http`): OpenAI-compatible `/v1/chat/completions` with
//! the APIPassword as Bearer key; errors as `{code, message, sid}`, their codes read as the WebSocket
//! API's (in `spark`).

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::openai::{self, OpenAi};
use super::spark::{code_error, route};
use super::{BoxFuture, Protocol, StreamTranslator, Upstream, json_body, ready};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError};
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, FinishReason, StreamEvent};

const NAME_HTTP: &str = "spark-http";

/// The OpenAI-compatible HTTP API.
pub struct SparkHttp;

/// A `{code, message, sid}` body with a code other than 0, as an error.
fn http_code_error(v: &Value) -> Option<UpstreamError> {
    let code = v.get("code").and_then(Value::as_i64).filter(|c| *c != 0)?;
    let message = v.get("message").and_then(Value::as_str).unwrap_or("(no message)");
    let sid = v.get("sid").and_then(Value::as_str).unwrap_or("");
    Some(code_error(NAME_HTTP, code, message, sid))
}

/// OpenAI's translator, with Spark's `{code, message}` chunks read as errors and a finish
/// reason supplied at `[DONE]` if none came.
struct SparkHttpStream {
    inner: Box<dyn StreamTranslator>,
    finished: bool,
}

impl StreamTranslator for SparkHttpStream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        if let Some(e) = serde_json::from_str::<Value>(&event.data).ok().as_ref().and_then(http_code_error) {
            return Err(e);
        }
        let start = out.len();
        let last = self.inner.on_event(event, out).map_err(|mut e| {
            e.provider = NAME_HTTP;
            e
        })?;
        self.finished |= out[start..].iter().any(|e| matches!(e, StreamEvent::Finish(_)));
        if last && !self.finished {
            self.finished = true;
            out.push(StreamEvent::Finish(FinishReason::Stop));
        }
        Ok(last)
    }
}

impl Protocol for SparkHttp {
    fn name(&self) -> &'static str {
        NAME_HTTP
    }

    fn request<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
        stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>> {
        // The HTTP API names models by their domains (`generalv3.5`, `4.0Ultra`, `lite`).
        let model = route(model).map_or(model, |r| if r.domain == "general" { "lite" } else { r.domain });
        ready(Ok(openai::compatible_request(up, channel, "/v1/chat/completions", model, req, stream)))
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(NAME_HTTP, body)?;
        if let Some(e) = http_code_error(&v) {
            return Err(e);
        }
        OpenAi.parse_response(body).map_err(|mut e| {
            e.provider = NAME_HTTP;
            e
        })
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let mut e = match http_code_error(&v) {
            Some(e) => e.with_status(status),
            None => OpenAi.classify(status, headers, body),
        };
        e.provider = NAME_HTTP;
        if status == 401 || status == 403 {
            e.kind = ErrorKind::Auth;
        }
        e
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(SparkHttpStream { inner: OpenAi.stream(), finished: false })
    }
}
