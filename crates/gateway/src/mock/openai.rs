//! OpenAI's chat completions as `api.openai.com` serves them (see the module docs of
//! `providers::openai` for the format): Bearer keys checked, `[DONE]`-terminated chunks,
//! `include_usage`, tool calls streamed as id+name then argument fragments, OpenAI's error
//! envelope and `retry-after` on 429.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Fault, MockState, Reply, count_tokens, delay, reply, sse_body};

pub(crate) fn router() -> Router<Arc<MockState>> {
    Router::new().route("/v1/chat/completions", post(chat)).route("/v1/models", get(models))
}

fn error(
    status: u16,
    message: &str,
    kind: &str,
    code: Option<&str>,
    retry_after_ms: Option<u64>,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body))
            .into_response();
    if let Some(ms) = retry_after_ms {
        let h = response.headers_mut();
        h.insert("retry-after-ms", ms.into());
        h.insert("retry-after", ms.div_ceil(1000).into());
    }
    response
}

fn fault_response(status: u16, retry_after_ms: Option<u64>, code: Option<&str>) -> Response {
    match (status, code) {
        (429, Some("insufficient_quota")) => error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            Some("insufficient_quota"),
            None,
        ),
        (429, _) => error(
            429,
            "Rate limit reached for requests. Please try again in 1s.",
            "requests",
            Some("rate_limit_exceeded"),
            retry_after_ms.or(Some(1000)),
        ),
        (400, Some("context_length")) => error(
            400,
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            "invalid_request_error",
            Some("context_length_exceeded"),
            None,
        ),
        (401, _) => {
            error(401, "Incorrect API key provided.", "invalid_request_error", Some("invalid_api_key"), None)
        }
        (s, _) if s >= 500 => {
            error(s, "The server had an error while processing your request.", "server_error", None, None)
        }
        (s, _) => error(s, "The request was refused.", "invalid_request_error", None, None),
    }
}

async fn models(State(state): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return wrong_key(&headers);
    }
    axum::Json(json!({"object": "list", "data": [
        {"id": "gpt-4", "object": "model", "created": 1687882411, "owned_by": "openai"},
        {"id": "gpt-3.5-turbo", "object": "model", "created": 1677610602, "owned_by": "openai"}
    ]}))
    .into_response()
}

fn presented(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

fn authorized(state: &MockState, headers: &HeaderMap) -> bool {
    state.key_ok(presented(headers))
}

/// OpenAI's answer to a wrong key, which quotes the key masked (`sk-ECH****abcd`).
fn wrong_key(headers: &HeaderMap) -> Response {
    let key = presented(headers).unwrap_or("");
    let masked = match (key.get(..6), key.len().checked_sub(4).and_then(|i| key.get(i..))) {
        (Some(head), Some(tail)) if key.len() > 10 => format!("{head}****{tail}"),
        _ => "****".into(),
    };
    error(
        401,
        &format!(
            "Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."
        ),
        "invalid_request_error",
        Some("invalid_api_key"),
        None,
    )
}

/// The last user text, the tool result that follows the last assistant turn, and the text of
/// every message (for the prompt's token count).
fn read_messages(messages: &[Value]) -> (String, Option<String>, String) {
    let text = |m: &Value| match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect()
        }
        _ => String::new(),
    };
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(text).unwrap_or_default();
    let tool_result = messages.last().filter(|m| m["role"] == "tool" || m["role"] == "function").map(text);
    let all = messages.iter().map(text).collect::<Vec<_>>().join(" ");
    (last_user, tool_result, all)
}

