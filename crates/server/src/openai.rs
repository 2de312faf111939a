//! The OpenAI-compatible endpoints: `POST /v1/chat/completions` (whole or streamed as
//! server-sent events in OpenAI's chunk format) and `GET /v1/models`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use baimo_chat::ChatMessage;
use baimo_engine::{FinishReason, GenerateOptions, Generation, SamplingParams, TokenLogprob};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::worker::{Event, Job};
use crate::{App, Served};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields of a chat completion request baimo reads; others are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub n: Option<u64>,
    /// Return each token's log-probability, and `top_logprobs` (0–20) alternatives.
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The legacy text completion request (`POST /v1/completions`).
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Value,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub n: Option<u64>,
}

/// `chatcmpl-` and 24 hex digits, unique within the process and unlikely across processes.
pub(crate) fn completion_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!(
        "chatcmpl-{:016x}{:08x}",
        nanos ^ 0x9e37_79b9_7f4a_7c15,
        NEXT.fetch_add(1, Ordering::Relaxed) as u32
    )
}

/// Checks the request and turns it into the engine's prompt and options.
pub(crate) fn prepare(
    app: &App,
    served: &Served,
    request: &ChatRequest,
) -> Result<(Vec<u32>, GenerateOptions), ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::bad_request("`messages` must not be empty"));
    }
    let prompt =
        served.model.chat_prompt(&request.messages).map_err(|e| ApiError::bad_request(e.to_string()))?;
    prepare_prompt(app, served, request, prompt)
}

/// The sampling and length checks, for a prompt already made into tokens.
pub(crate) fn prepare_prompt(
    app: &App,
    served: &Served,
    request: &ChatRequest,
    prompt: Vec<u32>,
) -> Result<(Vec<u32>, GenerateOptions), ApiError> {
    if request.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad_request("n > 1 is supported by /v1/chat/completions only"));
    }
    let temperature = request.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(format!("temperature {temperature} is outside [0, 2]")));
    }
    let top_p = request.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request(format!("top_p {top_p} is outside (0, 1]")));
    }
    for (name, value) in
        [("presence_penalty", request.presence_penalty), ("frequency_penalty", request.frequency_penalty)]
    {
        if value.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(ApiError::bad_request(format!("{name} is outside [-2, 2]")));
        }
    }
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty"));
    }
    if prompt.len() >= served.context {
        return Err(ApiError::context_length(served.context, prompt.len()));
    }
    let room = (served.context - prompt.len()) as u64;
    let limit = app.limits.max_tokens.map_or(room, |l| (l as u64).min(room));
    let max_tokens = request.max_completion_tokens.or(request.max_tokens).unwrap_or(limit);
    if max_tokens == 0 {
        return Err(ApiError::bad_request("max_tokens must be at least 1"));
    }
    if let Some(l) = app.limits.max_tokens
        && max_tokens > l as u64
    {
        return Err(ApiError::bad_request(format!(
            "max_tokens is {max_tokens}; this server allows at most {l}"
        )));
    }
    let stop = match &request.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) if v.len() <= 4 => v.clone(),
        Some(Stop::Many(_)) => return Err(ApiError::bad_request("at most 4 stop sequences")),
    };
    if request.top_logprobs.is_some_and(|k| k > 20) {
        return Err(ApiError::bad_request("top_logprobs must be between 0 and 20"));
    }
    if request.top_logprobs.is_some() && request.logprobs != Some(true) {
        return Err(ApiError::bad_request("top_logprobs needs logprobs set to true"));
    }
    let options = GenerateOptions {
        logprobs: (request.logprobs == Some(true)).then(|| request.top_logprobs.unwrap_or(0)),
        sampling: SamplingParams {
            temperature,
            top_k: 0,
            top_p,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: request.presence_penalty.unwrap_or(0.0),
            frequency_penalty: request.frequency_penalty.unwrap_or(0.0),
            seed: request.seed.unwrap_or_else(|| {
                SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            }),
        },
        max_tokens: max_tokens.min(room) as usize,
        stop,
        stop_at_eog: true,
    };
    Ok((prompt, options))
}

/// One token in OpenAI's `logprobs.content` form: its text, log-probability, UTF-8 bytes and
/// the alternatives.
fn logprob_entry(served: &Served, lp: &TokenLogprob) -> Value {
    let piece = |t: u32| {
        let bytes = served.model.tokenizer.token_bytes(t, true).into_owned();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    };
    let (token, bytes) = piece(lp.token);
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|&(t, l)| {
            let (token, bytes) = piece(t);
            json!({"token": token, "logprob": l, "bytes": bytes})
        })
        .collect();
    json!({"token": token, "logprob": lp.logprob, "bytes": bytes, "top_logprobs": top})
}

