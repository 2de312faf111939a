//! Anthropic's endpoint: `POST /v1/messages`, whole or streamed with the documented event
//! sequence (`message_start`, `content_block_start`, `ping`, `content_block_delta`…,
//! `content_block_stop`, `message_delta` with the stop reason and usage, `message_stop`), and
//! Anthropic's error envelope. The request is read once into baimo's [`ChatRequest`] and
//! answered by whichever backend serves its model, as chat completions are.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use baimo_api::ChatRequest;
use baimo_api::anthropic::{EventWriter, error_json, message_json};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::App;
use crate::openai::{Admitted, accept};
use crate::usage::served_headers;

fn message_id() -> String {
    format!("msg_{}", crate::openai::completion_id().trim_start_matches("chatcmpl-"))
}

pub async fn messages(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let id = message_id();
    let admitted = accept(&app, &headers, body, ChatRequest::from_anthropic, "anthropic", id.clone()).await;
    let Admitted { req, backend, mut tally } = match admitted {
        Ok(a) => a,
        Err(e) => return e.refused("anthropic").anthropic_response(),
    };
    if !req.stream {
        return match backend.chat(&req, &tally.meter).await {
            Ok(reply) => {
                tally.served_by(&reply.channel, reply.retries);
                tally.status(200);
                let mut response = Json(message_json(&req.model, &reply.value, &id)).into_response();
                served_headers(&mut response, &reply.channel, reply.retries);
                response
            }
            Err(r) => {
                tally.served_by(&r.channel, r.retries);
                tally.status(r.error.status.as_u16());
                r.error.anthropic_response()
            }
        };
    }
    let reply = match backend.chat_stream(&req, &tally.meter).await {
        Ok(r) => r,
        Err(r) => {
            tally.served_by(&r.channel, r.retries);
            tally.status(r.error.status.as_u16());
            return r.error.anthropic_response();
        }
    };
    tally.served_by(&reply.channel, reply.retries);
    let (sse, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let mut writer = EventWriter::new();
    let start = writer.start(&req.model, &id, reply.prompt_tokens);
    let mut response = Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default()).into_response();
    served_headers(&mut response, &reply.channel, reply.retries);
    // Anthropic answers once: the first choice is the answer (`n` is not part of its API).
    let mut events = reply.value.into_iter().next();
    // The tally goes with the task: however it ends, the request is recorded.
    tokio::spawn(async move {
        let send = |batch: Vec<(&'static str, Value)>| {
            let sse = sse.clone();
            async move {
                for (name, data) in batch {
                    if sse.send(Ok(SseEvent::default().event(name).data(data.to_string()))).await.is_err() {
                        return false;
                    }
                }
                true
            }
        };
        if !send(start).await {
            return;
        }
        while let Some(item) = match events.as_mut() {
            Some(s) => s.next().await,
            None => None,
        } {
            match item {
                Ok(event) => {
                    if !send(writer.event(event)).await {
                        return;
                    }
                }
                Err(e) => {
                    let kind = if e.status.as_u16() == 429 { "rate_limit_error" } else { "api_error" };
                    tally.status(e.status.as_u16());
                    send(vec![("error", error_json(kind, &e.message))]).await;
                    return;
                }
            }
        }
        if send(writer.end()).await {
            tally.status(200);
        }
    });
    response
}
