//! The gateway against the mock Gemini server, over loopback: whole and streamed answers (usage
//! cumulative in the stream, not summed), function calls both ways, the key checks, retry hints
//! from `RetryInfo`, a daily quota not retried, errors inside a stream.

use std::sync::Arc;
use std::time::Duration;

use baimo_gateway::mock::{Fault, MockState, spawn};
use baimo_gateway::{
    Channel, ChatRequest, ErrorKind, FinishReason, Gateway, RetryPolicy, StreamEvent, UpstreamError, Usage,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

mod support;
use support::text_of;

const KEY: &str = "AIzaSy-mock-gemini-key-0123456789";

async fn start() -> (Arc<MockState>, String) {
    let state = MockState::new(baimo_gateway::ProviderKind::Gemini, KEY);
    let base = spawn(state.clone()).await.unwrap();
    (state, base)
}

fn channel(name: &str, base: &str, key: &str) -> Channel {
    serde_json::from_value(json!({
        "name": name, "provider": "gemini", "base_url": base, "api_key": key,
        "models": ["gemini-pro", "gemini-flash"], "model_map": {"gemini-flash": "models/gemini-1.5-flash"}
    }))
    .unwrap()
}

fn gateway(channels: Vec<Channel>) -> Gateway {
    let policy = RetryPolicy {
        base_backoff: Duration::from_millis(1),
        timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        ..RetryPolicy::default()
    };
    Gateway::new(channels, policy).unwrap()
}

fn request(body: Value) -> ChatRequest {
    ChatRequest::from_openai(&body).unwrap()
}

fn hello(stream: bool) -> ChatRequest {
    request(json!({"model": "gemini-pro", "stream": stream, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"}
    ]}))
}

fn weather(stream: bool) -> ChatRequest {
    request(json!({"model": "gemini-pro", "stream": stream,
        "messages": [{"role": "user", "content": "weather in Paris"}],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]}))
}

