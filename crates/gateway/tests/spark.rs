//! Spark's WebSocket and HTTP APIs end to end: the gateway against the mock on loopback.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use baimo_gateway::mock::{Fault, MockState, serve};
use baimo_gateway::providers::spark_ws::signed_url;
use baimo_gateway::{
    Channel, ChatRequest, ErrorKind, EventStream, FinishReason, Gateway, ProviderKind, RetryPolicy,
    StreamEvent, UpstreamError, Usage,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

const KEY: &str = "spark-api-key-0001";
const SECRET: &str = "spark-api-secret-0002";
const APP: &str = "app00003";
const PASSWORD: &str = "spark-api-password-0004";

async fn start(kind: ProviderKind, key: &str) -> (Arc<MockState>, String) {
    let state = MockState::with_credentials(kind, key, Some(SECRET.into()), Some(APP.into()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(state.clone(), listener));
    let scheme = if kind == ProviderKind::Spark { "ws" } else { "http" };
    (state, format!("{scheme}://{addr}"))
}

fn gateway(kind: ProviderKind, url: &str, key: &str, secret: &str, app: &str) -> Gateway {
    let channel: Channel = serde_json::from_value(json!({
        "name": "xfyun", "provider": kind.name(), "base_url": url, "api_key": key, "secret_key": secret,
        "app_id": app, "models": ["spark-3.5", "spark-4.0", "spark-lite"]
    }))
    .unwrap();
    let policy = RetryPolicy {
        base_backoff: Duration::from_millis(1),
        timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        ..RetryPolicy::default()
    };
    Gateway::new(vec![channel], policy).unwrap()
}

fn ws_gateway(url: &str) -> Gateway {
    gateway(ProviderKind::Spark, url, KEY, SECRET, APP)
}

fn request(model: &str, extra: Value) -> ChatRequest {
    let mut body = json!({"model": model, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"}
    ]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    ChatRequest::from_openai(&body).unwrap()
}

fn with_tools(model: &str, stream: bool) -> ChatRequest {
    request(
        model,
        json!({"stream": stream, "tools": [{"type": "function", "function": {"name": "weather",
            "description": "the weather", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]}),
    )
}

#[derive(Default)]
struct Collected {
    text: String,
    calls: Vec<(usize, Option<String>, Option<String>, String)>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    error: Option<UpstreamError>,
}

async fn collect(mut stream: EventStream) -> Collected {
    let mut c = Collected::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(StreamEvent::Text(t)) => c.text.push_str(&t),
            Ok(StreamEvent::ToolCall { index, id, name, arguments }) => {
                c.calls.push((index, id, name, arguments))
            }
            Ok(StreamEvent::Finish(f)) => c.finish = Some(f),
            Ok(StreamEvent::Usage(u)) => c.usage = Some(u),
            Ok(StreamEvent::Logprobs(_) | StreamEvent::StopSequence(_)) => {}
            Err(e) => {
                c.error = Some(e);
                break;
            }
        }
    }
    c
}

#[tokio::test]
async fn ws_answers_and_streams_the_same_text() {
    let (state, url) = start(ProviderKind::Spark, KEY).await;
    let gw = ws_gateway(&url);
    let whole = gw.chat(&request("spark-3.5", json!({}))).await.unwrap().value;
    let text = whole.content.clone().unwrap();
    assert_eq!(text, "mock-spark generalv3.5 heard: hello there");
    assert_eq!(whole.finish_reason, FinishReason::Stop);
    assert!(whole.usage.prompt_tokens > 0 && whole.usage.completion_tokens == 5);
    let s =
        collect(gw.chat_stream(&request("spark-3.5", json!({"stream": true}))).await.unwrap().value).await;
    assert!(s.error.is_none(), "{:?}", s.error);
    assert_eq!((s.text, s.finish, s.usage), (text, Some(FinishReason::Stop), Some(whole.usage)));
    // Another version: another path and domain (the mock checks they agree).
    let lite = gw.chat(&request("spark-lite", json!({"max_tokens": 2}))).await.unwrap().value;
    assert_eq!(lite.content.as_deref(), Some("mock-spark lite "));
    assert_eq!(lite.finish_reason, FinishReason::Length);
    assert_eq!(state.requests(), 3);
}

#[tokio::test]
async fn ws_function_calls_whole_and_streamed() {
    let (_state, url) = start(ProviderKind::Spark, KEY).await;
    let gw = ws_gateway(&url);
    let whole = gw.chat(&with_tools("spark-4.0", false)).await.unwrap().value;
    assert_eq!(whole.finish_reason, FinishReason::ToolCalls);
    let call = &whole.tool_calls[0];
    assert_eq!(call.name, "weather");
    assert!(call.id.starts_with("call_"));
    assert_eq!(serde_json::from_str::<Value>(&call.arguments).unwrap(), json!({"query": "hello there"}));
    let s = collect(gw.chat_stream(&with_tools("spark-4.0", true)).await.unwrap().value).await;
    assert!(s.error.is_none());
    assert_eq!(s.finish, Some(FinishReason::ToolCalls));
    let (index, id, name, args) = &s.calls[0];
    assert_eq!((*index, name.as_deref()), (0, Some("weather")));
    assert!(id.as_deref().is_some_and(|i| i.starts_with("call_")));
    assert_eq!(serde_json::from_str::<Value>(args).unwrap(), json!({"query": "hello there"}));
}

#[tokio::test]
async fn ws_bad_credentials_are_auth_errors_without_secrets() {
    let (state, url) = start(ProviderKind::Spark, KEY).await;
    for gw in [
        gateway(ProviderKind::Spark, &url, KEY, "wrong-secret-xyz1", APP),
        gateway(ProviderKind::Spark, &url, "wrong-key-xyz2", SECRET, APP),
        gateway(ProviderKind::Spark, &url, KEY, SECRET, "otherapp"),
    ] {
        let failed = gw.chat(&request("spark-3.5", json!({}))).await.err().unwrap();
        assert_eq!(failed.error.kind, ErrorKind::Auth, "{}", failed.error);
        let text = format!("{} {:?}", failed.error, failed.failed);
        for secret in ["wrong-secret-xyz1", "wrong-key-xyz2", SECRET, KEY] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    assert_eq!(state.requests(), 3);
}

#[tokio::test]
async fn ws_the_mock_checks_signature_and_clock() {
    let (_state, url) = start(ProviderKind::Spark, KEY).await;
    let status = |signed: String| async move {
        match tokio_tungstenite::connect_async(signed).await {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
            Err(e) => panic!("{e}"),
        }
    };
    let now = httpdate::fmt_http_date(SystemTime::now());
    assert_eq!(status(signed_url(&url, "/v3.5/chat", KEY, SECRET, &now).unwrap()).await, 101);
    let stale = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(600));
    assert_eq!(status(signed_url(&url, "/v3.5/chat", KEY, SECRET, &stale).unwrap()).await, 403);
    // Signed for one path, used for another.
    let other =
        signed_url(&url, "/v4.0/chat", KEY, SECRET, &now).unwrap().replace("/v4.0/chat", "/v3.5/chat");
    assert_eq!(status(other).await, 401);
    assert_eq!(status(format!("{url}/v3.5/chat")).await, 401);
}

#[tokio::test]
async fn wss_goes_through_tls() {
    // The mock speaks plain ws: a wss:// client must fail the TLS handshake (not panic, not
    // fall back to plain text).
    let (_state, url) = start(ProviderKind::Spark, KEY).await;
    let gw = ws_gateway(&url.replace("ws://", "wss://"));
    let failed = gw.chat(&request("spark-3.5", json!({}))).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::Connection, "{}", failed.error);
}

#[tokio::test]
async fn ws_throttling_is_retried_and_quota_is_not() {
    let (state, url) = start(ProviderKind::Spark, KEY).await;
    let gw = ws_gateway(&url);
    state.queue([Fault::Status { status: 429, retry_after_ms: None, code: None }]);
    let served = gw.chat(&request("spark-3.5", json!({}))).await.unwrap();
    assert_eq!((state.requests(), served.failed.len()), (2, 1));
    let e = &served.failed[0].error;
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert!(e.message.contains("11202"), "{}", e.message);
    // A stream too: the error frame comes first, so it is retried before the stream starts.
    state.queue([Fault::Status { status: 429, retry_after_ms: None, code: Some("concurrency".into()) }]);
    let served = gw.chat_stream(&request("spark-3.5", json!({"stream": true}))).await.unwrap();
    assert_eq!(served.failed.len(), 1);
    assert!(collect(served.value).await.error.is_none());

    let (state, url) = start(ProviderKind::Spark, KEY).await;
    let gw = ws_gateway(&url);
    state.queue([Fault::Status { status: 429, retry_after_ms: None, code: Some("daily".into()) }]);
    let failed = gw.chat(&request("spark-3.5", json!({}))).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::QuotaExhausted);
    assert_eq!((failed.failed.len(), state.requests()), (1, 1));
    state.queue([Fault::Status { status: 400, retry_after_ms: None, code: Some("context_length".into()) }]);
    let failed = gw.chat(&request("spark-4.0", json!({}))).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::ContextLength);
}

