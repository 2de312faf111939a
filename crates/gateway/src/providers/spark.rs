//! iFlytek Spark (讯飞星火) over WebSocket (`spark`; the HTTP API is in `spark_http`):
//! `wss://spark-api.xf-yun.com/{v3.5/chat,…}`, one path and `domain` per model; the URL is signed
//! (HMAC-SHA256 with the API secret over `host`, `date` and the request line, within 300 s of the
//! server's clock), the app id goes in the one request frame (`header`/`parameter`/`payload`).
//! Frames and errors: see [`Spark`]; the signed URL and the socket are in `spark_ws`.

use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::spark_ws::stream_ws;
pub use super::spark_ws::{signature, signed_url};
use super::{BoxFuture, EventStream, Protocol, StreamTranslator, Upstream, ready};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError};
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, FinishReason, Role, StreamEvent, ToolCall, ToolChoice, Usage};

pub(crate) const NAME: &str = "spark";
/// Spark's `max_tokens` range.
const MAX_TOKENS: u64 = 8192;
/// Spark's `uid` is at most 32 characters.
const MAX_UID: usize = 32;

/// The WebSocket API. The server streams frames with `header.status` 0, 1, 2 (last, with
/// `payload.usage.text`), `header.code` ≠ 0 for an error, then closes. A whole answer is the
/// stream collected.
pub struct Spark;

/// Where a model is served: its URL path and the `domain` the request frame names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub path: &'static str,
    pub domain: &'static str,
}

/// The route of a model name (the gateway's names, iFlytek's product names, or the domains
/// themselves), any case.
pub fn route(model: &str) -> Option<Route> {
    let r = |path, domain| Some(Route { path, domain });
    match model.to_ascii_lowercase().as_str() {
        "spark-lite" | "lite" => r("/v1.1/chat", "lite"),
        // The 2023 name of v1.1 and its domain then.
        "spark-1.5" | "sparkdesk" | "general" => r("/v1.1/chat", "general"),
        "spark-2.0" | "spark-v2" | "generalv2" => r("/v2.1/chat", "generalv2"),
        "spark-3.0" | "spark-pro" | "generalv3" => r("/v3.1/chat", "generalv3"),
        "spark-pro-128k" | "pro-128k" => r("/chat/pro-128k", "pro-128k"),
        "spark-3.5" | "spark-max" | "generalv3.5" => r("/v3.5/chat", "generalv3.5"),
        "spark-max-32k" | "max-32k" => r("/chat/max-32k", "max-32k"),
        "spark-4.0" | "spark-4.0-ultra" | "spark-ultra" | "4.0ultra" => r("/v4.0/chat", "4.0Ultra"),
        _ => None,
    }
}

/// Whether a domain takes a system message and functions (Max and Ultra; Pro takes functions).
fn takes_system(domain: &str) -> bool {
    matches!(domain, "generalv3.5" | "4.0Ultra" | "max-32k" | "pro-128k")
}

fn takes_functions(domain: &str) -> bool {
    matches!(domain, "generalv3" | "generalv3.5" | "4.0Ultra" | "max-32k" | "pro-128k")
}

