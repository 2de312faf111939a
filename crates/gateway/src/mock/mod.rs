//! Stand-ins for the hosted providers, each speaking its provider's documented protocol: the
//! same endpoints, authentication checks, answer and stream formats and error envelopes, so the
//! provider's official SDK works against it. Answers are deterministic (they repeat the last user
//! message; with tools, the first tool is called). Faults can be queued for the next requests or
//! set for all: an HTTP error status (429 with a retry hint), a delay, a stream cut off or ended
//! by the provider's error event.
//!
//! Control endpoints (not part of any provider's API): `POST /_mock/faults` with
//! `{"next": [Fault, …], "always": Fault | null}`, and `GET /_mock/stats`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::channel::ProviderKind;

pub mod anthropic;
pub mod anthropic_legacy;
pub mod baichuan;
pub mod dashscope;
pub mod ernie;
pub mod gemini;
pub mod openai;
pub mod palm;
pub mod spark;
pub mod zhipu;

/// Something to go wrong with a request.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this status and the provider's error body for it. `code` picks a variant
    /// where the provider has several for one status (`insufficient_quota`, `context_length`).
    Status {
        status: u16,
        #[serde(default)]
        retry_after_ms: Option<u64>,
        #[serde(default)]
        code: Option<String>,
    },
    /// Wait this long before answering.
    Delay { ms: u64 },
    /// In a stream: cut the connection after this many events.
    DropStream { after_events: usize },
    /// In a stream: send the provider's error event after this many events.
    ErrorEvent { after_events: usize },
}

/// A mock's state: its key, its faults, what it has served.
pub struct MockState {
    pub provider: ProviderKind,
    key: String,
    /// The second credential, for providers that sign with a pair (ERNIE, Spark, Baichuan's
    /// legacy API).
    pub secret: Option<String>,
    pub app_id: Option<String>,
    /// Access tokens the mock handed out, with when they expire (ERNIE's OAuth).
    pub issued_tokens: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    next: Mutex<VecDeque<Fault>>,
    always: Mutex<Option<Fault>>,
    requests: AtomicUsize,
}

impl MockState {
    pub fn new(provider: ProviderKind, key: impl Into<String>) -> Arc<MockState> {
        MockState::with_credentials(provider, key, None, None)
    }

    /// A mock that also checks a secret (and, for Spark, an app id).
    pub fn with_credentials(
        provider: ProviderKind,
        key: impl Into<String>,
        secret: Option<String>,
        app_id: Option<String>,
    ) -> Arc<MockState> {
        Arc::new(MockState {
            provider,
            key: key.into(),
            secret,
            app_id,
            issued_tokens: Mutex::new(std::collections::HashMap::new()),
            next: Mutex::new(VecDeque::new()),
            always: Mutex::new(None),
            requests: AtomicUsize::new(0),
        })
    }

    /// Faults for the next requests, one each, in order.
    pub fn queue(&self, faults: impl IntoIterator<Item = Fault>) {
        self.next.lock().unwrap_or_else(|p| p.into_inner()).extend(faults);
    }

    /// A fault for every request (after the queued ones), or none.
    pub fn set_always(&self, fault: Option<Fault>) {
        *self.always.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// Chat requests received (authenticated or not).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a request and takes its fault.
    pub(crate) fn arrive(&self) -> Option<Fault> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let queued = self.next.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        queued.or_else(|| self.always.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Constant-time check of a presented key.
    pub(crate) fn key_ok(&self, presented: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        presented
            .is_some_and(|p| p.len() == self.key.len() && bool::from(p.as_bytes().ct_eq(self.key.as_bytes())))
    }
}

/// The mock for `state.provider` with its control endpoints.
pub fn router(state: Arc<MockState>) -> Router {
    let api = match state.provider {
        ProviderKind::OpenAi => openai::router(),
        ProviderKind::Anthropic => anthropic::router(),
        ProviderKind::Gemini => gemini::router(),
        ProviderKind::Palm => palm::router(),
        ProviderKind::DashScope | ProviderKind::DashScopeCompatible => dashscope::router(),
        ProviderKind::Zhipu | ProviderKind::ZhipuV3 => zhipu::router(),
        ProviderKind::Baichuan | ProviderKind::BaichuanLegacy => baichuan::router(),
        ProviderKind::Ernie | ProviderKind::ErnieV2 => ernie::router(),
        ProviderKind::Spark | ProviderKind::SparkHttp => spark::router(),
        // One mock serves both APIs, as api.anthropic.com does.
        ProviderKind::AnthropicLegacy => anthropic::router().merge(anthropic_legacy::router()),
    };
    api.route("/_mock/faults", post(set_faults)).route("/_mock/stats", get(stats)).with_state(state)
}

#[derive(Deserialize)]
struct FaultsBody {
    #[serde(default)]
    next: Vec<Fault>,
    #[serde(default)]
    always: Option<Fault>,
}

async fn set_faults(State(state): State<Arc<MockState>>, Json(body): Json<FaultsBody>) -> Json<Value> {
    state.queue(body.next);
    state.set_always(body.always);
    Json(json!({"ok": true}))
}

async fn stats(State(state): State<Arc<MockState>>) -> Json<Value> {
    Json(json!({"requests": state.requests()}))
}

/// Starts the mock on a free loopback port in a task of the current runtime; its base URL.
pub async fn spawn(state: Arc<MockState>) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(serve(state, listener));
    Ok(base)
}

/// Serves the mock on `listener` until the task is dropped.
pub async fn serve(state: Arc<MockState>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

/// What the mock model answers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Reply {
    /// Text pieces (words with their spaces), and whether `max_tokens` cut it short.
    Text { pieces: Vec<String>, truncated: bool },
    /// A call of the named tool with these JSON arguments.
    Tool { name: String, arguments: Value },
}

/// The deterministic answer: after a tool result, a sentence quoting it; with tools offered (and
/// not refused), a call of the first one with the user's words; else the user's words repeated.
pub(crate) fn reply(
    label: &str,
    model: &str,
    last_user: &str,
    tool_result: Option<&str>,
    first_tool: Option<&str>,
    max_tokens: Option<u64>,
) -> Reply {
    if let (Some(tool), None) = (first_tool, tool_result) {
        return Reply::Tool { name: tool.to_string(), arguments: json!({"query": last_user}) };
    }
    let text = match tool_result {
        Some(result) => format!("The tool answered: {result}"),
        None => format!("{label} {model} heard: {last_user}"),
    };
    let mut pieces: Vec<String> = Vec::new();
    for word in text.split_inclusive(' ') {
        pieces.push(word.to_string());
    }
    let limit = max_tokens.unwrap_or(u64::MAX).max(1) as usize;
    let truncated = pieces.len() > limit;
    pieces.truncate(limit);
    Reply::Text { pieces, truncated }
}

/// The answer with a tool call's arguments shaped to the tool's JSON Schema (when given): every
/// property gets a value of its type (strings the user's words, numbers 1, the first of an
/// enum), so a client validating the arguments against its schema accepts them, as it would a
/// real model's.
pub(crate) fn shaped_to(answer: Reply, schema: Option<&Value>, words: &str) -> Reply {
    match (answer, schema) {
        (Reply::Tool { name, .. }, Some(schema)) if schema.get("properties").is_some() => {
            Reply::Tool { name, arguments: example_of(schema, schema, words, 0) }
        }
        (answer, _) => answer,
    }
}

/// The answer as JSON when the request asks for it (OpenAI's `response_format`): an object
/// fitting the schema, or `{"answer": words}` for any object.
pub(crate) fn formatted(answer: Reply, format: &Value, words: &str) -> Reply {
    let text = match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let schema = format.pointer("/json_schema/schema").unwrap_or(&Value::Null);
            example_of(schema, schema, words, 0).to_string()
        }
        Some("json_object") => json!({"answer": words}).to_string(),
        _ => return answer,
    };
    match answer {
        Reply::Text { .. } => Reply::Text { pieces: vec![text], truncated: false },
        tool => tool,
    }
}

