//! OpenAI's endpoints: `POST /v1/chat/completions` (whole, or streamed as
//! `chat.completion.chunk` server-sent events), the legacy `POST /v1/completions`, and
//! `GET /v1/models`. A chat request is read once into baimo's [`ChatRequest`] and answered by
//! whichever backend serves its model (see `backend`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use baimo_api::openai::{ChunkWriter, completion_json};
use baimo_api::{ChatRequest, StreamEvent, Usage};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::App;
use crate::access::{RequestBound, Reservation};
use crate::backend::ChatBackend;
use crate::error::ApiError;
use crate::usage::{Tally, served_headers};

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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

/// Who sent a request: a stored key (with its limits), or a key of the command line, or anyone
/// when no key is configured.
pub(crate) struct Caller {
    pub key: Option<baimo_store::KeyRecord>,
}

impl Caller {
    /// Holds the request's maximum against its key's quotas (lowering its `max_tokens` to what
    /// is left, see [`crate::Access::reserve`]); `bound` is asked only when a token quota needs it.
    pub fn reserve(
        &self,
        app: &App,
        max_tokens: &mut Option<u64>,
        bound: impl FnOnce() -> Result<RequestBound, ApiError>,
    ) -> Result<Option<Reservation>, ApiError> {
        let (Some(key), Some(access)) = (&self.key, &app.access) else { return Ok(None) };
        let bound = match (key.limits.token_quota, key.limits.request_quota) {
            (None, None) => return Ok(None),
            (Some(_), _) => bound()?,
            (None, Some(_)) => RequestBound { prompt_tokens: 0, max_tokens: *max_tokens, choices: 1 },
        };
        let (reservation, most) = access.reserve(key, bound)?;
        if most != bound.max_tokens {
            *max_tokens = most;
        }
        Ok(reservation)
    }

