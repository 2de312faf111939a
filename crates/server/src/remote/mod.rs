//! The bookkeeping of every request, local or hosted: one usage record per request however
//! many tries it took, and the response headers that name the channel that answered.

use std::time::Instant;

use axum::http::HeaderValue;
use axum::response::Response;
use baimo_gateway::{UpstreamError, Usage};

use crate::App;

/// What the server keeps of one request to a hosted model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// The client key's id in the store (none when keys are not stored).
    pub key_id: Option<i64>,
    pub model: String,
    /// The channel that answered (or the last one tried).
    pub channel: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
    /// The HTTP status the client got (a stream that failed midway counts as 502).
    pub status: u16,
    /// Tries that failed before the answer (not billed).
    pub retries: u32,
    pub stream: bool,
}

/// Where usage records go (the store; tests may collect them).
pub trait UsageLog: Send + Sync {
    fn record(&self, record: UsageRecord);
}

/// The bookkeeping of one request while it runs.
pub(crate) struct Tally {
    pub key_id: Option<i64>,
    pub model: String,
    pub stream: bool,
    pub started: Instant,
}

impl Tally {
    pub fn new(key_id: Option<i64>, model: &str, stream: bool) -> Tally {
        Tally { key_id, model: model.to_string(), stream, started: Instant::now() }
    }

    /// Records the request's end.
    pub fn finish(&self, app: &App, channel: &str, usage: Usage, status: u16, retries: usize) {
        let record = UsageRecord {
            key_id: self.key_id,
            model: self.model.clone(),
            channel: channel.to_string(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            latency_ms: self.started.elapsed().as_millis() as u64,
            status,
            retries: retries.min(u32::MAX as usize) as u32,
            stream: self.stream,
        };
        tracing::info!(
            model = %record.model, channel = %record.channel, status = record.status,
            retries = record.retries, prompt_tokens = record.prompt_tokens,
            completion_tokens = record.completion_tokens, latency_ms = record.latency_ms,
            "request finished"
        );
        if let Some(log) = &app.usage_log {
            log.record(record);
        }
    }
}

/// Names the channel that answered and the failed tries before it, for the client.
pub(crate) fn served_headers(response: &mut Response, channel: &str, retries: usize) {
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(channel) {
        h.insert("x-baimo-channel", v);
    }
    h.insert("x-baimo-retries", HeaderValue::from(retries));
}

/// The `Retry-After` to pass on to the client, in whole seconds (at least 1).
pub(crate) fn retry_after_secs(e: &UpstreamError) -> Option<u64> {
    matches!(e.kind, baimo_gateway::ErrorKind::RateLimited)
        .then(|| e.retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64))
}
