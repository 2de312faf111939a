//! DashScope as `dashscope.aliyuncs.com` serves it (see `providers::dashscope` for the format):
//! the native generation endpoint (Bearer key; `result_format` `message` or `text`; streams when
//! `X-DashScope-SSE: enable` or `Accept: text/event-stream`, as `id:`/`event:result`/
//! `:HTTP_STATUS/200`/`data:` blocks, deltas or whole-text-so-far after `incremental_output`,
//! finish reason `"null"` until the last, cumulative usage, `event:error` frames) and the
//! OpenAI-compatible mode, with DashScope's `{code, message, request_id}` errors.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Fault, MockState, Reply, count_tokens, delay, reply, sse_body};
use crate::providers::dashscope::{COMPATIBLE_PATH, GENERATION_PATH};

pub(crate) fn router() -> Router<Arc<MockState>> {
    Router::new().route(GENERATION_PATH, post(generation)).route(COMPATIBLE_PATH, post(compatible))
}

fn request_id(state: &MockState) -> String {
    format!("9d7e0c6a-mock-4d1b-{:012x}", state.requests())
}

/// A native error: `{code, message, request_id}` with the status.
fn error(status: u16, code: &str, message: &str, request_id: &str, retry_after_ms: Option<u64>) -> Response {
    let body = json!({"code": code, "message": message, "request_id": request_id});
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body))
            .into_response();
    // DashScope documents no retry hint (❓); the mock sends one only when a fault asks for it.
    if let Some(ms) = retry_after_ms {
        response.headers_mut().insert("retry-after", ms.div_ceil(1000).into());
        response.headers_mut().insert("retry-after-ms", ms.into());
    }
    response
}

/// The code and message DashScope answers with for an injected status (and `code` variant).
fn fault_error(status: u16, code: Option<&str>) -> (u16, &'static str, &'static str) {
    match (status, code) {
        (_, Some("Arrearage")) => {
            (400, "Arrearage", "Access denied, please make sure your account is in good standing.")
        }
        (_, Some("DataInspectionFailed")) => {
            (400, "DataInspectionFailed", "Input data may contain inappropriate content.")
        }
        (_, Some("context_length")) => (400, "InvalidParameter", "Range of input length should be [1, 6000]"),
        (429, Some("Throttling.AllocationQuota")) => {
            (429, "Throttling.AllocationQuota", "Allocated quota exceeded, please increase your quota limit.")
        }
        (429, _) => (429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
        (401, _) => (401, "InvalidApiKey", "Invalid API-key provided."),
        (403, _) => (403, "AccessDenied", "Access denied."),
        (404, _) => (404, "ModelNotFound", "Model not found."),
        (s, _) if s >= 500 => (s, "InternalError", "An internal error has occured, please try again later."),
        (s, _) => (s, "InvalidParameter", "The request was refused."),
    }
}

fn authorized(state: &MockState, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    state.key_ok(presented)
}

fn text_of(m: &Value) -> String {
    match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect()
        }
        _ => String::new(),
    }
}

/// The mock's answer to `messages` with `tools` offered, and the prompt's token count.
fn answer_for(
    model: &str,
    messages: &[Value],
    tools: &Value,
    tool_choice: &Value,
    max_tokens: Option<u64>,
) -> (Reply, u64) {
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(text_of).unwrap_or_default();
    let tool_result = messages.last().filter(|m| m["role"] == "tool").map(text_of);
    let first_tool = tools
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| t.pointer("/function/name"))
        .and_then(Value::as_str);
    let first_tool = first_tool.filter(|_| *tool_choice != "none");
    let all = messages.iter().map(text_of).collect::<Vec<_>>().join(" ");
    let answer = reply("mock-dashscope", model, &last_user, tool_result.as_deref(), first_tool, max_tokens);
    (answer, count_tokens(&all).max(1))
}

fn wants_stream(headers: &HeaderMap) -> bool {
    let get = |name| headers.get(name).and_then(|v: &header::HeaderValue| v.to_str().ok()).unwrap_or("");
    get("x-dashscope-sse").eq_ignore_ascii_case("enable") || get("accept").contains("text/event-stream")
}

