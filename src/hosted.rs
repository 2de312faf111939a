//! `baimo run` and `baimo chat` with a hosted model: when the model named is not a local file,
//! folder or known model but a channel in the database (`baimo channels add`) serves it, the
//! conversation goes through the gateway, streamed to the terminal as it arrives.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result};
use baimo_gateway::types::{Message, Role};
use baimo_gateway::{ChatRequest, FinishReason, Gateway, RetryPolicy, StreamEvent, Usage};
use baimo_store::{SqliteStore, Store};
use futures_util::StreamExt;

use crate::common::{CANCEL, SamplingOptions};

/// A hosted model and the gateway that reaches it.
pub struct Hosted {
    pub model: String,
    gateway: Gateway,
    runtime: tokio::runtime::Runtime,
}

/// What one answer cost and how it ended.
pub struct Answer {
    pub text: String,
    pub finish: Option<FinishReason>,
    pub usage: Usage,
    pub first_piece_ms: Option<f64>,
    pub seconds: f64,
    pub cancelled: bool,
}

/// The hosted model `spec` names, if it is one: not a path, not a known local model, and served
/// by a stored channel.
pub fn find(spec: Option<&str>) -> Result<Option<Hosted>> {
    let Some(spec) = spec else { return Ok(None) };
    if std::path::Path::new(spec).exists() || baimo_hub::find_known(spec).is_some() || spec.contains('/') {
        return Ok(None);
    }
    let db = crate::records::default_db();
    if !db.exists() {
        return Ok(None);
    }
    let store = SqliteStore::open(&db).with_context(|| format!("opening {}", db.display()))?;
    let mut channels = Vec::new();
    for record in store.channels()? {
        channels.push(baimo_server::channel_from_record(&record).map_err(anyhow::Error::msg)?);
    }
    if !channels.iter().any(|c| c.serves(spec)) {
        return Ok(None);
    }
    let gateway = Gateway::new(channels, RetryPolicy::default())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(Some(Hosted { model: spec.to_string(), gateway, runtime }))
}

impl Hosted {
    /// Streams the answer to `messages` into `out`, until it ends or Ctrl-C.
    pub fn answer(
        &self,
        messages: Vec<Message>,
        sampling: &SamplingOptions,
        out: &mut dyn Write,
    ) -> Result<Answer> {
        let mut req = ChatRequest::new(self.model.clone(), messages);
        req.max_tokens = Some(sampling.max_tokens as u64);
        req.temperature = Some(sampling.temperature as f64);
        req.top_p = Some(sampling.top_p as f64);
        req.stop = sampling.stop.clone();
        req.presence_penalty = (sampling.presence_penalty != 0.0).then_some(sampling.presence_penalty as f64);
        req.frequency_penalty =
            (sampling.frequency_penalty != 0.0).then_some(sampling.frequency_penalty as f64);
        req.seed = sampling.seed;
        req.stream = true;
        req.include_usage = true;
        self.runtime.block_on(async {
            let started = Instant::now();
            let served = self.gateway.chat_stream(&req).await.map_err(|f| anyhow::anyhow!("{}", f.error))?;
            let mut events = served.value;
            let mut answer = Answer {
                text: String::new(),
                finish: None,
                usage: Usage::default(),
                first_piece_ms: None,
                seconds: 0.0,
                cancelled: false,
            };
            while let Some(item) = events.next().await {
                if CANCEL.load(Ordering::SeqCst) {
                    answer.cancelled = true;
                    break;
                }
                match item.map_err(|e| anyhow::anyhow!("{e}"))? {
                    StreamEvent::Text(piece) => {
                        answer.first_piece_ms.get_or_insert(started.elapsed().as_secs_f64() * 1e3);
                        answer.text.push_str(&piece);
                        if out.write_all(piece.as_bytes()).and_then(|_| out.flush()).is_err() {
                            answer.cancelled = true;
                            break;
                        }
                    }
                    StreamEvent::Finish(f) => answer.finish = Some(f),
                    StreamEvent::Usage(u) => answer.usage = u,
                    StreamEvent::ToolCall { .. }
                    | StreamEvent::Logprobs(_)
                    | StreamEvent::StopSequence(_) => {}
                }
            }
            answer.seconds = started.elapsed().as_secs_f64();
            Ok(answer)
        })
    }

    /// The statistics line `run` prints on stderr.
    pub fn summary(&self, a: &Answer) -> String {
        let note = match (a.cancelled, a.finish) {
            (true, _) => " (interrupted)",
            (_, Some(FinishReason::Length)) => " (stopped at the token limit)",
            (_, Some(FinishReason::ContentFilter)) => " (stopped by the provider's content filter)",
            _ => "",
        };
        format!(
            "[{} (hosted): prompt {} tokens, answer {} tokens in {:.2} s, first text after {:.0} ms{note}]",
            self.model,
            a.usage.prompt_tokens,
            a.usage.completion_tokens,
            a.seconds,
            a.first_piece_ms.unwrap_or(0.0)
        )
    }
}

/// The conversation as the gateway's messages.
pub fn messages(system: Option<&str>, turns: &[(Role, String)]) -> Vec<Message> {
    let mut out: Vec<Message> = system.map(|s| Message::text(Role::System, s)).into_iter().collect();
    out.extend(turns.iter().map(|(role, text)| Message::text(*role, text.clone())));
    out
}