/// Every item of a stream: the events, and the error that ended it, if one did.
async fn collect(gw: &Gateway, req: &ChatRequest) -> (Vec<StreamEvent>, Option<UpstreamError>) {
    let served = gw.chat_stream(req).await.map_err(|f| f.error).unwrap();
    let mut events = Vec::new();
    let mut stream = served.value;
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

#[tokio::test]
async fn whole_and_streamed_answers_agree() {
    let (_mock, base) = start().await;
    let gw = gateway(vec![channel("g", &base, KEY)]);
    let whole = gw.chat(&hello(false)).await.map_err(|f| f.error).unwrap();
    assert_eq!(whole.value.content.as_deref(), Some("mock-gemini gemini-pro heard: hello there"));
    assert_eq!(whole.value.finish_reason, FinishReason::Stop);
    // The system instruction reached the mock: its two words are in the prompt count.
    assert_eq!(whole.value.usage, Usage { prompt_tokens: 4, completion_tokens: 5 });

    let (events, error) = collect(&gw, &hello(true)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text_of(&events), "mock-gemini gemini-pro heard: hello there");
    assert!(events.iter().filter(|e| matches!(e, StreamEvent::Text(_))).count() > 1, "streamed in pieces");
    let tail = &events[events.len() - 2..];
    // Usage is cumulative in every chunk: the total is the last figure (5), not their sum (15).
    assert_eq!(
        tail,
        [
            StreamEvent::Finish(FinishReason::Stop),
            StreamEvent::Usage(Usage { prompt_tokens: 4, completion_tokens: 5 })
        ]
    );

    // A mapped name with its `models/` prefix, and an output limit.
    let short = request(
        json!({"model": "gemini-flash", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let r = gw.chat(&short).await.map_err(|f| f.error).unwrap().value;
    assert_eq!(
        (r.content.as_deref(), r.finish_reason),
        (Some("mock-gemini gemini-1.5-flash "), FinishReason::Length)
    );
}

#[tokio::test]
async fn function_calls_whole_streamed_and_answered() {
    let (_mock, base) = start().await;
    let gw = gateway(vec![channel("g", &base, KEY)]);
    let r = gw.chat(&weather(false)).await.map_err(|f| f.error).unwrap().value;
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(r.tool_calls.len(), 1);
    let call = &r.tool_calls[0];
    assert!(call.id.starts_with("call_"), "a made-up id: {}", call.id);
    assert_eq!(call.name, "weather");
    assert_eq!(serde_json::from_str::<Value>(&call.arguments).unwrap(), json!({"query": "weather in Paris"}));

    let (events, error) = collect(&gw, &weather(true)).await;
    assert!(error.is_none(), "{error:?}");
    let StreamEvent::ToolCall { index: 0, id: Some(id), name: Some(name), arguments } = &events[0] else {
        panic!("{events:?}")
    };
    assert!(id.starts_with("call_") && name == "weather");
    assert_eq!(serde_json::from_str::<Value>(arguments).unwrap(), json!({"query": "weather in Paris"}));
    assert!(events.contains(&StreamEvent::Finish(FinishReason::ToolCalls)));

    // The result goes back as a functionResponse named after the call its id answers (the mock
    // refuses a response that names no function of the previous turn).
    let answer = request(json!({"model": "gemini-pro", "messages": [
        {"role": "user", "content": "weather in Paris"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": call.id, "type": "function",
            "function": {"name": "weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}
    ], "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}]}));
    let r = gw.chat(&answer).await.map_err(|f| f.error).unwrap().value;
    assert_eq!(
        (r.content.as_deref(), r.finish_reason),
        (Some("The tool answered: sunny"), FinishReason::Stop)
    );

    // tool_choice "none" becomes mode NONE: the model answers in text.
    let mut refused = weather(false);
    refused.tool_choice = Some(baimo_gateway::types::ToolChoice::None);
    let r = gw.chat(&refused).await.map_err(|f| f.error).unwrap().value;
    assert!(r.tool_calls.is_empty() && r.content.is_some_and(|c| c.contains("heard: weather in Paris")));
}

#[tokio::test]
async fn a_wrong_key_is_an_auth_error_without_the_key_and_fails_over() {
    let (mock, base) = start().await;
    let wrong = "AIzaSy-wrong-key-that-must-not-leak";
    let gw = gateway(vec![channel("bad", &base, wrong)]);
    let failed = gw.chat(&hello(false)).await.err().unwrap();
    assert_eq!((failed.error.kind, failed.error.status), (ErrorKind::Auth, Some(400)));
    assert!(failed.error.message.contains("API key not valid"), "{}", failed.error);
    assert!(!format!("{failed:?} {}", failed.error).contains(wrong));
    assert_eq!(mock.requests(), 1, "auth errors are not retried on the same channel");

    let mut bad = channel("bad", &base, wrong);
    bad.priority = 1;
    let gw = gateway(vec![bad, channel("good", &base, KEY)]);
    let served = gw.chat(&hello(false)).await.map_err(|f| f.error).unwrap();
    assert_eq!((served.channel.as_str(), served.failed.len()), ("good", 1));
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_retry_info_delay() {
    let (mock, base) = start().await;
    let gw = gateway(vec![channel("g", &base, KEY)]);
    mock.queue([Fault::Status { status: 429, retry_after_ms: Some(30), code: None }]);
    let served = gw.chat(&hello(false)).await.map_err(|f| f.error).unwrap();
    assert_eq!(mock.requests(), 2);
    assert_eq!(served.failed.len(), 1);
    let e = &served.failed[0].error;
    assert_eq!(
        (e.kind, e.status, e.retry_after),
        (ErrorKind::RateLimited, Some(429), Some(Duration::from_millis(30)))
    );
    assert_eq!(served.value.content.as_deref(), Some("mock-gemini gemini-pro heard: hello there"));
}

#[tokio::test]
async fn a_daily_quota_and_a_long_prompt_are_not_retried() {
    let (mock, base) = start().await;
    let gw = gateway(vec![channel("g", &base, KEY)]);
    mock.queue([Fault::Status { status: 429, retry_after_ms: None, code: Some("quota_per_day".into()) }]);
    let failed = gw.chat(&hello(false)).await.err().unwrap();
    assert_eq!((failed.error.kind, failed.error.retry_after), (ErrorKind::QuotaExhausted, None));
    assert_eq!(mock.requests(), 1);

    mock.queue([Fault::Status { status: 400, retry_after_ms: None, code: Some("context_length".into()) }]);
    let failed = gw.chat(&hello(false)).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::ContextLength);
    assert_eq!(mock.requests(), 2);
}

#[tokio::test]
async fn streams_end_with_an_error_when_the_provider_fails_midway() {
    let (mock, base) = start().await;
    let gw = gateway(vec![channel("g", &base, KEY)]);
    mock.queue([Fault::ErrorEvent { after_events: 2 }]);
    let (events, error) = collect(&gw, &hello(true)).await;
    assert_eq!(text_of(&events), "mock-gemini gemini-pro ");
    let error = error.expect("the stream ends with the error");
    assert_eq!(error.kind, ErrorKind::Server);
    assert!(error.message.contains("overloaded"), "{error}");

    mock.queue([Fault::DropStream { after_events: 1 }]);
    let (events, error) = collect(&gw, &hello(true)).await;
    assert_eq!(text_of(&events), "mock-gemini ");
    assert_eq!(error.map(|e| e.kind), Some(ErrorKind::Connection));
}

/// The mock itself, spoken to directly: the `?key=` form, a missing key, roles, the JSON-array
/// stream.
#[tokio::test]
async fn the_mock_speaks_the_api_as_google_does() {
    let (_mock, base) = start().await;
    let http = reqwest::Client::new();
    let url = |method: &str| format!("{base}/v1beta/models/gemini-pro:{method}");
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});

    let r = http.post(format!("{}?key={KEY}", url("generateContent"))).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "mock-gemini gemini-pro heard: hi");
    assert!(v["candidates"][0]["content"]["parts"][0].get("functionCall").is_none());

    let r = http.post(url("generateContent")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["status"], "PERMISSION_DENIED");

    let assistant = json!({"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]});
    let r = http
        .post(url("generateContent"))
        .header("x-goog-api-key", KEY)
        .json(&assistant)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["status"], "INVALID_ARGUMENT");

    // Without alt=sse the stream is one JSON array, usage growing chunk by chunk.
    let r = http
        .post(url("streamGenerateContent"))
        .header("x-goog-api-key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let chunks: Vec<Value> = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let counts: Vec<u64> =
        chunks.iter().map(|c| c["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap()).collect();
    assert_eq!(counts, [1, 2, 3, 4]);
    assert_eq!(chunks[3]["candidates"][0]["finishReason"], "STOP");
}
