//! Baidu Qianfan as `aip.baidubce.com` (v1) and `qianfan.baidubce.com` (v2) serve it (see
//! `providers::ernie`). v1: `POST /oauth/2.0/token` checks the API key and secret key and issues
//! 30-day tokens (kept in `issued_tokens`); chat endpoints take `?access_token=`, refuse unknown
//! or expired tokens with error 110 / 111, check ERNIE's odd-message rule, and report every error
//! — throttling, quota, bad parameters, stream requests included — as HTTP 200 with
//! `{error_code, error_msg}`. v2: Bearer key, OpenAI's shapes, `{"error": {code, message, type}}`
//! with a real status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Fault, MockState, Reply, count_tokens, delay, reply, sse_body};

const LABEL: &str = "mock-ernie";
/// `expires_in` of an issued token: 30 days, as Baidu's.
const TOKEN_LIFETIME: Duration = Duration::from_secs(2_592_000);

pub(crate) fn router() -> Router<Arc<MockState>> {
    Router::new()
        .route("/oauth/2.0/token", post(token))
        .route("/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{endpoint}", post(chat_v1))
        .route("/v2/chat/completions", post(chat_v2))
}

fn secret_ok(state: &MockState, presented: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    match (state.secret.as_deref(), presented) {
        (Some(s), Some(p)) => p.len() == s.len() && bool::from(p.as_bytes().ct_eq(s.as_bytes())),
        _ => false,
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, axum::Json(json!({"error": error, "error_description": description}))).into_response()
}

/// The client-credentials grant, parameters in the query string (the body is empty).
async fn token(State(state): State<Arc<MockState>>, Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "The authorization grant type is not supported",
        );
    }
    if !state.key_ok(q.get("client_id").map(String::as_str)) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client id");
    }
    if !secret_ok(&state, q.get("client_secret").map(String::as_str)) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed");
    }
    let mut tokens = state.issued_tokens.lock().unwrap_or_else(|p| p.into_inner());
    let token = format!(
        "24.{:032x}.{}.{}.{}-mock",
        fastrand::u128(..),
        TOKEN_LIFETIME.as_secs(),
        1_700_000_000u64,
        tokens.len()
    );
    tokens.insert(token.clone(), Instant::now() + TOKEN_LIFETIME);
    axum::Json(json!({
        "refresh_token": format!("25.{:032x}", fastrand::u128(..)),
        "expires_in": TOKEN_LIFETIME.as_secs(),
        "session_key": "mock-session-key",
        "access_token": token,
        "scope": "public brain_all_scope ai_custom_yiyan_com ai_custom_yiyan_com_eb_instant",
        "session_secret": "mock-session-secret"
    }))
    .into_response()
}

/// An error as v1 sends it: HTTP 200, a JSON body (also in answer to a stream request).
fn v1_error(code: i64, message: &str) -> Response {
    let mut r = axum::Json(json!({"error_code": code, "error_msg": message})).into_response();
    r.headers_mut().insert("x-baidu-request-id", "mock-request-id".parse().expect("ascii"));
    r
}

/// A queued HTTP-status fault as v1 reports it: always inside a 200.
fn v1_fault(status: u16, code: Option<&str>) -> Response {
    match (status, code) {
        (429, Some("insufficient_quota" | "daily")) => v1_error(17, "Open api daily request limit reached"),
        (429, Some("total")) => v1_error(19, "Open api total request limit reached"),
        (429, Some("rpm")) => v1_error(336501, "Rate limit reached for RPM"),
        (429, Some("tpm")) => v1_error(336502, "Rate limit reached for TPM"),
        (429, _) => v1_error(18, "Open api qps request limit reached"),
        (400, Some("context_length")) => v1_error(336103, "the max input characters is 20000"),
        (400, _) => v1_error(336003, "Invalid params"),
        (401 | 403, _) => v1_error(14, "IAM Certification failed"),
        (503, _) => v1_error(336100, "Server high load, please try again later"),
        (s, _) if s >= 500 => v1_error(336000, "Internal error"),
        _ => v1_error(336001, "Invalid argument"),
    }
}

fn text_of(m: &Value) -> String {
    m.get("content").and_then(Value::as_str).unwrap_or("").to_string()
}

/// Baidu's own checks of `messages`: an odd count, user-side (user or function) and assistant
/// turns alternating from a user turn.
fn check_messages(messages: &[Value]) -> Result<(), &'static str> {
    if messages.is_empty() || messages.len().is_multiple_of(2) {
        return Err("messages length must be odd");
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let ok = if i % 2 == 0 { role == "user" || role == "function" } else { role == "assistant" };
        if !ok {
            return Err("the role of message with even index in the messages must be user or function");
        }
    }
    Ok(())
}