/// The one request frame.
pub fn request_frame(app_id: &str, domain: &str, req: &ChatRequest) -> Value {
    let mut text: Vec<Value> = Vec::new();
    let system = req.system_text();
    let mut pending_system = system.clone().filter(|_| !takes_system(domain));
    if let Some(s) = system.filter(|_| takes_system(domain)) {
        text.push(json!({"role": "system", "content": s}));
    }
    for m in &req.messages {
        let (role, content) = match m.role {
            Role::System | Role::Developer => continue,
            Role::User => ("user", m.content.clone().unwrap_or_default()),
            // ❓ The frame has no place for a call or its result: both go as text.
            Role::Assistant => {
                let mut content = m.content.clone().unwrap_or_default();
                for c in &m.tool_calls {
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&format!("[calls {}({})]", c.name, c.arguments));
                }
                ("assistant", content)
            }
            Role::Tool | Role::Function => {
                let name = m.name.clone().or_else(|| {
                    let id = m.tool_call_id.as_deref()?;
                    req.messages
                        .iter()
                        .flat_map(|p| &p.tool_calls)
                        .find(|c| c.id == id)
                        .map(|c| c.name.clone())
                });
                let content = m.content.clone().unwrap_or_default();
                ("user", format!("[{} returned] {content}", name.as_deref().unwrap_or("the function")))
            }
        };
        // Models without a system role get the instructions ahead of the first user turn.
        let content = match (role, pending_system.take()) {
            ("user", Some(s)) => format!("{s}\n\n{content}"),
            (_, s) => {
                pending_system = s;
                content
            }
        };
        text.push(json!({"role": role, "content": content}));
    }
    let mut chat = Map::new();
    chat.insert("domain".into(), domain.into());
    // OpenAI's temperature runs to 2, Spark's over (0, 1] (default 0.5): halved, above zero.
    if let Some(t) = req.temperature {
        chat.insert("temperature".into(), (t / 2.0).clamp(0.01, 1.0).into());
    }
    if let Some(n) = req.max_tokens {
        chat.insert("max_tokens".into(), n.clamp(1, MAX_TOKENS).into());
    }
    chat.insert("auditing".into(), "default".into());
    let mut header = json!({"app_id": app_id});
    if let Some(user) = &req.user {
        header["uid"] = user.chars().take(MAX_UID).collect::<String>().into();
    }
    let mut payload = json!({"message": {"text": text}});
    if !req.tools.is_empty() && req.tool_choice != Some(ToolChoice::None) && takes_functions(domain) {
        let functions: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let parameters =
                    if t.parameters.is_object() { t.parameters.clone() } else { json!({"type": "object", "properties": {}}) };
                json!({"name": t.name, "description": t.description.clone().unwrap_or_default(), "parameters": parameters})
            })
            .collect();
        payload["functions"] = json!({"text": functions});
    }
    json!({"header": header, "parameter": {"chat": chat}, "payload": payload})
}

/// The kind of a Spark error code (iFlytek's error-code table).
fn error_kind(code: i64, message: &str) -> ErrorKind {
    match code {
        10907 => ErrorKind::ContextLength,
        // Input refused by moderation; the whole request would be refused again.
        10013 | 10019 => ErrorKind::BadRequest,
        // Not authorised, or volume exceeded: `tokens.total` in the message says which.
        11200 if message.contains("tokens") || message.contains("limit") => ErrorKind::QuotaExhausted,
        11200 | 10015 | 10016 | 10313 | 11500 => ErrorKind::Auth,
        11201 => ErrorKind::QuotaExhausted,
        // QPS, concurrency, a session still busy.
        11202 | 11203 | 10007 => ErrorKind::RateLimited,
        10003 | 10004 | 10005 | 10163 | 11501 => ErrorKind::BadRequest,
        _ => ErrorKind::Server, // 10000–10012 transport and engine, 10110 busy, 10222 network
    }
}

pub(crate) fn code_error(provider: &'static str, code: i64, message: &str, sid: &str) -> UpstreamError {
    UpstreamError::new(provider, error_kind(code, message), format!("{message} (code {code}, sid {sid})"))
}

pub(crate) fn protocol_error(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(NAME, ErrorKind::Protocol, msg)
}

/// A call id: Spark gives none.
fn call_id() -> String {
    let mut id = String::from("call_");
    for _ in 0..24 {
        id.push(fastrand::alphanumeric());
    }
    id
}

/// Server frames to events.
pub(crate) struct SparkStream {
    calls: usize,
    max_tokens: Option<u64>,
}

impl SparkStream {
    pub(crate) fn new(max_tokens: Option<u64>) -> SparkStream {
        SparkStream { calls: 0, max_tokens }
    }

