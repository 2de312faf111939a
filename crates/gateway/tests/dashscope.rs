//! DashScope end to end: the gateway against the mock DashScope (native and OpenAI-compatible
//! mode) over loopback — answers whole and streamed, tool calls, auth failures, throttling
//! retried after its hint, in-stream error events, arrears not retried.

use std::sync::Arc;
use std::time::Duration;

use baimo_gateway::mock::{Fault, MockState, spawn};
use baimo_gateway::{
    Channel, ChatRequest, ErrorKind, FinishReason, Gateway, ProviderKind, RetryPolicy, StreamEvent,
};
use serde_json::json;

mod support;
use support::{collect, text_of};

const KEY: &str = "sk-dashscope-mock-0123456789";

async fn start(kind: ProviderKind) -> (Arc<MockState>, String) {
    let state = MockState::new(kind, KEY);
    let base = spawn(state.clone()).await.unwrap();
    (state, base)
}

fn gateway(kind: ProviderKind, base: &str, key: &str) -> Gateway {
    let channel: Channel = serde_json::from_value(json!({
        "name": "qwen", "provider": kind.name(), "base_url": base, "api_key": key,
        "models": ["qwen-plus"],
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

fn request(stream: bool, tools: bool) -> ChatRequest {
    let mut body = json!({"model": "qwen-plus", "stream": stream, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello from the test"}
    ]});
    if tools {
        body["tools"] = json!([{"type": "function", "function": {"name": "weather", "description": "w",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]);
    }
    ChatRequest::from_openai(&body).unwrap()
}

async fn answers_whole_and_streamed(kind: ProviderKind) {
    let (state, base) = start(kind).await;
    let gw = gateway(kind, &base, KEY);
    let whole = gw.chat(&request(false, false)).await.unwrap().value;
    assert_eq!(whole.content.as_deref(), Some("mock-dashscope qwen-plus heard: hello from the test"));
    assert_eq!(whole.finish_reason, FinishReason::Stop);
    assert!(whole.usage.prompt_tokens > 0 && whole.usage.completion_tokens == 7, "{:?}", whole.usage);

    let (events, error) = collect(&gw, &request(true, false)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text_of(&events), whole.content.clone().unwrap());
    assert!(events.iter().filter(|e| matches!(e, StreamEvent::Text(_))).count() > 1, "deltas, not one blob");
    assert!(events.contains(&StreamEvent::Finish(FinishReason::Stop)));
    assert_eq!(events.last(), Some(&StreamEvent::Usage(whole.usage)));
    assert_eq!(state.requests(), 2);
}

async fn calls_tools_whole_and_streamed(kind: ProviderKind) {
    let (_state, base) = start(kind).await;
    let gw = gateway(kind, &base, KEY);
    let whole = gw.chat(&request(false, true)).await.unwrap().value;
    assert_eq!(whole.finish_reason, FinishReason::ToolCalls);
    let call = &whole.tool_calls[0];
    assert_eq!(call.name, "weather");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&call.arguments).unwrap(),
        json!({"query": "hello from the test"})
    );
    assert!(call.id.starts_with("call_"));

    let (events, error) = collect(&gw, &request(true, true)).await;
    assert!(error.is_none(), "{error:?}");
    let mut args = String::new();
    let mut names = Vec::new();
    for e in &events {
        if let StreamEvent::ToolCall { index, id, name, arguments } = e {
            assert_eq!(*index, 0);
            names.extend(name.clone());
            assert_eq!(id.is_some(), name.is_some(), "id and name come together, once");
            args.push_str(arguments);
        }
    }
    assert_eq!((names, args), (vec!["weather".to_string()], call.arguments.clone()));
    assert!(events.contains(&StreamEvent::Finish(FinishReason::ToolCalls)));
}

async fn wrong_keys_are_auth_errors_without_the_key(kind: ProviderKind) {
    let (_state, base) = start(kind).await;
    let wrong = "sk-wrong-key-abcdefghijkl";
    let gw = gateway(kind, &base, wrong);
    let failed = gw.chat(&request(false, false)).await.err().expect("a wrong key fails");
    assert_eq!(failed.error.kind, ErrorKind::Auth);
    assert_eq!(failed.error.status, Some(401));
    assert!(!failed.error.to_string().contains(wrong) && !failed.error.to_string().contains(KEY));
}

async fn throttling_is_retried_after_its_hint(kind: ProviderKind) {
    let (state, base) = start(kind).await;
    state.queue([Fault::Status { status: 429, retry_after_ms: Some(20), code: None }]);
    let gw = gateway(kind, &base, KEY);
    let served = gw.chat(&request(false, false)).await.unwrap();
    assert_eq!(state.requests(), 2);
    assert_eq!(served.failed.len(), 1);
    assert_eq!(served.failed[0].error.kind, ErrorKind::RateLimited);
    assert_eq!(served.failed[0].error.retry_after, Some(Duration::from_millis(20)));
    assert!(served.value.content.unwrap().contains("heard"));
}

async fn error_events_end_the_stream_with_an_error(kind: ProviderKind) {
    let (_state, base) = start(kind).await;
    _state.queue([Fault::ErrorEvent { after_events: 2 }]);
    let gw = gateway(kind, &base, KEY);
    let (events, error) = collect(&gw, &request(true, false)).await;
    let error = error.expect("the stream ends with the error");
    assert!(!events.is_empty(), "events before the error arrive");
    assert!(!events.iter().any(|e| matches!(e, StreamEvent::Finish(_))));
    let want = if kind == ProviderKind::DashScope { ErrorKind::RateLimited } else { ErrorKind::Server };
    assert_eq!(error.kind, want, "{error}");

    _state.queue([Fault::DropStream { after_events: 2 }]);
    let (_, error) = collect(&gw, &request(true, false)).await;
    assert_eq!(error.expect("a cut stream is an error").kind, ErrorKind::Connection);
}

async fn arrears_are_not_retried(kind: ProviderKind) {
    let (state, base) = start(kind).await;
    state.set_always(Some(Fault::Status {
        status: 400,
        retry_after_ms: None,
        code: Some("Arrearage".into()),
    }));
    let gw = gateway(kind, &base, KEY);
    let failed = gw.chat(&request(false, false)).await.err().expect("arrears fail");
    assert_eq!(failed.error.kind, ErrorKind::QuotaExhausted);
    assert_eq!(state.requests(), 1, "never retried");
    state.set_always(Some(Fault::Status {
        status: 400,
        retry_after_ms: None,
        code: Some("context_length".into()),
    }));
    let failed = gw.chat(&request(false, false)).await.err().expect("too long");
    assert_eq!(failed.error.kind, ErrorKind::ContextLength);
}

macro_rules! both_modes {
    ($($name:ident),*) => {
        mod native {
            use super::*;
            $(#[tokio::test] async fn $name() { super::$name(ProviderKind::DashScope).await })*
        }
        mod compatible {
            use super::*;
            $(#[tokio::test] async fn $name() { super::$name(ProviderKind::DashScopeCompatible).await })*
        }
    };
}

both_modes!(
    answers_whole_and_streamed,
    calls_tools_whole_and_streamed,
    wrong_keys_are_auth_errors_without_the_key,
    throttling_is_retried_after_its_hint,
    error_events_end_the_stream_with_an_error,
    arrears_are_not_retried
);

/// The native mode without `incremental_output` sends the whole text so far in every event: the
/// provider module must always ask for deltas, which the mock honours (checked over raw HTTP).
#[tokio::test]
async fn the_mock_streams_whole_text_so_far_without_incremental_output() {
    let (_state, base) = start(ProviderKind::DashScope).await;
    let body = json!({"model": "qwen-plus", "input": {"messages": [{"role": "user", "content": "a b"}]},
        "parameters": {"result_format": "message"}});
    let text = reqwest::Client::new()
        .post(format!("{base}/api/v1/services/aigc/text-generation/generation"))
        .bearer_auth(KEY)
        .header("X-DashScope-SSE", "enable")
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.starts_with("id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"), "{text}");
    assert!(text.contains(r#""content":"mock-dashscope qwen-plus ""#), "cumulative: {text}");
    assert!(text.contains(r#""finish_reason":"null""#) && text.contains(r#""finish_reason":"stop""#));
}
