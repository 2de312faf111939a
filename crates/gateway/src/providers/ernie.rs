//! Baidu ERNIE Bot (文心一言) on Qianfan, API v1 (`ernie`; v2 is in `ernie_v2`): an OAuth access token
//! bought with the app's API key and secret key (`POST /oauth/2.0/token`, lives 30 days, cached per
//! channel), then `POST /rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{endpoint}?access_token=…` with one
//! endpoint per model. Errors arrive inside HTTP 200 as `{error_code, error_msg}`; streams are SSE
//! `data:` chunks ending with `is_end` (details on [`Ernie`]; the access token in `ernie_auth`).

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::ernie_auth::{access_token, with_fresh_token, with_query};
use super::http::{self, read_limited, scrub};
use super::{BoxFuture, EventStream, Protocol, StreamTranslator, Upstream, json_body};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError};
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, FinishReason, Role, StreamEvent, ToolCall, ToolChoice, Usage};

pub(crate) const NAME: &str = "ernie";
const CHAT_PATH: &str = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat";
/// ERNIE takes at most four stop strings.
const MAX_STOP: usize = 4;

/// Qianfan v1. `system` is a top-level field, turns must alternate user/assistant (an odd count),
/// functions come back as a top-level `function_call`. Errors arrive inside HTTP 200 as
/// `{error_code, error_msg}` — for a stream too, as a plain JSON body in place of the SSE.
/// Streams are SSE `data:` chunks (no `[DONE]`) ending with `is_end`, usage cumulative.
pub struct Ernie;

/// The v1 endpoint segment for a model name: Baidu's display names (any case) map to their
/// endpoint; any other name is taken to be an endpoint already (custom deployments have their
/// own).
pub fn endpoint(model: &str) -> String {
    let known = match model.to_ascii_lowercase().as_str() {
        "ernie-bot" | "ernie-3.5-8k" | "ernie-bot-3.5" => "completions",
        "ernie-bot-4" | "ernie-4.0-8k" => "completions_pro",
        "ernie-bot-turbo" | "ernie-lite-8k-0922" | "ernie-instant" => "eb-instant",
        "ernie-bot-8k" => "ernie_bot_8k",
        "ernie-speed-8k" | "ernie-speed" => "ernie_speed",
        "ernie-speed-128k" => "ernie-speed-128k",
        "ernie-lite-8k" | "ernie-lite-8k-0308" => "ernie-lite-8k",
        "ernie-tiny-8k" => "ernie-tiny-8k",
        "ernie-4.0-turbo-8k" => "ernie-4.0-turbo-8k",
        "ernie-4.0-turbo-128k" => "ernie-4.0-turbo-128k",
        "ernie-3.5-128k" => "ernie-3.5-128k",
        "ernie-4.0-8k-latest" => "ernie-4.0-8k-latest",
        _ => return model.to_string(),
    };
    known.to_string()
}

/// Which side of the conversation a v1 message is on: ERNIE wants user-side and assistant turns
/// to alternate, and a `function` result stands where a user turn would.
#[derive(Clone, Debug, PartialEq)]
struct Turn {
    role: &'static str,
    content: String,
    /// The function a `function` turn answers.
    name: Option<String>,
    /// An assistant turn's call (ERNIE calls one function per turn).
    function_call: Option<ToolCall>,
}

impl Turn {
    fn assistant_side(&self) -> bool {
        self.role == "assistant"
    }

    /// The turn as plain user text (for a function result merged into a user turn).
    fn as_user_text(&self) -> String {
        match (&self.name, self.role) {
            (Some(name), "function") => format!("[{name} returned] {}", self.content),
            _ => self.content.clone(),
        }
    }
}

/// The conversation as ERNIE accepts it: system text left out (it goes top-level), tool
/// results as `function` turns, consecutive turns of one side merged, leading and trailing
/// assistant turns dropped (it must start and end on the user's side).
fn turns(req: &ChatRequest) -> Vec<Turn> {
    let mut out: Vec<Turn> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let turn = match m.role {
            Role::System | Role::Developer => continue,
            Role::User => Turn {
                role: "user",
                content: m.content.clone().unwrap_or_default(),
                name: None,
                function_call: None,
            },
            Role::Tool | Role::Function => {
                // OpenAI's tool message names the call, ERNIE's the function: find it.
                let called = m.tool_call_id.as_deref().and_then(|id| {
                    req.messages[..i].iter().rev().flat_map(|p| &p.tool_calls).find(|c| c.id == id)
                });
                Turn {
                    role: "function",
                    content: m.content.clone().unwrap_or_default(),
                    name: m.name.clone().or_else(|| called.map(|c| c.name.clone())),
                    function_call: None,
                }
            }
            Role::Assistant => Turn {
                role: "assistant",
                content: m.content.clone().unwrap_or_default(),
                name: None,
                function_call: m.tool_calls.first().cloned(),
            },
        };
        match out.last_mut() {
            Some(last) if last.assistant_side() == turn.assistant_side() => merge(last, turn),
            _ => out.push(turn),
        }
    }
    while out.first().is_some_and(Turn::assistant_side) {
        out.remove(0);
    }
    while out.last().is_some_and(Turn::assistant_side) {
        out.pop();
    }
    out
}

