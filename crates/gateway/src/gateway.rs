//! Routing a request to a channel: the healthy channels of the highest priority that serve the
//! model, one of them drawn at random by weight; retries on the same channel when the error is
//! transient (after the provider's hint, or an exponential backoff), failover to the next channel
//! when the error may be the channel's; a circuit breaker that rests a failing channel.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError};
pub use crate::providers::EventStream;
use crate::providers::{TokenCache, Upstream, protocol};
use crate::types::{ChatRequest, ChatResponse};

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

/// Where a request is while the gateway works on it: the channel being tried and the tries
/// that failed so far. Read by whoever must account for a request dropped midway (a client
/// that left before the provider answered).
#[derive(Debug, Default)]
pub struct Progress {
    channel: Mutex<String>,
    failed: std::sync::atomic::AtomicUsize,
}

impl Progress {
    /// The channel tried last, and the failed tries before its current one.
    pub fn now(&self) -> (String, usize) {
        let channel = self.channel.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (channel, self.failed.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn trying(&self, channel: &str, failed: usize) {
        channel.clone_into(&mut self.channel.lock().unwrap_or_else(|p| p.into_inner()));
        self.failed.store(failed, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A request the gateway could not serve: the last error, and every failed try.
#[derive(Debug)]
pub struct Failed {
    pub error: UpstreamError,
    pub failed: Vec<Attempt>,
}

#[derive(Clone, Copy, Default)]
struct Health {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// Smooth weighted round robin's running credit.
    credit: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("two channels are named {0:?}")]
    DuplicateChannel(String),
    #[error("channel {channel:?}: {message}")]
    Invalid { channel: String, message: String },
    #[error("the HTTP client: {0}")]
    Http(String),
}

pub struct Gateway {
    channels: Vec<Channel>,
    health: Mutex<Vec<Health>>,
    upstream: Upstream,
    policy: RetryPolicy,
}

impl Gateway {
    pub fn new(channels: Vec<Channel>, policy: RetryPolicy) -> Result<Gateway, GatewayError> {
        for (i, c) in channels.iter().enumerate() {
            if channels[..i].iter().any(|o| o.name == c.name) {
                return Err(GatewayError::DuplicateChannel(c.name.clone()));
            }
            crate::providers::check_channel(c)
                .map_err(|message| GatewayError::Invalid { channel: c.name.clone(), message })?;
        }
        // reqwest is built without a default TLS provider (one for the whole program): ring's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| GatewayError::Http(e.to_string()))?;
        let health = Mutex::new(vec![Health::default(); channels.len()]);
        let upstream = Upstream {
            http,
            tokens: TokenCache::default(),
            timeout: policy.timeout,
            idle_timeout: policy.idle_timeout,
        };
        Ok(Gateway { channels, health, upstream, policy })
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
    /// of the highest priority, shared by weight; when every one is resting, the one whose rest
    /// ends first (a request is better tried than refused).
    ///
    /// The share is smooth weighted round robin (as nginx balances upstreams): each candidate's
    /// credit grows by its weight, the richest is chosen and pays the total. Over any run of
    /// requests each channel gets its weight's share to within one request, where a random draw
    /// would stray by several in fifty.
    fn pick(&self, model: &str, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let open = |h: &[Health], i: usize| h[i].open_until.is_some_and(|t| t > now);
        let candidates: Vec<usize> = (0..self.channels.len())
            .filter(|&i| self.channels[i].serves(model) && !tried.contains(&i))
            .collect();
        let healthy: Vec<usize> = candidates.iter().copied().filter(|&i| !open(&health, i)).collect();
        if healthy.is_empty() {
            return candidates.into_iter().min_by_key(|&i| health[i].open_until);
        }
        let top = healthy.iter().map(|&i| self.channels[i].priority).max()?;
        let tier: Vec<usize> = healthy.into_iter().filter(|&i| self.channels[i].priority == top).collect();
        let total: i64 = tier.iter().map(|&i| self.channels[i].weight as i64).sum();
        for &i in &tier {
            health[i].credit += self.channels[i].weight as i64;
        }
        let chosen = tier.iter().copied().max_by_key(|&i| (health[i].credit, std::cmp::Reverse(i)))?;
        health[chosen].credit -= total;
        Some(chosen)
    }

    fn record(&self, channel: usize, error: Option<&UpstreamError>) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let h = &mut health[channel];
        match error {
            None => {
                h.consecutive_failures = 0;
                h.open_until = None;
            }
            // The request's fault, not the channel's (an exhausted quota is the channel's).
            Some(e) if !e.fails_over() && e.kind != ErrorKind::QuotaExhausted => {}
            Some(e) => {
                if e.kind == ErrorKind::Auth {
                    // A token the provider no longer takes is fetched anew next time.
                    self.upstream.tokens.invalidate(&self.channels[channel].name);
                }
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

    /// Runs `attempt` on channels as the policy says until one succeeds or none is left.
    async fn route<T, F, Fut>(
        &self,
        model: &str,
        progress: &Progress,
        attempt: F,
    ) -> Result<Served<T>, Failed>
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
                progress.trying(&name, failed.len());
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
                                tracing::info!(channel = %name, wait_ms = wait.as_millis() as u64, "retrying on the same channel");
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
        self.chat_with(req, &Progress::default()).await
    }

    /// A whole answer, telling `progress` where it is.
    pub async fn chat_with(
        &self,
        req: &ChatRequest,
        progress: &Progress,
    ) -> Result<Served<ChatResponse>, Failed> {
        self.route(&req.model, progress, |channel| async move {
            let ch = &self.channels[channel];
            crate::providers::refuse_unsupported(protocol(ch.provider), req)?;
            protocol(ch.provider).chat(&self.upstream, ch, ch.upstream_model(&req.model), req).await
        })
        .await
    }

    /// A stream of the answer. Retries and failover happen until the provider's stream has
    /// begun; a failure after that ends the stream with the error (never a silent truncation).
    pub async fn chat_stream(&self, req: &ChatRequest) -> Result<Served<EventStream>, Failed> {
        self.chat_stream_with(req, &Progress::default()).await
    }

    /// A stream of the answer, telling `progress` where it is until the stream begins.
    pub async fn chat_stream_with(
        &self,
        req: &ChatRequest,
        progress: &Progress,
    ) -> Result<Served<EventStream>, Failed> {
        self.route(&req.model, progress, |channel| async move {
            let ch = &self.channels[channel];
            crate::providers::refuse_unsupported(protocol(ch.provider), req)?;
            protocol(ch.provider).chat_stream(&self.upstream, ch, ch.upstream_model(&req.model), req).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str, weight: u32, priority: i32) -> Channel {
        serde_json::from_value(serde_json::json!({
            "name": name, "provider": "openai", "api_key": "k", "models": ["m"],
            "weight": weight, "priority": priority,
        }))
        .unwrap()
    }

    #[test]
    fn weights_share_the_traffic_and_priorities_come_first() {
        let g = Gateway::new(
            vec![channel("a", 3, 0), channel("b", 1, 0), channel("backup", 5, -1)],
            RetryPolicy::default(),
        )
        .unwrap();
        let mut counts = [0usize; 3];
        for _ in 0..50 {
            counts[g.pick("m", &[]).unwrap()] += 1;
        }
        // 3:1 of 50 is 37.5 : 12.5; round robin is off by at most one request.
        assert!((37..=38).contains(&counts[0]) && counts[2] == 0, "{counts:?}");
        // Within every four consecutive picks, three go to `a` and one to `b`.
        let picks: Vec<usize> = (0..8).map(|_| g.pick("m", &[]).unwrap()).collect();
        for window in picks.chunks(4) {
            assert_eq!(window.iter().filter(|&&i| i == 0).count(), 3, "{picks:?}");
        }
        // Tried channels are skipped; the lower priority serves when the top tier is used up.
        assert_eq!(g.pick("m", &[0, 1]), Some(2));
        assert_eq!(g.pick("m", &[0, 1, 2]), None);
        assert_eq!(g.pick("other", &[]), None);
    }

    #[test]
    fn failing_channels_rest_and_quota_errors_rest_longer() {
        let policy = RetryPolicy { failures_to_open: 2, ..RetryPolicy::default() };
        let g = Gateway::new(vec![channel("a", 1, 0), channel("b", 1, 0)], policy).unwrap();
        let server = UpstreamError::new("openai", ErrorKind::Server, "boom");
        g.record(0, Some(&server));
        assert!((0..4).any(|_| g.pick("m", &[]) == Some(0)), "one failure does not open the circuit");
        g.record(0, Some(&server));
        assert!((0..4).all(|_| g.pick("m", &[]) == Some(1)), "two failures rest channel a");
        // A request's own fault says nothing about the channel.
        let bad = UpstreamError::new("openai", ErrorKind::BadRequest, "bad");
        g.record(1, Some(&bad));
        assert!((0..4).all(|_| g.pick("m", &[]) == Some(1)));
        // With every channel resting, the one whose rest ends first is still tried.
        g.record(1, Some(&UpstreamError::new("openai", ErrorKind::QuotaExhausted, "no credit")));
        assert_eq!(g.pick("m", &[]), Some(0));
        g.record(0, None);
        assert!((0..4).any(|_| g.pick("m", &[]) == Some(0)));
    }
}
