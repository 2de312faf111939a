//! PaLM 2 as `generativelanguage.googleapis.com` served it until 2024:
//! `models/{model}:generateMessage` (chat: `prompt.context`, `prompt.examples`, `prompt.messages`
//! of alternating authors; answers in `candidates[].content`, the messages echoed) and
//! `:generateText` (`prompt.text`, `candidates[].output`), under `v1beta2`, `v1beta3` and (as the
//! later SDKs call it) `v1beta`. The key in `x-goog-api-key` or `?key=`, errors as for Gemini.
//! No streaming and no token counts. The REST clients ask for `$alt=json;enum-encoding=int`,
//! and get enums as numbers then.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::gemini::{check_key, fault_response, field, google_error};
use super::{Fault, MockState, Reply, delay, reply};

/// The most candidates one request may ask for.
const MAX_CANDIDATES: u64 = 8;

pub(crate) fn router() -> Router<Arc<MockState>> {
    Router::new()
        .route("/v1beta2/models/{call}", post(generate))
        .route("/v1beta3/models/{call}", post(generate))
        .route("/v1beta/models/{call}", post(generate))
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
    if method != "generateMessage" && method != "generateText" {
        return google_error(404, &format!("Method {method:?} of models/{model} is not found."), vec![]);
    }
    if let Some(Fault::Status { status, retry_after_ms, code }) = &fault {
        if *status == 429 && code.is_none() {
            // PaLM's quota errors: the status alone, a retry hint only when one is asked for.
            let details = retry_after_ms.map_or(vec![], |ms| {
                vec![json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{}s", ms as f64 / 1000.0)})]
            });
            return google_error(429, "Resource has been exhausted (e.g. check quota).", details);
        }
        return fault_response(model, *status, *retry_after_ms, code.as_deref());
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return google_error(400, "Invalid JSON payload received.", vec![]);
    };
    let ints = query.get("$alt").is_some_and(|a| a.contains("enum-encoding=int"));
    let candidates =
        field(&req, "candidateCount").and_then(Value::as_u64).unwrap_or(1).clamp(1, MAX_CANDIDATES);
    if let Some(t) = req.get("temperature").and_then(Value::as_f64)
        && !(0.0..=1.0).contains(&t)
    {
        return google_error(400, "temperature must be in the range [0.0, 1.0]", vec![]);
    }
    if method == "generateText" {
        text(&req, model, candidates, ints)
    } else {
        message(&req, model, candidates)
    }
}

fn message(req: &Value, model: &str, candidates: u64) -> Response {
    let Some(messages) = req.pointer("/prompt/messages").and_then(Value::as_array).filter(|m| !m.is_empty())
    else {
        return google_error(
            400,
            "* GenerateMessageRequest.prompt.messages: messages must not be empty.\n",
            vec![],
        );
    };
    let author = |m: &Value| m.get("author").and_then(Value::as_str).unwrap_or("").to_string();
    if messages.windows(2).any(|w| !author(&w[0]).is_empty() && author(&w[0]) == author(&w[1])) {
        return google_error(400, "Messages must alternate between authors.", vec![]);
    }
    if messages.iter().any(|m| m.get("content").and_then(Value::as_str).is_none_or(str::is_empty)) {
        return google_error(
            400,
            "* GenerateMessageRequest.prompt.messages: content must not be empty.\n",
            vec![],
        );
    }
    let last = messages.last().and_then(|m| m.get("content")).and_then(Value::as_str).unwrap_or("");
    // The model answers as the author who did not speak last ("1" when the SDK left authors out).
    let speaker =
        messages.iter().rev().nth(1).map(author).filter(|a| !a.is_empty()).unwrap_or_else(|| "1".into());
    let Reply::Text { pieces, .. } = reply("mock-palm", model, last, None, None, None) else {
        return google_error(500, "no answer", vec![]);
    };
    let content = pieces.concat();
    let candidate = json!({"author": speaker, "content": content});
    axum::Json(json!({
        "candidates": (0..candidates).map(|_| candidate.clone()).collect::<Vec<_>>(),
        "messages": messages,
    }))
    .into_response()
}

fn text(req: &Value, model: &str, candidates: u64, ints: bool) -> Response {
    let Some(prompt) = req.pointer("/prompt/text").and_then(Value::as_str).filter(|t| !t.is_empty()) else {
        return google_error(400, "* GenerateTextRequest.prompt.text: text must not be empty.\n", vec![]);
    };
    let max_tokens = field(req, "maxOutputTokens").and_then(Value::as_u64);
    let Reply::Text { pieces, .. } = reply("mock-palm", model, prompt, None, None, max_tokens) else {
        return google_error(500, "no answer", vec![]);
    };
    // HARM_CATEGORY_DEROGATORY .. DANGEROUS are 1..6; NEGLIGIBLE is 1.
    let names = ["DEROGATORY", "TOXICITY", "VIOLENCE", "SEXUAL", "MEDICAL", "DANGEROUS"];
    let ratings: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if ints {
                json!({"category": i + 1, "probability": 1})
            } else {
                json!({"category": format!("HARM_CATEGORY_{n}"), "probability": "NEGLIGIBLE"})
            }
        })
        .collect();
    let candidate = json!({"output": pieces.concat(), "safetyRatings": ratings});
    axum::Json(json!({"candidates": (0..candidates).map(|_| candidate.clone()).collect::<Vec<_>>()}))
        .into_response()
}
