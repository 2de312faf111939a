//! Baichuan as `api.baichuan-ai.com` serves it (see `providers::baichuan` for the format). The
//! current API: OpenAI's chat completions with a Bearer key, usage in the chunk that finishes,
//! errors in OpenAI's envelope (❓ code names). The legacy API (⚠️): `/v1/chat` and
//! `/v1/stream/chat`, each request checked for `X-BC-Timestamp` (within five minutes),
//! `X-BC-Sign-Algo: MD5` and `X-BC-Signature = md5(secret + exact body + timestamp)` — the mock
//! needs the secret key — with every error as `{code, msg}` in a 200 and NDJSON streams.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::{Fault, MockState, Reply, count_tokens, delay, reply, sse_body};
use crate::providers::baichuan::{CHAT_PATH, LEGACY_PATH, LEGACY_STREAM_PATH, legacy_signature};

/// How far a legacy request's timestamp may be from the mock's clock.
const TIMESTAMP_WINDOW_SECS: u64 = 300;

pub(crate) fn router() -> Router<Arc<MockState>> {
    Router::new()
        .route(CHAT_PATH, post(chat))
        .route(LEGACY_PATH, post(|s: State<Arc<MockState>>, h: HeaderMap, b: Bytes| legacy(s, h, b, false)))
        .route(
            LEGACY_STREAM_PATH,
            post(|s: State<Arc<MockState>>, h: HeaderMap, b: Bytes| legacy(s, h, b, true)),
        )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

fn text_of(m: &Value) -> String {
    match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn answer_for(model: &str, messages: &[Value], tools: &Value, max_tokens: Option<u64>) -> (Reply, u64) {
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(text_of).unwrap_or_default();
    let tool_result = messages.last().filter(|m| m["role"] == "tool").map(text_of);
    let first_tool = tools
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| t.pointer("/function/name"))
        .and_then(Value::as_str);
    let answer = reply("mock-baichuan", model, &last_user, tool_result.as_deref(), first_tool, max_tokens);
    (answer, count_tokens(&messages.iter().map(text_of).collect::<Vec<_>>().join(" ")).max(1))
}

fn error(status: u16, code: &str, kind: &str, message: &str, retry_after_ms: Option<u64>) -> Response {
    let body = json!({"error": {"code": code, "message": message, "type": kind, "param": null}});
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body))
            .into_response();
    if let Some(ms) = retry_after_ms {
        response.headers_mut().insert("retry-after", ms.div_ceil(1000).into());
        response.headers_mut().insert("retry-after-ms", ms.into());
    }
    response
}

fn sse_response(events: Vec<String>, drop_after: Option<usize>, content_type: &str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(sse_body(events, drop_after))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn chat(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = state.arrive();
    delay(&fault).await;
    if !state.key_ok(bearer(&headers)) {
        return error(401, "invalid_api_key", "invalid_request_error", "Invalid API key.", None);
    }
    if let Some(Fault::Status { status, retry_after_ms, code }) = &fault {
        return match (*status, code.as_deref()) {
            (_, Some("insufficient_quota")) => {
                error(429, "insufficient_quota", "insufficient_quota", "账户余额不足，请充值后重试。", None)
            }
            (429, _) => error(
                429,
                "rate_limit_exceeded",
                "rate_limit_error",
                "请求过于频繁，请稍后再试。",
                *retry_after_ms,
            ),
            (401, _) => error(401, "invalid_api_key", "invalid_request_error", "Invalid API key.", None),
            (s, _) if s >= 500 => {
                error(s, "internal_error", "api_error", "Internal server error.", *retry_after_ms)
            }
            (s, _) => error(s, "invalid_request", "invalid_request_error", "The request was refused.", None),
        };
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "invalid_request", "invalid_request_error", "Invalid JSON body.", None);
    };
    let (Some(model), Some(messages)) = (req["model"].as_str(), req["messages"].as_array()) else {
        return error(
            400,
            "invalid_request",
            "invalid_request_error",
            "model and messages are required.",
            None,
        );
    };
    if req["temperature"].as_f64().is_some_and(|t| !(0.0..=1.0).contains(&t))
        || req["top_p"].as_f64().is_some_and(|p| !(0.0..1.0).contains(&p))
    {
        return error(
            400,
            "invalid_request",
            "invalid_request_error",
            "temperature or top_p out of range.",
            None,
        );
    }
    let max_tokens = req["max_tokens"].as_u64();
    let (answer, prompt_tokens) = answer_for(model, messages, &req["tools"], max_tokens);
    let id = format!("chatcmpl-M{:07}", state.requests());
    let (message, finish, completion_tokens) = match &answer {
        Reply::Text { pieces, truncated } => (
            json!({"role": "assistant", "content": pieces.concat()}),
            if *truncated { "length" } else { "stop" },
            pieces.len() as u64,
        ),
        Reply::Tool { name, arguments } => (
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{id}"), "type": "function",
                "function": {"name": name, "arguments": arguments.to_string()}}]}),
            "tool_calls",
            5,
        ),
    };
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    if !req["stream"].as_bool().unwrap_or(false) {
        return axum::Json(json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
            "knowledge_base": {"cites": []},
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>, usage: Option<&Value>| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        format!("data: {c}\n\n")
    };
    let mut events = Vec::new();
    match &answer {
        Reply::Text { pieces, .. } => events
            .extend(pieces.iter().map(|p| chunk(json!({"role": "assistant", "content": p}), None, None))),
        Reply::Tool { name, arguments } => {
            let args = arguments.to_string();
            let (a, b) = args.split_at(args.len() / 2);
            let id0 = format!("call_{id}");
            events.push(chunk(json!({"role": "assistant", "tool_calls": [{"index": 0, "id": id0, "type": "function", "function": {"name": name, "arguments": a}}]}), None, None));
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
                None,
                None,
            ));
        }
    }
    // Usage comes with the finishing chunk, asked for or not (⚠️).
    events.push(chunk(json!({"role": "assistant", "content": ""}), Some(finish), Some(&usage)));
    events.push("data: [DONE]\n\n".into());
    let drop_after = match &fault {
        Some(Fault::DropStream { after_events }) => Some(*after_events),
        Some(Fault::ErrorEvent { after_events }) => {
            events.truncate(*after_events);
            let err = json!({"error": {"code": "internal_error", "message": "Internal server error.", "type": "api_error"}});
            events.push(format!("data: {err}\n\n"));
            None
        }
        _ => None,
    };
    sse_response(events, drop_after, "text/event-stream")
}

