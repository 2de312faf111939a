//! Anthropic's legacy Text Completions API end to end: the gateway against the mock over
//! loopback — a whole answer and a stream of the same text, stop-sequence and length finishes,
//! a wrong key, throttling with a hint, exhausted credit, an error event mid-stream, tools
//! refused before anything is sent — and the mock's own prompt validation over raw HTTP.

use std::sync::Arc;
use std::time::Duration;

use baimo_gateway::mock::{Fault, MockState, spawn};
use baimo_gateway::{
    Channel, ChatRequest, ErrorKind, FinishReason, Gateway, ProviderKind, RetryPolicy, StreamEvent,
};
use serde_json::{Value, json};

mod support;
use support::{collect, text_of};

const KEY: &str = "sk-ant-legacy-mock-7c1e9a";
const MODEL: &str = "claude-2.1";
const WANT: &str = "mock-anthropic claude-2.1 heard: hello from the test";

async fn start() -> (Arc<MockState>, String) {
    let state = MockState::new(ProviderKind::AnthropicLegacy, KEY);
    let base = spawn(state.clone()).await.unwrap();
    (state, base)
}

fn gateway(base: &str, key: &str) -> Gateway {
    let channel: Channel = serde_json::from_value(json!({
        "name": "claude-legacy", "provider": "anthropic-legacy", "base_url": base, "api_key": key,
        "models": [MODEL],
    }))
    .unwrap();
    let policy = RetryPolicy {
        base_backoff: Duration::from_millis(5),
        timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        ..RetryPolicy::default()
    };
    Gateway::new(vec![channel], policy).unwrap()
}

fn request(stream: bool, extra: Value) -> ChatRequest {
    let mut body = json!({"model": MODEL, "stream": stream, "temperature": 1.3, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "an earlier question"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": "hello from the test"}
    ]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    ChatRequest::from_openai(&body).unwrap()
}

#[tokio::test]
async fn answers_whole_and_streamed_with_estimated_usage() {
    let (state, base) = start().await;
    let gw = gateway(&base, KEY);
    let whole = gw.chat(&request(false, json!({}))).await.unwrap().value;
    assert_eq!((whole.content.as_deref(), whole.finish_reason), (Some(WANT), FinishReason::Stop));
    assert!(whole.tool_calls.is_empty());
    // No usage in the answer: estimated from the prompt and the completion (4 ASCII chars a token).
    let prompt_chars = "be brief\n\nHuman: an earlier question\n\nAssistant: an earlier answer\n\nHuman: hello from the test\n\nAssistant:".len() as u64;
    assert_eq!(whole.usage.prompt_tokens, prompt_chars.div_ceil(4));
    assert_eq!(whole.usage.completion_tokens, (WANT.len() as u64).div_ceil(4));
    let (events, error) = collect(&gw, &request(true, json!({}))).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text_of(&events), WANT);
    assert!(events.len() > 4, "streamed in pieces: {events:?}");
    assert_eq!(
        &events[events.len() - 2..],
        &[StreamEvent::Finish(FinishReason::Stop), StreamEvent::Usage(whole.usage)]
    );
    assert_eq!(state.requests(), 2);
}

#[tokio::test]
async fn stop_sequences_and_length_end_the_answer() {
    let (_state, base) = start().await;
    let gw = gateway(&base, KEY);
    let stopped = gw.chat(&request(false, json!({"stop": ["heard"]}))).await.unwrap().value;
    assert_eq!(
        (stopped.content.as_deref(), stopped.finish_reason),
        (Some("mock-anthropic claude-2.1 "), FinishReason::Stop)
    );
    let (events, _) = collect(&gw, &request(true, json!({"stop": ["heard"]}))).await;
    assert_eq!(text_of(&events), "mock-anthropic claude-2.1 ");
    let cut = gw.chat(&request(false, json!({"max_tokens": 2}))).await.unwrap().value;
    assert_eq!(
        (cut.content.as_deref(), cut.finish_reason),
        (Some("mock-anthropic claude-2.1 "), FinishReason::Length)
    );
    let (events, error) = collect(&gw, &request(true, json!({"max_tokens": 2}))).await;
    assert!(error.is_none() && events.contains(&StreamEvent::Finish(FinishReason::Length)), "{events:?}");
}

