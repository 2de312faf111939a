//! The bookkeeping of every request, local or hosted, on every way it can end.
//!
//! A [`Meter`] follows what a request has used while it runs: the engine's live count of tokens
//! generated (local), or the provider's reported usage, or, until the provider reports, an
//! estimate from the text received (hosted). A [`Tally`] is the request's record: made once the
//! request is admitted, it writes one usage record, one log line and the metrics when it is
//! dropped — after a whole answer, an error, a client that left mid-stream or before the
//! upstream answered (the handler's future dropped). Its quota reservation is released only
//! after the record is counted, so a key's usage is never under-counted in between.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::HeaderValue;
use axum::response::Response;
use baimo_api::{ChatRequest, Usage};
use baimo_gateway::UpstreamError;

use crate::App;
use crate::access::Reservation;

/// What the server keeps of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// The client key's id in the store (none when keys are not stored).
    pub key_id: Option<i64>,
    pub model: String,
    /// The channel that answered (or the last one tried); `local` for the engine.
    pub channel: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
    /// The HTTP status the client got (499: the client left first).
    pub status: u16,
    /// Tries that failed before the answer (not billed).
    pub retries: u32,
    pub stream: bool,
    /// The counts are estimated from the text seen (see [`estimate_tokens`]).
    pub estimated: bool,
}

/// Where usage records go (the store; tests may collect them).
pub trait UsageLog: Send + Sync {
    fn record(&self, record: UsageRecord);
}

/// Tokens of `text` as a tokenizer of today's models roughly counts them: one per CJK character,
/// one per four bytes of anything else. Used only where no count exists (a hosted stream cut
/// before its provider reported usage); such records are marked `estimated`. On English prose
/// it lands within ±50% of BPE tokenizers' counts (about 0.75 words per token).
pub fn estimate_tokens(text: &str) -> u64 {
    let (wide, other_bytes) = text_measure(text);
    wide + other_bytes.div_ceil(4)
}

/// CJK characters, and bytes of everything else (what [`estimate_tokens`] counts).
fn text_measure(text: &str) -> (u64, u64) {
    let (mut wide, mut other_bytes) = (0u64, 0u64);
    for c in text.chars() {
        if matches!(c as u32, 0x2E80..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF) {
            wide += 1;
        } else {
            other_bytes += c.len_utf8() as u64;
        }
    }
    (wide, other_bytes)
}

/// The texts of a request's prompt: messages, their tool calls, the tools' definitions.
fn prompt_texts(req: &ChatRequest) -> impl Iterator<Item = String> + '_ {
    let messages = req.messages.iter().flat_map(|m| {
        m.content.iter().cloned().chain(m.tool_calls.iter().map(|c| format!("{}{}", c.name, c.arguments)))
    });
    messages.chain(req.tools.iter().map(|t| t.openai_json().to_string()))
}

/// The prompt's tokens, estimated: its text and each message's framing (four tokens).
pub fn estimate_prompt_tokens(req: &ChatRequest) -> u64 {
    4 * req.messages.len() as u64 + prompt_texts(req).map(|t| estimate_tokens(&t)).sum::<u64>()
}

/// The most tokens a hosted provider may count for the prompt: every byte a token (byte-level
/// tokenizers never do worse on text), eight per message for its framing, and a whole tile
/// budget per image. Reserved against quotas before the provider's figure is known.
pub fn prompt_token_bound(req: &ChatRequest) -> u64 {
    /// OpenAI's count for a high-detail 2048×768 image is 1105; Anthropic's cap is ~1600.
    const IMAGE_TOKENS: u64 = 1600;
    let images: u64 = req.messages.iter().map(|m| m.images.len() as u64).sum();
    8 * req.messages.len() as u64
        + IMAGE_TOKENS * images
        + prompt_texts(req).map(|t| t.len() as u64).sum::<u64>()
}

/// What a request has used so far.
#[derive(Default)]
pub(crate) struct Meter {
    /// The prompt's tokens: counted (local) or estimated (hosted, until reported).
    prompt_tokens: AtomicU64,
    /// Local: each choice's tokens generated, as the engine counts them.
    jobs: Mutex<Vec<Arc<AtomicUsize>>>,
    /// Hosted: the answer's text received so far, measured for [`estimate_tokens`] (summed over
    /// the stream and rounded once: rounding each piece would count every short piece as a token).
    seen_wide: AtomicU64,
    seen_bytes: AtomicU64,
    /// Hosted: the provider began answering (from then on, a cut answer is billed by estimate).
    answering: AtomicBool,
    /// Figures the provider reported (they replace the estimates).
    reported: Mutex<Option<Usage>>,
    /// Hosted: the channel being tried, while the gateway works.
    pub progress: baimo_gateway::Progress,
}

impl Meter {
    /// Local: the prompt's tokens (every choice shares them).
    pub fn prompt(&self, tokens: u64) {
        self.prompt_tokens.store(tokens, Ordering::Relaxed);
    }