async fn chat(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = state.arrive();
    delay(&fault).await;
    if !authorized(&state, &headers) {
        return wrong_key(&headers);
    }
    if let Some(Fault::Status { status, retry_after_ms, code }) = &fault {
        return fault_response(*status, *retry_after_ms, code.as_deref());
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            400,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            None,
            None,
        );
    };
    let (Some(model), Some(messages)) = (req["model"].as_str(), req["messages"].as_array()) else {
        return error(
            400,
            "you must provide a model parameter and messages",
            "invalid_request_error",
            None,
            None,
        );
    };
    let (last_user, tool_result, all) = read_messages(messages);
    let legacy = req.get("functions").is_some();
    let tools = if legacy { &req["functions"] } else { &req["tools"] };
    let first_tool = tools
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| t.pointer("/function/name").or_else(|| t.get("name")).and_then(Value::as_str));
    let refuses_tools = req["tool_choice"] == "none" || req["function_call"] == "none";
    let max_tokens = req["max_completion_tokens"].as_u64().or(req["max_tokens"].as_u64());
    let answer = reply(
        "mock-openai",
        model,
        &last_user,
        tool_result.as_deref(),
        first_tool.filter(|_| !refuses_tools),
        max_tokens,
    );
    let schema = tools
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| t.pointer("/function/parameters").or_else(|| t.get("parameters")));
    let answer = super::shaped_to(answer, schema, &last_user);
    let answer = super::formatted(answer, &req["response_format"], &last_user);
    let prompt_tokens = count_tokens(&all).max(1);
    let id = format!("chatcmpl-mock{:08x}", state.requests());
    let created = 1_700_000_000u64;
    if req["stream"].as_bool().unwrap_or(false) {
        let include_usage =
            req.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
        return stream(&id, created, model, &answer, prompt_tokens, include_usage, legacy, &fault);
    }
    let (message, finish, completion_tokens) = match &answer {
        Reply::Text { pieces, truncated } => (
            json!({"role": "assistant", "content": pieces.concat(), "refusal": null}),
            if *truncated { "length" } else { "stop" },
            pieces.len() as u64,
        ),
        Reply::Tool { name, arguments } if legacy => (
            json!({"role": "assistant", "content": null, "function_call": {"name": name, "arguments": arguments.to_string()}}),
            "function_call",
            5,
        ),
        Reply::Tool { name, arguments } => (
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": format!("call_mock{:04}", state.requests()), "type": "function",
                 "function": {"name": name, "arguments": arguments.to_string()}}]}),
            "tool_calls",
            5,
        ),
    };
    axum::Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
    }))
    .into_response()
}

#[allow(clippy::too_many_arguments)]
fn stream(
    id: &str,
    created: u64,
    model: &str,
    answer: &Reply,
    prompt_tokens: u64,
    include_usage: bool,
    legacy: bool,
    fault: &Option<Fault>,
) -> Response {
    let usage_field = if include_usage { Some(Value::Null) } else { None };
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if let Some(u) = &usage_field {
            c["usage"] = u.clone();
        }
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    let (finish, completion_tokens) = match answer {
        Reply::Text { pieces, truncated } => {
            for p in pieces {
                events.push(chunk(json!({"content": p}), None));
            }
            (if *truncated { "length" } else { "stop" }, pieces.len() as u64)
        }
        Reply::Tool { name, arguments } => {
            let args = arguments.to_string();
            let (a, b) = args.split_at(args.len() / 2);
            if legacy {
                events.push(chunk(json!({"function_call": {"name": name, "arguments": ""}}), None));
                for part in [a, b] {
                    events.push(chunk(json!({"function_call": {"arguments": part}}), None));
                }
                ("function_call", 5)
            } else {
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "id": "call_mock0001", "type": "function", "function": {"name": name, "arguments": ""}}]}),
                    None,
                ));
                for part in [a, b] {
                    events.push(chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                        None,
                    ));
                }
                ("tool_calls", 5)
            }
        }
    };
    events.push(chunk(json!({}), Some(finish)));
    if include_usage {
        let usage = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}});
        events.push(format!("data: {usage}\n\n"));
    }
    events.push("data: [DONE]\n\n".into());
    let drop_after = match fault {
        Some(Fault::DropStream { after_events }) => Some(*after_events),
        Some(Fault::ErrorEvent { after_events }) => {
            let err = json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}});
            events.truncate(*after_events);
            events.push(format!("data: {err}\n\n"));
            None
        }
        _ => None,
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(sse_body(events, drop_after))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
