//! Anthropic's legacy Text Completions API (`POST /v1/complete`) as `api.anthropic.com` served
//! it for Claude 1 and 2: `x-api-key` and `anthropic-version` required, the prompt validated
//! (a `\n\nHuman:` turn first after optional system text, an `\n\nAssistant:` turn last, refused
//! with 400 otherwise), `{type:"completion", completion, stop_reason}` answers without usage,
//! `completion` / `ping` stream events, and the Messages API's error envelope (also as an `error`
//! event after a 200). Merged with the Messages mock, like the real host.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::anthropic::error;
use super::{Fault, MockState, Reply, delay, reply, sse_body};

const HUMAN: &str = "\n\nHuman:";
const ASSISTANT: &str = "\n\nAssistant:";
/// The model stops there on its own: an answer that ends naturally reports this stop sequence.
const BUILT_IN_STOP: &str = HUMAN;

pub(crate) fn router() -> Router<Arc<MockState>> {
    Router::new().route("/v1/complete", post(complete))
}

/// The Messages mock's faults, but with the Claude 2 context limit.
fn fault_response(status: u16, retry_after_ms: Option<u64>, code: Option<&str>) -> Response {
    match (status, code) {
        (400, Some("context_length")) => {
            error(400, "invalid_request_error", "prompt is too long: 100125 tokens > 99999 maximum", None)
        }
        _ => super::anthropic::fault_response(status, retry_after_ms, code),
    }
}

/// The API's prompt validation: the text of the last Human turn, or the API's 400 message (the
/// backslashes are literal in its wording).
fn last_human_turn(prompt: &str) -> Result<&str, &'static str> {
    let first_human = prompt.find(HUMAN);
    let first_assistant = prompt.find(ASSISTANT);
    let starts_right = match (first_human, first_assistant) {
        (Some(h), Some(a)) => h < a,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if !starts_right {
        return Err(r#"prompt must start with "\n\nHuman:" turn after an optional system prompt"#);
    }
    let last_human = prompt.rfind(HUMAN).unwrap_or(0);
    let last_assistant = prompt.rfind(ASSISTANT).filter(|&a| a > last_human);
    if last_assistant.is_none() {
        return Err(r#"prompt must end with "\n\nAssistant:" turn"#);
    }
    // The Human turn runs up to the next Assistant turn.
    let turn = &prompt[last_human + HUMAN.len()..];
    let end = turn.find(ASSISTANT).unwrap_or(turn.len());
    Ok(turn[..end].trim())
}

/// The text cut before the first stop sequence found in it, and that sequence.
fn cut_at_stop<'a>(text: &str, stops: &'a [String]) -> Option<(String, &'a str)> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s.as_str())))
        .min_by_key(|&(at, _)| at)
        .map(|(at, s)| (text[..at].to_string(), s))
}

async fn complete(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
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
        return error(400, "invalid_request_error", "model: field required", None);
    };
    let Some(prompt) = req["prompt"].as_str() else {
        return error(400, "invalid_request_error", "prompt: field required", None);
    };
    let Some(max_tokens) = req["max_tokens_to_sample"].as_u64() else {
        return error(400, "invalid_request_error", "max_tokens_to_sample: field required", None);
    };
    let last_human = match last_human_turn(prompt) {
        Ok(text) => text,
        Err(message) => return error(400, "invalid_request_error", message, None),
    };
    let stops: Vec<String> = req["stop_sequences"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
        .unwrap_or_default();
    let Reply::Text { pieces, truncated } =
        reply("mock-anthropic", model, last_human, None, None, Some(max_tokens))
    else {
        return error(500, "api_error", "Internal server error", None); // no tools: cannot happen
    };
    let (pieces, stop_reason, stop) = match cut_at_stop(&pieces.concat(), &stops) {
        Some((kept, stop)) => {
            (kept.split_inclusive(' ').map(String::from).collect::<Vec<_>>(), "stop_sequence", Some(stop))
        }
        None if truncated => (pieces, "max_tokens", None),
        None => (pieces, "stop_sequence", Some(BUILT_IN_STOP)),
    };
    let id = format!("compl_mock{:08x}", state.requests());
    if req["stream"].as_bool().unwrap_or(false) {
        return stream(&id, model, &pieces, stop_reason, stop, &fault);
    }
    // `stop` (the sequence that was hit) is how 2023 answers read; today's SDK type ignores it.
    axum::Json(json!({
        "type": "completion", "id": id, "completion": pieces.concat(),
        "stop_reason": stop_reason, "stop": stop, "model": model,
    }))
    .into_response()
}

fn stream(
    id: &str,
    model: &str,
    pieces: &[String],
    stop_reason: &str,
    stop: Option<&str>,
    fault: &Option<Fault>,
) -> Response {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let completion = |text: &str, reason: Option<&str>, stop: Option<&str>| {
        event(
            "completion",
            json!({"type": "completion", "id": id, "completion": text, "stop_reason": reason, "stop": stop, "model": model}),
        )
    };
    let mut events = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        events.push(completion(p, None, None));
        if i == 0 {
            events.push(event("ping", json!({"type": "ping"})));
        }
    }
    events.push(completion("", Some(stop_reason), stop));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_validated_as_the_api_documents() {
        assert_eq!(last_human_turn("\n\nHuman: Hello, Claude\n\nAssistant:"), Ok("Hello, Claude"));
        assert_eq!(last_human_turn("Be brief.\n\nHuman: Hi\n\nAssistant:"), Ok("Hi"));
        assert_eq!(
            last_human_turn("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: The color is"),
            Ok("c")
        );
        let starts = Err(r#"prompt must start with "\n\nHuman:" turn after an optional system prompt"#);
        let ends = Err(r#"prompt must end with "\n\nAssistant:" turn"#);
        // The documentation's examples of prompts the API refuses.
        assert_eq!(last_human_turn("Hello, world"), starts);
        assert_eq!(last_human_turn("Hello, world\n\nAssistant:"), starts);
        assert_eq!(last_human_turn("\n\nHuman: Hello, Claude"), ends);
        assert_eq!(
            last_human_turn("\n\nAssistant: Hello, world\n\nHuman: Hello, Claude\n\nAssistant:"),
            starts
        );
        assert_eq!(
            last_human_turn("\n\nHuman: Hello, Claude\n\nAssistant: Hello, world\n\nHuman: How many toes?"),
            ends
        );
        assert_eq!(last_human_turn("\n\nHuman: Hello, Claude \nAssistant:"), ends);
    }

    #[test]
    fn stop_sequences_cut_the_text() {
        let stops = vec!["zz".to_string(), "heard".to_string(), "mock".to_string()];
        assert_eq!(cut_at_stop("mock-anthropic heard: x", &stops), Some((String::new(), "mock")));
        assert_eq!(cut_at_stop("a heard: x", &stops[..2]), Some(("a ".to_string(), "heard")));
        assert_eq!(cut_at_stop("a", &stops), None);
    }
}
