//! Gemini as `generativelanguage.googleapis.com` serves it: `models/{model}:generateContent` and
//! `:streamGenerateContent` (SSE with `alt=sse`, else one JSON array sent piece by piece) under
//! `v1beta` and `v1`; the key in `x-goog-api-key` or `?key=` (a wrong one is a 400 with an
//! `API_KEY_INVALID` detail, a missing one a 403); camelCase or snake_case fields; function calls
//! without ids; cumulative `usageMetadata` in every chunk; google.rpc errors whose 429 carries a
//! `RetryInfo` detail and no `Retry-After` header.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Fault, MockState, Reply, count_tokens, delay, reply, sse_body};

pub(crate) fn router() -> Router<Arc<MockState>> {
    Router::new().route("/v1beta/models/{call}", post(generate)).route("/v1/models/{call}", post(generate))
}

/// The canonical google.rpc status name of an HTTP status.
fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ if code >= 500 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

/// A google.rpc status answer: `{"error": {code, message, status, details?}}`.
pub(crate) fn google_error(code: u16, message: &str, details: Vec<Value>) -> Response {
    let mut error = json!({"code": code, "message": message, "status": status_name(code)});
    if !details.is_empty() {
        error["details"] = details.into();
    }
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({"error": error}))).into_response()
}

/// `1500` ms as a protobuf Duration: `"1.5s"`.
fn duration_text(ms: u64) -> String {
    format!("{}s", ms as f64 / 1000.0)
}

/// The answers Google gives to a key: none (403), a wrong one (400 with `API_KEY_INVALID`).
/// The key may come in the `x-goog-api-key` header or the `key` query parameter.
pub(crate) fn check_key(
    state: &MockState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Option<Response> {
    let presented =
        headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()).or(query.get("key").map(String::as_str));
    match presented {
        None => Some(google_error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            vec![],
        )),
        Some(key) if !state.key_ok(Some(key)) => Some(google_error(
            400,
            "API key not valid. Please pass a valid API key.",
            vec![
                json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                       "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}),
                json!({"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                       "message": "API key not valid. Please pass a valid API key."}),
            ],
        )),
        Some(_) => None,
    }
}

/// The error an injected `Fault::Status` stands for. `code` picks a variant: `quota_per_day`
/// (alias `insufficient_quota`: a daily quota, whose hint is not worth waiting for),
/// `context_length`.
pub(crate) fn fault_response(
    model: &str,
    status: u16,
    retry_after_ms: Option<u64>,
    code: Option<&str>,
) -> Response {
    let quota = |quota_id: &str, delay_ms: u64| {
        vec![
            json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": quota_id, "quotaDimensions": {"location": "global", "model": model}, "quotaValue": "15"}]}),
            json!({"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                "description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}),
            json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": duration_text(delay_ms)}),
        ]
    };
    let exceeded = "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.";
    match (status, code) {
        (429, Some("quota_per_day" | "insufficient_quota")) => {
            google_error(429, exceeded, quota("GenerateRequestsPerDayPerProjectPerModel-FreeTier", 45_837))
        }
        (429, _) => google_error(
            429,
            exceeded,
            quota("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", retry_after_ms.unwrap_or(1000)),
        ),
        (400, Some("context_length")) => google_error(
            400,
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            vec![],
        ),
        (400, _) => google_error(400, "Request contains an invalid argument.", vec![]),
        (401, _) => google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            vec![],
        ),
        (403, _) => google_error(403, "The caller does not have permission", vec![]),
        (404, _) => {
            google_error(404, &format!("models/{model} is not found for API version v1beta."), vec![])
        }
        (503, _) => google_error(503, "The model is overloaded. Please try again later.", vec![]),
        (504, _) => google_error(504, "Deadline expired before operation could complete.", vec![]),
        (s, _) if s >= 500 => google_error(
            s,
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            vec![],
        ),
        (s, _) => google_error(s, "The request was refused.", vec![]),
    }
}

/// A field by its camelCase name, or its snake_case one (the API takes both).
pub(crate) fn field<'a>(v: &'a Value, camel: &str) -> Option<&'a Value> {
    if let Some(found) = v.get(camel) {
        return Some(found);
    }
    let mut snake = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    v.get(snake.as_str())
}

