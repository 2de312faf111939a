//! Baichuan end to end: the gateway against the mock Baichuan over loopback — the current
//! OpenAI-style API (answers, streams, tool calls, auth, throttling with a hint, quota, in-stream
//! errors) and the legacy MD5-signed API (signature and timestamp checked by the mock, errors
//! inside a 200, NDJSON streams).

use std::sync::Arc;
use std::time::Duration;

use baimo_gateway::mock::{Fault, MockState, spawn};
use baimo_gateway::providers::baichuan::legacy_signature;
use baimo_gateway::{
    Channel, ChatRequest, ErrorKind, FinishReason, Gateway, ProviderKind, RetryPolicy, StreamEvent,
};
use serde_json::{Value, json};

mod support;
use support::{collect, text_of};

const KEY: &str = "sk-baichuan-mock-4b1d2c3e";
const SECRET: &str = "bc-secret-9f8e7d6c";

async fn start(kind: ProviderKind) -> (Arc<MockState>, String) {
    let state = MockState::with_credentials(kind, KEY, Some(SECRET.into()), None);
    let base = spawn(state.clone()).await.unwrap();
    (state, base)
}

fn gateway(kind: ProviderKind, base: &str, key: &str, secret: &str) -> Gateway {
    let channel: Channel = serde_json::from_value(json!({
        "name": "bc", "provider": kind.name(), "base_url": base, "api_key": key, "secret_key": secret,
        "models": ["Baichuan2-Turbo"],
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
    let mut body = json!({"model": "Baichuan2-Turbo", "stream": stream, "temperature": 1.3, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello from the test"}
    ]});
    if tools {
        body["tools"] = json!([{"type": "function", "function": {"name": "weather",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]);
    }
    ChatRequest::from_openai(&body).unwrap()
}

/// The legacy API has no system role: its text opens the user turn the mock repeats.
fn want(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::BaichuanLegacy => {
            "mock-baichuan Baichuan2-Turbo heard: be brief\n\nhello from the test"
        }
        _ => "mock-baichuan Baichuan2-Turbo heard: hello from the test",
    }
}

async fn answers_whole_and_streamed(kind: ProviderKind) {
    let (state, base) = start(kind).await;
    let gw = gateway(kind, &base, KEY, SECRET);
    let whole = gw.chat(&request(false, false)).await.unwrap().value;
    assert_eq!((whole.content.as_deref(), whole.finish_reason), (Some(want(kind)), FinishReason::Stop));
    assert!(whole.usage.prompt_tokens > 0 && whole.usage.completion_tokens > 5, "{:?}", whole.usage);
    let (events, error) = collect(&gw, &request(true, false)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text_of(&events), want(kind));
    assert!(events.contains(&StreamEvent::Finish(FinishReason::Stop)));
    assert!(events.contains(&StreamEvent::Usage(whole.usage)), "{events:?}");
    assert_eq!(state.requests(), 2);
}

async fn wrong_credentials_are_auth_errors_without_them(kind: ProviderKind) {
    let (_state, base) = start(kind).await;
    for (key, secret) in [("sk-wrong-key-123456", SECRET), (KEY, "wrong-secret-123456")] {
        if kind == ProviderKind::Baichuan && secret != SECRET {
            continue; // the current API has no secret
        }
        let failed = gateway(kind, &base, key, secret).chat(&request(false, false)).await.err().unwrap();
        assert_eq!(failed.error.kind, ErrorKind::Auth, "{}", failed.error);
        let text = failed.error.to_string();
        assert!(!text.contains(key) && !text.contains(secret), "{text}");
    }
}

async fn throttling_is_retried(kind: ProviderKind) {
    let (state, base) = start(kind).await;
    state.queue([Fault::Status { status: 429, retry_after_ms: Some(20), code: None }]);
    let served = gateway(kind, &base, KEY, SECRET).chat(&request(false, false)).await.unwrap();
    assert_eq!((state.requests(), served.failed.len()), (2, 1));
    let first = &served.failed[0].error;
    assert_eq!(first.kind, ErrorKind::RateLimited);
    if kind == ProviderKind::Baichuan {
        // The legacy API's 10203 comes in a 200 body: no header is read for it.
        assert_eq!(first.retry_after, Some(Duration::from_millis(20)));
    }
    assert_eq!(served.value.content.as_deref(), Some(want(kind)));
}

async fn quota_is_not_retried(kind: ProviderKind) {
    let (state, base) = start(kind).await;
    state.set_always(Some(Fault::Status {
        status: 429,
        retry_after_ms: None,
        code: Some("insufficient_quota".into()),
    }));
    let failed = gateway(kind, &base, KEY, SECRET).chat(&request(false, false)).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::QuotaExhausted);
    assert_eq!(state.requests(), 1);
}

async fn error_events_end_the_stream_with_an_error(kind: ProviderKind) {
    let (state, base) = start(kind).await;
    let gw = gateway(kind, &base, KEY, SECRET);
    state.queue([Fault::ErrorEvent { after_events: 2 }]);
    let (events, error) = collect(&gw, &request(true, false)).await;
    assert_eq!(error.expect("an error ends it").kind, ErrorKind::Server);
    assert_eq!(text_of(&events), "mock-baichuan Baichuan2-Turbo ");
    state.queue([Fault::DropStream { after_events: 2 }]);
    assert_eq!(collect(&gw, &request(true, false)).await.1.unwrap().kind, ErrorKind::Connection);
}

macro_rules! both_apis {
    ($($name:ident),*) => {
        mod current {
            use super::*;
            $(#[tokio::test] async fn $name() { super::$name(ProviderKind::Baichuan).await })*
        }
        mod legacy {
            use super::*;
            $(#[tokio::test] async fn $name() { super::$name(ProviderKind::BaichuanLegacy).await })*
        }
    };
}

both_apis!(
    answers_whole_and_streamed,
    wrong_credentials_are_auth_errors_without_them,
    throttling_is_retried,
    quota_is_not_retried,
    error_events_end_the_stream_with_an_error
);

#[tokio::test]
async fn current_calls_tools_whole_and_streamed() {
    let (_state, base) = start(ProviderKind::Baichuan).await;
    let gw = gateway(ProviderKind::Baichuan, &base, KEY, SECRET);
    let whole = gw.chat(&request(false, true)).await.unwrap().value;
    assert_eq!(whole.finish_reason, FinishReason::ToolCalls);
    let call = &whole.tool_calls[0];
    assert_eq!(call.name, "weather");
    assert_eq!(
        serde_json::from_str::<Value>(&call.arguments).unwrap(),
        json!({"query": "hello from the test"})
    );
    let (events, error) = collect(&gw, &request(true, true)).await;
    assert!(error.is_none(), "{error:?}");
    let mut args = String::new();
    for e in &events {
        if let StreamEvent::ToolCall { arguments, .. } = e {
            args.push_str(arguments);
        }
    }
    assert_eq!(args, call.arguments);
    assert!(events.contains(&StreamEvent::Finish(FinishReason::ToolCalls)));
}

/// The mock's legacy checks over raw HTTP: a correct signature passes; a stale timestamp, a
/// signature over other bytes and another algorithm are refused with Baichuan's codes, in a 200.
#[tokio::test]
async fn legacy_the_mock_checks_signature_and_timestamp() {
    let (_state, base) = start(ProviderKind::BaichuanLegacy).await;
    let body = json!({"model": "Baichuan2-53B", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let client = reqwest::Client::new();
    let send = |timestamp: u64, signature: String, algo: &str| {
        let req = client
            .post(format!("{base}/v1/chat"))
            .bearer_auth(KEY)
            .header("X-BC-Timestamp", timestamp.to_string())
            .header("X-BC-Signature", signature)
            .header("X-BC-Sign-Algo", algo)
            .body(body.clone());
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200, "errors come in a 200");
            r.json::<Value>().await.unwrap()["code"].as_u64().unwrap()
        }
    };
    let sign = |t: u64| legacy_signature(SECRET, &body, &t.to_string());
    assert_eq!(send(now, sign(now), "MD5").await, 0);
    assert_eq!(send(now - 3600, sign(now - 3600), "MD5").await, 10104);
    assert_eq!(send(now, legacy_signature(SECRET, "{}", &now.to_string()), "MD5").await, 10105);
    assert_eq!(send(now, sign(now), "SHA256").await, 10106);
}
