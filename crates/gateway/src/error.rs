//! What went wrong upstream, classified the same way for every provider: whether another try
//! (on this channel or the next) can help decides retries and failover, and the kind decides the
//! error the client sees.

use std::time::Duration;

use serde_json::{Value, json};

/// The kinds of failure a gateway must tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad or expired credentials (a channel problem: the next channel may work).
    Auth,
    /// Throttled: retry after the hint, or go to another channel.
    RateLimited,
    /// Out of credit or quota: retrying cannot help; the channel cools down.
    QuotaExhausted,
    /// The prompt does not fit the model: the client's problem, never retried.
    ContextLength,
    /// Any other request the provider refused: never retried.
    BadRequest,
    /// The provider does not know the model.
    NotFound,
    /// 5xx, overload, an error frame inside a stream.
    Server,
    Timeout,
    /// Could not connect, or the connection broke.
    Connection,
    /// The provider answered something this module cannot read.
    Protocol,
}

/// A failed upstream call.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct UpstreamError {
    pub kind: ErrorKind,
    pub provider: &'static str,
    /// The provider's HTTP status, when there was one.
    pub status: Option<u16>,
    pub message: String,
    /// How long the provider asked us to wait (retry-after-ms, Retry-After, Gemini's RetryInfo).
    pub retry_after: Option<Duration>,
}

impl UpstreamError {
    pub fn new(provider: &'static str, kind: ErrorKind, message: impl Into<String>) -> UpstreamError {
        UpstreamError { kind, provider, status: None, message: message.into(), retry_after: None }
    }

    pub fn with_status(mut self, status: u16) -> UpstreamError {
        self.status = Some(status);
        self
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> UpstreamError {
        self.retry_after = after;
        self
    }

    /// The same error, named after `provider` (a protocol that delegates to another's parsing
    /// reports under its own name).
    pub fn reported_by(mut self, provider: &'static str) -> UpstreamError {
        self.provider = provider;
        self
    }

    /// Worth trying again on the same channel (after a pause).
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited | ErrorKind::Server | ErrorKind::Timeout | ErrorKind::Connection
        )
    }

    /// Worth trying on another channel: what is wrong may be this channel, not the request.
    /// Not an exhausted quota: the client is told at once (429 `insufficient_quota`, a billing
    /// matter an operator must see, not one to hide behind other accounts), and the channel
    /// rests so the requests after it go elsewhere (see `Gateway::record`).
    pub fn fails_over(&self) -> bool {
        self.retryable() || matches!(self.kind, ErrorKind::Auth | ErrorKind::NotFound)
    }

    /// The status baimo answers with.
    pub fn client_status(&self) -> u16 {
        match self.kind {
            ErrorKind::Auth => 502, // our upstream credentials are wrong, not the client's
            ErrorKind::RateLimited | ErrorKind::QuotaExhausted => 429,
            ErrorKind::ContextLength | ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Server | ErrorKind::Protocol | ErrorKind::Connection => 502,
            ErrorKind::Timeout => 504,
        }
    }

    /// OpenAI's error `type` and `code` for this failure.
    pub fn openai_type_code(&self) -> (&'static str, &'static str) {
        match self.kind {
            ErrorKind::Auth => ("upstream_error", "upstream_authentication_failed"),
            ErrorKind::RateLimited => ("rate_limit_error", "rate_limit_exceeded"),
            ErrorKind::QuotaExhausted => ("insufficient_quota", "insufficient_quota"),
            ErrorKind::ContextLength => ("invalid_request_error", "context_length_exceeded"),
            ErrorKind::BadRequest => ("invalid_request_error", "invalid_request"),
            ErrorKind::NotFound => ("invalid_request_error", "model_not_found"),
            ErrorKind::Server | ErrorKind::Protocol | ErrorKind::Connection => {
                ("upstream_error", "upstream_error")
            }
            ErrorKind::Timeout => ("upstream_error", "upstream_timeout"),
        }
    }

    /// OpenAI's error object for the client. The message names the provider but never a
    /// credential (provider messages are passed through after `redact`).
    pub fn openai_json(&self) -> Value {
        let (kind, code) = self.openai_type_code();
        json!({"error": {"message": self.to_string(), "type": kind, "param": null, "code": code}})
    }
}

/// A retry hint from response headers: `retry-after-ms` (milliseconds), else `retry-after`
/// (seconds; an HTTP date is not honoured — treated as absent). At most a minute.
pub fn retry_after_from_headers(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let hint = if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        Duration::from_secs_f64(ms.max(0.0) / 1000.0)
    } else {
        Duration::from_secs_f64(get("retry-after")?.parse::<f64>().ok()?.max(0.0))
    };
    Some(hint.min(Duration::from_secs(60)))
}

/// `text` with every occurrence of each secret replaced (provider error messages sometimes echo
/// part of a key back).
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(*s, "[redacted]");
    }
    redact_masked(&out)
}

/// Removes key fragments a provider masked itself (`sk-ECH****abcd`, as OpenAI's "Incorrect API
/// key provided" quotes them): a word with a run of asterisks between key characters. Even a
/// fragment tells which key of a channel is in use, and it is nobody's business but the
/// operator's.
fn redact_masked(text: &str) -> String {
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '.');
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let masked = word.contains("**") && word.chars().filter(|c| c.is_ascii_alphanumeric()).count() >= 4;
        if masked {
            // A sentence's full stop is not part of the key.
            let dots = word.len() - word.trim_end_matches('.').len();
            out.push_str("[redacted]");
            out.push_str(&".".repeat(dots));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_key_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_key_fragments_are_removed_and_other_text_kept() {
        let text = "Incorrect API key provided: sk-ECH****abcd. You can find your API key at https://x.y/**.";
        assert_eq!(
            redact(text, &[]),
            "Incorrect API key provided: [redacted]. You can find your API key at https://x.y/**."
        );
        assert_eq!(redact("a ** b and 2**3", &[]), "a ** b and 2**3");
        assert_eq!(redact("key sk-live-1234 is bad", &["sk-live-1234"]), "key [redacted] is bad");
    }

    #[test]
    fn retry_hints_prefer_milliseconds_and_are_capped() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after_from_headers(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after_from_headers(&h), Some(Duration::from_millis(150)));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "86400".parse().unwrap());
        assert_eq!(retry_after_from_headers(&h), Some(Duration::from_secs(60)));
        h.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after_from_headers(&h), None);
    }

    #[test]
    fn quota_and_bad_requests_are_not_retried() {
        let e = |k| UpstreamError::new("openai", k, "x");
        assert!(e(ErrorKind::RateLimited).retryable());
        assert!(!e(ErrorKind::QuotaExhausted).retryable() && !e(ErrorKind::QuotaExhausted).fails_over());
        assert!(!e(ErrorKind::BadRequest).fails_over() && !e(ErrorKind::ContextLength).fails_over());
        assert_eq!(e(ErrorKind::ContextLength).openai_json()["error"]["code"], "context_length_exceeded");
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(redact("Incorrect API key sk-abc123", &["sk-abc123"]), "Incorrect API key [redacted]");
    }
}
