//! ERNIE v1 and v2 end to end: the gateway against the mock Qianfan on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baimo_gateway::mock::{Fault, MockState, spawn};
use baimo_gateway::{
    Channel, ChatRequest, ErrorKind, FinishReason, Gateway, ProviderKind, RetryPolicy, StreamEvent, Usage,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

const KEY: &str = "ernie-api-key-1234";
const SECRET: &str = "ernie-secret-key-5678";
const V2_KEY: &str = "bce-v3/ALTAK-mock/0123456789abcdef";

async fn start(kind: ProviderKind, key: &str, secret: Option<&str>) -> (Arc<MockState>, String) {
    let state = MockState::with_credentials(kind, key, secret.map(String::from), None);
    let url = spawn(state.clone()).await.unwrap();
    (state, url)
}

fn gateway(kind: ProviderKind, url: &str, key: &str, secret: Option<&str>) -> Gateway {
    let channel: Channel = serde_json::from_value(json!({
        "name": "baidu", "provider": kind.name(), "base_url": url, "api_key": key, "secret_key": secret,
        "models": ["ernie-bot-4", "ernie-4.0-8k"]
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

fn with_tools(model: &str) -> ChatRequest {
    request(
        model,
        json!({"tools": [{"type": "function", "function": {"name": "weather", "description": "the weather",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]}),
    )
}

struct Collected {
    text: String,
    calls: Vec<(usize, Option<String>, Option<String>, String)>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    error: Option<baimo_gateway::UpstreamError>,
}

async fn collect(mut stream: baimo_gateway::EventStream) -> Collected {
    let mut c = Collected { text: String::new(), calls: Vec::new(), finish: None, usage: None, error: None };
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
async fn v1_answers_and_streams_the_same_text_with_one_cached_token() {
    let (state, url) = start(ProviderKind::Ernie, KEY, Some(SECRET)).await;
    let gw = gateway(ProviderKind::Ernie, &url, KEY, Some(SECRET));
    let whole = gw.chat(&request("ernie-bot-4", json!({}))).await.unwrap().value;
    let text = whole.content.clone().unwrap();
    assert_eq!(text, "mock-ernie completions_pro heard: hello there");
    assert_eq!(whole.finish_reason, FinishReason::Stop);
    assert!(whole.usage.prompt_tokens > 0 && whole.usage.completion_tokens == 5);

    let streamed =
        collect(gw.chat_stream(&request("ernie-bot-4", json!({"stream": true}))).await.unwrap().value).await;
    assert!(streamed.error.is_none(), "{:?}", streamed.error);
    assert_eq!(streamed.text, text);
    assert_eq!(streamed.finish, Some(FinishReason::Stop));
    assert_eq!(streamed.usage, Some(whole.usage), "the cumulative usage, not a sum");
    // Two chats, one token bought.
    assert_eq!(state.issued_tokens.lock().unwrap().len(), 1);
    assert_eq!(state.requests(), 2);
}

#[tokio::test]
async fn v1_conversations_are_made_valid_for_ernie() {
    let (_state, url) = start(ProviderKind::Ernie, KEY, Some(SECRET)).await;
    let gw = gateway(ProviderKind::Ernie, &url, KEY, Some(SECRET));
    // Starts with the assistant, has two user turns in a row, ends with an assistant prefill:
    // the mock rejects anything but an odd, alternating list (error 336003).
    let req = ChatRequest::from_openai(&json!({"model": "ernie-4.0-8k", "messages": [
        {"role": "assistant", "content": "Hi! Ask me anything."},
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "third"},
        {"role": "assistant", "content": "Sure,"}
    ]}))
    .unwrap();
    let answer = gw.chat(&req).await.unwrap().value;
    assert_eq!(answer.content.as_deref(), Some("mock-ernie completions_pro heard: third"));
}

#[tokio::test]
async fn v1_function_calls_whole_streamed_and_answered() {
    let (_state, url) = start(ProviderKind::Ernie, KEY, Some(SECRET)).await;
    let gw = gateway(ProviderKind::Ernie, &url, KEY, Some(SECRET));
    let whole = gw.chat(&with_tools("ernie-bot-4")).await.unwrap().value;
    assert_eq!(whole.finish_reason, FinishReason::ToolCalls);
    let call = &whole.tool_calls[0];
    assert_eq!(call.name, "weather");
    assert!(call.id.starts_with("call_"), "a generated id: {}", call.id);
    assert_eq!(serde_json::from_str::<Value>(&call.arguments).unwrap(), json!({"query": "hello there"}));

    let mut req = with_tools("ernie-bot-4");
    req.stream = true;
    let s = collect(gw.chat_stream(&req).await.unwrap().value).await;
    assert!(s.error.is_none());
    assert_eq!(s.finish, Some(FinishReason::ToolCalls));
    let (index, id, name, args) = &s.calls[0];
    assert_eq!((*index, name.as_deref()), (0, Some("weather")));
    assert!(id.as_deref().is_some_and(|i| i.starts_with("call_")));
    assert_eq!(serde_json::from_str::<Value>(args).unwrap(), json!({"query": "hello there"}));

    // The result goes back as a `function` turn (named from the call) and is quoted.
    let follow = ChatRequest::from_openai(&json!({"model": "ernie-bot-4", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": call.id, "type": "function",
            "function": {"name": "weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}
    ], "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]}))
    .unwrap();
    let answer = gw.chat(&follow).await.unwrap().value;
    assert_eq!(answer.content.as_deref(), Some("The tool answered: sunny"));
}

#[tokio::test]
async fn v1_a_wrong_secret_is_an_auth_error_that_names_no_secret() {
    let (state, url) = start(ProviderKind::Ernie, KEY, Some(SECRET)).await;
    let gw = gateway(ProviderKind::Ernie, &url, KEY, Some("wrong-secret-9999"));
    let failed = gw.chat(&request("ernie-bot-4", json!({}))).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::Auth);
    let text = format!("{} {:?}", failed.error, failed.error);
    assert!(text.contains("Client authentication failed"), "{text}");
    assert!(!text.contains("wrong-secret-9999") && !text.contains(KEY), "{text}");
    assert_eq!(state.requests(), 0, "no chat request without a token");
    assert!(state.issued_tokens.lock().unwrap().is_empty());
}

#[tokio::test]
async fn v1_an_expired_token_is_replaced_without_failing_the_request() {
    let (state, url) = start(ProviderKind::Ernie, KEY, Some(SECRET)).await;
    let gw = gateway(ProviderKind::Ernie, &url, KEY, Some(SECRET));
    gw.chat(&request("ernie-bot-4", json!({}))).await.unwrap();
    // Baidu expires (or revokes) the token before the gateway expected it to.
    for expiry in state.issued_tokens.lock().unwrap().values_mut() {
        *expiry = Instant::now() - Duration::from_secs(1);
    }
    let served = gw.chat(&request("ernie-bot-4", json!({}))).await.unwrap();
    assert!(served.failed.is_empty());
    assert_eq!(state.issued_tokens.lock().unwrap().len(), 2, "a second token was bought");
    assert_eq!(state.requests(), 3, "first chat, the refused one (error 111), the retry");
    let s = gw.chat_stream(&request("ernie-bot-4", json!({"stream": true}))).await.unwrap();
    assert!(collect(s.value).await.error.is_none());
}

#[tokio::test]
async fn v1_throttling_inside_a_200_is_retried() {
    let (state, url) = start(ProviderKind::Ernie, KEY, Some(SECRET)).await;
    let gw = gateway(ProviderKind::Ernie, &url, KEY, Some(SECRET));
    state.queue([Fault::Status { status: 429, retry_after_ms: Some(50), code: None }]);
    let served = gw.chat(&request("ernie-bot-4", json!({}))).await.unwrap();
    assert_eq!(state.requests(), 2);
    assert_eq!(served.failed.len(), 1);
    let e = &served.failed[0].error;
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert!(e.message.contains("qps request limit"), "{}", e.message);
    // Baidu sends no retry hint: the gateway's own backoff is used.
    assert_eq!(e.retry_after, None);
    assert!(served.value.content.unwrap().contains("heard: hello there"));
}

#[tokio::test]
async fn v1_quota_and_context_errors_are_not_retried() {
    let (state, url) = start(ProviderKind::Ernie, KEY, Some(SECRET)).await;
    let gw = gateway(ProviderKind::Ernie, &url, KEY, Some(SECRET));
    state.queue([Fault::Status { status: 429, retry_after_ms: None, code: Some("daily".into()) }]);
    let failed = gw.chat(&request("ernie-bot-4", json!({}))).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::QuotaExhausted);
    assert_eq!((failed.failed.len(), state.requests()), (1, 1));

    let (state, url) = start(ProviderKind::Ernie, KEY, Some(SECRET)).await;
    let gw = gateway(ProviderKind::Ernie, &url, KEY, Some(SECRET));
    state.queue([Fault::Status { status: 400, retry_after_ms: None, code: Some("context_length".into()) }]);
    let failed = gw.chat(&request("ernie-bot-4", json!({}))).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::ContextLength);
    assert_eq!(state.requests(), 1);
}

#[tokio::test]
async fn v1_stream_errors_json_instead_of_sse_and_mid_stream() {
    let (state, url) = start(ProviderKind::Ernie, KEY, Some(SECRET)).await;
    let gw = gateway(ProviderKind::Ernie, &url, KEY, Some(SECRET));
    let req = request("ernie-bot-4", json!({"stream": true}));
    // Failing at once: a JSON body with status 200, seen before the stream starts, so retried.
    state.queue([Fault::ErrorEvent { after_events: 0 }]);
    let served = gw.chat_stream(&req).await.unwrap();
    assert_eq!(served.failed.len(), 1);
    assert_eq!(served.failed[0].error.kind, ErrorKind::Server);
    assert!(served.failed[0].error.message.contains("336100"));
    assert!(collect(served.value).await.error.is_none());
    // Failing after two chunks: the stream ends with the error.
    state.queue([Fault::ErrorEvent { after_events: 2 }]);
    let s = collect(gw.chat_stream(&req).await.unwrap().value).await;
    assert_eq!(s.text, "mock-ernie completions_pro ");
    assert_eq!(s.error.map(|e| e.kind), Some(ErrorKind::Server));
    // Cut off: an error, never a silent end.
    state.queue([Fault::DropStream { after_events: 3 }]);
    let s = collect(gw.chat_stream(&req).await.unwrap().value).await;
    assert_eq!(s.error.map(|e| e.kind), Some(ErrorKind::Connection));
}

#[tokio::test]
async fn v2_speaks_openai_with_a_bearer_key() {
    let (state, url) = start(ProviderKind::ErnieV2, V2_KEY, None).await;
    let gw = gateway(ProviderKind::ErnieV2, &url, V2_KEY, None);
    let whole = gw.chat(&request("ernie-4.0-8k", json!({}))).await.unwrap().value;
    let text = whole.content.clone().unwrap();
    assert_eq!(text, "mock-ernie ernie-4.0-8k heard: hello there");
    let s =
        collect(gw.chat_stream(&request("ernie-4.0-8k", json!({"stream": true}))).await.unwrap().value).await;
    assert!(s.error.is_none());
    assert_eq!((s.text, s.finish, s.usage), (text, Some(FinishReason::Stop), Some(whole.usage)));

    let call = gw.chat(&with_tools("ernie-4.0-8k")).await.unwrap().value;
    assert_eq!((call.finish_reason, call.tool_calls[0].name.as_str()), (FinishReason::ToolCalls, "weather"));
    let mut req = with_tools("ernie-4.0-8k");
    req.stream = true;
    let s = collect(gw.chat_stream(&req).await.unwrap().value).await;
    assert_eq!(s.calls[0].2.as_deref(), Some("weather"));
    assert_eq!(s.finish, Some(FinishReason::ToolCalls));
    assert_eq!(state.requests(), 4);
}

#[tokio::test]
async fn v2_errors() {
    let (state, url) = start(ProviderKind::ErnieV2, V2_KEY, None).await;
    let wrong = gateway(ProviderKind::ErnieV2, &url, "bce-v3/ALTAK-wrong/secret-part", None);
    let failed = wrong.chat(&request("ernie-4.0-8k", json!({}))).await.err().unwrap();
    assert_eq!((failed.error.kind, failed.error.provider), (ErrorKind::Auth, "ernie-v2"));
    assert!(!failed.error.to_string().contains("secret-part"));

    let gw = gateway(ProviderKind::ErnieV2, &url, V2_KEY, None);
    state.queue([Fault::Status { status: 429, retry_after_ms: None, code: None }]);
    let before = state.requests();
    let served = gw.chat(&request("ernie-4.0-8k", json!({}))).await.unwrap();
    assert_eq!((served.failed.len(), state.requests() - before), (1, 2));
    assert_eq!(served.failed[0].error.kind, ErrorKind::RateLimited);

    state.queue([Fault::Status { status: 400, retry_after_ms: None, code: Some("context_length".into()) }]);
    let failed = gw.chat(&request("ernie-4.0-8k", json!({}))).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::ContextLength);

    state.queue([Fault::ErrorEvent { after_events: 1 }]);
    let s =
        collect(gw.chat_stream(&request("ernie-4.0-8k", json!({"stream": true}))).await.unwrap().value).await;
    assert_eq!(s.error.map(|e| e.kind), Some(ErrorKind::Server));
}