#[tokio::test]
async fn ws_errors_mid_stream_end_the_stream() {
    let (state, url) = start(ProviderKind::Spark, KEY).await;
    let gw = ws_gateway(&url);
    let req = request("spark-3.5", json!({"stream": true}));
    state.queue([Fault::ErrorEvent { after_events: 2 }]);
    let s = collect(gw.chat_stream(&req).await.unwrap().value).await;
    assert_eq!(s.text, "mock-spark generalv3.5 ");
    let e = s.error.unwrap();
    assert_eq!(e.kind, ErrorKind::Server);
    assert!(e.message.contains("10012"), "{}", e.message);
    state.queue([Fault::DropStream { after_events: 3 }]);
    let s = collect(gw.chat_stream(&req).await.unwrap().value).await;
    assert_eq!(s.error.map(|e| e.kind), Some(ErrorKind::Connection));
    assert_eq!(s.finish, None);
}

#[tokio::test]
async fn http_api_answers_streams_and_calls() {
    let (state, url) = start(ProviderKind::SparkHttp, PASSWORD).await;
    let gw = gateway(ProviderKind::SparkHttp, &url, PASSWORD, SECRET, APP);
    let whole = gw.chat(&request("spark-3.5", json!({}))).await.unwrap().value;
    let text = whole.content.clone().unwrap();
    assert_eq!(text, "mock-spark generalv3.5 heard: hello there");
    let s =
        collect(gw.chat_stream(&request("spark-3.5", json!({"stream": true}))).await.unwrap().value).await;
    assert!(s.error.is_none());
    assert_eq!((s.text, s.finish, s.usage), (text, Some(FinishReason::Stop), Some(whole.usage)));
    let call = gw.chat(&with_tools("spark-4.0", false)).await.unwrap().value;
    assert_eq!((call.finish_reason, call.tool_calls[0].name.as_str()), (FinishReason::ToolCalls, "weather"));
    let s = collect(gw.chat_stream(&with_tools("spark-4.0", true)).await.unwrap().value).await;
    assert_eq!(s.calls[0].2.as_deref(), Some("weather"));
    assert_eq!(state.requests(), 4);
}