async fn chat_v1(
    State(state): State<Arc<MockState>>,
    Path(endpoint): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let fault = state.arrive();
    delay(&fault).await;
    let Some(token) = q.get("access_token") else {
        return v1_error(100, "Invalid parameter");
    };
    let expiry = state.issued_tokens.lock().unwrap_or_else(|p| p.into_inner()).get(token).copied();
    match expiry {
        None => return v1_error(110, "Access token invalid or no longer valid"),
        Some(t) if t <= Instant::now() => return v1_error(111, "Access token expired"),
        Some(_) => {}
    }
    if let Some(Fault::Status { status, code, .. }) = &fault {
        return v1_fault(*status, code.as_deref());
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return v1_error(336002, "Invalid JSON");
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return v1_error(336003, "messages is required");
    };
    if let Err(why) = check_messages(messages) {
        return v1_error(336003, why);
    }
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(text_of).unwrap_or_default();
    let tool_result = messages.last().filter(|m| m["role"] == "function").map(text_of);
    let first_tool = req.pointer("/functions/0/name").and_then(Value::as_str);
    let max_tokens = req.get("max_output_tokens").and_then(Value::as_u64);
    let answer = reply(LABEL, &endpoint, &last_user, tool_result.as_deref(), first_tool, max_tokens);
    let all: Vec<String> = messages.iter().map(text_of).collect();
    let system = req.get("system").and_then(Value::as_str).unwrap_or("");
    let prompt_tokens = (count_tokens(&all.join(" ")) + count_tokens(system)).max(1);
    let id = format!("as-mock{:08x}", state.requests());
    let created = 1_700_000_000u64;
    let usage = |completion: u64| json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion});
    if req.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let chunk = |n: usize,
                     result: &str,
                     is_end: bool,
                     finish: Option<&str>,
                     extra: Option<(&str, Value)>,
                     completion: u64| {
            let mut c = json!({"id": id, "object": "chat.completion", "created": created, "sentence_id": n,
                "is_end": is_end, "is_truncated": false, "result": result, "need_clear_history": false,
                "usage": usage(completion)});
            if let Some(f) = finish {
                c["finish_reason"] = f.into();
            }
            if let Some((k, v)) = extra {
                c[k] = v;
            }
            format!("data: {c}\n\n")
        };
        let mut events = Vec::new();
        match &answer {
            Reply::Text { pieces, truncated } => {
                for (i, p) in pieces.iter().enumerate() {
                    events.push(chunk(i, p, false, None, None, i as u64 + 1));
                }
                let finish = if *truncated { "length" } else { "normal" };
                events.push(chunk(pieces.len(), "", true, Some(finish), None, pieces.len() as u64));
            }
            Reply::Tool { name, arguments } => {
                let call = json!({"name": name, "arguments": arguments.to_string(), "thoughts": "I should call the function."});
                events.push(chunk(0, "", true, Some("function_call"), Some(("function_call", call)), 5));
            }
        }
        let drop_after = match fault {
            Some(Fault::DropStream { after_events }) => Some(after_events),
            Some(Fault::ErrorEvent { after_events: 0 }) => {
                // ERNIE reports a stream that fails at once as a JSON body, not as SSE.
                return v1_error(336100, "Server high load, please try again later");
            }
            Some(Fault::ErrorEvent { after_events }) => {
                // ❓ A failure after the first chunks: sent as one more `data:` line carrying
                // the error body (the form the SDK also checks for).
                events.truncate(after_events);
                events.push(format!(
                    "data: {}\n\n",
                    json!({"error_code": 336000, "error_msg": "Internal error"})
                ));
                None
            }
            _ => None,
        };
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-baidu-request-id", "mock-request-id")
            .body(sse_body(events, drop_after))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let mut out = json!({"id": id, "object": "chat.completion", "created": created, "is_truncated": false,
        "need_clear_history": false});
    match &answer {
        Reply::Text { pieces, truncated } => {
            out["result"] = pieces.concat().into();
            out["finish_reason"] = if *truncated { "length" } else { "normal" }.into();
            out["usage"] = usage(pieces.len() as u64);
        }
        Reply::Tool { name, arguments } => {
            out["result"] = "".into();
            out["finish_reason"] = "function_call".into();
            out["function_call"] = json!({"name": name, "arguments": arguments.to_string(), "thoughts": "I should call the function."});
            out["usage"] = usage(5);
        }
    }
    let mut r = axum::Json(out).into_response();
    r.headers_mut().insert("x-baidu-request-id", "mock-request-id".parse().expect("ascii"));
    r
}

/// A v2 error: a real status and `{"error": {code, message, type}, "id"}`.
fn v2_error(status: u16, code: &str, message: &str, kind: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message, "type": kind}, "id": "as-mock-error"});
    (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body))
        .into_response()
}