    /// Local: a choice's generated-token counter, kept up by the engine.
    pub fn job(&self) -> Arc<AtomicUsize> {
        let counter = Arc::new(AtomicUsize::new(0));
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).push(counter.clone());
        counter
    }

    /// Hosted: the provider began answering a prompt estimated at `prompt_tokens`.
    pub fn answering(&self, prompt_tokens: u64) {
        self.prompt_tokens.store(prompt_tokens, Ordering::Relaxed);
        self.answering.store(true, Ordering::Relaxed);
    }

    /// Hosted: text of the answer received.
    pub fn seen(&self, text: &str) {
        let (wide, bytes) = text_measure(text);
        self.seen_wide.fetch_add(wide, Ordering::Relaxed);
        self.seen_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The provider's own figures.
    pub fn reported(&self, usage: Usage) {
        *self.reported.lock().unwrap_or_else(|p| p.into_inner()) = Some(usage);
    }

    /// The usage so far, and whether it is estimated.
    pub fn usage(&self) -> (Usage, bool) {
        if let Some(u) = *self.reported.lock().unwrap_or_else(|p| p.into_inner()) {
            return (u, false);
        }
        let prompt_tokens = self.prompt_tokens.load(Ordering::Relaxed);
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if !jobs.is_empty() {
            let completion_tokens = jobs.iter().map(|j| j.load(Ordering::Relaxed) as u64).sum();
            return (Usage { prompt_tokens, completion_tokens }, false);
        }
        if self.answering.load(Ordering::Relaxed) {
            let completion_tokens =
                self.seen_wide.load(Ordering::Relaxed) + self.seen_bytes.load(Ordering::Relaxed).div_ceil(4);
            return (Usage { prompt_tokens, completion_tokens }, true);
        }
        (Usage::default(), false)
    }
}

/// One admitted request's record, written when it is dropped (see the module's head).
pub(crate) struct Tally {
    app: Arc<App>,
    pub id: String,
    key_id: Option<i64>,
    key_name: Option<String>,
    model: String,
    stream: bool,
    front: &'static str,
    started: Instant,
    pub meter: Arc<Meter>,
    channel: String,
    retries: usize,
    /// Until the handler says otherwise, the client left before its answer ended.
    status: u16,
    /// Released (dropped) after the record is counted.
    _reservation: Option<Reservation>,
}

impl Tally {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        app: &Arc<App>,
        id: String,
        key: Option<&baimo_store::KeyRecord>,
        req: &ChatRequest,
        front: &'static str,
        reservation: Option<Reservation>,
    ) -> Tally {
        Tally {
            app: app.clone(),
            id,
            key_id: key.map(|k| k.id),
            key_name: key.map(|k| k.name.clone()),
            model: req.model.clone(),
            stream: req.stream,
            front,
            started: Instant::now(),
            meter: Arc::new(Meter::default()),
            channel: if app.is_remote(&req.model) { String::new() } else { "local".into() },
            retries: 0,
            status: 499,
            _reservation: reservation,
        }
    }

    /// Who answered (or last failed to), after how many failed tries.
    pub fn served_by(&mut self, channel: &str, retries: usize) {
        channel.clone_into(&mut self.channel);
        self.retries = retries;
    }

    /// The status the client got (the answer is whole, or an error ended it).
    pub fn status(&mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if self.channel.is_empty() {
            // Left while the gateway was still trying: the channel it was at.
            (self.channel, self.retries) = self.meter.progress.now();
        }
        let (usage, estimated) = self.meter.usage();
        let record = UsageRecord {
            key_id: self.key_id,
            model: self.model.clone(),
            channel: self.channel.clone(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            latency_ms: self.started.elapsed().as_millis() as u64,
            status: self.status,
            retries: self.retries.min(u32::MAX as usize) as u32,
            stream: self.stream,
            estimated,
        };
        tracing::info!(
            id = %self.id, front = self.front, key = self.key_name.as_deref().unwrap_or("-"),
            model = %record.model, channel = %record.channel, status = record.status,
            retries = record.retries, stream = record.stream, prompt_tokens = record.prompt_tokens,
            completion_tokens = record.completion_tokens, estimated = record.estimated,
            latency_ms = record.latency_ms, "request"
        );
        self.app.request_metrics.observe(&record);
        if let Some(log) = &self.app.usage_log {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_count_cjk_characters_and_bytes_of_the_rest() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("你好世界"), 4);
        // "The quick brown fox jumps over the lazy dog." is 10 tokens for GPT-2/cl100k.
        let n = estimate_tokens("The quick brown fox jumps over the lazy dog.");
        assert!((5..=15).contains(&n), "{n}");
    }

    #[test]
    fn the_meter_prefers_reported_figures_then_counts_then_estimates() {
        let meter = Meter::default();
        assert_eq!(meter.usage(), (Usage::default(), false));
        meter.answering(10);
        // Pieces are measured together: eight one-byte pieces are two tokens, not eight.
        for piece in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            meter.seen(piece);
        }
        assert_eq!(meter.usage(), (Usage { prompt_tokens: 10, completion_tokens: 2 }, true));
        meter.reported(Usage { prompt_tokens: 12, completion_tokens: 3 });
        assert_eq!(meter.usage(), (Usage { prompt_tokens: 12, completion_tokens: 3 }, false));

        let local = Meter::default();
        local.prompt(7);
        let (a, b) = (local.job(), local.job());
        a.store(4, Ordering::Relaxed);
        b.store(5, Ordering::Relaxed);
        assert_eq!(local.usage(), (Usage { prompt_tokens: 7, completion_tokens: 9 }, false));
    }
}
