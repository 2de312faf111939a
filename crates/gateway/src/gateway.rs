//! Routing a request to a channel: the healthy channels of the highest priority that serve the
//! model, one of them drawn at random by weight; retries on the same channel when the error is
//! transient (after the provider's hint, or an exponential backoff), failover to the next channel
//! when the error may be the channel's; a circuit breaker that rests a failing channel.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};

use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError, redact};
use crate::providers::{StreamTranslator, protocol};
use crate::sse::SseDecoder;
use crate::types::{ChatRequest, ChatResponse, StreamEvent};

/// How hard the gateway tries.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Extra tries on the same channel for transient errors.
    pub retries_per_channel: u32,
    /// Backoff without a hint: `base · 2^n` (±25% jitter), at most `max_backoff`.
    pub base_backoff: Duration,
    /// A provider asking for a longer wait than this sends the request to the next channel.
    pub max_backoff: Duration,
    /// Until the answer (whole) or the response head (stream).
    pub timeout: Duration,
    /// Between two pieces of a stream.
    pub idle_timeout: Duration,
    /// Consecutive failures that open a channel's circuit, and how long it then rests.
    pub failures_to_open: u32,
    pub cool_down: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries_per_channel: 1,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(60),
            failures_to_open: 3,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// One failed try.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub channel: String,
    pub error: UpstreamError,
}

/// A request the gateway served: the answer, the channel that gave it, and the tries that failed
/// before (each is a retry, billed nowhere).
pub struct Served<T> {
    pub value: T,
    pub channel: String,
    pub failed: Vec<Attempt>,
}

/// A request the gateway could not serve: the last error, and every failed try.
#[derive(Debug)]
pub struct Failed {
    pub error: UpstreamError,
    pub failed: Vec<Attempt>,
}

/// A translated stream: events in order; an error ends it.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, UpstreamError>> + Send>>;

#[derive(Clone, Copy, Default)]
struct Health {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("two channels are named {0:?}")]
    DuplicateChannel(String),
    #[error("channel {0:?}: weight must be at least 1")]
    ZeroWeight(String),
    #[error("the HTTP client: {0}")]
    Http(String),
}

pub struct Gateway {
    channels: Vec<Channel>,
    health: Mutex<Vec<Health>>,
    http: reqwest::Client,
    policy: RetryPolicy,
}

impl Gateway {
    pub fn new(channels: Vec<Channel>, policy: RetryPolicy) -> Result<Gateway, GatewayError> {
        for (i, c) in channels.iter().enumerate() {
            if channels[..i].iter().any(|o| o.name == c.name) {
                return Err(GatewayError::DuplicateChannel(c.name.clone()));
            }
            if c.weight == 0 {
                return Err(GatewayError::ZeroWeight(c.name.clone()));
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| GatewayError::Http(e.to_string()))?;
        let health = Mutex::new(vec![Health::default(); channels.len()]);
        Ok(Gateway { channels, health, http, policy })
    }

    /// Every model name some enabled channel serves, sorted.
    pub fn models(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.channels.iter().filter(|c| c.enabled).flat_map(|c| c.models.iter().cloned()).collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn serves(&self, model: &str) -> bool {
        self.channels.iter().any(|c| c.serves(model))
    }

    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    /// The next channel to try: among those serving `model` and not tried yet, the healthy ones
    /// of the highest priority, drawn by weight; when every one is resting, the one whose rest
    /// ends first (a request is better tried than refused).
    fn pick(&self, model: &str, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let open = |i: usize| health[i].open_until.is_some_and(|t| t > now);
        let candidates: Vec<usize> = (0..self.channels.len())
            .filter(|&i| self.channels[i].serves(model) && !tried.contains(&i))
            .collect();
        let healthy: Vec<usize> = candidates.iter().copied().filter(|&i| !open(i)).collect();
        if healthy.is_empty() {
            return candidates.into_iter().min_by_key(|&i| health[i].open_until);
        }
        let top = healthy.iter().map(|&i| self.channels[i].priority).max()?;
        let tier: Vec<usize> = healthy.into_iter().filter(|&i| self.channels[i].priority == top).collect();
        let total: u64 = tier.iter().map(|&i| self.channels[i].weight as u64).sum();
        let mut ticket = fastrand::u64(0..total);
        for &i in &tier {
            let w = self.channels[i].weight as u64;
            if ticket < w {
                return Some(i);
            }
            ticket -= w;
        }
        tier.last().copied()
    }

    fn record(&self, channel: usize, error: Option<&UpstreamError>) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let h = &mut health[channel];
        match error {
            None => *h = Health::default(),
            Some(e) if !e.fails_over() => {} // the request's fault, not the channel's
            Some(e) => {
                h.consecutive_failures += 1;
                // Credit and credentials do not come back in seconds.
                let rest = match e.kind {
                    ErrorKind::QuotaExhausted | ErrorKind::Auth => Some(self.policy.cool_down * 4),
                    _ if h.consecutive_failures >= self.policy.failures_to_open => {
                        Some(self.policy.cool_down)
                    }
                    _ => None,
                };
                if let Some(rest) = rest {
                    h.open_until = Some(Instant::now() + rest);
                }
            }
        }
    }

    fn backoff(&self, error: &UpstreamError, retry: u32) -> Option<Duration> {
        if let Some(hint) = error.retry_after {
            return (hint <= self.policy.max_backoff).then_some(hint);
        }
        let base = self.policy.base_backoff.saturating_mul(1 << retry.min(16)).min(self.policy.max_backoff);
        Some(base.mul_f64(0.75 + fastrand::f64() * 0.5))
    }

    /// Credentials of a channel, to keep them out of error text.
    fn secrets(&self, channel: usize) -> [&str; 1] {
        [self.channels[channel].api_key.expose()]
    }

    /// Sends the request to one channel; a non-2xx answer comes back as its error.
    async fn send(
        &self,
        channel: usize,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        let ch = &self.channels[channel];
        let proto = protocol(ch.provider);
        let builder = proto.request(&self.http, ch, ch.upstream_model(&req.model), req, stream);
        let response = tokio::time::timeout(self.policy.timeout, builder.send())
            .await
            .map_err(|_| UpstreamError::new(proto.name(), ErrorKind::Timeout, "no answer in time"))?
            .map_err(|e| {
                let kind = if e.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Connection };
                UpstreamError::new(
                    proto.name(),
                    kind,
                    redact(&e.without_url().to_string(), &self.secrets(channel)),
                )
            })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let headers = response.headers().clone();
        let body = read_limited(response, 1 << 20).await.unwrap_or_default();
        let mut e = proto.classify(status, &headers, &body);
        e.message = redact(&e.message, &self.secrets(channel));
        Err(e)
    }