fn example_of(schema: &Value, root: &Value, words: &str, depth: usize) -> Value {
    if depth > 8 {
        return Value::Null;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = r.strip_prefix('#').and_then(|p| root.pointer(p)).unwrap_or(&Value::Null);
        return example_of(target, root, words, depth + 1);
    }
    if let Some(first) = ["anyOf", "oneOf", "allOf"].iter().find_map(|k| schema.get(*k)?.as_array()?.first())
    {
        return example_of(first, root, words, depth + 1);
    }
    if let Some(first) = schema.get("enum").and_then(|e| e.as_array()?.first()) {
        return first.clone();
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    let kind = match schema.get("type") {
        Some(Value::Array(kinds)) => {
            kinds.iter().find(|k| *k != "null").and_then(Value::as_str).unwrap_or("null")
        }
        Some(k) => k.as_str().unwrap_or("string"),
        None if schema.get("properties").is_some() => "object",
        None => "string",
    };
    match kind {
        "object" => {
            let props = schema.get("properties").and_then(Value::as_object);
            Value::Object(
                props
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), example_of(v, root, words, depth + 1)))
                    .collect(),
            )
        }
        "array" => json!([example_of(schema.get("items").unwrap_or(&Value::Null), root, words, depth + 1)]),
        "integer" => json!(1),
        "number" => json!(1.0),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!(words),
    }
}

/// Words of a text: the mocks' token count.
pub(crate) fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

pub(crate) async fn delay(fault: &Option<Fault>) {
    if let Some(Fault::Delay { ms }) = fault {
        tokio::time::sleep(Duration::from_millis(*ms)).await;
    }
}

/// An SSE body built from ready events; cut after `drop_after` events if asked (the connection
/// then breaks without the stream's end).
pub(crate) fn sse_body(events: Vec<String>, drop_after: Option<usize>) -> axum::body::Body {
    let n = drop_after.unwrap_or(usize::MAX);
    let mut items: Vec<Result<bytes::Bytes, std::io::Error>> =
        events.into_iter().take(n).map(|e| Ok(bytes::Bytes::from(e))).collect();
    if drop_after.is_some() {
        items.push(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock: stream dropped")));
    }
    // A short pause between events, so a client sees them arrive one by one.
    let stream = tokio_stream::StreamExt::throttle(tokio_stream::iter(items), Duration::from_millis(2));
    axum::body::Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_deterministic_and_respect_max_tokens() {
        let r = reply("mock-openai", "gpt-4", "hello there", None, None, Some(3));
        assert_eq!(
            r,
            Reply::Text {
                pieces: vec!["mock-openai ".into(), "gpt-4 ".into(), "heard: ".into()],
                truncated: true
            }
        );
        let r = reply("m", "x", "weather in Paris", None, Some("weather"), None);
        assert_eq!(
            r,
            Reply::Tool { name: "weather".into(), arguments: json!({"query": "weather in Paris"}) }
        );
        let r = reply("m", "x", "q", Some("sunny"), Some("weather"), None);
        assert!(matches!(r, Reply::Text { ref pieces, .. } if pieces.concat() == "The tool answered: sunny"));
    }

    #[test]
    fn keys_are_checked() {
        let s = MockState::new(ProviderKind::OpenAi, "sk-mock");
        assert!(s.key_ok(Some("sk-mock")));
        assert!(!s.key_ok(Some("sk-mocK")) && !s.key_ok(Some("sk")) && !s.key_ok(None));
    }
}