/// Two turns of the same side as one.
fn merge(last: &mut Turn, next: Turn) {
    let join = |a: &str, b: &str| match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}\n\n{b}"),
    };
    if last.assistant_side() {
        last.content = join(&last.content, &next.content);
        last.function_call = last.function_call.take().or(next.function_call);
    } else if last.role == next.role && (last.role == "user" || last.name == next.name) {
        // Two user turns, or two results of the same function.
        last.content = join(&last.content, &next.content);
    } else {
        // A function result next to user text (or two different functions): one user turn
        // that says what each function returned.
        last.content = join(&last.as_user_text(), &next.as_user_text());
        last.role = "user";
        last.name = None;
    }
}

fn turn_json(t: &Turn) -> Value {
    let mut m = json!({"role": t.role, "content": t.content});
    if let Some(name) = &t.name {
        m["name"] = name.clone().into();
    }
    if let Some(call) = &t.function_call {
        m["function_call"] = json!({"name": call.name, "arguments": call.arguments});
    }
    m
}

/// The v1 chat body for `req` (the model is in the URL, not the body).
pub fn request_body(req: &ChatRequest, stream: bool) -> Result<Value, UpstreamError> {
    let turns = turns(req);
    if turns.is_empty() {
        return Err(UpstreamError::new(NAME, ErrorKind::BadRequest, "ERNIE needs at least one user message"));
    }
    let mut body = Map::new();
    body.insert("messages".into(), turns.iter().map(turn_json).collect());
    if let Some(system) = req.system_text() {
        body.insert("system".into(), system.into());
    }
    // OpenAI's temperature runs to 2, ERNIE's over (0, 1]; halved as Baidu's own OpenAI adapter
    // does, and kept above zero.
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), (t / 2.0).clamp(0.01, 1.0).into());
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), p.clamp(0.0, 1.0).into());
    }
    // One penalty in [1, 2] stands for OpenAI's two in [-2, 2] (only a positive one penalises).
    if let Some(p) = req.presence_penalty.into_iter().chain(req.frequency_penalty).reduce(f64::max) {
        body.insert("penalty_score".into(), (1.0 + p.max(0.0) / 2.0).clamp(1.0, 2.0).into());
    }
    if let Some(n) = req.max_tokens {
        body.insert("max_output_tokens".into(), n.max(2).into());
    }
    if !req.stop.is_empty() {
        body.insert("stop".into(), json!(req.stop.iter().take(MAX_STOP).collect::<Vec<_>>()));
    }
    if let Some(user) = &req.user {
        body.insert("user_id".into(), user.clone().into());
    }
    // ERNIE has no "none": refusing tools means not offering them.
    if !req.tools.is_empty() && req.tool_choice != Some(ToolChoice::None) {
        let functions: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let parameters = if t.parameters.is_object() {
                    t.parameters.clone()
                } else {
                    json!({"type": "object", "properties": {}})
                };
                json!({"name": t.name, "description": t.description.clone().unwrap_or_default(), "parameters": parameters})
            })
            .collect();
        body.insert("functions".into(), functions.into());
        let forced = match &req.tool_choice {
            Some(ToolChoice::Function(name)) => Some(name.clone()),
            Some(ToolChoice::Required) if req.tools.len() == 1 => Some(req.tools[0].name.clone()),
            _ => None,
        };
        if let Some(name) = forced {
            body.insert("tool_choice".into(), json!({"type": "function", "function": {"name": name}}));
        }
    }
    if stream {
        body.insert("stream".into(), true.into());
    }
    Ok(Value::Object(body))
}

/// A call id: ERNIE gives none, OpenAI clients need one.
fn call_id() -> String {
    let mut id = String::from("call_");
    for _ in 0..24 {
        id.push(fastrand::alphanumeric());
    }
    id
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        "function_call" => FinishReason::ToolCalls,
        _ => FinishReason::Stop, // normal, stop
    }
}

