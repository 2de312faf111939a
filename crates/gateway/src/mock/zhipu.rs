//! Zhipu AI as `open.bigmodel.cn` serves it (see `providers::zhipu` for the format). The mock's
//! key is `{id}.{secret}`; a request carries either that key or a JWT, which is verified for real:
//! HS256 signature under the secret, the `sign_type: "SIGN"` header, `api_key` equal to the id,
//! `exp` in milliseconds still ahead (an `exp` in seconds is long past: "expired", as upstream).
//! v4: OpenAI-like answers and `[DONE]`-terminated chunks with usage in the last, errors
//! `{"error": {"code": "1302", message}}`. v3: `invoke` (errors inside a 200 ⚠️) and `sse-invoke`
//! (`event: add` / `event: finish` + `meta:` usage / `event: error`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Fault, MockState, Reply, count_tokens, delay, reply, sse_body};
use crate::providers::zhipu::V4_PATH;
use crate::providers::zhipu_v3::V3_PREFIX;

pub(crate) fn router() -> Router<Arc<MockState>> {
    Router::new()
        .route(V4_PATH, post(v4_chat))
        .route(&format!("{V3_PREFIX}/{{model}}/{{action}}"), post(v3_invoke))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Why a request's credentials were refused: Zhipu's code and message.
type Refusal = (u16, &'static str);

const MISSING: Refusal = (1001, "Header中未收到Authentication参数，无法进行身份验证。");
const INVALID: Refusal = (1002, "Authentication Token非法，请确认Authentication Token正确传递。");
const EXPIRED: Refusal = (1003, "Authentication Token已过期，请重新生成/获取。");

/// Checks the `Authorization` header (with or without `Bearer `): the raw key, or a JWT signed
/// with its secret.
fn authenticate(state: &MockState, headers: &HeaderMap) -> Result<(), Refusal> {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or(MISSING)?;
    let presented = value.strip_prefix("Bearer ").unwrap_or(value).trim();
    if presented.is_empty() {
        return Err(MISSING);
    }
    if state.key_ok(Some(presented)) {
        return Ok(());
    }
    let (id, secret) = state.key.split_once('.').ok_or(INVALID)?;
    let mut parts = presented.split('.');
    let (Some(head), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(INVALID);
    };
    let decode =
        |part: &str| URL_SAFE_NO_PAD.decode(part).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let (Some(head_json), Some(claims_json)) = (decode(head), decode(claims)) else {
        return Err(INVALID);
    };
    if head_json["alg"] != "HS256" || head_json["sign_type"] != "SIGN" {
        return Err(INVALID);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| INVALID)?;
    mac.update(format!("{head}.{claims}").as_bytes());
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| INVALID)?;
    // Constant-time comparison.
    mac.verify_slice(&signature).map_err(|_| INVALID)?;
    if claims_json["api_key"] != id {
        return Err(INVALID);
    }
    match claims_json["exp"].as_u64() {
        Some(exp) if exp > now_ms() => Ok(()),
        _ => Err(EXPIRED),
    }
}

/// The status, code and message Zhipu answers an injected fault with.
fn fault_error(status: u16, code: Option<&str>) -> (u16, u16, &'static str) {
    match (status, code) {
        (_, Some("1113")) => (429, 1113, "您的账户已欠费，请充值后重试。"),
        (_, Some("1301")) => (
            400,
            1301,
            "系统检测到输入或生成内容可能包含不安全或敏感内容，请您避免输入易产生敏感内容的提示语，感谢您的配合。",
        ),
        (_, Some("context_length" | "1261")) => (400, 1261, "Prompt 超长"),
        (429, Some("1305")) => (429, 1305, "当前API请求过多，请稍后重试。"),
        (429, _) => (429, 1302, "您当前使用该API的并发数过高，请降低并发，或联系客服增加限额。"),
        (401, _) => (401, INVALID.0, INVALID.1),
        (404, _) => (400, 1211, "模型不存在，请检查模型代码。"),
        (s, _) if s >= 500 => (s, 500, "内部错误。"),
        (s, _) => (s, 1214, "参数错误。"),
    }
}

fn v4_error(status: u16, code: u16, message: &str, retry_after_ms: Option<u64>) -> Response {
    let body = json!({"error": {"code": code.to_string(), "message": message}});
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body))
            .into_response();
    // Zhipu sends no retry hint; the mock adds one only when a fault asks for it.
    if let Some(ms) = retry_after_ms {
        response.headers_mut().insert("retry-after", ms.div_ceil(1000).into());
        response.headers_mut().insert("retry-after-ms", ms.into());
    }
    response
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