async fn generation(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = state.arrive();
    delay(&fault).await;
    let rid = request_id(&state);
    if !authorized(&state, &headers) {
        return error(401, "InvalidApiKey", "Invalid API-key provided.", &rid, None);
    }
    if let Some(Fault::Status { status, retry_after_ms, code }) = &fault {
        let (status, code, message) = fault_error(*status, code.as_deref());
        return error(status, code, message, &rid, *retry_after_ms);
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "InvalidParameter", "Request body is not valid JSON.", &rid, None);
    };
    let Some(model) = req["model"].as_str() else {
        return error(
            400,
            "BadRequest.EmptyModel",
            "Required parameter(model) missing or invalid.",
            &rid,
            None,
        );
    };
    let Some(messages) = req.pointer("/input/messages").and_then(Value::as_array).filter(|m| !m.is_empty())
    else {
        return error(
            400,
            "BadRequest.EmptyInput",
            "Required input parameter missing from request.",
            &rid,
            None,
        );
    };
    let p = &req["parameters"];
    if p["top_p"].as_f64().is_some_and(|t| t <= 0.0 || t >= 1.0) {
        return error(400, "InvalidParameter", "Range of top_p should be (0.0, 1.0)", &rid, None);
    }
    if p["temperature"].as_f64().is_some_and(|t| !(0.0..2.0).contains(&t)) {
        return error(400, "InvalidParameter", "Range of temperature should be [0.0, 2.0)", &rid, None);
    }
    let (answer, prompt_tokens) =
        answer_for(model, messages, &p["tools"], &p["tool_choice"], p["max_tokens"].as_u64());
    let as_message = p["result_format"] == "message";
    if wants_stream(&headers) {
        let incremental = p["incremental_output"].as_bool().unwrap_or(false);
        return native_stream(&rid, &answer, prompt_tokens, as_message, incremental, &fault);
    }
    let (message, finish, completion_tokens) = message_of(&answer, 0);
    let output = if as_message {
        json!({"choices": [{"finish_reason": finish, "message": message}]})
    } else {
        json!({"text": message["content"], "finish_reason": finish})
    };
    axum::Json(json!({
        "output": output,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        "request_id": rid,
    }))
    .into_response()
}

/// The whole assistant message of an answer, its finish reason and its token count.
fn message_of(answer: &Reply, call: usize) -> (Value, &'static str, u64) {
    match answer {
        Reply::Text { pieces, truncated } => (
            json!({"role": "assistant", "content": pieces.concat()}),
            if *truncated { "length" } else { "stop" },
            pieces.len() as u64,
        ),
        Reply::Tool { name, arguments } => (
            json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": name, "arguments": arguments.to_string()}, "index": 0, "id": format!("call_mock{call:04}"), "type": "function"}]}),
            "tool_calls",
            5,
        ),
    }
}

fn native_stream(
    rid: &str,
    answer: &Reply,
    prompt_tokens: u64,
    as_message: bool,
    incremental: bool,
    fault: &Option<Fault>,
) -> Response {
    // Each step: the message of this event (delta or whole so far), its output tokens so far.
    let mut steps: Vec<(Value, u64)> = Vec::new();
    let finish = match answer {
        Reply::Text { pieces, truncated } => {
            let mut so_far = String::new();
            for (i, p) in pieces.iter().enumerate() {
                so_far.push_str(p);
                let content = if incremental { p.clone() } else { so_far.clone() };
                steps.push((json!({"role": "assistant", "content": content}), i as u64 + 1));
            }
            if *truncated { "length" } else { "stop" }
        }
        Reply::Tool { name, arguments } => {
            let args = arguments.to_string();
            let (a, b) = args.split_at(args.len() / 2);
            // The id and type come again on every fragment, the id then empty (⚠️ as client code saw it).
            let call = |id: &str, name: Option<&str>, arguments: &str| {
                let mut function = json!({"arguments": arguments});
                if let Some(n) = name {
                    function["name"] = n.into();
                }
                json!({"role": "assistant", "content": "", "tool_calls": [{"index": 0, "id": id, "type": "function", "function": function}]})
            };
            if incremental {
                steps.push((call("call_mock0001", Some(name), a), 3));
                steps.push((call("", None, b), 5));
            } else {
                steps.push((call("call_mock0001", Some(name), a), 3));
                steps.push((call("call_mock0001", Some(name), &args), 5));
            }
            "tool_calls"
        }
    };
    let total = steps.last().map_or(0, |s| s.1);
    // The last event carries the finish reason with an empty delta (or the whole text again).
    let last_message = match (incremental, steps.last()) {
        (false, Some((m, _))) => m.clone(),
        _ => json!({"role": "assistant", "content": ""}),
    };
    steps.push((last_message, total));
    let n = steps.len();
    let mut events: Vec<String> = steps
        .into_iter()
        .enumerate()
        .map(|(i, (message, tokens))| {
            let reason = if i + 1 == n { finish } else { "null" };
            let output = if as_message {
                json!({"choices": [{"message": message, "finish_reason": reason}]})
            } else {
                json!({"text": message["content"], "finish_reason": reason})
            };
            let data = json!({"output": output, "usage": {"input_tokens": prompt_tokens, "output_tokens": tokens, "total_tokens": prompt_tokens + tokens}, "request_id": rid});
            format!("id:{}\nevent:result\n:HTTP_STATUS/200\ndata:{data}\n\n", i + 1)
        })
        .collect();
    let drop_after = match fault {
        Some(Fault::DropStream { after_events }) => Some(*after_events),
        Some(Fault::ErrorEvent { after_events }) => {
            // Throttling after the 200 is the in-stream error DashScope is known for.
            events.truncate(*after_events);
            let data = json!({"code": "Throttling.AllocationQuota", "message": "Allocated quota exceeded, please increase your quota limit.", "request_id": rid});
            events.push(format!("id:{}\nevent:error\n:HTTP_STATUS/429\ndata:{data}\n\n", events.len() + 1));
            None
        }
        _ => None,
    };
    sse_response(events, drop_after)
}