#[tokio::test]
async fn http_api_errors() {
    let (state, url) = start(ProviderKind::SparkHttp, PASSWORD).await;
    let wrong = gateway(ProviderKind::SparkHttp, &url, "wrong-password-777", SECRET, APP);
    let failed = wrong.chat(&request("spark-3.5", json!({}))).await.err().unwrap();
    assert_eq!((failed.error.kind, failed.error.provider), (ErrorKind::Auth, "spark-http"));
    assert!(!failed.error.to_string().contains("wrong-password-777"));

    let gw = gateway(ProviderKind::SparkHttp, &url, PASSWORD, SECRET, APP);
    state.queue([Fault::Status { status: 429, retry_after_ms: None, code: None }]);
    let before = state.requests();
    let served = gw.chat(&request("spark-3.5", json!({}))).await.unwrap();
    assert_eq!((served.failed.len(), state.requests() - before), (1, 2));
    assert_eq!(served.failed[0].error.kind, ErrorKind::RateLimited);
    state.queue([Fault::Status { status: 429, retry_after_ms: None, code: Some("daily".into()) }]);
    let failed = gw.chat(&request("spark-3.5", json!({}))).await.err().unwrap();
    assert_eq!((failed.error.kind, failed.failed.len()), (ErrorKind::QuotaExhausted, 1));
    state.queue([Fault::ErrorEvent { after_events: 1 }]);
    let s =
        collect(gw.chat_stream(&request("spark-3.5", json!({"stream": true}))).await.unwrap().value).await;
    assert_eq!(s.error.map(|e| e.kind), Some(ErrorKind::Server));
}