    /// Counts the request, admitted now, against its key's per-minute limit.
    pub fn count(&self, app: &App) {
        if let (Some(key), Some(access)) = (&self.key, &app.access) {
            access.count(key);
        }
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
        return Ok(Caller { key: Some(access.check(presented)?) });
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

/// The request's body as JSON (axum's rejection said as OpenAI would).
pub(crate) fn json_body(body: Result<Json<Value>, JsonRejection>) -> Result<Value, ApiError> {
    body.map(|Json(v)| v).map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}

/// A chat request let in: read, allowed for its key, its backend found, its share of the key's
/// quotas held, its record open (written however the request ends).
pub(crate) struct Admitted {
    pub req: ChatRequest,
    pub backend: Box<dyn ChatBackend>,
    pub tally: Tally,
}

/// Reads the request and finds its backend, after the key's checks; only a request that passes
/// every check counts against the key's per-minute limit.
pub(crate) async fn accept(
    app: &Arc<App>,
    headers: &axum::http::HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
    parse: fn(&Value) -> Result<ChatRequest, baimo_api::RequestError>,
    front: &'static str,
    id: String,
) -> Result<Admitted, ApiError> {
    let caller = authorize(app, headers)?;
    let mut req = parse(&json_body(body)?).map_err(ApiError::invalid)?;
    caller.may_use(&req.model)?;
    let backend = app.backend(&req.model).await?;
    let mut max_tokens = req.max_tokens;
    let reservation = caller.reserve(app, &mut max_tokens, || backend.bound(&req))?;
    req.max_tokens = max_tokens;
    caller.count(app);
    let tally = Tally::new(app, id, caller.key.as_ref(), &req, front, reservation);
    Ok(Admitted { req, backend, tally })
}

pub async fn chat_completions(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let (id, created) = (completion_id(), now());
    let admitted = accept(&app, &headers, body, ChatRequest::from_openai, "openai", id.clone()).await;
    let Admitted { req, backend, mut tally } = match admitted {
        Ok(a) => a,
        Err(e) => return e.refused("openai").into_response(),
    };
    if !req.stream {
        return match backend.chat(&req, &tally.meter).await {
            Ok(reply) => {
                tally.served_by(&reply.channel, reply.retries);
                tally.status(200);
                let mut response =
                    Json(completion_json(&req, &reply.value, &id, created, crate::FINGERPRINT))
                        .into_response();
                served_headers(&mut response, &reply.channel, reply.retries);
                response
            }
            Err(r) => {
                tally.served_by(&r.channel, r.retries);
                tally.status(r.error.status.as_u16());
                r.error.into_response()
            }
        };
    }
    let reply = match backend.chat_stream(&req, &tally.meter).await {
        Ok(r) => r,
        Err(r) => {
            tally.served_by(&r.channel, r.retries);
            tally.status(r.error.status.as_u16());
            return r.error.into_response();
        }
    };
    tally.served_by(&reply.channel, reply.retries);
    let (sse, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let mut writer = ChunkWriter::new(&req, &id, created, crate::FINGERPRINT);
    let choices = reply.value.len();
    let mut response = Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default()).into_response();
    served_headers(&mut response, &reply.channel, reply.retries);
    // The tally goes with the task: however it ends (a send fails when the client is gone, and
    // dropping the streams stops their generation), the request is recorded.
    tokio::spawn(async move {
        let send = |data: String| {
            let sse = sse.clone();
            async move { sse.send(Ok(SseEvent::default().data(data))).await.is_ok() }
        };
        let mut usage = vec![Usage::default(); choices];
        let total = |usage: &[Usage]| Usage {
            prompt_tokens: usage.iter().map(|u| u.prompt_tokens).max().unwrap_or(0),
            completion_tokens: usage.iter().map(|u| u.completion_tokens).sum(),
        };
        for index in 0..choices {
            if !send(writer.start(index)).await {
                return;
            }
        }
        let mut events = futures_util::stream::select_all(
            reply.value.into_iter().enumerate().map(|(i, s)| s.map(move |e| (i, e))),
        );
        while let Some((index, item)) = events.next().await {
            match item {
                Ok(event) => {
                    if let StreamEvent::Usage(u) = event {
                        usage[index] = u;
                    }
                    if let Some(chunk) = writer.event(index, &event)
                        && !send(chunk).await
                    {
                        return;
                    }
                }
                Err(e) => {
                    // After the stream began, an error is an event of its own (as OpenAI sends
                    // one) and no [DONE]: the client never mistakes a cut answer for a whole one.
                    tally.status(e.status.as_u16());
                    send(e.body().to_string()).await;
                    return;
                }
            }
        }
        for chunk in writer.end(total(&usage), 0) {
            send(chunk).await;
        }
        if send("[DONE]".into()).await {
            tally.status(200);
        }
    });
    response
}

pub async fn models(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Response {
    if let Err(e) = authorize(&app, &headers) {
        return e.into_response();
    }
    // Every name of every configured model (loaded or not); `loaded` is baimo's addition. Names
    // that are paths on this machine are accepted in requests but not listed: where the files
    // lie is nobody's business but the operator's (the file name is listed instead).
    let is_path = |n: &str| {
        let p = std::path::Path::new(n);
        p.is_absolute() || n.starts_with("./") || n.starts_with("../") || (n.contains('/') && p.exists())
    };
    let data: Vec<Value> = app
        .entries
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            let loaded = app.is_loaded(i);
            e.names.iter().filter(|n| !is_path(n)).map(move |n| (n, loaded))
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

/// Fields of `/v1/completions` that are not chat fields.
const COMPLETION_ONLY: &[&str] = &["prompt", "echo", "logprobs", "suffix", "best_of"];

/// The legacy `logprobs` object: tokens, their log-probabilities, the alternatives, and where
/// each token's text starts in the choice's text.
fn legacy_logprobs(entries: &[baimo_api::TokenLogprob], mut offset: usize) -> Value {
    let (mut tokens, mut logprobs, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in entries {
        tokens.push(json!(e.token));
        logprobs.push(json!(e.logprob));
        let top: serde_json::Map<String, Value> =
            e.top.iter().map(|(t, _, l)| (t.clone(), json!(l))).collect();
        tops.push(Value::Object(top));
        offsets.push(json!(offset));
        offset += e.token.len();
    }
    json!({"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets})
}

/// `POST /v1/completions`: each prompt (a string, a list of strings, token ids or lists of
/// them) as raw text (no chat template; BOS first when the model wants it), `n` answers each,
/// 16 tokens unless `max_tokens` says otherwise, `echo` and `logprobs` as OpenAI's legacy
/// endpoint has them. The sampling fields are read by the chat front's parser.
pub async fn completions(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    match completions_inner(app, headers, body).await {
        Ok(r) => r,
        Err(e) => e.refused("completions").into_response(),
    }
}

async fn completions_inner(
    app: Arc<App>,
    headers: axum::http::HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let caller = authorize(&app, &headers)?;
    admit_local(&app)?;
    let mut body = json_body(body)?;
    let fields =
        body.as_object_mut().ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let mut given: serde_json::Map<String, Value> = serde_json::Map::new();
    for k in COMPLETION_ONLY {
        if let Some(v) = fields.remove(*k) {
            given.insert(k.to_string(), v);
        }
    }
    if given.get("suffix").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("`suffix` is not supported").with_param(Some("suffix")));
    }
    let n = fields.get("n").and_then(Value::as_u64).unwrap_or(1);
    if given.get("best_of").and_then(Value::as_u64).is_some_and(|b| b != n) {
        return Err(
            ApiError::bad_request("`best_of` other than n is not supported").with_param(Some("best_of"))
        );
    }
    let top = match given.get("logprobs") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|&k| k <= 20).ok_or_else(|| {
            ApiError::bad_request("logprobs must be an integer between 0 and 20").with_param(Some("logprobs"))
        })?),
    };
    if let Some(k) = top {
        fields.insert("logprobs".into(), json!(true));
        fields.insert("top_logprobs".into(), json!(k));
    }
    fields.entry("max_tokens").or_insert(json!(16));
    fields.insert("messages".into(), json!([{"role": "user", "content": ""}]));
    let req = ChatRequest::from_openai(&body).map_err(ApiError::invalid)?;
    caller.may_use(&req.model)?;
    if app.is_remote(&req.model) {
        return Err(ApiError::bad_request(format!(
            "`{}` is a hosted chat model: use /v1/chat/completions",
            req.model
        )));
    }
    let served = app.served(&req.model).await?;
    let model = &served.model;
    // The prompts, as token ids.
    let as_ids = |v: &Value| -> Option<Vec<u32>> {
        v.as_array()?
            .iter()
            .map(|t| t.as_u64().filter(|&t| (t as usize) < model.info.vocab_size).map(|t| t as u32))
            .collect()
    };
    let bad_prompt = || {
        ApiError::bad_request("`prompt` must be a string, a list of strings, token ids or lists of token ids")
            .with_param(Some("prompt"))
    };
    let prompts: Vec<Vec<u32>> = match given.get("prompt").unwrap_or(&Value::Null) {
        Value::String(s) => vec![model.tokenize_prompt(s)],
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items.iter().map(|s| model.tokenize_prompt(s.as_str().unwrap_or(""))).collect()
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            vec![as_ids(&given["prompt"]).ok_or_else(bad_prompt)?]
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_array) => {
            items.iter().map(as_ids).collect::<Option<_>>().ok_or_else(bad_prompt)?
        }
        _ => return Err(bad_prompt()),
    };
    if req.n * prompts.len() > crate::backend::MAX_CHOICES {
        return Err(ApiError::bad_request(format!(
            "at most {} answers per request (prompts × n)",
            crate::backend::MAX_CHOICES
        )));
    }
    let echo = given.get("echo").and_then(Value::as_bool).unwrap_or(false);
    let limits = baimo_engine::EngineLimits { context: served.context, max_tokens: app.limits.max_tokens };
    // Every prompt is checked before anything is reserved or queued.
    let mut planned = Vec::new();
    for prompt in prompts {
        if prompt.is_empty() {
            return Err(ApiError::bad_request("the prompt is empty").with_param(Some("prompt")));
        }
        if prompt.len() >= served.context {
            return Err(ApiError::context_length(served.context, prompt.len()));
        }
        let options = model.generate_options(&req, prompt.len(), limits)?;
        let text = if echo { model.tokenizer.decode(&prompt, false) } else { String::new() };
        planned.push((prompt, options, text));
    }
    let bound = RequestBound {
        prompt_tokens: planned.iter().map(|p| p.0.len() as u64).sum(),
        max_tokens: planned.iter().map(|p| p.1.max_tokens as u64).max(),
        choices: (req.n * planned.len()) as u64,
    };
    let mut max_tokens = bound.max_tokens;
    let reservation = caller.reserve(&app, &mut max_tokens, || Ok(bound))?;
    let id = completion_id().replacen("chatcmpl-", "cmpl-", 1);
    let mut tally = Tally::new(&app, id.clone(), caller.key.as_ref(), &req, "completions", reservation);
    tally.meter.prompt(bound.prompt_tokens);
    let mut jobs = Vec::new();
    for (prompt, options, text) in planned {
        for i in 0..req.n {
            let mut options = options.clone();
            options.sampling.seed = options.sampling.seed.wrapping_add(i as u64);
            if let Some(most) = max_tokens {
                options.max_tokens = options.max_tokens.min(most as usize);
            }
            let (events, rx) = mpsc::unbounded_channel();
            let job = baimo_engine::Job {
                prompt: prompt.clone(),
                options,
                events,
                pieces: req.stream,
                generated: tally.meter.job(),
            };
            if !served.worker.submit(job) {
                tally.status(503);
                return Err(ApiError::unavailable("the engine stopped"));
            }
            jobs.push((text.clone(), rx));
        }
    }
    caller.count(&app);
    let (created, name) = (now(), req.model.clone());
    let want = top.is_some();
    if !req.stream {
        let mut choices = Vec::new();
        let mut usage = Usage { prompt_tokens: bound.prompt_tokens, completion_tokens: 0 };
        for (index, (echoed, mut rx)) in jobs.into_iter().enumerate() {
            let mut lps = crate::backend::LogprobText::default();
            let mut entries = Vec::new();
            let g = loop {
                match rx.recv().await {
                    Some(baimo_engine::Event::Logprobs(l)) => entries.extend(lps.convert(&served, &l)),
                    // The text comes with `Done` (see `Job::pieces`).
                    Some(baimo_engine::Event::Text(_)) => {}
                    Some(baimo_engine::Event::Done(Ok(g))) => break g,
                    Some(baimo_engine::Event::Done(Err(e))) => {
                        tally.status(503);
                        return Err(ApiError::unavailable(e));
                    }
                    None => {
                        tally.status(503);
                        return Err(ApiError::unavailable("the engine stopped"));
                    }
                }
            };
            usage.completion_tokens += g.tokens.len() as u64;
            let logprobs = if want { legacy_logprobs(&entries, echoed.len()) } else { Value::Null };
            choices.push(json!({"text": format!("{echoed}{}", g.text), "index": index, "logprobs": logprobs,
                "finish_reason": finish_reason(&g)}));
        }
        tally.status(200);
        return Ok(Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": name,
            "system_fingerprint": crate::FINGERPRINT, "choices": choices, "usage": usage.to_json(),
        }))
        .into_response());
    }
    let include_usage = req.include_usage;
    let (sse, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let chunk = |choices: Value, usage: Value| {
            let mut c = json!({
                "id": id, "object": "text_completion", "created": created, "model": name,
                "system_fingerprint": crate::FINGERPRINT, "choices": choices,
            });
            if include_usage {
                c["usage"] = usage;
            }
            Ok(SseEvent::default().data(c.to_string()))
        };
        let choice = |index: usize, text: &str, logprobs: Value, finish: Option<&str>| json!([{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}]);
        let mut usage = Usage { prompt_tokens: bound.prompt_tokens, completion_tokens: 0 };
        let mut streams = Vec::new();
        for (index, (echoed, rx)) in jobs.into_iter().enumerate() {
            if !echoed.is_empty()
                && sse.send(chunk(choice(index, &echoed, Value::Null, None), Value::Null)).await.is_err()
            {
                return;
            }
            streams.push(tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |e| (index, e)));
        }
        let mut events = futures_util::stream::select_all(streams);
        let mut lps: Vec<crate::backend::LogprobText> =
            (0..events.len()).map(|_| Default::default()).collect();
        while let Some((index, event)) = events.next().await {
            let sent = match event {
                baimo_engine::Event::Logprobs(l) if want => {
                    let entries = lps[index].convert(&served, &l);
                    sse.send(chunk(choice(index, "", legacy_logprobs(&entries, 0), None), Value::Null)).await
                }
                baimo_engine::Event::Logprobs(_) => Ok(()),
                baimo_engine::Event::Text(piece) => {
                    sse.send(chunk(choice(index, &piece, Value::Null, None), Value::Null)).await
                }
                baimo_engine::Event::Done(Ok(g)) => {
                    usage.completion_tokens += g.tokens.len() as u64;
                    sse.send(chunk(choice(index, "", Value::Null, Some(finish_reason(&g))), Value::Null))
                        .await
                }
                baimo_engine::Event::Done(Err(e)) => {
                    let _ = sse
                        .send(Ok(SseEvent::default().data(ApiError::unavailable(e).body().to_string())))
                        .await;
                    tally.status(503);
                    return;
                }
            };
            if sent.is_err() {
                return;
            }
        }
        if include_usage {
            let _ = sse.send(chunk(json!([]), usage.to_json())).await;
        }
        if sse.send(Ok(SseEvent::default().data("[DONE]"))).await.is_ok() {
            tally.status(200);
        }
    });
    Ok(Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default()).into_response())
}

fn finish_reason(g: &baimo_engine::Generation) -> &'static str {
    match g.finish_reason {
        baimo_engine::FinishReason::Stop => "stop",
        baimo_engine::FinishReason::Length | baimo_engine::FinishReason::Cancelled => "length",
    }
}
