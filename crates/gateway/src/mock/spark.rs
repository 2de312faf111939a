//! iFlytek Spark as `spark-api.xf-yun.com` serves it (see `providers::spark`): WebSocket routes
//! per version whose handshake checks the signed URL for real (the HMAC recomputed with the API
//! secret over the Host header, date and request line; a date more than 300 s off or a bad
//! signature refused before the upgrade with 403 / 401), then one request frame (app id and
//! domain checked) answered by frames with status 0/1/2, usage in the last, a function call when
//! functions are given, errors as a frame with `header.code` ≠ 0. Plus the OpenAI-compatible
//! HTTP API (`spark-api-open`), whose errors are `{code, message, sid}` inside a 200.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::{Fault, MockState, Reply, count_tokens, delay, reply, sse_body};
use crate::providers::spark_ws::signature;

const LABEL: &str = "mock-spark";
/// How far a request's `date` may be from the server's clock.
const MAX_SKEW: Duration = Duration::from_secs(300);

/// The WebSocket paths and the domains each accepts.
const ROUTES: &[(&str, &[&str])] = &[
    ("/v1.1/chat", &["lite", "general"]),
    ("/v2.1/chat", &["generalv2"]),
    ("/v3.1/chat", &["generalv3"]),
    ("/chat/pro-128k", &["pro-128k"]),
    ("/v3.5/chat", &["generalv3.5"]),
    ("/chat/max-32k", &["max-32k"]),
    ("/v4.0/chat", &["4.0Ultra"]),
];

pub(crate) fn router() -> Router<Arc<MockState>> {
    let mut router = Router::new().route("/v1/chat/completions", post(chat_http));
    for (path, _) in ROUTES {
        router = router.route(path, get(chat_ws));
    }
    router
}

fn handshake_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"message": message}))).into_response()
}

