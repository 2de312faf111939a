//! `POST /v1/chat/completions` for a hosted model: the body read as OpenAI's (tools, the legacy
//! `functions`), answered in OpenAI's shape whole or as `chat.completion.chunk`s, whichever
//! provider is behind the name. Response headers name the channel that answered
//! (`x-baimo-channel`) and the failed tries before it (`x-baimo-retries`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use baimo_gateway::types::tool_calls_json;
use baimo_gateway::{ChatRequest, ChatResponse, FinishReason, StreamEvent, UpstreamError, Usage};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Tally, retry_after_secs, served_headers};
use crate::App;
use crate::error::ApiError;
use crate::openai::{completion_id, now};

/// An upstream failure as OpenAI's error JSON, with the status and retry hint it maps to.
pub(crate) fn upstream_error_response(e: &UpstreamError) -> Response {
    let status = StatusCode::from_u16(e.client_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, Json(e.openai_json())).into_response();
    if let Some(secs) = retry_after_secs(e) {
        response.headers_mut().insert("retry-after", HeaderValue::from(secs));
    }
    response
}

fn finish_str(reason: FinishReason, legacy: bool) -> &'static str {
    match reason {
        FinishReason::ToolCalls if legacy => "function_call",
        other => other.as_str(),
    }
}

fn usage_json(u: Usage) -> Value {
    let mut v = u.to_json();
    v["prompt_tokens_details"] = json!({"cached_tokens": 0});
    v
}

/// The whole answer in OpenAI's `chat.completion` shape.
pub(crate) fn completion_json(req: &ChatRequest, answer: &ChatResponse, id: &str, created: u64) -> Value {
    let mut message = json!({"role": "assistant", "content": answer.content, "refusal": null});
    if !answer.tool_calls.is_empty() {
        if req.legacy_functions {
            let c = &answer.tool_calls[0];
            message["function_call"] = json!({"name": c.name, "arguments": c.arguments});
        } else {
            message["tool_calls"] = tool_calls_json(&answer.tool_calls);
        }
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "system_fingerprint": crate::FINGERPRINT,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_str(answer.finish_reason, req.legacy_functions),
        }],
        "usage": usage_json(answer.usage),
    })
}

/// One streamed event as the `delta` of a chunk (`None`: nothing to send for it).
fn delta_of(event: &StreamEvent, legacy: bool) -> Option<Value> {
    match event {
        StreamEvent::Text(text) => Some(json!({"content": text})),
        StreamEvent::ToolCall { index, id, name, arguments } if legacy => {
            let _ = (index, id);
            let mut f = json!({"arguments": arguments});
            if let Some(name) = name {
                f["name"] = json!(name);
            }
            Some(json!({"function_call": f}))
        }
        StreamEvent::ToolCall { index, id, name, arguments } => {
            let mut call = json!({"index": index, "function": {"arguments": arguments}});
            if let Some(id) = id {
                call["id"] = json!(id);
                call["type"] = json!("function");
            }
            if let Some(name) = name {
                call["function"]["name"] = json!(name);
            }
            Some(json!({"tool_calls": [call]}))
        }
        StreamEvent::Finish(_) | StreamEvent::Usage(_) => None,
    }
}

pub(crate) async fn chat_completions(app: Arc<App>, key_id: Option<i64>, body: Value) -> Response {
    let Some(gateway) = app.gateway() else {
        return ApiError::unavailable("no gateway is configured").into_response();
    };
    let req = match ChatRequest::from_openai(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
    };
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return ApiError::bad_request("n > 1 is not supported for hosted models").into_response();
    }
    let tally = Tally::new(key_id, &req.model, req.stream);
    let (id, created) = (completion_id(), now());
    if !req.stream {
        return match gateway.chat(&req).await {
            Ok(served) => {
                let retries = served.failed.len();
                tally.finish(&app, &served.channel, served.value.usage, 200, retries);
                let mut response = Json(completion_json(&req, &served.value, &id, created)).into_response();
                served_headers(&mut response, &served.channel, retries);
                response
            }
            Err(failed) => {
                tally.failed(&app, &failed);
                upstream_error_response(&failed.error)
            }
        };
    }
    let served = match gateway.chat_stream(&req).await {
        Ok(s) => s,
        Err(failed) => {
            tally.failed(&app, &failed);
            return upstream_error_response(&failed.error);
        }
    };
    let (channel, retries) = (served.channel.clone(), served.failed.len());
    let mut events = served.value;
    let (sse, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let legacy = req.legacy_functions;
    let include_usage = req.include_usage;
    let model = req.model.clone();
    let chunk_channel = channel.clone();
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Option<&str>| {
            let mut c = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": crate::FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            Ok(SseEvent::default().data(c.to_string()))
        };
        let mut usage = Usage::default();
        let mut finish: Option<FinishReason> = None;
        // The client is gone once a send fails: dropping `events` then closes the upstream
        // connection, so the provider stops generating too.
        if sse.send(chunk(json!({"role": "assistant", "content": ""}), None)).await.is_err() {
            tally.finish(&app, &chunk_channel, usage, 499, retries);
            return;
        }
        let mut failure = None;
        while let Some(item) = events.next().await {
            match item {
                Ok(StreamEvent::Usage(u)) => usage = u,
                Ok(StreamEvent::Finish(reason)) => {
                    if finish.is_none() {
                        finish = Some(reason);
                        let f = finish_str(reason, legacy);
                        if sse.send(chunk(json!({}), Some(f))).await.is_err() {
                            tally.finish(&app, &chunk_channel, usage, 499, retries);
                            return;
                        }
                    }
                }
                Ok(event) => {
                    if let Some(delta) = delta_of(&event, legacy)
                        && sse.send(chunk(delta, None)).await.is_err()
                    {
                        tally.finish(&app, &chunk_channel, usage, 499, retries);
                        return;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            // After the stream began, an error is an event of its own (as OpenAI sends one);
            // the client never mistakes a cut-off answer for a whole one.
            let _ = sse.send(Ok(SseEvent::default().data(e.openai_json().to_string()))).await;
            tally.finish(&app, &chunk_channel, usage, e.client_status(), retries);
            return;
        }
        if finish.is_none() {
            let _ = sse.send(chunk(json!({}), Some("stop"))).await;
        }
        if include_usage {
            let u = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": crate::FINGERPRINT, "choices": [], "usage": usage_json(usage),
            });
            let _ = sse.send(Ok(SseEvent::default().data(u.to_string()))).await;
        }
        let _ = sse.send(Ok(SseEvent::default().data("[DONE]"))).await;
        tally.finish(&app, &chunk_channel, usage, 200, retries);
    });
    let mut response = Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default()).into_response();
    served_headers(&mut response, &channel, retries);
    response
}