fn usage_of(v: &Value) -> Usage {
    Usage {
        prompt_tokens: v.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        completion_tokens: v.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
    }
}

pub(crate) fn protocol_error(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(NAME, ErrorKind::Protocol, msg)
}

/// The kind of a v1 `error_code` (Baidu's error-code page; the context-length codes from
/// gateways' mappings).
fn error_kind(code: i64, message: &str) -> ErrorKind {
    match code {
        // Token invalid / expired, IAM failure, token service, no permission, no such app,
        // bad token parameter.
        110 | 111 | 14 | 13 | 6 | 15 | 100 | 336004 => ErrorKind::Auth,
        // Cluster limit, QPS limit, RPM and TPM limits.
        4 | 18 | 336501 | 336502 => ErrorKind::RateLimited,
        // Daily limit (or arrears), total limit: not back for hours.
        17 | 19 => ErrorKind::QuotaExhausted,
        336103 | 336007 => ErrorKind::ContextLength,
        // Unsupported method, no such API: the endpoint (model) is unknown.
        3 | 336005 => ErrorKind::NotFound,
        1 | 2 | 336000 | 336100 => ErrorKind::Server,
        _ if message.contains("max input characters") || message.contains("too long") => {
            ErrorKind::ContextLength
        }
        336_000..=336_999 => ErrorKind::BadRequest,
        _ => ErrorKind::Server,
    }
}

/// An `{error_code, error_msg}` body as an error, if it is one. The code stays in the message
/// (`… (error_code N)`), where [`token_rejected`](super::ernie_auth::token_rejected) looks for it.
pub(crate) fn body_error(v: &Value) -> Option<UpstreamError> {
    let code = v.get("error_code").and_then(Value::as_i64)?;
    let msg = v.get("error_msg").and_then(Value::as_str).unwrap_or("(no message)");
    Some(UpstreamError::new(NAME, error_kind(code, msg), format!("{msg} (error_code {code})")))
}

/// A stream request: SSE when it worked, else (with status 200) a JSON error body.
async fn open_stream(
    up: &Upstream,
    channel: &Channel,
    model: &str,
    req: &ChatRequest,
) -> Result<EventStream, UpstreamError> {
    let response = http::send(&Ernie, up, channel, model, req, true).await?;
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if is_json {
        let body = read_limited(response, 1 << 20).await?;
        let v = json_body(NAME, &body)?;
        let e = body_error(&v).unwrap_or_else(|| protocol_error("a JSON answer to a stream request"));
        return Err(scrub(channel, e));
    }
    Ok(http::response_stream(response, &Ernie, up, channel))
}