    /// One frame; `Ok(true)` when it was the last.
    pub(crate) fn on_frame(
        &mut self,
        frame: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<bool, UpstreamError> {
        let v: Value =
            serde_json::from_str(frame).map_err(|e| protocol_error(format!("a bad frame: {e}")))?;
        let header = v.get("header").ok_or_else(|| protocol_error("a frame without a header"))?;
        let code = header.get("code").and_then(Value::as_i64).unwrap_or(0);
        let sid = header.get("sid").and_then(Value::as_str).unwrap_or("");
        if code == 10014 {
            // The answer failed moderation: it ends here, as OpenAI's content filter would end it.
            out.push(StreamEvent::Finish(FinishReason::ContentFilter));
            return Ok(true);
        }
        if code != 0 {
            let message = header.get("message").and_then(Value::as_str).unwrap_or("(no message)");
            return Err(code_error(NAME, code, message, sid));
        }
        let choices = v.pointer("/payload/choices");
        for item in choices.and_then(|c| c.get("text")).and_then(Value::as_array).into_iter().flatten() {
            if let Some(f) = item.get("function_call").filter(|f| f.is_object()) {
                let arguments = match f.get("arguments") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => "{}".into(),
                };
                out.push(StreamEvent::ToolCall {
                    index: self.calls,
                    id: Some(call_id()),
                    name: f.get("name").and_then(Value::as_str).map(String::from),
                    arguments,
                });
                self.calls += 1;
            } else if let Some(text) = item.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                out.push(StreamEvent::Text(text.into()));
            }
        }
        let status = header
            .get("status")
            .and_then(Value::as_i64)
            .or_else(|| choices.and_then(|c| c.get("status")).and_then(Value::as_i64))
            .unwrap_or(1);
        if status != 2 {
            return Ok(false);
        }
        let usage = v.pointer("/payload/usage/text").map(|u| Usage {
            prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
            completion_tokens: u.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
        });
        // Spark says no finish reason: a call, or an answer as long as allowed, or a stop.
        let finish = if self.calls > 0 {
            FinishReason::ToolCalls
        } else if let (Some(u), Some(max)) = (usage, self.max_tokens)
            && u.completion_tokens >= max
        {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        out.push(StreamEvent::Finish(finish));
        out.extend(usage.map(StreamEvent::Usage));
        Ok(true)
    }
}

impl StreamTranslator for SparkStream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        self.on_frame(&event.data, out)
    }
}

/// A whole answer put together from stream events.
#[derive(Default)]
struct Answer {
    text: String,
    calls: Vec<ToolCall>,
    finish: Option<FinishReason>,
    usage: Usage,
}

impl Answer {
    fn add(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Text(t) => self.text.push_str(&t),
            StreamEvent::ToolCall { index, id, name, arguments } => match self.calls.get_mut(index) {
                Some(call) => call.arguments.push_str(&arguments),
                None => self.calls.push(ToolCall {
                    id: id.unwrap_or_else(call_id),
                    name: name.unwrap_or_default(),
                    arguments,
                }),
            },
            StreamEvent::Finish(f) => self.finish = Some(f),
            StreamEvent::Usage(u) => self.usage = u,
            StreamEvent::Logprobs(_) | StreamEvent::StopSequence(_) => {}
        }
    }

    fn response(self) -> ChatResponse {
        ChatResponse {
            content: (!self.text.is_empty() || self.calls.is_empty()).then_some(self.text),
            tool_calls: self.calls,
            finish_reason: self.finish.unwrap_or(FinishReason::Stop),
            usage: self.usage,
        }
    }
}

async fn collect(mut stream: EventStream) -> Result<ChatResponse, UpstreamError> {
    let mut answer = Answer::default();
    while let Some(event) = stream.next().await {
        answer.add(event?);
    }
    Ok(answer.response())
}

