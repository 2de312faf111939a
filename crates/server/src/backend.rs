//! What answers a chat request: the local engine or a hosted provider through the gateway,
//! behind one interface ([`ChatBackend`]). The fronts (`openai`, `anthropic`) parse a request
//! into baimo's one [`ChatRequest`], hand it to the backend its model names, and write what
//! comes back; neither front nor backend asks which kind the other is.

use std::pin::Pin;
use std::sync::Arc;

use baimo_api::{Answer, ChatRequest, ChoiceCollector, FinishReason, StreamEvent, TokenLogprob, Usage};
use baimo_engine::{EngineLimits, Event, Generation, Job, PrepareError, PreparedChat};
use baimo_gateway::{Failed, Gateway, UpstreamError};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::access::RequestBound;
use crate::error::ApiError;
use crate::usage::{Meter, estimate_prompt_tokens, prompt_token_bound};
use crate::{App, Served};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// One choice's answer as it streams; an error ends it.
pub(crate) type Events = Pin<Box<dyn Stream<Item = Result<StreamEvent, ApiError>> + Send>>;

/// An answer, with who gave it: the channel ("local" for the engine), the failed tries before
/// it, and the prompt's tokens when known before the answer (for Anthropic's `message_start`).
pub(crate) struct Reply<T> {
    pub value: T,
    pub channel: String,
    pub retries: usize,
    pub prompt_tokens: u64,
}

/// A request no backend could answer, with the channel last tried and the failed tries.
pub(crate) struct Refusal {
    pub error: ApiError,
    pub channel: String,
    pub retries: usize,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Refusal {
        Refusal { error, channel: "local".into(), retries: 0 }
    }
}

/// Every backend keeps the request's [`Meter`] up to date as it answers: what it used is known
/// however the request ends.
pub(crate) trait ChatBackend: Send + Sync {
    /// What the request may use at most (for quota reservations): its prompt's tokens, counted
    /// or bounded, and its answers' length.
    fn bound(&self, req: &ChatRequest) -> Result<RequestBound, ApiError>;

    /// The whole answer (every choice).
    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        meter: &'a Arc<Meter>,
    ) -> BoxFuture<'a, Result<Reply<Answer>, Refusal>>;

    /// The answer as it is generated: one stream per choice.
    fn chat_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        meter: &'a Arc<Meter>,
    ) -> BoxFuture<'a, Result<Reply<Vec<Events>>, Refusal>>;
}

/// Choices per request at most (`n`).
pub(crate) const MAX_CHOICES: usize = 8;

/// Hosted models: the gateway's channels.
pub(crate) struct Hosted(pub Arc<Gateway>);

fn refusal(failed: Failed) -> Refusal {
    let channel = failed.failed.last().map_or(String::new(), |a| a.channel.clone());
    let retries = failed.failed.len().saturating_sub(1);
    Refusal { error: ApiError::upstream(&failed.error), channel, retries }
}

impl ChatBackend for Hosted {
    fn bound(&self, req: &ChatRequest) -> Result<RequestBound, ApiError> {
        Ok(RequestBound { prompt_tokens: prompt_token_bound(req), max_tokens: req.max_tokens, choices: 1 })
    }

    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        meter: &'a Arc<Meter>,
    ) -> BoxFuture<'a, Result<Reply<Answer>, Refusal>> {
        Box::pin(async move {
            let served = self.0.chat_with(req, &meter.progress).await.map_err(refusal)?;
            meter.reported(served.value.usage);
            Ok(Reply {
                prompt_tokens: served.value.usage.prompt_tokens,
                value: Answer::from(served.value),
                channel: served.channel,
                retries: served.failed.len(),
            })
        })
    }

    fn chat_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        meter: &'a Arc<Meter>,
    ) -> BoxFuture<'a, Result<Reply<Vec<Events>>, Refusal>> {
        Box::pin(async move {
            let served = self.0.chat_stream_with(req, &meter.progress).await.map_err(refusal)?;
            // From here the provider is answering: a cut answer is billed by what was seen
            // until the provider's own figures arrive (many send them only at the end).
            meter.answering(estimate_prompt_tokens(req));
            let meter = meter.clone();
            let events: Events = Box::pin(served.value.map(move |item| {
                match &item {
                    Ok(StreamEvent::Text(t)) => meter.seen(t),
                    Ok(StreamEvent::ToolCall { name, arguments, .. }) => {
                        meter.seen(name.as_deref().unwrap_or(""));
                        meter.seen(arguments);
                    }
                    Ok(StreamEvent::Usage(u)) => meter.reported(*u),
                    _ => {}
                }
                item.map_err(|e: UpstreamError| ApiError::upstream(&e))
            }));
            Ok(Reply {
                value: vec![events],
                channel: served.channel,
                retries: served.failed.len(),
                prompt_tokens: 0,
            })
        })
    }
}

