//! Spark's WebSocket transport (for `spark`): the signed URL (HMAC-SHA256 with the API secret
//! over `host`, `date` and the request line, RFC 1123 date), the TLS connection, and reading
//! frames into events through [`SparkStream`](super::spark::SparkStream).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::spark::{NAME, SparkStream, protocol_error, request_frame, route};
use super::{EventStream, Upstream};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError, redact};
use crate::types::{ChatRequest, StreamEvent};

/// The largest frame read from the server.
const MAX_FRAME: usize = 4 << 20;

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
pub(crate) async fn stream_ws(
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
}