fn sse_response(events: Vec<String>, drop_after: Option<usize>) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream;charset=UTF-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(sse_body(events, drop_after))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn v4_chat(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = state.arrive();
    delay(&fault).await;
    if let Err((code, message)) = authenticate(&state, &headers) {
        return v4_error(401, code, message, None);
    }
    if let Some(Fault::Status { status, retry_after_ms, code }) = &fault {
        let (status, code, message) = fault_error(*status, code.as_deref());
        return v4_error(status, code, message, *retry_after_ms);
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return v4_error(400, 1210, "API 调用参数有误，请检查文档。", None);
    };
    let (Some(model), Some(messages)) = (req["model"].as_str(), req["messages"].as_array()) else {
        return v4_error(400, 1214, "model 与 messages 不能为空。", None);
    };
    if ["temperature", "top_p"].iter().any(|k| req[*k].as_f64().is_some_and(|v| !(0.0..=1.0).contains(&v))) {
        return v4_error(400, 1214, "temperature 与 top_p 取值范围为 [0, 1]。", None);
    }
    if req.get("tool_choice").is_some_and(|c| c != "auto") {
        return v4_error(400, 1214, "tool_choice 只支持 auto。", None);
    }
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(text_of).unwrap_or_default();
    let tool_result = messages.last().filter(|m| m["role"] == "tool").map(text_of);
    let first_tool = req["tools"]
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| t.pointer("/function/name"))
        .and_then(Value::as_str);
    let answer = reply(
        "mock-zhipu",
        model,
        &last_user,
        tool_result.as_deref(),
        first_tool,
        req["max_tokens"].as_u64(),
    );
    let prompt_tokens = count_tokens(&messages.iter().map(text_of).collect::<Vec<_>>().join(" ")).max(1);
    let id = format!("2024{:016}", state.requests());
    let (message, finish, completion_tokens) = match &answer {
        Reply::Text { pieces, truncated } => (
            json!({"role": "assistant", "content": pieces.concat()}),
            if *truncated { "length" } else { "stop" },
            pieces.len() as u64,
        ),
        Reply::Tool { name, arguments } => (
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{id}"), "index": 0, "type": "function",
                "function": {"name": name, "arguments": arguments.to_string()}}]}),
            "tool_calls",
            5,
        ),
    };
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": 0}});
    if !req["stream"].as_bool().unwrap_or(false) {
        return axum::Json(json!({
            "id": id, "request_id": id, "created": 1_700_000_000u64, "model": model,
            "choices": [{"index": 0, "finish_reason": finish, "message": message}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>, usage: Option<&Value>| {
        let mut choice = json!({"index": 0, "delta": delta});
        if let Some(f) = finish {
            choice["finish_reason"] = f.into();
        }
        let mut c = json!({"id": id, "created": 1_700_000_000u64, "model": model, "choices": [choice]});
        if let Some(u) = usage {
            c["usage"] = u.clone();
        }
        format!("data: {c}\n\n")
    };
    let mut events = Vec::new();
    match &answer {
        Reply::Text { pieces, .. } => events
            .extend(pieces.iter().map(|p| chunk(json!({"role": "assistant", "content": p}), None, None))),
        // GLM sends a tool call whole, in one chunk (⚠️ as observed by client code).
        Reply::Tool { .. } => {
            events.push(chunk(json!({"role": "assistant", "tool_calls": message["tool_calls"]}), None, None))
        }
    }
    events.push(chunk(json!({"role": "assistant", "content": ""}), Some(finish), Some(&usage)));
    events.push("data: [DONE]\n\n".into());
    let drop_after = match &fault {
        Some(Fault::DropStream { after_events }) => Some(*after_events),
        Some(Fault::ErrorEvent { after_events }) => {
            // An inference failure mid-stream shows as this finish reason, without an error code.
            events.truncate(*after_events);
            events.push(chunk(
                json!({"role": "assistant", "content": ""}),
                Some("network_error"),
                Some(&usage),
            ));
            events.push("data: [DONE]\n\n".into());
            None
        }
        _ => None,
    };
    sse_response(events, drop_after)
}

/// A v3 answer envelope: `{code, msg, success, data}` — errors too, inside a 200 (⚠️).
fn v3_envelope(code: u16, msg: &str, data: Option<Value>) -> Value {
    let mut v = json!({"code": code, "msg": msg, "success": code == 200});
    if let Some(d) = data {
        v["data"] = d;
    }
    v
}

fn v3_error(status: u16, code: u16, message: &str, retry_after_ms: Option<u64>) -> Response {
    // Server failures came as real 5xx; the rest inside a 200 (⚠️ not confirmed).
    let status = if status >= 500 { status } else { 200 };
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(v3_envelope(code, message, None)),
    )
        .into_response();
    if let Some(ms) = retry_after_ms {
        response.headers_mut().insert("retry-after", ms.div_ceil(1000).into());
        response.headers_mut().insert("retry-after-ms", ms.into());
    }
    response
}

async fn v3_invoke(
    State(state): State<Arc<MockState>>,
    Path((model, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let stream = match action.as_str() {
        "invoke" => false,
        "sse-invoke" => true,
        _ => return v3_error(404, 1222, "API 不存在。", None),
    };
    let fault = state.arrive();
    delay(&fault).await;
    if let Err((code, message)) = authenticate(&state, &headers) {
        return v3_error(401, code, message, None);
    }
    if let Some(Fault::Status { status, retry_after_ms, code }) = &fault {
        let (status, code, message) = fault_error(*status, code.as_deref());
        return v3_error(status, code, message, *retry_after_ms);
    }
    let Some(prompt) =
        serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["prompt"].as_array().cloned())
    else {
        return v3_error(400, 1214, "prompt 不能为空。", None);
    };
    if prompt.iter().any(|m| m["role"] != "user" && m["role"] != "assistant") {
        return v3_error(400, 1214, "prompt 的 role 只能是 user 或 assistant。", None);
    }
    let last_user = prompt.iter().rev().find(|m| m["role"] == "user").map(text_of).unwrap_or_default();
    let Reply::Text { pieces, .. } = reply("mock-zhipu", &model, &last_user, None, None, None) else {
        return v3_error(500, 500, "内部错误。", None);
    };
    let prompt_tokens = count_tokens(&prompt.iter().map(text_of).collect::<Vec<_>>().join(" ")).max(1);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": pieces.len(), "total_tokens": prompt_tokens + pieces.len() as u64});
    let task_id = format!("7{:017}", state.requests());
    if !stream {
        // The content arrives as a JSON string literal, quotes included.
        let quoted = Value::String(pieces.concat()).to_string();
        return axum::Json(v3_envelope(
            200,
            "操作成功",
            Some(json!({
                "request_id": task_id, "task_id": task_id, "task_status": "SUCCESS",
                "choices": [{"role": "assistant", "content": quoted}], "usage": usage,
            })),
        ))
        .into_response();
    }
    let data_lines = |text: &str| text.split('\n').map(|l| format!("data: {l}\n")).collect::<String>();
    let mut events: Vec<String> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| format!("id: {}\nevent: add\n{}\n", i + 1, data_lines(p)))
        .collect();
    let meta = json!({"task_status": "SUCCESS", "usage": usage, "task_id": task_id, "request_id": task_id});
    events.push(format!("id: {}\nevent: finish\n{}meta: {meta}\n\n", pieces.len() + 1, data_lines("")));
    let drop_after = match &fault {
        Some(Fault::DropStream { after_events }) => Some(*after_events),
        Some(Fault::ErrorEvent { after_events }) => {
            events.truncate(*after_events);
            events.push(format!("id: {}\nevent: error\ndata: 系统繁忙，请稍后再试。\n\n", events.len() + 1));
            None
        }
        _ => None,
    };
    sse_response(events, drop_after)
}