/// The fields of a decoded `authorization` (`api_key="…", algorithm="…", headers="…",
/// signature="…"`; the `hmac username="…"` form some clients send is accepted too).
fn auth_fields(decoded: &str) -> HashMap<String, String> {
    decoded
        .split(',')
        .filter_map(|part| {
            let (k, v) = part.trim().split_once('=')?;
            let k = k.trim().trim_start_matches("hmac ").trim();
            let k = if k == "username" { "api_key" } else { k };
            Some((k.to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

/// The handshake's checks, as the real gateway makes them.
#[allow(clippy::result_large_err)]
fn verify(
    state: &MockState,
    path: &str,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<(), Response> {
    let unauthorized = || handshake_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    let (Some(authorization), Some(date)) = (q.get("authorization"), q.get("date")) else {
        return Err(unauthorized());
    };
    let when = httpdate::parse_http_date(date).map_err(|_| {
        handshake_error(StatusCode::UNAUTHORIZED, "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication")
    })?;
    let now = SystemTime::now();
    let skew = now.duration_since(when).or_else(|_| when.duration_since(now)).unwrap_or_default();
    if skew > MAX_SKEW {
        return Err(handshake_error(
            StatusCode::FORBIDDEN,
            "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication",
        ));
    }
    let decoded =
        BASE64.decode(authorization).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(unauthorized)?;
    let fields = auth_fields(&decoded);
    if fields.get("algorithm").map(String::as_str) != Some("hmac-sha256")
        || fields.get("headers").map(String::as_str) != Some("host date request-line")
    {
        return Err(handshake_error(StatusCode::UNAUTHORIZED, "HMAC signature cannot be verified"));
    }
    if !state.key_ok(fields.get("api_key").map(String::as_str)) {
        return Err(handshake_error(StatusCode::UNAUTHORIZED, "HMAC signature cannot be verified"));
    }
    // The host the client connected to, as the signature must cover it.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(q.get("host").map(String::as_str))
        .unwrap_or("");
    let expected = state.secret.as_deref().and_then(|secret| signature(secret, host, date, path));
    let presented = fields.get("signature").map(String::as_str).unwrap_or("");
    let matches = expected.is_some_and(|e| {
        use subtle::ConstantTimeEq;
        e.len() == presented.len() && bool::from(e.as_bytes().ct_eq(presented.as_bytes()))
    });
    if !matches {
        return Err(handshake_error(StatusCode::UNAUTHORIZED, "HMAC signature does not match"));
    }
    Ok(())
}

async fn chat_ws(
    State(state): State<Arc<MockState>>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let fault = state.arrive();
    delay(&fault).await;
    let path = uri.path().to_string();
    if let Err(refused) = verify(&state, &path, &headers, &q) {
        return refused;
    }
    if let Some(Fault::Status { status: status @ (401 | 403), .. }) = fault {
        return handshake_error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
            "HMAC signature cannot be verified",
        );
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade.on_upgrade(move |socket| session(socket, state, path, fault))
}

fn sid() -> String {
    format!("cht000mock{:08x}@dx{:012x}", fastrand::u32(..), fastrand::u64(..) >> 16)
}

fn error_frame(sid: &str, code: i64, message: &str) -> String {
    json!({"header": {"code": code, "message": message, "sid": sid, "status": 2}}).to_string()
}

/// A queued HTTP-status fault in Spark's terms: an error code in a frame (or a body).
fn fault_code(status: u16, code: Option<&str>) -> (i64, &'static str) {
    match (status, code) {
        (429, Some("insufficient_quota" | "daily")) => {
            (11201, "AppIdQpsOverFlowError:(11201)daily limit exceeded")
        }
        (429, Some("tokens")) => (11200, "AppIdNoAuthError:(11200)tokens.total"),
        (429, Some("concurrency")) => (11203, "AppIdQpsOverFlowError:(11203)concurrency limit exceeded"),
        (429, _) => (11202, "AppIdQpsOverFlowError:(11202)qps limit exceeded"),
        (400, Some("context_length")) => {
            (10907, "token count exceeds the limit: history and question are too long")
        }
        (400, Some("content_filter")) => (10013, "the input contains sensitive content"),
        (400, _) => (10005, "invalid parameter value"),
        (401 | 403, _) => (11200, "AppIdNoAuthError:(11200)no authorisation"),
        (503, _) => (10110, "service busy, please try again later"),
        _ => (10012, "EngineInternalError"),
    }
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

/// One WebSocket conversation: the request frame in, the answer frames out, then close.
async fn session(mut socket: WebSocket, state: Arc<MockState>, path: String, fault: Option<Fault>) {
    let sid = sid();
    let first = tokio::time::timeout(Duration::from_secs(30), socket.recv()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        return;
    };
    let req: Value = match serde_json::from_str(text.as_str()) {
        Ok(v) => v,
        Err(_) => {
            send(&mut socket, error_frame(&sid, 10003, "invalid message format: not JSON")).await;
            return;
        }
    };
    let app_id = req.pointer("/header/app_id").and_then(Value::as_str).unwrap_or("");
    if state.app_id.as_deref().is_some_and(|want| want != app_id) {
        send(&mut socket, error_frame(&sid, 10313, "the app_id does not match the api_key")).await;
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    let domain = req.pointer("/parameter/chat/domain").and_then(Value::as_str).unwrap_or("");
    let allowed = ROUTES.iter().find(|(p, _)| *p == path).map_or(&[][..], |(_, d)| *d);
    if !allowed.contains(&domain) {
        send(&mut socket, error_frame(&sid, 11200, &format!("AppIdNoAuthError:(11200)domain.{domain}")))
            .await;
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    let Some(messages) =
        req.pointer("/payload/message/text").and_then(Value::as_array).filter(|m| !m.is_empty())
    else {
        send(&mut socket, error_frame(&sid, 10004, "schema error: payload.message.text is required")).await;
        return;
    };
    if let Some(Fault::Status { status, code, .. }) = &fault {
        let (code, message) = fault_code(*status, code.as_deref());
        send(&mut socket, error_frame(&sid, code, message)).await;
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    let text_of = |m: &Value| m.get("content").and_then(Value::as_str).unwrap_or("").to_string();
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(text_of).unwrap_or_default();
    let first_tool = req.pointer("/payload/functions/text/0/name").and_then(Value::as_str);
    let max_tokens = req.pointer("/parameter/chat/max_tokens").and_then(Value::as_u64);
    // The frame has no function-result turn: a client gives the result as a user turn
    // (`[name returned] result`), which the mock model reads as such.
    let last = messages.last().filter(|m| m["role"] == "user").map(text_of).unwrap_or_default();
    let tool_result =
        last.strip_prefix('[').and_then(|r| r.split_once(" returned] ")).map(|(_, result)| result);
    let answer = reply(LABEL, domain, &last_user, tool_result, first_tool, max_tokens);
    let all: Vec<String> = messages.iter().map(text_of).collect();
    let prompt_tokens = count_tokens(&all.join(" ")).max(1);
    let question_tokens = count_tokens(&last_user).max(1);
    let frame = |status: u8, seq: usize, item: Value, completion: Option<u64>| {
        let mut f = json!({"header": {"code": 0, "message": "Success", "sid": sid, "status": status},
            "payload": {"choices": {"status": status, "seq": seq, "text": [item]}}});
        if let Some(c) = completion {
            f["payload"]["usage"] = json!({"text": {"question_tokens": question_tokens, "prompt_tokens": prompt_tokens,
                "completion_tokens": c, "total_tokens": prompt_tokens + c}});
        }
        f.to_string()
    };
    let text_item = |content: &str| json!({"content": content, "role": "assistant", "index": 0});
    let mut frames = Vec::new();
    match &answer {
        Reply::Text { pieces, .. } => {
            for (i, p) in pieces.iter().enumerate() {
                frames.push(frame(if i == 0 { 0 } else { 1 }, i, text_item(p), None));
            }
            frames.push(frame(2, pieces.len(), text_item(""), Some(pieces.len() as u64)));
        }
        Reply::Tool { name, arguments } => {
            frames.push(frame(0, 0, text_item(""), None));
            let call = json!({"content": "", "role": "assistant", "content_type": "function_call",
                "function_call": {"arguments": arguments.to_string(), "name": name}, "index": 0});
            frames.push(frame(2, 1, call, Some(5)));
        }
    }
    let (cut_after, error_after) = match fault {
        Some(Fault::DropStream { after_events }) => (Some(after_events), None),
        Some(Fault::ErrorEvent { after_events }) => (None, Some(after_events)),
        _ => (None, None),
    };
    for (i, f) in frames.into_iter().enumerate() {
        if cut_after == Some(i) {
            // Gone without a closing handshake, as a dropped connection is.
            return;
        }
        if error_after == Some(i) {
            send(&mut socket, error_frame(&sid, 10012, "EngineInternalError:(10012)internal error")).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        if !send(&mut socket, f).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// The HTTP API's error: `{code, message, sid}` inside a 200 (except a bad key: 401).
fn http_error(status: StatusCode, code: i64, message: &str) -> Response {
    (status, axum::Json(json!({"code": code, "message": message, "sid": sid().replace("cht", "cha")})))
        .into_response()
}

async fn chat_http(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = state.arrive();
    delay(&fault).await;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !state.key_ok(presented) {
        // ❓ The status and body of a wrong APIPassword.
        return http_error(StatusCode::UNAUTHORIZED, 11200, "AppIdNoAuthError: the APIPassword is not valid");
    }
    if let Some(Fault::Status { status, code, .. }) = &fault {
        let (code, message) = fault_code(*status, code.as_deref());
        return http_error(StatusCode::OK, code, message);
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return http_error(StatusCode::OK, 10003, "invalid message format: not JSON");
    };
    let (Some(model), Some(messages)) = (req["model"].as_str(), req["messages"].as_array()) else {
        return http_error(StatusCode::OK, 10004, "schema error: model and messages are required");
    };
    let text_of = |m: &Value| m.get("content").and_then(Value::as_str).unwrap_or("").to_string();
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(text_of).unwrap_or_default();
    let tool_result = messages.last().filter(|m| m["role"] == "tool").map(text_of);
    let first_tool = req
        .pointer("/tools/0/function/name")
        .and_then(Value::as_str)
        .filter(|_| req["tool_choice"] != "none");
    let answer =
        reply(LABEL, model, &last_user, tool_result.as_deref(), first_tool, req["max_tokens"].as_u64());
    let all: Vec<String> = messages.iter().map(text_of).collect();
    let prompt_tokens = count_tokens(&all.join(" ")).max(1);
    let sid = sid().replace("cht", "cha");
    let (message, finish, completion) = match &answer {
        Reply::Text { pieces, truncated } => (
            json!({"role": "assistant", "content": pieces.concat()}),
            if *truncated { "length" } else { "stop" },
            pieces.len() as u64,
        ),
        // ❓ The exact tool_calls layout of the HTTP API (OpenAI's is used).
        Reply::Tool { name, arguments } => (
            json!({"role": "assistant", "content": "", "tool_calls": [{"id": format!("call_mock{:04}", state.requests()), "type": "function",
                "function": {"name": name, "arguments": arguments.to_string()}}]}),
            "tool_calls",
            5,
        ),
    };
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion});
    if !req["stream"].as_bool().unwrap_or(false) {
        return axum::Json(json!({"code": 0, "message": "Success", "sid": sid,
            "choices": [{"message": message, "index": 0, "finish_reason": finish}], "usage": usage}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>, usage: Option<&Value>| {
        let mut c = json!({"code": 0, "message": "Success", "sid": sid, "id": sid, "created": 1_700_000_000u64,
            "choices": [{"delta": delta, "index": 0, "finish_reason": finish}]});
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        format!("data: {c}\n\n")
    };
    let mut events = Vec::new();
    match &answer {
        Reply::Text { pieces, .. } => {
            for p in pieces {
                events.push(chunk(json!({"role": "assistant", "content": p}), None, None));
            }
        }
        Reply::Tool { .. } => {
            let calls: Vec<Value> = message["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let mut c = c.clone();
                    c["index"] = 0.into();
                    c
                })
                .collect();
            events.push(chunk(json!({"role": "assistant", "content": "", "tool_calls": calls}), None, None));
        }
    }
    events.push(chunk(json!({"role": "assistant", "content": ""}), Some(finish), Some(&usage)));
    events.push("data: [DONE]\n\n".into());
    let drop_after = match fault {
        Some(Fault::DropStream { after_events }) => Some(after_events),
        Some(Fault::ErrorEvent { after_events }) => {
            events.truncate(after_events);
            events.push(format!(
                "data: {}\n\n",
                json!({"code": 10012, "message": "EngineInternalError", "sid": sid})
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
    fn both_authorization_forms_are_read() {
        let f = auth_fields(
            r#"api_key="k1", algorithm="hmac-sha256",         headers="host date request-line", signature="c2ln""#,
        );
        assert_eq!((f["api_key"].as_str(), f["signature"].as_str()), ("k1", "c2ln"));
        assert_eq!(f["headers"], "host date request-line");
        let f = auth_fields(
            r#"hmac username="k2", algorithm="hmac-sha256", headers="host date request-line", signature="x==""#,
        );
        assert_eq!((f["api_key"].as_str(), f["signature"].as_str()), ("k2", "x=="));
    }
}