/// A model this server runs itself.
pub(crate) struct Local {
    pub app: Arc<App>,
    pub served: Arc<Served>,
}

impl From<PrepareError> for ApiError {
    fn from(e: PrepareError) -> ApiError {
        match e {
            PrepareError::ContextLength { max, prompt } => ApiError::context_length(max, prompt),
            PrepareError::BadRequest { message, param } => ApiError::bad_request(message).with_param(param),
        }
    }
}

/// Log-probabilities as the fronts write them: each token's `token` is the text it completes,
/// joined by bytes (a token holding half a character gives `""`, the next the whole one).
#[derive(Default)]
pub(crate) struct LogprobText {
    pending: Vec<u8>,
}

impl LogprobText {
    pub(crate) fn convert(
        &mut self,
        served: &Served,
        lps: &[baimo_engine::TokenLogprob],
    ) -> Vec<TokenLogprob> {
        let tokenizer = &served.model.tokenizer;
        lps.iter()
            .map(|lp| {
                let bytes = tokenizer.token_bytes(lp.token, true).into_owned();
                self.pending.extend_from_slice(&bytes);
                let valid = match std::str::from_utf8(&self.pending) {
                    Ok(_) => self.pending.len(),
                    // An invalid byte (not an unfinished character) is given up on as U+FFFD.
                    Err(e) if e.error_len().is_some() => self.pending.len(),
                    Err(e) => e.valid_up_to(),
                };
                let token = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
                self.pending.drain(..valid);
                let top = lp
                    .top
                    .iter()
                    .map(|&(t, l)| {
                        let b = tokenizer.token_bytes(t, true).into_owned();
                        (String::from_utf8_lossy(&b).into_owned(), b, l)
                    })
                    .collect();
                TokenLogprob { token, bytes, logprob: lp.logprob, top }
            })
            .collect()
    }
}

/// A choice being generated: the engine's events made into stream events (tool calls read out
/// of the text, log-probabilities converted).
struct Choice {
    parser: Option<baimo_engine::tools::ToolCallParser>,
    logprobs: LogprobText,
}

impl Choice {
    fn new(prepared: &PreparedChat) -> Choice {
        Choice { parser: prepared.tools.as_ref().map(|t| t.parser()), logprobs: LogprobText::default() }
    }

    fn text(&mut self, piece: &str, out: &mut Vec<StreamEvent>) {
        match &mut self.parser {
            Some(p) => p.push(piece, out),
            None if piece.is_empty() => {}
            None => out.push(StreamEvent::Text(piece.to_string())),
        }
    }

    fn done(&mut self, g: &Generation, out: &mut Vec<StreamEvent>) {
        let called = self.parser.as_mut().is_some_and(|p| p.finish(out));
        if let (Some(s), false) = (&g.stop_sequence, called) {
            out.push(StreamEvent::StopSequence(s.clone()));
        }
        let reason = match g.finish_reason {
            _ if called => FinishReason::ToolCalls,
            baimo_engine::FinishReason::Stop => FinishReason::Stop,
            baimo_engine::FinishReason::Length | baimo_engine::FinishReason::Cancelled => {
                FinishReason::Length
            }
        };
        out.push(StreamEvent::Finish(reason));
        out.push(StreamEvent::Usage(Usage {
            prompt_tokens: g.prompt_tokens as u64,
            completion_tokens: g.tokens.len() as u64,
        }));
    }
}

impl Local {
    fn limits(&self) -> EngineLimits {
        EngineLimits { context: self.served.context, max_tokens: self.app.limits.max_tokens }
    }

    fn prepare(&self, req: &ChatRequest) -> Result<PreparedChat, ApiError> {
        if !(1..=MAX_CHOICES).contains(&req.n) {
            return Err(
                ApiError::bad_request(format!("n must be between 1 and {MAX_CHOICES}")).with_param(Some("n"))
            );
        }
        Ok(self.served.model.prepare_chat(req, self.limits())?)
    }

    /// Prepares the request and queues one job per choice (seeds seed, seed + 1, ...).
    fn submit(
        &self,
        req: &ChatRequest,
        pieces: bool,
        meter: &Meter,
    ) -> Result<(PreparedChat, Vec<mpsc::UnboundedReceiver<Event>>), ApiError> {
        let prepared = self.prepare(req)?;
        meter.prompt(prepared.prompt.len() as u64);
        let mut receivers = Vec::with_capacity(req.n);
        for i in 0..req.n {
            let mut options = prepared.options.clone();
            options.sampling.seed = options.sampling.seed.wrapping_add(i as u64);
            let (events, rx) = mpsc::unbounded_channel();
            let job =
                Job { prompt: prepared.prompt.clone(), options, events, pieces, generated: meter.job() };
            if !self.served.worker.submit(job) {
                return Err(ApiError::unavailable("the engine stopped"));
            }
            receivers.push(rx);
        }
        Ok((prepared, receivers))
    }
}

