//! Zhipu end to end: the gateway against the mock Zhipu over loopback, v4 and v3 — JWTs verified
//! by the mock for real (wrong secret, expired, seconds instead of milliseconds), answers whole
//! and streamed, tool calls, throttling retried, arrears (1113) not retried, mid-stream failures.

use std::sync::Arc;
use std::time::Duration;

use baimo_gateway::mock::{Fault, MockState, spawn};
use baimo_gateway::providers::zhipu::sign_token;
use baimo_gateway::{
    Channel, ChatRequest, ErrorKind, FinishReason, Gateway, ProviderKind, RetryPolicy, StreamEvent,
};
use serde_json::{Value, json};

mod support;
use support::{collect, text_of};

const KEY: &str = "4f1c0a6b2e9d.Zr8sK2pLmQ7vX3nW";

async fn start(kind: ProviderKind) -> (Arc<MockState>, String) {
    let state = MockState::new(kind, KEY);
    let base = spawn(state.clone()).await.unwrap();
    (state, base)
}

fn gateway(kind: ProviderKind, base: &str, key: &str) -> Gateway {
    let channel: Channel = serde_json::from_value(json!({
        "name": "glm", "provider": kind.name(), "base_url": base, "api_key": key, "models": ["glm-4"],
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
    let mut body = json!({"model": "glm-4", "stream": stream, "temperature": 0, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello from the test"}
    ]});
    if tools {
        body["tools"] = json!([{"type": "function", "function": {"name": "weather",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]);
    }
    ChatRequest::from_openai(&body).unwrap()
}

const WANT: &str = "mock-zhipu glm-4 heard: hello from the test";

#[tokio::test]
async fn v4_answers_whole_and_streamed_with_a_signed_token() {
    let (state, base) = start(ProviderKind::Zhipu).await;
    let gw = gateway(ProviderKind::Zhipu, &base, KEY);
    let whole = gw.chat(&request(false, false)).await.unwrap().value;
    assert_eq!((whole.content.as_deref(), whole.finish_reason), (Some(WANT), FinishReason::Stop));
    assert_eq!(whole.usage.completion_tokens, 7);

    let (events, error) = collect(&gw, &request(true, false)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text_of(&events), WANT);
    assert!(events.contains(&StreamEvent::Finish(FinishReason::Stop)));
    assert!(events.contains(&StreamEvent::Usage(whole.usage)));
    assert_eq!(state.requests(), 2);
}

#[tokio::test]
async fn v4_calls_tools_whole_and_streamed() {
    let (_state, base) = start(ProviderKind::Zhipu).await;
    let gw = gateway(ProviderKind::Zhipu, &base, KEY);
    let whole = gw.chat(&request(false, true)).await.unwrap().value;
    assert_eq!(whole.finish_reason, FinishReason::ToolCalls);
    let call = &whole.tool_calls[0];
    assert_eq!(call.name, "weather");
    assert!(call.id.starts_with("call_"));
    assert_eq!(
        serde_json::from_str::<Value>(&call.arguments).unwrap(),
        json!({"query": "hello from the test"})
    );

    let (events, error) = collect(&gw, &request(true, true)).await;
    assert!(error.is_none(), "{error:?}");
    let calls: Vec<_> = events.iter().filter(|e| matches!(e, StreamEvent::ToolCall { .. })).collect();
    let [StreamEvent::ToolCall { index: 0, id: Some(id), name: Some(name), arguments }] = calls[..] else {
        panic!("one whole tool call: {calls:?}");
    };
    assert!(id.starts_with("call_"));
    assert_eq!((name, arguments), (&call.name, &call.arguments));
    assert!(events.contains(&StreamEvent::Finish(FinishReason::ToolCalls)));
}

#[tokio::test]
async fn v4_tokens_signed_with_the_wrong_secret_are_auth_errors_without_the_secret() {
    let (_state, base) = start(ProviderKind::Zhipu).await;
    let wrong = "4f1c0a6b2e9d.WrongSecret12345";
    let failed = gateway(ProviderKind::Zhipu, &base, wrong).chat(&request(false, false)).await.err().unwrap();
    assert_eq!((failed.error.kind, failed.error.status), (ErrorKind::Auth, Some(401)));
    let text = failed.error.to_string();
    assert!(text.contains("1002") && !text.contains("WrongSecret") && !text.contains(wrong), "{text}");
}

/// The mock checks expiry in milliseconds: an expired token, or one whose `exp` is in seconds,
/// is refused with 1003; a good token and the raw key are taken.
#[tokio::test]
async fn v4_the_mock_refuses_expired_tokens() {
    let (_state, base) = start(ProviderKind::Zhipu).await;
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let client = reqwest::Client::new();
    let body = json!({"model": "glm-4", "messages": [{"role": "user", "content": "hi"}]});
    let send = |auth: String| {
        let req = client.post(format!("{base}/api/paas/v4/chat/completions")).json(&body);
        async move {
            let r = req.header("Authorization", auth).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let expired = sign_token(KEY, now_ms - 120_000, Duration::from_secs(60)).unwrap();
    let (status, v) = send(format!("Bearer {expired}")).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("1003")), "{v}");
    let in_seconds = sign_token(KEY, now_ms / 1000, Duration::from_secs(3600)).unwrap();
    assert_eq!(send(format!("Bearer {in_seconds}")).await.1["error"]["code"], "1003");
    let good = sign_token(KEY, now_ms, Duration::from_secs(60)).unwrap();
    assert_eq!(send(format!("Bearer {good}")).await.0, 200);
    assert_eq!(send(good).await.0, 200, "the bare token (v3 style) is taken too");
    assert_eq!(send(format!("Bearer {KEY}")).await.0, 200, "the raw key is taken");
    let (status, v) = send("Bearer a.b.c".into()).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("1002")));
}

#[tokio::test]
async fn v4_throttling_is_retried_after_its_hint() {
    let (state, base) = start(ProviderKind::Zhipu).await;
    state.queue([Fault::Status { status: 429, retry_after_ms: Some(20), code: None }]);
    let served = gateway(ProviderKind::Zhipu, &base, KEY).chat(&request(false, false)).await.unwrap();
    assert_eq!((state.requests(), served.failed.len()), (2, 1));
    let first = &served.failed[0].error;
    assert_eq!((first.kind, first.retry_after), (ErrorKind::RateLimited, Some(Duration::from_millis(20))));
    assert!(first.message.contains("1302"));
    assert_eq!(served.value.content.as_deref(), Some(WANT));
}

#[tokio::test]
async fn v4_arrears_are_not_retried_although_they_come_as_429() {
    let (state, base) = start(ProviderKind::Zhipu).await;
    state.set_always(Some(Fault::Status { status: 429, retry_after_ms: None, code: Some("1113".into()) }));
    let failed = gateway(ProviderKind::Zhipu, &base, KEY).chat(&request(false, false)).await.err().unwrap();
    assert_eq!((failed.error.kind, failed.error.status), (ErrorKind::QuotaExhausted, Some(429)));
    assert_eq!(state.requests(), 1);
    state.set_always(Some(Fault::Status {
        status: 400,
        retry_after_ms: None,
        code: Some("context_length".into()),
    }));
    let failed = gateway(ProviderKind::Zhipu, &base, KEY).chat(&request(false, false)).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::ContextLength);
}

#[tokio::test]
async fn v4_a_mid_stream_failure_ends_the_stream_with_an_error() {
    let (state, base) = start(ProviderKind::Zhipu).await;
    let gw = gateway(ProviderKind::Zhipu, &base, KEY);
    state.queue([Fault::ErrorEvent { after_events: 2 }]);
    let (events, error) = collect(&gw, &request(true, false)).await;
    assert_eq!(error.expect("an error ends it").kind, ErrorKind::Server);
    assert_eq!(text_of(&events), "mock-zhipu glm-4 ");
    assert!(!events.iter().any(|e| matches!(e, StreamEvent::Finish(_))));
    state.queue([Fault::DropStream { after_events: 2 }]);
    assert_eq!(collect(&gw, &request(true, false)).await.1.unwrap().kind, ErrorKind::Connection);
}

#[tokio::test]
async fn v3_answers_whole_and_streamed() {
    let (state, base) = start(ProviderKind::ZhipuV3).await;
    let gw = gateway(ProviderKind::ZhipuV3, &base, KEY);
    let whole = gw.chat(&request(false, false)).await.unwrap().value;
    assert_eq!(whole.content.as_deref(), Some(WANT), "unquoted");
    assert_eq!(whole.usage.completion_tokens, 7);
    let (events, error) = collect(&gw, &request(true, false)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text_of(&events), WANT);
    assert_eq!(
        events[events.len() - 2..],
        [StreamEvent::Finish(FinishReason::Stop), StreamEvent::Usage(whole.usage)]
    );
    assert_eq!(state.requests(), 2);
}

#[tokio::test]
async fn v3_errors_inside_a_200_are_classified() {
    let (state, base) = start(ProviderKind::ZhipuV3).await;
    let wrong = "4f1c0a6b2e9d.WrongSecret12345";
    let failed =
        gateway(ProviderKind::ZhipuV3, &base, wrong).chat(&request(false, false)).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::Auth);
    assert!(!failed.error.to_string().contains("WrongSecret"));

    let gw = gateway(ProviderKind::ZhipuV3, &base, KEY);
    state.queue([Fault::Status { status: 429, retry_after_ms: None, code: None }]);
    let before = state.requests();
    let served = gw.chat(&request(false, false)).await.unwrap();
    assert_eq!((state.requests() - before, served.failed.len()), (2, 1));
    assert_eq!(served.failed[0].error.kind, ErrorKind::RateLimited);

    state.set_always(Some(Fault::Status { status: 429, retry_after_ms: None, code: Some("1113".into()) }));
    let before = state.requests();
    let failed = gw.chat(&request(false, false)).await.err().unwrap();
    assert_eq!((failed.error.kind, state.requests() - before), (ErrorKind::QuotaExhausted, 1));
}

#[tokio::test]
async fn v3_error_events_end_the_stream_with_an_error() {
    let (state, base) = start(ProviderKind::ZhipuV3).await;
    let gw = gateway(ProviderKind::ZhipuV3, &base, KEY);
    state.queue([Fault::ErrorEvent { after_events: 3 }]);
    let (events, error) = collect(&gw, &request(true, false)).await;
    let error = error.expect("an error ends it");
    assert_eq!(error.kind, ErrorKind::Server);
    assert_eq!(text_of(&events), "mock-zhipu glm-4 heard: ");
    state.queue([Fault::DropStream { after_events: 3 }]);
    assert_eq!(collect(&gw, &request(true, false)).await.1.unwrap().kind, ErrorKind::Connection);
}
