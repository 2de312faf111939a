//! The gateway against the mock PaLM 2 server, over loopback: chat (generateMessage) and text
//! (generateText) models, a stream made of the whole answer, stop sequences applied by the
//! gateway, tools refused before sending, the key checks, retries and a quota not retried.

use std::sync::Arc;
use std::time::Duration;

use baimo_gateway::mock::{Fault, MockState, spawn};
use baimo_gateway::{Channel, ChatRequest, ErrorKind, FinishReason, Gateway, RetryPolicy, StreamEvent};
use futures_util::StreamExt;
use serde_json::{Value, json};

const KEY: &str = "AIzaSy-mock-palm-key-0123456789";

async fn start() -> (Arc<MockState>, String) {
    let state = MockState::new(baimo_gateway::ProviderKind::Palm, KEY);
    let base = spawn(state.clone()).await.unwrap();
    (state, base)
}

fn gateway(base: &str, key: &str) -> Gateway {
    let channel: Channel = serde_json::from_value(json!({
        "name": "palm", "provider": "palm", "base_url": base, "api_key": key,
        "models": ["chat-bison-001", "text-bison-001", "PaLM-2"], "model_map": {"PaLM-2": "chat-bison-001"}
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

fn request(model: &str, stream: bool, extra: Value) -> ChatRequest {
    let mut body = json!({"model": model, "stream": stream, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "hello there"}
    ]});
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    ChatRequest::from_openai(&body).unwrap()
}

#[tokio::test]
async fn chat_whole_and_as_a_stream() {
    let (mock, base) = start().await;
    let gw = gateway(&base, KEY);
    let whole = gw.chat(&request("PaLM-2", false, json!({}))).await.map_err(|f| f.error).unwrap().value;
    assert_eq!(whole.content.as_deref(), Some("mock-palm chat-bison-001 heard: hello there"));
    assert_eq!(whole.finish_reason, FinishReason::Stop);
    // PaLM counts nothing: the gateway's estimate (about four characters a token).
    assert!(whole.usage.prompt_tokens > 0 && whole.usage.completion_tokens > 0, "{:?}", whole.usage);

    let served = gw.chat_stream(&request("PaLM-2", true, json!({}))).await.map_err(|f| f.error).unwrap();
    let events: Vec<StreamEvent> = served.value.map(|e| e.unwrap()).collect().await;
    assert_eq!(
        events,
        [
            StreamEvent::Text("mock-palm chat-bison-001 heard: hello there".into()),
            StreamEvent::Finish(FinishReason::Stop),
            StreamEvent::Usage(whole.usage),
        ]
    );
    assert_eq!(mock.requests(), 2);
}

#[tokio::test]
async fn stop_sequences_text_models_and_tools() {
    let (mock, base) = start().await;
    let gw = gateway(&base, KEY);
    // generateMessage takes no stop sequences: the gateway cuts the answer.
    let r = gw.chat(&request("chat-bison-001", false, json!({"stop": [" heard"]}))).await.unwrap().value;
    assert_eq!(r.content.as_deref(), Some("mock-palm chat-bison-001"));

    // A text model answers generateText, whose output limit the mock honours.
    let r = gw.chat(&request("text-bison-001", false, json!({"max_tokens": 2}))).await.unwrap().value;
    assert_eq!(r.content.as_deref(), Some("mock-palm text-bison-001 "));

    // PaLM has no function calling: refused before anything is sent.
    let tools = json!({"tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}]});
    let failed = gw.chat(&request("chat-bison-001", false, tools)).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::BadRequest);
    assert_eq!(mock.requests(), 2);
}

#[tokio::test]
async fn errors_keys_retries_and_quota() {
    let (mock, base) = start().await;
    let wrong = "AIzaSy-wrong-palm-key-never-shown";
    let failed =
        gateway(&base, wrong).chat(&request("chat-bison-001", false, json!({}))).await.err().unwrap();
    assert_eq!((failed.error.kind, failed.error.status), (ErrorKind::Auth, Some(400)));
    assert!(!format!("{failed:?} {}", failed.error).contains(wrong));
    assert_eq!(mock.requests(), 1);

    let gw = gateway(&base, KEY);
    mock.queue([Fault::Status { status: 429, retry_after_ms: Some(20), code: None }]);
    let served = gw.chat(&request("chat-bison-001", false, json!({}))).await.map_err(|f| f.error).unwrap();
    assert_eq!((mock.requests(), served.failed.len()), (3, 1));
    assert_eq!(served.failed[0].error.retry_after, Some(Duration::from_millis(20)));

    // A stream fails before it starts (there is no stream to break midway): retried too.
    mock.queue([Fault::Status { status: 503, retry_after_ms: None, code: None }]);
    let served =
        gw.chat_stream(&request("chat-bison-001", true, json!({}))).await.map_err(|f| f.error).unwrap();
    assert_eq!(served.failed[0].error.kind, ErrorKind::Server);
    assert_eq!(mock.requests(), 5);

    mock.queue([Fault::Status { status: 429, retry_after_ms: None, code: Some("quota_per_day".into()) }]);
    let failed = gw.chat(&request("chat-bison-001", false, json!({}))).await.err().unwrap();
    assert_eq!(failed.error.kind, ErrorKind::QuotaExhausted);
    assert_eq!(mock.requests(), 6, "a spent quota is not retried");
}

/// The mock itself: the `?key=` form, the later API versions, messages echoed, authors that
/// must alternate, enums as numbers when the REST client asks for them.
#[tokio::test]
async fn the_mock_speaks_the_api_as_google_did() {
    let (_mock, base) = start().await;
    let http = reqwest::Client::new();
    let chat = json!({"prompt": {"context": "c", "examples": [], "messages": [{"author": "0", "content": "hello"}]}});
    for version in ["v1beta2", "v1beta3", "v1beta"] {
        let url = format!("{base}/{version}/models/chat-bison-001:generateMessage?key={KEY}");
        let v: Value = http.post(url).json(&chat).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            v["candidates"][0],
            json!({"author": "1", "content": "mock-palm chat-bison-001 heard: hello"})
        );
        assert_eq!(v["messages"], chat["prompt"]["messages"]);
    }
    let twice =
        json!({"prompt": {"messages": [{"author": "0", "content": "a"}, {"author": "0", "content": "b"}]}});
    let r = http
        .post(format!("{base}/v1beta2/models/chat-bison-001:generateMessage"))
        .header("x-goog-api-key", KEY)
        .json(&twice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = json!({"prompt": {"text": "hi"}});
    let v: Value = http
        .post(format!("{base}/v1beta3/models/text-bison-001:generateText?%24alt=json%3Benum-encoding%3Dint"))
        .header("x-goog-api-key", KEY)
        .json(&text)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["candidates"][0]["safetyRatings"][0], json!({"category": 1, "probability": 1}));
}
