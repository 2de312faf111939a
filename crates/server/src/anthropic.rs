//! The Anthropic-compatible endpoint: `POST /v1/messages`, whole or streamed with the documented
//! event sequence (`message_start`, `content_block_start`, `ping`, `content_block_delta`…,
//! `content_block_stop`, `message_delta` with the usage, `message_stop`), and Anthropic's error
//! envelope.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use baimo_chat::ChatMessage;
use baimo_engine::{FinishReason, Generation};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::App;
use crate::error::ApiError;
use crate::openai::{ChatRequest, Stop, prepare};
use crate::worker::{Event, Job};

/// Text content: a string or a list of blocks (only `text` blocks so far).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<Value>),
}

impl Content {
    fn text(&self) -> Result<String, ApiError> {
        match self {
            Content::Text(t) => Ok(t.clone()),
            Content::Blocks(blocks) => {
                let mut out = String::new();
                for b in blocks {
                    match (b.get("type").and_then(Value::as_str), b.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => out.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::bad_request(format!(
                                "content blocks of type {} are not supported yet (text only)",
                                kind.unwrap_or("?")
                            )));
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub max_tokens: Option<u64>,
    pub messages: Vec<Message>,
    pub system: Option<Content>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub stream: bool,
}

/// The error as Anthropic's API writes it: `{"type": "error", "error": {"type", "message"}}`.
fn error_response(e: ApiError) -> Response {
    let (status, kind) = match e.status {
        StatusCode::UNAUTHORIZED => (e.status, "authentication_error"),
        StatusCode::NOT_FOUND => (e.status, "not_found_error"),
        StatusCode::BAD_REQUEST => (e.status, "invalid_request_error"),
        StatusCode::TOO_MANY_REQUESTS => (e.status, "rate_limit_error"),
        // Anthropic's "overloaded" status.
        StatusCode::SERVICE_UNAVAILABLE => {
            (StatusCode::from_u16(529).unwrap_or(e.status), "overloaded_error")
        }
        _ => (e.status, "api_error"),
    };
    let mut response =
        (status, Json(json!({"type": "error", "error": {"type": kind, "message": e.message}})))
            .into_response();
    if matches!(e.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
        response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    response
}

fn stop_reason(g: &Generation) -> &'static str {
    match g.finish_reason {
        FinishReason::Stop => "end_turn",
        FinishReason::Length | FinishReason::Cancelled => "max_tokens",
    }
}

fn message_id() -> String {
    format!("msg_{}", crate::openai::completion_id().trim_start_matches("chatcmpl-"))
}

pub async fn messages(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let caller = match crate::openai::authorize(&app, &headers) {
        Ok(k) => k,
        Err(e) => return error_response(e),
    };
    let body = match body {
        Ok(Json(v)) => v,
        Err(rejection) => return error_response(ApiError::bad_request(rejection.body_text())),
    };
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    if let Err(e) = caller.may_use(model) {
        return error_response(e);
    }
    if app.is_remote(model) {
        return crate::remote::anthropic::messages(app, caller.key_id(), body).await;
    }
    if let Err(e) = crate::openai::admit_local(&app) {
        return error_response(e);
    }
    let request: MessagesRequest = match serde_json::from_value(body) {
        Ok(r) => r,
        Err(e) => return error_response(ApiError::bad_request(e.to_string())),
    };
    let Some(max_tokens) = request.max_tokens else {
        return error_response(ApiError::bad_request("max_tokens: Field required"));
    };
    if request.temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return error_response(ApiError::bad_request("temperature: must be between 0 and 1"));
    }
    // The conversation as chat messages: the top-level system prompt first.
    let mut chat = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        match system.text() {
            Ok(t) => chat.push(ChatMessage::system(t)),
            Err(e) => return error_response(e),
        }
    }
    for m in &request.messages {
        if !matches!(m.role.as_str(), "user" | "assistant") {
            return error_response(ApiError::bad_request(format!(
                "messages: role must be \"user\" or \"assistant\", not {:?}",
                m.role
            )));
        }
        match m.content.text() {
            Ok(t) => chat.push(ChatMessage::new(m.role.clone(), t)),
            Err(e) => return error_response(e),
        }
    }
    let as_openai = ChatRequest {
        model: request.model.clone(),
        messages: chat,
        stream: request.stream,
        stream_options: None,
        max_tokens: Some(max_tokens),
        max_completion_tokens: None,
        temperature: request.temperature,
        top_p: request.top_p,
        seed: None,
        stop: request.stop_sequences.clone().map(Stop::Many),
        presence_penalty: None,
        frequency_penalty: None,
        n: None,
        logprobs: None,
        top_logprobs: None,
    };
    let served = match app.served(&request.model).await {
        Ok(s) => s,
        Err(e) => return error_response(e),
    };
    let (prompt, options) = match prepare(&app, &served, &as_openai) {
        Ok(p) => p,
        Err(e) => return error_response(e),
    };
    let (events, mut rx) = mpsc::unbounded_channel();
    if !served.worker.submit(Job { prompt: prompt.clone(), options, events, pieces: request.stream }) {
        return error_response(ApiError::unavailable("the engine stopped"));
    }
    let (id, model) = (message_id(), request.model.clone());
    let tally = crate::remote::Tally::new(caller.key_id(), &request.model, request.stream);
    let record = move |app: &App, g: Option<&Generation>, status: u16| {
        let usage = baimo_gateway::Usage {
            prompt_tokens: g.map_or(0, |g| g.prompt_tokens as u64),
            completion_tokens: g.map_or(0, |g| g.tokens.len() as u64),
        };
        tally.finish(app, "local", usage, status, 0);
    };
    if !request.stream {
        while let Some(event) = rx.recv().await {
            match event {
                // Log-probabilities are only reported by the chat endpoint; the text comes
                // with `Done` (see `Job::pieces`).
                Event::Logprobs(_) | Event::Text(_) => {}
                Event::Done(Ok(g)) => {
                    record(&app, Some(&g), 200);
                    return Json(json!({
                        "id": id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [{"type": "text", "text": g.text}],
                        "stop_reason": stop_reason(&g),
                        "stop_sequence": null,
                        "usage": {"input_tokens": g.prompt_tokens, "output_tokens": g.tokens.len()},
                    }))
                    .into_response();
                }
                Event::Done(Err(e)) => return error_response(ApiError::unavailable(e)),
            }
        }
        return error_response(ApiError::unavailable("the engine stopped"));
    }

    let (sse, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let input_tokens = prompt.len();
    tokio::spawn(async move {
        let event = |name: &str, data: Value| Ok(SseEvent::default().event(name).data(data.to_string()));
        let start = json!({
            "type": "message_start",
            "message": {
                "id": id, "type": "message", "role": "assistant", "content": [], "model": model,
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 0},
            },
        });
        let block_start =
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}});
        for e in [
            event("message_start", start),
            event("content_block_start", block_start),
            event("ping", json!({"type": "ping"})),
        ] {
            if sse.send(e).await.is_err() {
                return;
            }
        }
        while let Some(ev) = rx.recv().await {
            match ev {
                // Log-probabilities are only reported by the chat endpoint.
                Event::Logprobs(_) => {}
                Event::Text(piece) => {
                    let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}});
                    if sse.send(event("content_block_delta", delta)).await.is_err() {
                        return;
                    }
                }
                Event::Done(Ok(g)) => {
                    let _ = sse
                        .send(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})))
                        .await;
                    let delta = json!({
                        "type": "message_delta",
                        "delta": {"stop_reason": stop_reason(&g), "stop_sequence": null},
                        "usage": {"output_tokens": g.tokens.len()},
                    });
                    let _ = sse.send(event("message_delta", delta)).await;
                    let _ = sse.send(event("message_stop", json!({"type": "message_stop"}))).await;
                    record(&app, Some(&g), 200);
                    return;
                }
                Event::Done(Err(e)) => {
                    let err = json!({"type": "error", "error": {"type": "api_error", "message": e}});
                    let _ = sse.send(event("error", err)).await;
                    return;
                }
            }
        }
    });
    Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default()).into_response()
}