fn finish_reason(g: &Generation) -> &'static str {
    match g.finish_reason {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

pub(crate) fn usage(g: &Generation) -> Value {
    let completion = g.tokens.len();
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": g.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": g.cached_tokens},
    })
}

/// The checks every generation request passes first: the key, then room in the queue.
pub(crate) fn admit(app: &App, headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
    let caller = authorize(app, headers)?;
    admit_local(app)?;
    Ok(caller)
}

/// Who sent a request: a stored key (with its limits), or a key of the command line, or anyone
/// when no key is configured.
pub(crate) struct Caller {
    pub key: Option<baimo_store::KeyRecord>,
}

impl Caller {
    pub fn key_id(&self) -> Option<i64> {
        self.key.as_ref().map(|k| k.id)
    }

    /// Whether the key may use `model`.
    pub fn may_use(&self, model: &str) -> Result<(), ApiError> {
        match &self.key {
            Some(k) if !k.limits.models.is_empty() && !k.limits.models.iter().any(|m| m == model) => {
                Err(ApiError::forbidden_model(model))
            }
            _ => Ok(()),
        }
    }
}

/// Checks the request's key: a key given on the command line or in the config, or a stored one
/// within its quotas and per-minute limits. No keys anywhere: every request is allowed.
pub(crate) fn authorize(app: &App, headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
    let static_keys = !app.limits.keys.is_open();
    if static_keys && app.limits.keys.allows(headers) {
        return Ok(Caller { key: None });
    }
    if let Some(access) = &app.access
        && access.has_keys()?
    {
        let presented = crate::auth::presented_key(headers).ok_or_else(ApiError::unauthorized)?;
        return Ok(Caller { key: Some(access.admit(presented)?) });
    }
    if static_keys { Err(ApiError::unauthorized()) } else { Ok(Caller { key: None }) }
}

/// Room in the local engine's queue.
pub(crate) fn admit_local(app: &App) -> Result<(), ApiError> {
    let queued = app.counters.queued.load(std::sync::atomic::Ordering::Relaxed);
    if app.limits.queue > 0 && queued >= app.limits.queue {
        return Err(ApiError::overloaded(queued));
    }
    Ok(())
}

/// Choices per request at most (`n`).
const MAX_CHOICES: u64 = 8;