fn parts_text(content: &Value) -> String {
    field(content, "parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect()
}

/// What a tool answered, as text: the lone `output` (or `result`, `content`) string the SDKs and
/// gateways wrap results in, else the whole response object.
fn function_result(response: &Value) -> String {
    match response.as_object() {
        Some(o) if o.len() == 1 => match ["output", "result", "content"].iter().find_map(|k| o.get(*k)) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => response.to_string(),
        },
        _ => response.to_string(),
    }
}

/// A `functionResponse` must answer a `functionCall` of the model turn just before it, by name
/// (there are no call ids): a response naming another function is refused.
fn unmatched_function_response(contents: &[Value]) -> Option<Response> {
    let names = |c: &Value, kind: &str| -> Vec<String> {
        field(c, "parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| field(p, kind)?.get("name")?.as_str().map(String::from))
            .collect()
    };
    for (i, c) in contents.iter().enumerate() {
        let answered = names(c, "functionResponse");
        if answered.is_empty() {
            continue;
        }
        let called = if i > 0 { names(&contents[i - 1], "functionCall") } else { Vec::new() };
        if let Some(stray) = answered.iter().find(|n| !called.contains(n)) {
            return Some(google_error(
                400,
                &format!(
                    "* GenerateContentRequest.contents[{i}]: function response {stray:?} answers no function call of the previous turn.\n"
                ),
                vec![],
            ));
        }
    }
    None
}

async fn generate(
    State(state): State<Arc<MockState>>,
    Path(call): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = state.arrive();
    delay(&fault).await;
    if let Some(refused) = check_key(&state, &headers, &query) {
        return refused;
    }
    let (model, method) = call.rsplit_once(':').unwrap_or((call.as_str(), ""));
    let streaming = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return google_error(404, &format!("Method {method:?} of models/{model} is not found."), vec![]),
    };
    if let Some(Fault::Status { status, retry_after_ms, code }) = &fault {
        return fault_response(model, *status, *retry_after_ms, code.as_deref());
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return google_error(400, "Invalid JSON payload received.", vec![]);
    };
    let Some(contents) = field(&req, "contents").and_then(Value::as_array).filter(|c| !c.is_empty()) else {
        return google_error(400, "* GenerateContentRequest.contents: contents is not specified\n", vec![]);
    };
    for (i, c) in contents.iter().enumerate() {
        if let Some(role) = c.get("role").and_then(Value::as_str)
            && role != "user"
            && role != "model"
        {
            return google_error(400, "Please use a valid role: user, model.", vec![]);
        }
        if field(c, "parts").and_then(Value::as_array).is_none_or(|p| p.is_empty()) {
            return google_error(
                400,
                &format!("* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"),
                vec![],
            );
        }
    }
    if let Some(refused) = unmatched_function_response(contents) {
        return refused;
    }
    let is_user = |c: &&Value| c.get("role").and_then(Value::as_str).is_none_or(|r| r == "user");
    let last_user =
        contents.iter().rev().filter(is_user).map(parts_text).find(|t| !t.is_empty()).unwrap_or_default();
    let tool_result = contents.last().filter(is_user).and_then(|c| {
        field(c, "parts")?
            .as_array()?
            .iter()
            .find_map(|p| field(p, "functionResponse"))
            .map(|r| function_result(r.get("response").unwrap_or(&Value::Null)))
    });
    let declarations: Vec<&Value> = field(&req, "tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| field(t, "functionDeclarations").and_then(Value::as_array))
        .flatten()
        .collect();
    let calling = field(&req, "toolConfig").and_then(|c| field(c, "functionCallingConfig"));
    let mode = calling.and_then(|c| c.get("mode")).and_then(Value::as_str).unwrap_or("AUTO");
    let allowed =
        calling.and_then(|c| field(c, "allowedFunctionNames")).and_then(|a| a.get(0)).and_then(Value::as_str);
    let first_tool =
        allowed.or_else(|| declarations.first().and_then(|d| d.get("name")).and_then(Value::as_str));
    let config = field(&req, "generationConfig");
    let max_tokens = config.and_then(|c| field(c, "maxOutputTokens")).and_then(Value::as_u64);
    let model_name = model.trim_start_matches("models/");
    let answer = reply(
        "mock-gemini",
        model_name,
        &last_user,
        tool_result.as_deref(),
        first_tool.filter(|_| mode != "NONE"),
        max_tokens,
    );
    let system = field(&req, "systemInstruction").map(parts_text).unwrap_or_default();
    let all: String = contents.iter().map(parts_text).collect::<Vec<_>>().join(" ");
    let prompt_tokens = (count_tokens(&all) + count_tokens(&system)).max(1);
    let response_id = format!("mock{:08x}", state.requests());
    let wants_sse = query.get("alt").is_some_and(|a| a == "sse");
    let chunks = chunks(&answer, model_name, &response_id, prompt_tokens, streaming);
    if !streaming {
        return axum::Json(chunks.into_iter().next().unwrap_or(Value::Null)).into_response();
    }
    stream(chunks, wants_sse, &fault)
}

fn safety_ratings() -> Value {
    let categories = [
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
    ];
    categories.iter().map(|c| json!({"category": c, "probability": "NEGLIGIBLE"})).collect()
}

/// The answer as GenerateContentResponses: one whole, or one per piece for a stream, each with
/// only its new text and the usage so far; the last with the finish reason.
fn chunks(answer: &Reply, model: &str, response_id: &str, prompt_tokens: u64, streaming: bool) -> Vec<Value> {
    let response = |parts: Value, finish: Option<&str>, candidates_tokens: u64| {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(reason) = finish {
            candidate["finishReason"] = reason.into();
            candidate["safetyRatings"] = safety_ratings();
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": candidates_tokens,
                              "totalTokenCount": prompt_tokens + candidates_tokens},
            "modelVersion": model, "responseId": response_id,
        })
    };
    match answer {
        Reply::Tool { name, arguments } => {
            vec![response(json!([{"functionCall": {"name": name, "args": arguments}}]), Some("STOP"), 5)]
        }
        Reply::Text { pieces, truncated } => {
            let finish = if *truncated { "MAX_TOKENS" } else { "STOP" };
            if !streaming {
                return vec![response(json!([{"text": pieces.concat()}]), Some(finish), pieces.len() as u64)];
            }
            let last = pieces.len().saturating_sub(1);
            pieces
                .iter()
                .enumerate()
                .map(|(i, p)| response(json!([{"text": p}]), (i == last).then_some(finish), i as u64 + 1))
                .collect()
        }
    }
}