#[tokio::test]
async fn a_wrong_key_is_an_auth_error_without_the_key() {
    let (_state, base) = start().await;
    let wrong = "sk-ant-wrong-key-0042";
    let failed = gateway(&base, wrong).chat(&request(false, json!({}))).await.err().unwrap();
    assert_eq!((failed.error.kind, failed.error.status), (ErrorKind::Auth, Some(401)));
    assert_eq!(failed.error.provider, "anthropic-legacy");
    let text = failed.error.to_string();
    assert!(!text.contains(wrong) && !text.contains(KEY), "{text}");
}

#[tokio::test]
async fn throttling_with_a_hint_is_retried() {
    let (state, base) = start().await;
    state.queue([Fault::Status { status: 429, retry_after_ms: Some(20), code: None }]);
    let served = gateway(&base, KEY).chat(&request(false, json!({}))).await.unwrap();
    assert_eq!((state.requests(), served.failed.len()), (2, 1));
    let first = &served.failed[0].error;
    assert_eq!((first.kind, first.retry_after), (ErrorKind::RateLimited, Some(Duration::from_millis(20))));
    assert_eq!(served.value.content.as_deref(), Some(WANT));
}

#[tokio::test]
async fn exhausted_credit_is_not_retried() {
    let (state, base) = start().await;
    state.set_always(Some(Fault::Status {
        status: 400,
        retry_after_ms: None,
        code: Some("insufficient_quota".into()),
    }));
    let failed = gateway(&base, KEY).chat(&request(false, json!({}))).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::QuotaExhausted);
    assert_eq!(state.requests(), 1);
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_it_with_an_error() {
    let (state, base) = start().await;
    let gw = gateway(&base, KEY);
    // completion, ping, completion, then the error event.
    state.queue([Fault::ErrorEvent { after_events: 3 }]);
    let (events, error) = collect(&gw, &request(true, json!({}))).await;
    let error = error.expect("an error ends it");
    assert_eq!((error.kind, error.message.as_str()), (ErrorKind::Server, "Overloaded"));
    assert_eq!(text_of(&events), "mock-anthropic claude-2.1 ");
    assert!(!events.iter().any(|e| matches!(e, StreamEvent::Finish(_))));
    state.queue([Fault::DropStream { after_events: 2 }]);
    assert_eq!(collect(&gw, &request(true, json!({}))).await.1.unwrap().kind, ErrorKind::Connection);
}

#[tokio::test]
async fn tools_are_refused_before_anything_is_sent() {
    let (state, base) = start().await;
    let gw = gateway(&base, KEY);
    let tools = json!({"tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]});
    let failed = gw.chat(&request(false, tools.clone())).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::BadRequest, "{}", failed.error);
    let failed = gw.chat_stream(&request(true, tools)).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::BadRequest);
    assert_eq!(state.requests(), 0);
    // Offered but refused with tool_choice "none": nothing to call, so it goes through.
    let none = json!({"tool_choice": "none", "tools": [{"type": "function", "function": {"name": "w"}}]});
    assert_eq!(gw.chat(&request(false, none)).await.unwrap().value.content.as_deref(), Some(WANT));
}

/// The mock over raw HTTP: the API's prompt validation and its wording, the version header,
/// and the Messages API served by the same mock.
#[tokio::test]
async fn the_mock_validates_prompts_and_serves_messages_too() {
    let (_state, base) = start().await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value, version: bool| {
        let mut req = client.post(format!("{base}{path}")).header("x-api-key", KEY).json(&body);
        if version {
            req = req.header("anthropic-version", "2023-06-01");
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let complete = |prompt: &str| json!({"model": "claude-2", "prompt": prompt, "max_tokens_to_sample": 50});
    let (status, body) = post("/v1/complete", complete("Hello, world\n\nAssistant:"), true).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(
        body["error"]["message"],
        r#"prompt must start with "\n\nHuman:" turn after an optional system prompt"#
    );
    let (status, body) = post("/v1/complete", complete("\n\nHuman: Hello"), true).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (400, Some(r#"prompt must end with "\n\nAssistant:" turn"#))
    );
    let (status, _) = post("/v1/complete", complete("\n\nHuman: Hi\n\nAssistant:"), false).await;
    assert_eq!(status, 400);
    let (status, body) = post("/v1/complete", complete("\n\nHuman: Hi\n\nAssistant:"), true).await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["type"].as_str(), body["completion"].as_str(), body["stop_reason"].as_str()),
        (Some("completion"), Some("mock-anthropic claude-2 heard: Hi"), Some("stop_sequence"))
    );
    assert!(body.get("usage").is_none());
    let messages =
        json!({"model": "claude-2.1", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]});
    let (status, body) = post("/v1/messages", messages, true).await;
    assert_eq!((status, body["type"].as_str()), (200, Some("message")));
}