impl Protocol for Spark {
    /// `ws`/`wss` as the API documents them; `http`/`https` are taken to mean the same.
    fn schemes(&self) -> &'static [&'static str] {
        &["wss", "ws", "https", "http"]
    }

    fn check(&self, channel: &Channel) -> Result<(), String> {
        super::require(&channel.app_id, "spark", "app_id", "")?;
        super::require(
            &channel.secret_key,
            "spark",
            "secret_key",
            " (the APISecret; `api_key` is the APIKey)",
        )?;
        match channel.models.iter().find(|m| route(channel.upstream_model(m)).is_none()) {
            Some(m) => Err(format!(
                "Spark has no model {:?} (spark-lite, spark-2.0, spark-3.0, spark-pro-128k, spark-3.5, spark-max-32k, spark-4.0, or their domains): map it with model_map",
                channel.upstream_model(m)
            )),
            None => Ok(()),
        }
    }

    fn name(&self) -> &'static str {
        NAME
    }

    /// Spark is not spoken over HTTP: `chat` and `chat_stream` replace this path.
    fn request<'a>(
        &'a self,
        _up: &'a Upstream,
        _channel: &'a Channel,
        _model: &'a str,
        _req: &'a ChatRequest,
        _stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>> {
        ready(Err(protocol_error("Spark speaks WebSocket, not HTTP")))
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let text = std::str::from_utf8(body).map_err(|_| protocol_error("a frame that is not UTF-8"))?;
        // One frame (the last): what a whole answer in one frame would say.
        let mut out = Vec::new();
        SparkStream::new(None).on_frame(text, &mut out)?;
        let mut answer = Answer::default();
        out.into_iter().for_each(|e| answer.add(e));
        Ok(answer.response())
    }

    fn classify(&self, status: u16, _headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
        let kind = match status {
            401 | 403 => ErrorKind::Auth,
            429 => ErrorKind::RateLimited,
            s if s >= 500 => ErrorKind::Server,
            _ => ErrorKind::BadRequest,
        };
        UpstreamError::new(NAME, kind, format!("HTTP {status}: {text}")).with_status(status)
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(SparkStream::new(None))
    }

    fn chat<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>> {
        Box::pin(async move { collect(stream_ws(up, channel, model, req).await?).await })
    }

    fn chat_stream<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, UpstreamError>> {
        Box::pin(stream_ws(up, channel, model, req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_route_to_paths_and_domains() {
        assert_eq!(route("spark-3.5"), Some(Route { path: "/v3.5/chat", domain: "generalv3.5" }));
        assert_eq!(route("Spark-4.0"), Some(Route { path: "/v4.0/chat", domain: "4.0Ultra" }));
        assert_eq!(route("spark-3.0"), Some(Route { path: "/v3.1/chat", domain: "generalv3" }));
        assert_eq!(route("spark-2.0"), Some(Route { path: "/v2.1/chat", domain: "generalv2" }));
        assert_eq!(route("spark-1.5").map(|r| r.path), Some("/v1.1/chat"));
        assert_eq!(route("gpt-4"), None);
    }

    #[test]
    fn the_request_frame() {
        let mut req = ChatRequest::from_openai(&json!({"model": "spark-3.5", "temperature": 1.0, "max_tokens": 99999,
            "user": "u".repeat(40),
            "messages": [{"role": "system", "content": "brief"}, {"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]}))
        .unwrap();
        let f = request_frame("app1", "generalv3.5", &req);
        assert_eq!(f["header"]["app_id"], "app1");
        assert_eq!(f["header"]["uid"].as_str().map(str::len), Some(32));
        assert_eq!(f["parameter"]["chat"]["domain"], "generalv3.5");
        assert_eq!(f["parameter"]["chat"]["max_tokens"], 8192);
        assert_eq!(f["parameter"]["chat"]["temperature"], 0.5);
        assert_eq!(
            f["payload"]["message"]["text"],
            json!([{"role": "system", "content": "brief"}, {"role": "user", "content": "hi"}])
        );
        assert_eq!(f["payload"]["functions"]["text"][0]["name"], "weather");
        // Lite: no system role, no functions.
        let f = request_frame("app1", "lite", &req);
        assert_eq!(f["payload"]["message"]["text"], json!([{"role": "user", "content": "brief\n\nhi"}]));
        assert!(f["payload"].get("functions").is_none());
        req.tool_choice = Some(ToolChoice::None);
        assert!(request_frame("app1", "generalv3.5", &req)["payload"].get("functions").is_none());
    }

    #[test]
    fn frames_become_events() {
        let mut s = SparkStream::new(None);
        let mut out = Vec::new();
        let first = r#"{"header":{"code":0,"message":"Success","sid":"cht1","status":0},"payload":{"choices":{"status":0,"seq":0,"text":[{"content":"Hel","role":"assistant","index":0}]}}}"#;
        let last = r#"{"header":{"code":0,"message":"Success","sid":"cht1","status":2},"payload":{"choices":{"status":2,"seq":1,"text":[{"content":"lo","role":"assistant","index":0}]},"usage":{"text":{"question_tokens":2,"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}}}"#;
        assert!(!s.on_frame(first, &mut out).unwrap());
        assert!(s.on_frame(last, &mut out).unwrap());
        assert_eq!(
            out,
            vec![
                StreamEvent::Text("Hel".into()),
                StreamEvent::Text("lo".into()),
                StreamEvent::Finish(FinishReason::Stop),
                StreamEvent::Usage(Usage { prompt_tokens: 4, completion_tokens: 2 }),
            ]
        );
        let call = r#"{"header":{"code":0,"message":"Success","sid":"cht2","status":2},"payload":{"choices":{"status":2,"seq":0,"text":[{"content":"","role":"assistant","content_type":"function_call","function_call":{"arguments":"{\"q\":1}","name":"weather"},"index":0}]},"usage":{"text":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9}}}}"#;
        let r = Spark.parse_response(call.as_bytes()).unwrap();
        assert_eq!((r.finish_reason, r.tool_calls[0].name.as_str()), (FinishReason::ToolCalls, "weather"));
        assert!(r.tool_calls[0].id.starts_with("call_") && r.content.is_none());
    }

    #[test]
    fn error_codes_are_classified() {
        let kind = |code: i64, msg: &str| {
            let frame =
                json!({"header": {"code": code, "message": msg, "sid": "cht", "status": 2}}).to_string();
            SparkStream::new(None).on_frame(&frame, &mut Vec::new()).unwrap_err().kind
        };
        assert_eq!(kind(10907, "token limit"), ErrorKind::ContextLength);
        assert_eq!(kind(10013, "input is sensitive"), ErrorKind::BadRequest);
        assert_eq!(kind(11200, "AppIdNoAuthError:(11200)domain.generalv3"), ErrorKind::Auth);
        assert_eq!(kind(11200, "AppIdNoAuthError:(11200)tokens.total"), ErrorKind::QuotaExhausted);
        assert_eq!(kind(11201, "AppIdQpsOverFlowError:daily limit"), ErrorKind::QuotaExhausted);
        assert_eq!(kind(11202, "qps"), ErrorKind::RateLimited);
        assert_eq!(kind(11203, "concurrency"), ErrorKind::RateLimited);
        assert_eq!(kind(10110, "busy"), ErrorKind::Server);
        let mut out = Vec::new();
        let moderated = r#"{"header":{"code":10014,"message":"output is sensitive","sid":"c","status":2}}"#;
        assert!(SparkStream::new(None).on_frame(moderated, &mut out).unwrap());
        assert_eq!(out, vec![StreamEvent::Finish(FinishReason::ContentFilter)]);
        let e = crate::providers::spark_http::SparkHttp
            .parse_response(br#"{"code":10007,"message":"the session is busy","sid":"cha1"}"#)
            .unwrap_err();
        assert_eq!((e.kind, e.provider), (ErrorKind::RateLimited, "spark-http"));
    }
}