pub async fn chat_completions(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let caller = match authorize(&app, &headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let body = match body {
        Ok(Json(v)) => v,
        Err(rejection) => return ApiError::bad_request(rejection.body_text()).into_response(),
    };
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    if let Err(e) = caller.may_use(model) {
        return e.into_response();
    }
    if app.is_remote(model) {
        return crate::remote::openai::chat_completions(app, caller.key_id(), body).await;
    }
    if let Err(e) = admit_local(&app) {
        return e.into_response();
    }
    let mut request: ChatRequest = match serde_json::from_value(body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::bad_request(format!("Failed to deserialize the JSON body: {e}"))
                .into_response();
        }
    };
    // Local requests are billed to the key as hosted ones are (channel "local").
    let tally = crate::remote::Tally::new(caller.key_id(), &request.model, request.stream);
    // `n` choices are `n` sequences decoded together, with seeds seed, seed + 1, …
    let n = request.n.unwrap_or(1);
    if !(1..=MAX_CHOICES).contains(&n) {
        return ApiError::bad_request(format!("n must be between 1 and {MAX_CHOICES}")).into_response();
    }
    request.n = None;
    let served = match app.served(&request.model).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let (prompt, options) = match prepare(&app, &served, &request) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let mut receivers = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut options = options.clone();
        options.sampling.seed = options.sampling.seed.wrapping_add(i);
        let (events, rx) = mpsc::unbounded_channel();
        if !served.worker.submit(Job { prompt: prompt.clone(), options, events, pieces: request.stream }) {
            return ApiError::unavailable("the engine stopped").into_response();
        }
        receivers.push(rx);
    }
    let (id, created, model) = (completion_id(), now(), request.model.clone());
    let want_logprobs = request.logprobs == Some(true);
    if !request.stream {
        let mut choices = Vec::with_capacity(receivers.len());
        let (mut prompt_tokens, mut completion_tokens, mut cached) = (0, 0, 0);
        for (index, mut rx) in receivers.into_iter().enumerate() {
            let g = loop {
                match rx.recv().await {
                    // A whole answer's text comes with `Done` (see `Job::pieces`).
                    Some(Event::Text(_)) | Some(Event::Logprobs(_)) => {}
                    Some(Event::Done(Ok(g))) => break g,
                    Some(Event::Done(Err(e))) => return ApiError::unavailable(e).into_response(),
                    None => return ApiError::unavailable("the engine stopped").into_response(),
                }
            };
            let logprobs = if want_logprobs {
                json!({"content": g.logprobs.iter().map(|lp| logprob_entry(&served, lp)).collect::<Vec<_>>()})
            } else {
                Value::Null
            };
            prompt_tokens = g.prompt_tokens;
            cached = cached.max(g.cached_tokens);
            completion_tokens += g.tokens.len();
            choices.push(json!({
                "index": index,
                "message": {"role": "assistant", "content": g.text, "refusal": null},
                "logprobs": logprobs,
                "finish_reason": finish_reason(&g),
            }));
        }
        let usage = baimo_gateway::Usage {
            prompt_tokens: prompt_tokens as u64,
            completion_tokens: completion_tokens as u64,
        };
        tally.finish(&app, "local", usage, 200, 0);
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": crate::FINGERPRINT,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }))
        .into_response();
    }

    let include_usage = request.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let (sse, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |index: usize, delta: Value, finish: Option<&str>, logprobs: Value| {
            let mut c = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": crate::FINGERPRINT,
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            c.to_string()
        }
    };
    // One task per choice streams its chunks; the last one to finish sends the usage and [DONE].
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<Generation, String>>();
    let total = receivers.len();
    for (index, mut rx) in receivers.into_iter().enumerate() {
        let (sse, chunk, done_tx, served) = (sse.clone(), chunk.clone(), done_tx.clone(), served.clone());
        tokio::spawn(async move {
            // Token log-probabilities ride on the next content chunk (text pieces and tokens
            // need not line up one to one); what is left goes with the last chunk.
            let mut pending: Vec<Value> = Vec::new();
            let lp = |pending: &mut Vec<Value>| {
                if want_logprobs { json!({"content": std::mem::take(pending)}) } else { Value::Null }
            };
            let first = chunk(index, json!({"role": "assistant", "content": ""}), None, lp(&mut Vec::new()));
            // Every send fails once the client is gone: returning drops `rx`, which the engine
            // notices before its next token.
            if sse.send(Ok(SseEvent::default().data(first))).await.is_err() {
                return;
            }
            while let Some(event) = rx.recv().await {
                match event {
                    Event::Logprobs(lps) => pending.extend(lps.iter().map(|l| logprob_entry(&served, l))),
                    Event::Text(piece) => {
                        let c = chunk(index, json!({"content": piece}), None, lp(&mut pending));
                        if sse.send(Ok(SseEvent::default().data(c))).await.is_err() {
                            return;
                        }
                    }
                    Event::Done(Ok(g)) => {
                        let c = chunk(index, json!({}), Some(finish_reason(&g)), lp(&mut pending));
                        let _ = sse.send(Ok(SseEvent::default().data(c))).await;
                        let _ = done_tx.send(Ok(g));
                        return;
                    }
                    Event::Done(Err(e)) => {
                        let _ = done_tx.send(Err(e));
                        return;
                    }
                }
            }
        });
    }
    drop(done_tx);
    tokio::spawn(async move {
        let (mut finished, mut prompt_tokens, mut completion_tokens, mut cached) = (0, 0, 0, 0);
        let mut failed = false;
        while let Some(result) = done_rx.recv().await {
            match result {
                Ok(g) => {
                    finished += 1;
                    prompt_tokens = g.prompt_tokens;
                    cached = cached.max(g.cached_tokens);
                    completion_tokens += g.tokens.len();
                }
                Err(e) => {
                    // After the stream started, an error is an event of its own (as OpenAI does).
                    let body = ApiError::unavailable(e).body().to_string();
                    let _ = sse.send(Ok(SseEvent::default().data(body))).await;
                    failed = true;
                    break;
                }
            }
        }
        let usage = baimo_gateway::Usage {
            prompt_tokens: prompt_tokens as u64,
            completion_tokens: completion_tokens as u64,
        };
        // Fewer answers than asked and no error: the client left.
        let status = if failed {
            503
        } else if finished < total {
            499
        } else {
            200
        };
        tally.finish(&app, "local", usage, status, 0);
        if finished == total && include_usage {
            let u = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": crate::FINGERPRINT, "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": cached},
                },
            });
            let _ = sse.send(Ok(SseEvent::default().data(u.to_string()))).await;
        }
        let _ = sse.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default()).into_response()
}