/// A legacy envelope: errors too come with HTTP 200.
fn legacy_reply(code: u64, msg: &str) -> Response {
    axum::Json(json!({"code": code, "msg": msg})).into_response()
}

/// Checks a legacy request's key, timestamp and signature: `Err` with Baichuan's code and message.
fn legacy_check(state: &MockState, headers: &HeaderMap, body: &[u8]) -> Result<(), (u64, &'static str)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(key) = bearer(headers) else { return Err((10100, "missing apikey")) };
    if !state.key_ok(Some(key)) {
        return Err((10101, "invalid apikey"));
    }
    if header("X-BC-Sign-Algo").is_some_and(|a| a != "MD5") {
        return Err((10106, "unsupported sign algorithm"));
    }
    let timestamp = header("X-BC-Timestamp").ok_or((10103, "invalid timestamp"))?;
    let seconds: u64 = timestamp.parse().map_err(|_| (10103, "invalid timestamp"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now.abs_diff(seconds) > TIMESTAMP_WINDOW_SECS {
        return Err((10104, "timestamp expired"));
    }
    let (Some(secret), Some(signature)) = (state.secret.as_deref(), header("X-BC-Signature")) else {
        return Err((10105, "invalid signature"));
    };
    let body = std::str::from_utf8(body).map_err(|_| (10000, "invalid parameters"))?;
    let want = legacy_signature(secret, body, timestamp);
    if !bool::from(want.as_bytes().ct_eq(signature.to_ascii_lowercase().as_bytes())) {
        return Err((10105, "invalid signature"));
    }
    Ok(())
}

async fn legacy(state: State<Arc<MockState>>, headers: HeaderMap, body: Bytes, stream: bool) -> Response {
    let State(state) = state;
    let fault = state.arrive();
    delay(&fault).await;
    if let Err((code, msg)) = legacy_check(&state, &headers, &body) {
        return legacy_reply(code, msg);
    }
    if let Some(Fault::Status { status, code, .. }) = &fault {
        return match (*status, code.as_deref()) {
            (_, Some("insufficient_quota" | "10300")) => legacy_reply(10300, "insufficient balance"),
            (429, _) => legacy_reply(10203, "request too frequent"),
            (401, _) => legacy_reply(10101, "invalid apikey"),
            (s, _) if s >= 500 => legacy_reply(10500, "internal error"),
            _ => legacy_reply(10000, "invalid parameters"),
        };
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return legacy_reply(10000, "invalid parameters");
    };
    let (Some(model), Some(messages)) = (req["model"].as_str(), req["messages"].as_array()) else {
        return legacy_reply(10000, "invalid parameters");
    };
    if messages.iter().any(|m| m["role"] != "user" && m["role"] != "assistant") {
        return legacy_reply(10000, "invalid parameters: role");
    }
    let (answer, prompt_tokens) = answer_for(model, messages, &Value::Null, None);
    let Reply::Text { pieces, .. } = answer else { return legacy_reply(1, "system error") };
    // Usage field names as clients of the time read them (❓).
    let usage = |n: usize| json!({"prompt_tokens": prompt_tokens, "answer_tokens": n, "total_tokens": prompt_tokens + n as u64});
    let envelope = |content: &str, finish: &str, n: usize| {
        json!({"code": 0, "msg": "success",
            "data": {"messages": [{"role": "assistant", "content": content, "finish_reason": finish}]},
            "usage": usage(n)})
    };
    if !stream {
        return axum::Json(envelope(&pieces.concat(), "stop", pieces.len())).into_response();
    }
    let n = pieces.len();
    let mut lines: Vec<String> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}\n", envelope(p, if i + 1 == n { "stop" } else { "" }, i + 1)))
        .collect();
    let drop_after = match &fault {
        Some(Fault::DropStream { after_events }) => Some(*after_events),
        Some(Fault::ErrorEvent { after_events }) => {
            lines.truncate(*after_events);
            lines.push(format!("{}\n", json!({"code": 10500, "msg": "internal error"})));
            None
        }
        _ => None,
    };
    sse_response(lines, drop_after, "application/json")
}
