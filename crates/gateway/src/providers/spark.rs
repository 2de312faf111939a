//! iFlytek Spark (讯飞星火) over WebSocket (`spark`; the HTTP API is in `spark_http`):
//! `wss://spark-api.xf-yun.com/{v3.5/chat,…}`, one path and `domain` per model; the URL is signed
//! (HMAC-SHA256 with the API secret over `host`, `date` and the request line, within 300 s of the
//! server's clock), the app id goes in the one request frame (`header`/`parameter`/`payload`).
//! Frames and errors: see [`Spark`].

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::{BoxFuture, EventStream, Protocol, StreamTranslator, Upstream, ready};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError, redact};
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, FinishReason, Role, StreamEvent, ToolCall, ToolChoice, Usage};

const NAME: &str = "spark";
/// The largest frame read from the server.
const MAX_FRAME: usize = 4 << 20;
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

/// base64(HMAC-SHA256(secret, "host: …\ndate: …\nGET {path} HTTP/1.1")): the signature of a
/// Spark URL.
pub fn signature(secret: &str, host: &str, date: &str, path: &str) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(format!("host: {host}\ndate: {date}\nGET {path} HTTP/1.1").as_bytes());
    Some(BASE64.encode(mac.finalize().into_bytes()))
}

/// The signed URL for `path` under `base` (`wss://host[:port]`; `https`/`http` are taken as
/// `wss`/`ws`) at `date` (RFC 1123).
pub fn signed_url(
    base: &str,
    path: &str,
    api_key: &str,
    secret: &str,
    date: &str,
) -> Result<String, UpstreamError> {
    let bad = |why: &str| UpstreamError::new(NAME, ErrorKind::BadRequest, format!("Spark base URL: {why}"));
    let url = url::Url::parse(base).map_err(|_| bad("not a URL"))?;
    let scheme = match url.scheme() {
        "wss" | "https" => "wss",
        "ws" | "http" => "ws",
        _ => return Err(bad("not ws:// or wss://")),
    };
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(bad("no host")),
    };
    let path = format!("{}{path}", url.path().trim_end_matches('/'));
    let sig = signature(secret, &host, date, &path).ok_or_else(|| bad("cannot sign"))?;
    let authorization = BASE64.encode(format!(
        "api_key=\"{api_key}\", algorithm=\"hmac-sha256\", headers=\"host date request-line\", signature=\"{sig}\""
    ));
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("authorization", &authorization)
        .append_pair("date", date)
        .append_pair("host", &host)
        .finish();
    Ok(format!("{scheme}://{host}{path}?{query}"))
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

fn protocol_error(msg: impl Into<String>) -> UpstreamError {
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
struct SparkStream {
    calls: usize,
    max_tokens: Option<u64>,
}

impl SparkStream {
    fn new(max_tokens: Option<u64>) -> SparkStream {
        SparkStream { calls: 0, max_tokens }
    }

    /// One frame; `Ok(true)` when it was the last.
    fn on_frame(&mut self, frame: &str, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
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

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A failed WebSocket handshake or transport, classified; never with the URL (it carries the
/// signature).
fn ws_error(e: WsError) -> UpstreamError {
    match e {
        WsError::Http(response) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            let kind = match status {
                // A bad signature, a stale date, an unknown key.
                401 | 403 => ErrorKind::Auth,
                404 => ErrorKind::NotFound,
                429 => ErrorKind::RateLimited,
                s if s >= 500 => ErrorKind::Server,
                _ => ErrorKind::BadRequest,
            };
            UpstreamError::new(NAME, kind, format!("handshake refused: HTTP {status}: {text}"))
                .with_status(status)
        }
        WsError::Io(e) => UpstreamError::new(NAME, ErrorKind::Connection, format!("connection: {e}")),
        WsError::Tls(e) => UpstreamError::new(NAME, ErrorKind::Connection, format!("TLS: {e}")),
        WsError::Url(_) => UpstreamError::new(NAME, ErrorKind::BadRequest, "the Spark URL is not usable"),
        WsError::Capacity(e) => protocol_error(format!("a frame too large: {e}")),
        other => UpstreamError::new(NAME, ErrorKind::Connection, format!("the connection broke: {other}")),
    }
}

/// The TLS setup for `wss://`: rustls with ring (named, so no process-wide default is needed)
/// and Mozilla's roots bundled (no system certificate store needed). Built once.
fn tls() -> Result<tokio_tungstenite::Connector, UpstreamError> {
    static CONFIG: std::sync::OnceLock<Option<std::sync::Arc<rustls::ClientConfig>>> =
        std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Some(std::sync::Arc::new(config))
    });
    config
        .clone()
        .map(tokio_tungstenite::Connector::Rustls)
        .ok_or_else(|| UpstreamError::new(NAME, ErrorKind::Connection, "TLS could not be set up"))
}

/// Connects, signs, sends the request frame.
async fn open(
    up: &Upstream,
    channel: &Channel,
    model: &str,
    req: &ChatRequest,
) -> Result<Socket, UpstreamError> {
    let route = route(model).ok_or_else(|| {
        UpstreamError::new(NAME, ErrorKind::NotFound, format!("no Spark model {model:?} (spark-lite, spark-2.0, spark-3.0, spark-pro-128k, spark-3.5, spark-max-32k, spark-4.0)"))
    })?;
    let app_id = channel
        .app_id
        .as_deref()
        .ok_or_else(|| UpstreamError::new(NAME, ErrorKind::Auth, "a Spark channel needs `app_id`"))?;
    let secret = channel.secret_key.as_ref().ok_or_else(|| {
        UpstreamError::new(NAME, ErrorKind::Auth, "a Spark channel needs `secret_key` (the APISecret)")
    })?;
    let date = httpdate::fmt_http_date(SystemTime::now());
    let url = signed_url(channel.base_url(), route.path, channel.api_key.expose(), secret.expose(), &date)?;
    let config = WebSocketConfig::default().max_message_size(Some(MAX_FRAME)).max_frame_size(Some(MAX_FRAME));
    let (mut socket, _) = tokio::time::timeout(
        up.timeout,
        tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, Some(tls()?)),
    )
    .await
    .map_err(|_| UpstreamError::new(NAME, ErrorKind::Timeout, "no WebSocket connection in time"))?
    .map_err(ws_error)?;
    let frame = request_frame(app_id, route.domain, req).to_string();
    socket.send(WsMessage::Text(frame.into())).await.map_err(ws_error)?;
    Ok(socket)
}

