//! Anthropic's Messages API as `api.anthropic.com` serves it: `x-api-key` and
//! `anthropic-version` required, `max_tokens` required, the system prompt as a top-level field,
//! named stream events with a `ping`, cumulative usage in `message_delta`, `tool_use` blocks, and
//! the `{"type":"error",...}` envelope (also as an `error` event after a 200).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Fault, MockState, Reply, count_tokens, delay, reply, sse_body};

pub(crate) fn router() -> Router<Arc<MockState>> {
    Router::new().route("/v1/messages", post(messages))
}

/// Anthropic's error envelope (shared by both of its APIs), with the retry hint headers.
pub(crate) fn error(status: u16, kind: &str, message: &str, retry_after_ms: Option<u64>) -> Response {
    let body =
        json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_mock"});
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body))
            .into_response();
    response.headers_mut().insert("request-id", "req_mock".parse().expect("ascii"));
    if let Some(ms) = retry_after_ms {
        response.headers_mut().insert("retry-after", ms.div_ceil(1000).into());
        response.headers_mut().insert("retry-after-ms", ms.into());
    }
    response
}

pub(crate) fn fault_response(status: u16, retry_after_ms: Option<u64>, code: Option<&str>) -> Response {
    match (status, code) {
        (400, Some("context_length")) => {
            error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", None)
        }
        (400, Some("insufficient_quota")) => error(
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API.",
            None,
        ),
        (401, _) => error(401, "authentication_error", "invalid x-api-key", None),
        (429, _) => error(
            429,
            "rate_limit_error",
            "Number of requests has exceeded your rate limit.",
            retry_after_ms.or(Some(1000)),
        ),
        (529, _) => error(529, "overloaded_error", "Overloaded", None),
        (s, _) if s >= 500 => error(s, "api_error", "Internal server error", None),
        (s, _) => error(s, "invalid_request_error", "The request was refused.", None),
    }
}

fn block_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => b.get("text").and_then(Value::as_str).map(String::from),
                Some("tool_result") => Some(block_text(b.get("content").unwrap_or(&Value::Null))),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

async fn messages(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = state.arrive();
    delay(&fault).await;
    if !state.key_ok(headers.get("x-api-key").and_then(|v| v.to_str().ok())) {
        return fault_response(401, None, None);
    }
    if headers.get("anthropic-version").is_none() {
        return error(400, "invalid_request_error", "anthropic-version: header is required", None);
    }
    if let Some(Fault::Status { status, retry_after_ms, code }) = &fault {
        return fault_response(*status, *retry_after_ms, code.as_deref());
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "invalid_request_error", "The request body is not valid JSON.", None);
    };
    let Some(model) = req["model"].as_str() else {
        return error(400, "invalid_request_error", "model: Field required", None);
    };
    let Some(max_tokens) = req["max_tokens"].as_u64() else {
        return error(400, "invalid_request_error", "max_tokens: Field required", None);
    };
    let Some(messages) = req["messages"].as_array().filter(|m| !m.is_empty()) else {
        return error(400, "invalid_request_error", "messages: at least one message is required", None);
    };
    if messages.iter().any(|m| m["role"] == "system") {
        return error(
            400,
            "invalid_request_error",
            "messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.",
            None,
        );
    }
    let last_user = messages.iter().rev().find(|m| {
        m["role"] == "user" && m["content"].as_array().is_none_or(|b| b.iter().any(|b| b["type"] == "text"))
    });
    let last_user_text = last_user.map(|m| {
        let t = block_text(&m["content"]);
        // A user turn that answers a tool and adds text: the text is what was asked.
        m["content"].as_array().map_or(t.clone(), |b| {
            b.iter().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str()).collect::<String>()
        })
    });
    let tool_result = messages.last().and_then(|m| m["content"].as_array()).and_then(|blocks| {
        blocks.iter().find(|b| b["type"] == "tool_result").map(|b| block_text(&b["content"]))
    });
    let first_tool = req["tools"].as_array().and_then(|t| t.first()).and_then(|t| t["name"].as_str());
    let refuses = req.pointer("/tool_choice/type").and_then(Value::as_str) == Some("none");
    let words = last_user_text.unwrap_or_default();
    let answer = reply(
        "mock-anthropic",
        model,
        &words,
        tool_result.as_deref(),
        first_tool.filter(|_| !refuses),
        Some(max_tokens),
    );
    let schema = req["tools"].as_array().and_then(|t| t.first()).and_then(|t| t.get("input_schema"));
    let answer = super::shaped_to(answer, schema, &words);
    let all: String = messages.iter().map(|m| block_text(&m["content"])).collect::<Vec<_>>().join(" ");
    let input_tokens = (count_tokens(&all) + count_tokens(req["system"].as_str().unwrap_or(""))).max(1);
    let id = format!("msg_mock{:08x}", state.requests());
    let (content, stop_reason, output_tokens) = match &answer {
        Reply::Text { pieces, truncated } => (
            vec![json!({"type": "text", "text": pieces.concat()})],
            if *truncated { "max_tokens" } else { "end_turn" },
            pieces.len() as u64,
        ),
        Reply::Tool { name, arguments } => (
            vec![
                json!({"type": "text", "text": "Let me look that up."}),
                json!({"type": "tool_use", "id": "toolu_mock0001", "name": name, "input": arguments}),
            ],
            "tool_use",
            9,
        ),
    };
    if req["stream"].as_bool().unwrap_or(false) {
        return stream(&id, model, &answer, input_tokens, stop_reason, output_tokens, &fault);
    }
    axum::Json(json!({
        "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason, "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    }))
    .into_response()
}

fn stream(
    id: &str,
    model: &str,
    answer: &Reply,
    input_tokens: u64,
    stop_reason: &str,
    output_tokens: u64,
    fault: &Option<Fault>,
) -> Response {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "content": [],
            "model": model, "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
    )];
    let text_block = |events: &mut Vec<String>, index: usize, pieces: &[String]| {
        events.push(event("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
        if index == 0 {
            events.push(event("ping", json!({"type": "ping"})));
        }
        for p in pieces {
            events.push(event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": p}})));
        }
        events.push(event("content_block_stop", json!({"type": "content_block_stop", "index": index})));
    };
    match answer {
        Reply::Text { pieces, .. } => text_block(&mut events, 0, pieces),
        Reply::Tool { name, arguments } => {
            text_block(&mut events, 0, &["Let me look that up.".to_string()]);
            events.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_mock0001", "name": name, "input": {}}}),
            ));
            let args = arguments.to_string();
            let (a, b) = args.split_at(args.len() / 2);
            for part in [a, b] {
                events.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
            events.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 1})));
        }
    }
    events.push(event("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output_tokens}})));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    let drop_after = match fault {
        Some(Fault::DropStream { after_events }) => Some(*after_events),
        Some(Fault::ErrorEvent { after_events }) => {
            events.truncate(*after_events);
            events.push(event(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            None
        }
        _ => None,
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("request-id", "req_mock")
        .body(sse_body(events, drop_after))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