fn v2_fault(status: u16, code: Option<&str>) -> Response {
    match (status, code) {
        (429, Some("tpm")) => {
            v2_error(429, "tpm_rate_limit_exceeded", "TPM rate limit exceeded", "rate_limit_exceeded")
        }
        (429, _) => {
            v2_error(429, "rpm_rate_limit_exceeded", "RPM rate limit exceeded", "rate_limit_exceeded")
        }
        (400, Some("context_length")) => {
            v2_error(400, "tokens_too_long", "Prompt tokens too long", "invalid_request_error")
        }
        (400, _) => v2_error(400, "invalid_argument", "Invalid argument", "invalid_request_error"),
        (401 | 403, _) => v2_error(401, "access_denied", "Access denied", "access_denied"),
        (s, _) if s >= 500 => v2_error(s, "internal_error", "Internal error", "internal_error"),
        (s, _) => v2_error(s, "invalid_argument", "Invalid argument", "invalid_request_error"),
    }
}

async fn chat_v2(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = state.arrive();
    delay(&fault).await;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !state.key_ok(presented) {
        return v2_fault(401, None);
    }
    if let Some(Fault::Status { status, code, .. }) = &fault {
        return v2_fault(*status, code.as_deref());
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return v2_error(400, "malformed_json", "Malformed JSON", "invalid_request_error");
    };
    let (Some(model), Some(messages)) = (req["model"].as_str(), req["messages"].as_array()) else {
        return v2_error(400, "invalid_argument", "model and messages are required", "invalid_request_error");
    };
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(text_of).unwrap_or_default();
    let tool_result = messages.last().filter(|m| m["role"] == "tool").map(text_of);
    let first_tool = req.pointer("/tools/0/function/name").and_then(Value::as_str);
    let refuses = req["tool_choice"] == "none";
    let max_tokens = req["max_completion_tokens"].as_u64().or(req["max_tokens"].as_u64());
    let answer =
        reply(LABEL, model, &last_user, tool_result.as_deref(), first_tool.filter(|_| !refuses), max_tokens);
    let all: Vec<String> = messages.iter().map(text_of).collect();
    let prompt_tokens = count_tokens(&all.join(" ")).max(1);
    let id = format!("as-mock{:08x}", state.requests());
    let created = 1_700_000_000u64;
    let (message, finish, completion) = match &answer {
        Reply::Text { pieces, truncated } => (
            json!({"role": "assistant", "content": pieces.concat()}),
            if *truncated { "length" } else { "stop" },
            pieces.len() as u64,
        ),
        Reply::Tool { name, arguments } => (
            json!({"role": "assistant", "content": "", "tool_calls": [{"id": format!("call_mock{:04}", state.requests()),
                "type": "function", "function": {"name": name, "arguments": arguments.to_string()}}]}),
            "tool_calls",
            5,
        ),
    };
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion});
    if !req["stream"].as_bool().unwrap_or(false) {
        return axum::Json(json!({"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "flag": 0}], "usage": usage}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>, is_end: bool| {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "flag": 0, "is_end": is_end}]});
        format!("data: {c}\n\n")
    };
    let mut events = Vec::new();
    match &answer {
        Reply::Text { pieces, .. } => {
            for p in pieces {
                events.push(chunk(json!({"content": p}), None, false));
            }
        }
        Reply::Tool { .. } => {
            events.push(chunk(
                json!({"content": "", "tool_calls": message["tool_calls"].clone()}),
                None,
                false,
            ));
        }
    }
    events.push(chunk(json!({"content": ""}), Some(finish), true));
    if req.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true) {
        events.push(format!(
            "data: {}\n\n",
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage})
        ));
    }
    events.push("data: [DONE]\n\n".into());
    let drop_after = match fault {
        Some(Fault::DropStream { after_events }) => Some(after_events),
        Some(Fault::ErrorEvent { after_events }) => {
            events.truncate(after_events);
            events.push(format!(
                "data: {}\n\n",
                json!({"error": {"code": "internal_error", "message": "Internal error", "type": "internal_error"}, "id": id})
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_odd_message_rule_is_checked() {
        let m = |roles: &[&str]| roles.iter().map(|r| json!({"role": r, "content": "x"})).collect::<Vec<_>>();
        assert!(check_messages(&m(&["user"])).is_ok());
        assert!(check_messages(&m(&["user", "assistant", "function"])).is_ok());
        assert!(check_messages(&m(&["user", "assistant"])).is_err());
        assert!(check_messages(&m(&["assistant", "user", "assistant"])).is_err());
        assert!(check_messages(&m(&["user", "user", "user"])).is_err());
        assert!(check_messages(&[]).is_err());
    }
}