fn sse_response(events: Vec<String>, drop_after: Option<usize>) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream;charset=UTF-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(sse_body(events, drop_after))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A compatible-mode error: OpenAI's envelope with DashScope's codes (❓ as client code saw it).
fn compatible_error(
    status: u16,
    code: &str,
    message: &str,
    rid: &str,
    retry_after_ms: Option<u64>,
) -> Response {
    let kind = match code {
        "invalid_api_key" => "invalid_request_error",
        other => other,
    };
    let body =
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}, "request_id": rid});
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body))
            .into_response();
    if let Some(ms) = retry_after_ms {
        response.headers_mut().insert("retry-after", ms.div_ceil(1000).into());
        response.headers_mut().insert("retry-after-ms", ms.into());
    }
    response
}

async fn compatible(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = state.arrive();
    delay(&fault).await;
    let rid = request_id(&state);
    if !authorized(&state, &headers) {
        return compatible_error(401, "invalid_api_key", "Incorrect API key provided. ", &rid, None);
    }
    if let Some(Fault::Status { status, retry_after_ms, code }) = &fault {
        let (status, code, message) = match fault_error(*status, code.as_deref()) {
            (401, ..) => (401, "invalid_api_key", "Incorrect API key provided. "),
            (429, "Throttling.RateQuota", m) => (429, "limit_requests", m),
            (400, "InvalidParameter", m) => (400, "invalid_parameter_error", m),
            (400, "DataInspectionFailed", m) => (400, "data_inspection_failed", m),
            (s, "InternalError", m) => (s, "internal_error", m),
            other => other,
        };
        return compatible_error(status, code, message, &rid, *retry_after_ms);
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return compatible_error(
            400,
            "invalid_parameter_error",
            "Request body is not valid JSON.",
            &rid,
            None,
        );
    };
    let (Some(model), Some(messages)) = (req["model"].as_str(), req["messages"].as_array()) else {
        return compatible_error(
            400,
            "invalid_parameter_error",
            "model and messages are required.",
            &rid,
            None,
        );
    };
    let max_tokens = req["max_completion_tokens"].as_u64().or(req["max_tokens"].as_u64());
    let (answer, prompt_tokens) = answer_for(model, messages, &req["tools"], &req["tool_choice"], max_tokens);
    let (message, finish, completion_tokens) = message_of(&answer, 1);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let id = format!("chatcmpl-{rid}");
    if !req["stream"].as_bool().unwrap_or(false) {
        let mut message = message;
        if message["content"] == "" && message.get("tool_calls").is_some() {
            message["content"] = Value::Null;
        }
        if let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) {
            calls.iter_mut().for_each(|c| _ = c.as_object_mut().map(|o| o.remove("index")));
        }
        return axum::Json(json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]});
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    match &answer {
        Reply::Text { pieces, .. } => {
            events.extend(pieces.iter().map(|p| chunk(json!({"content": p}), None)))
        }
        Reply::Tool { name, arguments } => {
            let args = arguments.to_string();
            let (a, b) = args.split_at(args.len() / 2);
            events.push(chunk(json!({"tool_calls": [{"index": 0, "id": "call_mock0001", "type": "function", "function": {"name": name, "arguments": a}}]}), None));
            events.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}), None));
        }
    }
    events.push(chunk(json!({}), Some(finish)));
    if req.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false) {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model, "choices": [], "usage": usage});
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".into());
    let drop_after = match &fault {
        Some(Fault::DropStream { after_events }) => Some(*after_events),
        Some(Fault::ErrorEvent { after_events }) => {
            events.truncate(*after_events);
            let err = json!({"error": {"message": "An internal error has occured, please try again later.", "type": "internal_error", "param": null, "code": "internal_error"}, "request_id": rid});
            events.push(format!("data: {err}\n\n"));
            None
        }
        _ => None,
    };
    sse_response(events, drop_after)
}