impl Protocol for Ernie {
    fn check(&self, channel: &Channel) -> Result<(), String> {
        super::require(
            &channel.secret_key,
            "ernie",
            "secret_key",
            " (the app's Secret Key; `api_key` is its API Key)",
        )
        .map(drop)
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn request<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
        stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>> {
        Box::pin(async move {
            let body = request_body(req, stream)?;
            let token = access_token(up, channel).await?;
            let url = with_query(
                format!("{}{CHAT_PATH}/{}", channel.base_url(), endpoint(model)),
                &[("access_token", token.expose())],
            );
            Ok(up.http.post(url).json(&body))
        })
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(NAME, body)?;
        if let Some(e) = body_error(&v) {
            return Err(e);
        }
        let result = v.get("result").and_then(Value::as_str);
        let call = v.get("function_call").filter(|f| f.is_object()).map(|f| ToolCall {
            id: call_id(),
            name: f.get("name").and_then(Value::as_str).unwrap_or_default().into(),
            arguments: f.get("arguments").and_then(Value::as_str).unwrap_or("{}").into(),
        });
        if result.is_none() && call.is_none() {
            return Err(protocol_error("an answer with neither result nor function_call"));
        }
        let finish = if call.is_some() {
            FinishReason::ToolCalls
        } else if v.get("need_clear_history").and_then(Value::as_bool) == Some(true) {
            // The moderator refused the question; `result` is its canned reply.
            FinishReason::ContentFilter
        } else {
            finish_reason(v.get("finish_reason").and_then(Value::as_str).unwrap_or("normal"))
        };
        Ok(ChatResponse {
            content: result.filter(|r| !r.is_empty() || call.is_none()).map(String::from),
            tool_calls: call.into_iter().collect(),
            finish_reason: finish,
            usage: v.get("usage").map(usage_of).unwrap_or_default(),
        })
    }

    fn classify(&self, status: u16, _headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if let Some(e) = body_error(&v) {
            return e.with_status(status);
        }
        let kind = match status {
            401 | 403 => ErrorKind::Auth,
            404 => ErrorKind::NotFound,
            429 => ErrorKind::RateLimited,
            s if s >= 500 => ErrorKind::Server,
            _ => ErrorKind::BadRequest,
        };
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
        UpstreamError::new(NAME, kind, format!("HTTP {status}: {text}")).with_status(status)
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(ErnieStream::default())
    }

    fn chat<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>> {
        Box::pin(with_fresh_token(up, channel, move || http::chat(self, up, channel, model, req)))
    }

    fn chat_stream<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, UpstreamError>> {
        Box::pin(with_fresh_token(up, channel, move || open_stream(up, channel, model, req)))
    }
}

#[derive(Default)]
struct ErnieStream {
    called: bool,
    /// The last usage passed on (ERNIE's is cumulative: passed through when it changes).
    usage: Option<Usage>,
}

impl StreamTranslator for ErnieStream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        let v: Value =
            serde_json::from_str(&event.data).map_err(|e| protocol_error(format!("a bad chunk: {e}")))?;
        if let Some(e) = body_error(&v) {
            return Err(e);
        }
        if let Some(text) = v.get("result").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            out.push(StreamEvent::Text(text.into()));
        }
        if let Some(f) = v.get("function_call").filter(|f| f.is_object()) {
            // ERNIE sends a call whole, in one chunk.
            self.called = true;
            out.push(StreamEvent::ToolCall {
                index: 0,
                id: Some(call_id()),
                name: f.get("name").and_then(Value::as_str).map(String::from),
                arguments: f.get("arguments").and_then(Value::as_str).unwrap_or("{}").into(),
            });
        }
        let is_end = v.get("is_end").and_then(Value::as_bool).unwrap_or(false);
        if is_end {
            let finish = if self.called {
                FinishReason::ToolCalls
            } else if v.get("need_clear_history").and_then(Value::as_bool) == Some(true) {
                FinishReason::ContentFilter
            } else {
                finish_reason(v.get("finish_reason").and_then(Value::as_str).unwrap_or("normal"))
            };
            out.push(StreamEvent::Finish(finish));
        }
        if let Some(usage) = v.get("usage").filter(|u| u.is_object()).map(usage_of)
            && self.usage != Some(usage)
        {
            self.usage = Some(usage);
            out.push(StreamEvent::Usage(usage));
        }
        Ok(is_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ernie_auth::token_rejected;

    fn chat(messages: Value) -> ChatRequest {
        ChatRequest::from_openai(&json!({"model": "ernie-bot", "messages": messages})).unwrap()
    }

    #[test]
    fn models_map_to_their_endpoints() {
        assert_eq!(endpoint("ERNIE-Bot-4"), "completions_pro");
        assert_eq!(endpoint("ernie-bot"), "completions");
        assert_eq!(endpoint("ERNIE-Bot-turbo"), "eb-instant");
        assert_eq!(endpoint("ernie-3.5-8k"), "completions");
        assert_eq!(endpoint("ernie-4.0-8k"), "completions_pro");
        assert_eq!(endpoint("my_custom_ep"), "my_custom_ep");
    }

    #[test]
    fn turns_alternate_start_and_end_with_the_user() {
        let req = chat(json!([
            {"role": "system", "content": "brief"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": "d"},
            {"role": "user", "content": "e"},
            {"role": "assistant", "content": "prefill"}
        ]));
        let body = request_body(&req, false).unwrap();
        assert_eq!(body["system"], "brief");
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": "a\n\nb"},
                {"role": "assistant", "content": "c\n\nd"},
                {"role": "user", "content": "e"}
            ])
        );
        assert!(request_body(&chat(json!([{"role": "system", "content": "x"}])), false).is_err());
    }

    #[test]
    fn functions_and_results_take_ernies_form() {
        let mut req = chat(json!([
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ]));
        req.tools.push(crate::types::Tool {
            name: "weather".into(),
            description: None,
            parameters: Value::Null,
        });
        req.tool_choice = Some(ToolChoice::Function("weather".into()));
        req.temperature = Some(1.0);
        req.presence_penalty = Some(1.0);
        req.max_tokens = Some(100);
        req.stop = (0..6).map(|i| i.to_string()).collect();
        let body = request_body(&req, true).unwrap();
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": "", "function_call": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"role": "function", "name": "weather", "content": "sunny"}
            ])
        );
        assert_eq!(body["functions"][0]["parameters"], json!({"type": "object", "properties": {}}));
        assert_eq!(body["tool_choice"]["function"]["name"], "weather");
        assert_eq!((body["temperature"].as_f64(), body["penalty_score"].as_f64()), (Some(0.5), Some(1.5)));
        assert_eq!(
            (body["max_output_tokens"].as_u64(), body["stop"].as_array().map(Vec::len)),
            (Some(100), Some(4))
        );
        assert_eq!(body["stream"], true);
        req.tool_choice = Some(ToolChoice::None);
        assert!(request_body(&req, false).unwrap().get("functions").is_none());
    }

    #[test]
    fn answers_and_errors_inside_200() {
        let ok = br#"{"id":"as-1","object":"chat.completion","created":1,"result":"hi","is_truncated":false,"need_clear_history":false,"finish_reason":"normal","usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let r = Ernie.parse_response(ok).unwrap();
        assert_eq!((r.content.as_deref(), r.finish_reason), (Some("hi"), FinishReason::Stop));
        assert_eq!(r.usage, Usage { prompt_tokens: 3, completion_tokens: 1 });
        let call = br#"{"result":"","finish_reason":"function_call","function_call":{"name":"w","arguments":"{\"q\":1}","thoughts":"look it up"},"usage":{"prompt_tokens":3,"completion_tokens":5}}"#;
        let r = Ernie.parse_response(call).unwrap();
        assert_eq!((r.content, r.finish_reason), (None, FinishReason::ToolCalls));
        assert!(r.tool_calls[0].id.starts_with("call_") && r.tool_calls[0].arguments == "{\"q\":1}");
        let kind = |code: i64| {
            let body = json!({"error_code": code, "error_msg": "x"}).to_string();
            Ernie.parse_response(body.as_bytes()).unwrap_err().kind
        };
        for (code, want) in [
            (110, ErrorKind::Auth),
            (111, ErrorKind::Auth),
            (14, ErrorKind::Auth),
            (18, ErrorKind::RateLimited),
            (336501, ErrorKind::RateLimited),
            (336502, ErrorKind::RateLimited),
            (17, ErrorKind::QuotaExhausted),
            (19, ErrorKind::QuotaExhausted),
            (336003, ErrorKind::BadRequest),
            (336103, ErrorKind::ContextLength),
            (336007, ErrorKind::ContextLength),
            (336100, ErrorKind::Server),
            (2, ErrorKind::Server),
        ] {
            assert_eq!(kind(code), want, "error_code {code}");
        }
        let expired =
            Ernie.parse_response(br#"{"error_code":111,"error_msg":"Access token expired"}"#).unwrap_err();
        assert!(token_rejected(&expired));
        let iam =
            Ernie.parse_response(br#"{"error_code":14,"error_msg":"IAM Certification failed"}"#).unwrap_err();
        assert!(!token_rejected(&iam));
    }

    #[test]
    fn stream_chunks_pass_cumulative_usage_through() {
        let mut s = Ernie.stream();
        let mut out = Vec::new();
        let chunks = [
            r#"{"id":"as-1","sentence_id":0,"is_end":false,"result":"Hel","usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}"#,
            r#"{"id":"as-1","sentence_id":1,"is_end":false,"result":"lo","usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#,
        ];
        for c in chunks {
            assert!(!s.on_event(&SseEvent { event: None, data: c.into() }, &mut out).unwrap());
        }
        let last = r#"{"id":"as-1","sentence_id":2,"is_end":true,"result":"","finish_reason":"normal","usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#;
        assert!(s.on_event(&SseEvent { event: None, data: last.into() }, &mut out).unwrap());
        assert_eq!(
            out,
            vec![
                StreamEvent::Text("Hel".into()),
                StreamEvent::Usage(Usage { prompt_tokens: 4, completion_tokens: 1 }),
                StreamEvent::Text("lo".into()),
                StreamEvent::Usage(Usage { prompt_tokens: 4, completion_tokens: 2 }),
                StreamEvent::Finish(FinishReason::Stop),
            ]
        );
        let mut s = Ernie.stream();
        let err = SseEvent { event: None, data: r#"{"error_code":336100,"error_msg":"high load"}"#.into() };
        assert_eq!(s.on_event(&err, &mut out).unwrap_err().kind, ErrorKind::Server);
    }
}