    async fn once(&self, channel: usize, req: &ChatRequest) -> Result<ChatResponse, UpstreamError> {
        let proto = protocol(self.channels[channel].provider);
        let response = self.send(channel, req, false).await?;
        let body =
            tokio::time::timeout(self.policy.timeout, read_limited(response, 64 << 20)).await.map_err(
                |_| UpstreamError::new(proto.name(), ErrorKind::Timeout, "the answer stopped arriving"),
            )??;
        proto.parse_response(&body).map_err(|mut e| {
            e.message = redact(&e.message, &self.secrets(channel));
            e
        })
    }

    /// Runs `attempt` on channels as the policy says until one succeeds or none is left.
    async fn route<T, F, Fut>(&self, model: &str, attempt: F) -> Result<Served<T>, Failed>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = Result<T, UpstreamError>>,
    {
        let mut tried = Vec::new();
        let mut failed: Vec<Attempt> = Vec::new();
        while let Some(channel) = self.pick(model, &tried) {
            tried.push(channel);
            let name = self.channels[channel].name.clone();
            let mut retry = 0;
            loop {
                match attempt(channel).await {
                    Ok(value) => {
                        self.record(channel, None);
                        return Ok(Served { value, channel: name, failed });
                    }
                    Err(error) => {
                        self.record(channel, Some(&error));
                        tracing::warn!(channel = %name, kind = ?error.kind, "upstream failed: {error}");
                        let (fails_over, retryable) = (error.fails_over(), error.retryable());
                        let wait = (retryable && retry < self.policy.retries_per_channel)
                            .then(|| self.backoff(&error, retry))
                            .flatten();
                        failed.push(Attempt { channel: name.clone(), error });
                        if !fails_over {
                            let error = failed.last().map(|a| a.error.clone()).expect("just pushed");
                            return Err(Failed { error, failed });
                        }
                        match wait {
                            Some(wait) => {
                                tokio::time::sleep(wait).await;
                                retry += 1;
                            }
                            None => break,
                        }
                    }
                }
            }
        }
        let error = match failed.last() {
            Some(a) => a.error.clone(),
            None => {
                UpstreamError::new("gateway", ErrorKind::NotFound, format!("no channel serves {model:?}"))
            }
        };
        Err(Failed { error, failed })
    }

    /// A whole answer.
    pub async fn chat(&self, req: &ChatRequest) -> Result<Served<ChatResponse>, Failed> {
        self.route(&req.model, |channel| self.once(channel, req)).await
    }

    /// A stream of the answer. Retries and failover happen until the provider's stream has
    /// begun; a failure after that ends the stream with the error (never a silent truncation).
    pub async fn chat_stream(&self, req: &ChatRequest) -> Result<Served<EventStream>, Failed> {
        self.route(&req.model, |channel| async move {
            let response = self.send(channel, req, true).await?;
            let proto = protocol(self.channels[channel].provider);
            Ok(event_stream(
                response,
                proto.name(),
                proto.stream(),
                self.policy.idle_timeout,
                self.secrets(channel)[0].to_string(),
            ))
        })
        .await
    }
}

/// The body, refusing more than `limit` bytes.
async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, UpstreamError> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk
            .map_err(|e| UpstreamError::new("gateway", ErrorKind::Connection, e.without_url().to_string()))?;
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

struct StreamState {
    bytes: Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    decoder: SseDecoder,
    translator: Box<dyn StreamTranslator>,
    pending: VecDeque<StreamEvent>,
    /// An error to report once the events before it are out.
    error: Option<UpstreamError>,
    provider: &'static str,
    idle: Duration,
    secret: String,
    done: bool,
}

impl StreamState {
    fn fail(&mut self, kind: ErrorKind, message: &str) {
        self.done = true;
        self.error = Some(UpstreamError::new(self.provider, kind, redact(message, &[&self.secret])));
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
                    e.message = redact(&e.message, &[&self.secret]);
                    self.done = true;
                    self.error = Some(e);
                    return;
                }
            }
        }
    }
}

/// The provider's SSE body as translated events; a broken connection, a stall longer than `idle`
/// or a stream that ends before its last event become a final error item.
fn event_stream(
    response: reqwest::Response,
    provider: &'static str,
    translator: Box<dyn StreamTranslator>,
    idle: Duration,
    secret: String,
) -> EventStream {
    let state = StreamState {
        bytes: Box::pin(response.bytes_stream()),
        decoder: SseDecoder::new(),
        translator,
        pending: VecDeque::new(),
        error: None,
        provider,
        idle,
        secret,
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