/// The next text frame, or why there is none.
async fn next_frame(socket: &mut Socket, idle: Duration) -> Result<String, UpstreamError> {
    loop {
        let message = tokio::time::timeout(idle, socket.next())
            .await
            .map_err(|_| UpstreamError::new(NAME, ErrorKind::Timeout, "the stream stalled"))?;
        match message {
            None | Some(Ok(WsMessage::Close(_))) => {
                return Err(UpstreamError::new(
                    NAME,
                    ErrorKind::Connection,
                    "the socket closed before the last frame",
                ));
            }
            Some(Err(e)) => return Err(ws_error(e)),
            Some(Ok(WsMessage::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(WsMessage::Binary(b))) => {
                return String::from_utf8(b.to_vec())
                    .map_err(|_| protocol_error("a binary frame that is not UTF-8"));
            }
            Some(Ok(_)) => {} // ping, pong
        }
    }
}

struct WsState {
    socket: Socket,
    translator: SparkStream,
    pending: VecDeque<StreamEvent>,
    error: Option<UpstreamError>,
    done: bool,
    idle: Duration,
    secrets: Vec<String>,
}

impl WsState {
    /// Reads one frame into `pending` (or the error).
    async fn read(&mut self) {
        let result = match next_frame(&mut self.socket, self.idle).await {
            Ok(frame) => {
                let mut out = Vec::new();
                let r = self.translator.on_frame(&frame, &mut out);
                self.pending.extend(out);
                r
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(false) => {}
            Ok(true) => {
                self.done = true;
                // The server closes after the last frame; a close from our side is a courtesy.
                let _ = self.socket.close(None).await;
            }
            Err(mut e) => {
                let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
                e.message = redact(&e.message, &secrets);
                self.done = true;
                self.error = Some(e);
            }
        }
    }
}

/// A stream whose first frame has been read: an error in it (Spark reports auth, quota and rate
/// limits that way) comes back before the stream begins, so the gateway can retry or fail over.
async fn stream_ws(
    up: &Upstream,
    channel: &Channel,
    model: &str,
    req: &ChatRequest,
) -> Result<EventStream, UpstreamError> {
    let socket = open(up, channel, model, req).await.map_err(|e| super::http::scrub(channel, e))?;
    let mut state = WsState {
        socket,
        translator: SparkStream::new(req.max_tokens),
        pending: VecDeque::new(),
        error: None,
        done: false,
        idle: up.idle_timeout,
        secrets: channel.secrets().into_iter().map(String::from).collect(),
    };
    state.read().await;
    if let Some(e) = state.error.take() {
        return Err(e);
    }
    Ok(Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.pending.pop_front() {
                return Some((Ok(event), s));
            }
            if let Some(e) = s.error.take() {
                return Some((Err(e), s));
            }
            if s.done {
                return None;
            }
            s.read().await;
        }
    })))
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
    fn urls_are_signed_as_the_docs_say() {
        // Computed independently (Python's hmac and base64) for these inputs.
        let date = "Fri, 05 May 2023 10:43:39 GMT";
        assert_eq!(
            signature("secret-y", "spark-api.xf-yun.com", date, "/v3.5/chat").unwrap(),
            "Dp/mpLmb/IgEP5XvKVpmyrSaNqcAx2SWHd/j6Defcrg="
        );
        let url =
            signed_url("wss://spark-api.xf-yun.com", "/v3.5/chat", "api-key-x", "secret-y", date).unwrap();
        assert_eq!(
            url,
            "wss://spark-api.xf-yun.com/v3.5/chat?authorization=YXBpX2tleT0iYXBpLWtleS14IiwgYWxnb3JpdGhtPSJobWFjLXNoYTI1NiIsIGhlYWRlcnM9Imhvc3QgZGF0ZSByZXF1ZXN0LWxpbmUiLCBzaWduYXR1cmU9IkRwL21wTG1iL0lnRVA1WHZLVnBteXJTYU5xY0F4MlNXSGQvajZEZWZjcmc9Ig%3D%3D&date=Fri%2C+05+May+2023+10%3A43%3A39+GMT&host=spark-api.xf-yun.com"
        );
        let local = signed_url("http://127.0.0.1:9000", "/v1.1/chat", "k", "s", date).unwrap();
        assert!(local.starts_with("ws://127.0.0.1:9000/v1.1/chat?authorization="), "{local}");
        assert!(signed_url("ftp://x", "/v1.1/chat", "k", "s", date).is_err());
    }

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