/// A stream: SSE events (`alt=sse`), else a JSON array whose elements arrive one by one.
fn stream(chunks: Vec<Value>, sse: bool, fault: &Option<Fault>) -> Response {
    let overloaded = json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}});
    let mut items: Vec<Value> = chunks;
    let drop_after = match fault {
        Some(Fault::DropStream { after_events }) => Some(*after_events),
        Some(Fault::ErrorEvent { after_events }) => {
            items.truncate(*after_events);
            items.push(overloaded);
            None
        }
        _ => None,
    };
    let (events, content_type) = if sse {
        (items.iter().map(|c| format!("data: {c}\r\n\r\n")).collect::<Vec<_>>(), "text/event-stream")
    } else {
        let n = items.len();
        let events = items
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let open = if i == 0 { "[" } else { "\n,\r\n" };
                let close = if i + 1 == n { "]" } else { "" };
                format!("{open}{c}{close}")
            })
            .collect();
        (events, "application/json")
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(sse_body(events, drop_after))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_either_spelling() {
        let v = json!({"system_instruction": 1, "generationConfig": 2});
        assert_eq!(field(&v, "systemInstruction"), Some(&json!(1)));
        assert_eq!(field(&v, "generationConfig"), Some(&json!(2)));
        assert_eq!(duration_text(1500), "1.5s");
        assert_eq!(duration_text(2000), "2s");
        assert_eq!(function_result(&json!({"output": "sunny"})), "sunny");
        assert_eq!(function_result(&json!({"a": 1, "b": 2})), "{\"a\":1,\"b\":2}");
    }

    #[test]
    fn streams_carry_cumulative_usage_and_end_with_the_finish_reason() {
        let answer = Reply::Text { pieces: vec!["a ".into(), "b".into()], truncated: true };
        let c = chunks(&answer, "gemini-pro", "r", 3, true);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["usageMetadata"]["candidatesTokenCount"], 1);
        assert!(c[0]["candidates"][0].get("finishReason").is_none());
        assert_eq!(c[1]["usageMetadata"]["candidatesTokenCount"], 2);
        assert_eq!(c[1]["candidates"][0]["finishReason"], "MAX_TOKENS");
    }
}