pub async fn models(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Response {
    if let Err(e) = authorize(&app, &headers) {
        return e.into_response();
    }
    // Every name of every configured model (loaded or not); `loaded` is baimo's addition.
    let data: Vec<Value> = app
        .entries
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            let loaded = app.is_loaded(i);
            e.names.iter().map(move |n| (n, loaded))
        })
        .map(|(n, loaded)| json!({"id": n, "object": "model", "created": app.started, "owned_by": "baimo", "loaded": loaded}))
        .collect();
    // Hosted models: owned by the provider of their first channel.
    let mut data = data;
    if let Some(gateway) = &app.gateway() {
        for name in gateway.models() {
            if app.entries.iter().any(|e| e.names.contains(&name)) {
                continue;
            }
            let owner =
                gateway.channels().iter().find(|c| c.serves(&name)).map_or("gateway", |c| c.provider.name());
            data.push(json!({"id": name, "object": "model", "created": app.started, "owned_by": owner, "loaded": true}));
        }
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `POST /v1/completions`: the prompt as raw text (no chat template; BOS first when the model
/// wants it), 16 tokens unless `max_tokens` says otherwise, as OpenAI's legacy endpoint.
pub async fn completions(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let caller = match admit(&app, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let request = match body {
        Ok(Json(r)) => r,
        Err(rejection) => return ApiError::bad_request(rejection.body_text()).into_response(),
    };
    if let Err(e) = caller.may_use(&request.model) {
        return e.into_response();
    }
    if app.is_remote(&request.model) {
        return ApiError::bad_request(format!(
            "`{}` is a hosted chat model: use /v1/chat/completions",
            request.model
        ))
        .into_response();
    }
    let served = match app.served(&request.model).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let text = match &request.prompt {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or("").to_string()
        }
        _ => {
            return ApiError::bad_request("`prompt` must be a string (one prompt per request)")
                .into_response();
        }
    };
    let as_chat = ChatRequest {
        model: request.model.clone(),
        messages: Vec::new(),
        stream: request.stream,
        stream_options: None,
        max_tokens: Some(request.max_tokens.unwrap_or(16)),
        max_completion_tokens: None,
        temperature: request.temperature,
        top_p: request.top_p,
        seed: request.seed,
        stop: request.stop,
        presence_penalty: request.presence_penalty,
        frequency_penalty: request.frequency_penalty,
        n: request.n,
        logprobs: None,
        top_logprobs: None,
    };
    let prompt = served.model.tokenize_prompt(&text);
    let (prompt, options) = match prepare_prompt(&app, &served, &as_chat, prompt) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (events, mut rx) = mpsc::unbounded_channel();
    if !served.worker.submit(Job { prompt, options, events, pieces: request.stream }) {
        return ApiError::unavailable("the engine stopped").into_response();
    }
    let id = completion_id().replacen("chatcmpl-", "cmpl-", 1);
    let (created, model) = (now(), request.model.clone());
    let choice = |text: &str, finish: Option<&str>| json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]);
    if !request.stream {
        while let Some(event) = rx.recv().await {
            match event {
                // Log-probabilities are only reported by the chat endpoint; the text comes
                // with `Done` (see `Job::pieces`).
                Event::Logprobs(_) | Event::Text(_) => {}
                Event::Done(Ok(g)) => {
                    return Json(json!({
                        "id": id, "object": "text_completion", "created": created, "model": model,
                        "system_fingerprint": crate::FINGERPRINT,
                        "choices": choice(&g.text, Some(finish_reason(&g))), "usage": usage(&g),
                    }))
                    .into_response();
                }
                Event::Done(Err(e)) => return ApiError::unavailable(e).into_response(),
            }
        }
        return ApiError::unavailable("the engine stopped").into_response();
    }
    let include_usage = request.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let (sse, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let chunk = |choices: Value, usage: Value| {
            let mut c = json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": crate::FINGERPRINT, "choices": choices,
            });
            if include_usage {
                c["usage"] = usage;
            }
            Ok(SseEvent::default().data(c.to_string()))
        };
        while let Some(event) = rx.recv().await {
            match event {
                // Log-probabilities are only reported by the chat endpoint.
                Event::Logprobs(_) => {}
                Event::Text(piece) => {
                    if sse.send(chunk(choice(&piece, None), Value::Null)).await.is_err() {
                        return;
                    }
                }
                Event::Done(Ok(g)) => {
                    let _ = sse.send(chunk(choice("", Some(finish_reason(&g))), Value::Null)).await;
                    if include_usage {
                        let _ = sse.send(chunk(json!([]), usage(&g))).await;
                    }
                    let _ = sse.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
                Event::Done(Err(e)) => {
                    let _ = sse
                        .send(Ok(SseEvent::default().data(ApiError::unavailable(e).body().to_string())))
                        .await;
                    let _ = sse.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
            }
        }
    });
    Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default()).into_response()
}
