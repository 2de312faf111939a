//! The path most providers share: one HTTP request, a JSON answer or a server-sent-event stream,
//! errors as non-2xx answers. Provider modules supply the request, the parsing and the
//! translation; this module sends, bounds what it reads, times out stalls and keeps credentials
//! out of every error text.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use super::{EventStream, Protocol, StreamTranslator, Upstream};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError, redact};
use crate::sse::SseDecoder;
use crate::types::{ChatRequest, ChatResponse, StreamEvent};

/// Largest error body read from a provider.
const MAX_ERROR_BODY: usize = 1 << 20;
/// Largest whole answer read from a provider.
const MAX_ANSWER_BODY: usize = 64 << 20;

/// `e` with the channel's credentials taken out of its message.
pub(crate) fn scrub(channel: &Channel, mut e: UpstreamError) -> UpstreamError {
    e.message = redact(&e.message, &channel.secrets());
    e
}

/// Sends the request to one channel; a non-2xx answer comes back as its error.
pub(crate) async fn send<P: Protocol + ?Sized>(
    proto: &P,
    up: &Upstream,
    channel: &Channel,
    model: &str,
    req: &ChatRequest,
    stream: bool,
) -> Result<reqwest::Response, UpstreamError> {
    let builder = proto.request(up, channel, model, req, stream).await.map_err(|e| scrub(channel, e))?;
    let response = tokio::time::timeout(up.timeout, builder.send())
        .await
        .map_err(|_| UpstreamError::new(proto.name(), ErrorKind::Timeout, "no answer in time"))?
        .map_err(|e| scrub(channel, connection_error(proto.name(), e)))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = read_limited(response, MAX_ERROR_BODY).await.unwrap_or_default();
    Err(scrub(channel, proto.classify(status, &headers, &body)))
}

/// A transport failure: a timeout, or a connection that could not be made or broke.
pub(crate) fn connection_error(provider: &'static str, e: reqwest::Error) -> UpstreamError {
    let kind = if e.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Connection };
    UpstreamError::new(provider, kind, e.without_url().to_string())
}

/// A whole answer over HTTP.
pub(crate) async fn chat<P: Protocol + ?Sized>(
    proto: &P,
    up: &Upstream,
    channel: &Channel,
    model: &str,
    req: &ChatRequest,
) -> Result<ChatResponse, UpstreamError> {
    let response = send(proto, up, channel, model, req, false).await?;
    let body = tokio::time::timeout(up.timeout, read_limited(response, MAX_ANSWER_BODY))
        .await
        .map_err(|_| UpstreamError::new(proto.name(), ErrorKind::Timeout, "the answer stopped arriving"))??;
    proto.parse_response(&body).map_err(|e| scrub(channel, e))
}

/// A streamed answer over HTTP with server-sent events.
pub(crate) async fn chat_stream<P: Protocol + ?Sized>(
    proto: &P,
    up: &Upstream,
    channel: &Channel,
    model: &str,
    req: &ChatRequest,
) -> Result<EventStream, UpstreamError> {
    let response = send(proto, up, channel, model, req, true).await?;
    Ok(event_stream(
        Box::pin(response.bytes_stream()),
        proto.name(),
        proto.stream(),
        up.idle_timeout,
        channel.secrets().into_iter().map(String::from).collect(),
    ))
}

/// The SSE stream of a response already sent and looked at (for a provider that must inspect
/// the response before streaming it: ERNIE answers a failed stream request with a JSON body).
pub(crate) fn response_stream<P: Protocol + ?Sized>(
    response: reqwest::Response,
    proto: &P,
    up: &Upstream,
    channel: &Channel,
) -> EventStream {
    event_stream(
        Box::pin(response.bytes_stream()),
        proto.name(),
        proto.stream(),
        up.idle_timeout,
        channel.secrets().into_iter().map(String::from).collect(),
    )
}

/// The body, refusing more than `limit` bytes.
pub(crate) async fn read_limited(
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, UpstreamError> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| connection_error("gateway", e))?;
        if body.len() + chunk.len() > limit {
            return Err(UpstreamError::new(
                "gateway",
                ErrorKind::Protocol,
                format!("an answer over {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

struct StreamState {
    bytes: ByteStream,
    decoder: SseDecoder,
    translator: Box<dyn StreamTranslator>,
    pending: VecDeque<StreamEvent>,
    /// An error to report once the events before it are out.
    error: Option<UpstreamError>,
    provider: &'static str,
    idle: Duration,
    secrets: Vec<String>,
    done: bool,
}

impl StreamState {
    fn scrub(&self, message: &str) -> String {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        redact(message, &secrets)
    }

    fn fail(&mut self, kind: ErrorKind, message: &str) {
        self.done = true;
        self.error = Some(UpstreamError::new(self.provider, kind, self.scrub(message)));
    }

    /// Reads the next chunk of the body into `pending` (or records why not).
    async fn read_more(&mut self) {
        let chunk = match tokio::time::timeout(self.idle, self.bytes.next()).await {
            Err(_) => return self.fail(ErrorKind::Timeout, "the stream stalled"),
            Ok(None) => return self.fail(ErrorKind::Connection, "the stream ended before its last event"),
            Ok(Some(Err(e))) => {
                return self.fail(ErrorKind::Connection, &format!("the stream broke: {}", e.without_url()));
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        let mut events = Vec::new();
        if let Err(e) = self.decoder.feed(&chunk, &mut events) {
            return self.fail(ErrorKind::Protocol, &e.to_string());
        }
        for event in events {
            let mut out = Vec::new();
            let result = self.translator.on_event(&event, &mut out);
            self.pending.extend(out);
            match result {
                Ok(false) => {}
                Ok(true) => {
                    self.done = true;
                    return;
                }
                Err(mut e) => {
                    e.message = self.scrub(&e.message);
                    self.done = true;
                    self.error = Some(e);
                    return;
                }
            }
        }
    }
}

/// An SSE body as translated events; a broken connection, a stall longer than `idle` or a
/// stream that ends before its last event become a final error item.
pub(crate) fn event_stream(
    bytes: ByteStream,
    provider: &'static str,
    translator: Box<dyn StreamTranslator>,
    idle: Duration,
    secrets: Vec<String>,
) -> EventStream {
    let state = StreamState {
        bytes,
        decoder: SseDecoder::new(),
        translator,
        pending: VecDeque::new(),
        error: None,
        provider,
        idle,
        secrets,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
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
            s.read_more().await;
        }
    }))
}