impl ChatBackend for Local {
    fn bound(&self, req: &ChatRequest) -> Result<RequestBound, ApiError> {
        let prepared = self.prepare(req)?;
        Ok(RequestBound {
            prompt_tokens: prepared.prompt.len() as u64,
            max_tokens: Some(prepared.options.max_tokens as u64),
            choices: req.n as u64,
        })
    }

    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        meter: &'a Arc<Meter>,
    ) -> BoxFuture<'a, Result<Reply<Answer>, Refusal>> {
        Box::pin(async move {
            let (prepared, receivers) = self.submit(req, false, meter)?;
            let mut answer = Answer { choices: Vec::new(), usage: Usage::default(), cached_tokens: 0 };
            for mut rx in receivers {
                let mut choice = Choice::new(&prepared);
                let mut collector = ChoiceCollector::default();
                let mut events = Vec::new();
                let g = loop {
                    match rx.recv().await {
                        // A whole answer's text comes with `Done` (see `Job::pieces`).
                        Some(Event::Text(_)) => {}
                        Some(Event::Logprobs(lps)) => {
                            events.push(StreamEvent::Logprobs(choice.logprobs.convert(&self.served, &lps)))
                        }
                        Some(Event::Done(Ok(g))) => break g,
                        Some(Event::Done(Err(e))) => return Err(ApiError::unavailable(e).into()),
                        None => return Err(ApiError::unavailable("the engine stopped").into()),
                    }
                };
                choice.text(&g.text, &mut events);
                choice.done(&g, &mut events);
                events.into_iter().for_each(|e| collector.push(e));
                answer.usage.prompt_tokens = g.prompt_tokens as u64;
                answer.usage.completion_tokens += g.tokens.len() as u64;
                answer.cached_tokens = answer.cached_tokens.max(g.cached_tokens as u64);
                answer.choices.push(collector.finish(req.logprobs.is_some()));
            }
            let prompt_tokens = answer.usage.prompt_tokens;
            Ok(Reply { value: answer, channel: "local".into(), retries: 0, prompt_tokens })
        })
    }

    fn chat_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        meter: &'a Arc<Meter>,
    ) -> BoxFuture<'a, Result<Reply<Vec<Events>>, Refusal>> {
        Box::pin(async move {
            let (prepared, receivers) = self.submit(req, true, meter)?;
            let prompt_tokens = prepared.prompt.len() as u64;
            let mut streams: Vec<Events> = Vec::with_capacity(receivers.len());
            for mut rx in receivers {
                let (tx, out) = mpsc::channel::<Result<StreamEvent, ApiError>>(64);
                let mut choice = Choice::new(&prepared);
                let served = self.served.clone();
                // Ends when the client is gone (a send fails): dropping `rx` then tells the
                // engine, which drops the request before its next step.
                tokio::spawn(async move {
                    while let Some(event) = rx.recv().await {
                        let mut events = Vec::new();
                        let mut failure = None;
                        let mut last = false;
                        match event {
                            Event::Text(piece) => choice.text(&piece, &mut events),
                            Event::Logprobs(lps) => {
                                events.push(StreamEvent::Logprobs(choice.logprobs.convert(&served, &lps)))
                            }
                            Event::Done(Ok(g)) => {
                                choice.done(&g, &mut events);
                                last = true;
                            }
                            Event::Done(Err(e)) => {
                                failure = Some(ApiError::unavailable(e));
                                last = true;
                            }
                        }
                        for e in events {
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                        if let Some(e) = failure {
                            let _ = tx.send(Err(e)).await;
                        }
                        if last {
                            return;
                        }
                    }
                    let _ = tx.send(Err(ApiError::unavailable("the engine stopped"))).await;
                });
                streams.push(Box::pin(ReceiverStream::new(out)));
            }
            Ok(Reply { value: streams, channel: "local".into(), retries: 0, prompt_tokens })
        })
    }
}

impl App {
    /// The backend that serves `model`: a hosted channel, or this server's engine (with room in
    /// its queue), loading the model if needed.
    pub(crate) async fn backend(self: &Arc<Self>, model: &str) -> Result<Box<dyn ChatBackend>, ApiError> {
        if self.is_remote(model)
            && let Some(gateway) = self.gateway()
        {
            return Ok(Box::new(Hosted(gateway)));
        }
        crate::openai::admit_local(self)?;
        let served = self.served(model).await?;
        Ok(Box::new(Local { app: self.clone(), served }))
    }
}
