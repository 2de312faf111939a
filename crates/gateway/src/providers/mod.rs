//! One module per provider protocol: how to build its request from a [`ChatRequest`], read its
//! answer, translate its stream event by event, and classify its errors. Most providers are one
//! HTTP request with a JSON or server-sent-event answer (`http` does the sending); a provider
//! that is not (Spark's WebSocket) overrides [`Protocol::chat`] and [`Protocol::chat_stream`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::Stream;
use reqwest::header::HeaderMap;

use crate::channel::{Channel, ProviderKind, Secret};
use crate::error::UpstreamError;
use crate::sse::SseEvent;
use crate::types::{ChatRequest, ChatResponse, StreamEvent};

pub mod anthropic;
pub mod anthropic_legacy;
pub mod baichuan;
pub mod dashscope;
pub mod ernie;
pub mod ernie_auth;
pub mod ernie_v2;
pub mod gemini;
pub(crate) mod http;
pub mod openai;
pub mod palm;
pub mod spark;
pub mod spark_http;
pub mod spark_ws;
pub mod zhipu;
pub mod zhipu_v3;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A translated stream: events in order; an error ends it.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, UpstreamError>> + Send>>;

/// A future already resolved (for providers whose request needs no waiting).
pub fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

/// What every upstream call shares: the HTTP client, access tokens fetched for channels, and
/// how long to wait.
pub struct Upstream {
    pub http: reqwest::Client,
    pub tokens: TokenCache,
    /// Until the answer (whole) or the response head (stream).
    pub timeout: Duration,
    /// Between two pieces of a stream.
    pub idle_timeout: Duration,
}

/// Access tokens some providers hand out for a key (ERNIE's OAuth token): fetched once per
/// channel, reused, fetched again before they expire or after the provider rejected one.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (Secret, Instant)>>,
}

impl TokenCache {
    /// The cached token for `key`, or a new one from `fetch` (which returns the token and how
    /// long it lives). A token is renewed once less than a tenth of its life (at most a day)
    /// is left, so no request goes out with one about to expire.
    pub async fn get_or_fetch<F, Fut>(&self, key: &str, fetch: F) -> Result<Secret, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Secret, Duration), UpstreamError>>,
    {
        if let Some((token, renew_at)) = self.lock().get(key)
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = fetch().await?;
        let margin = (lifetime / 10).min(Duration::from_secs(86_400));
        self.lock().insert(key.to_string(), (token.clone(), Instant::now() + lifetime - margin));
        Ok(token)
    }

    /// Forgets `key`'s token (the provider said it is no longer valid).
    pub fn invalidate(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Secret, Instant)>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A provider's wire protocol.
pub trait Protocol: Send + Sync {
    fn name(&self) -> &'static str;

    /// The request fields beyond the common ones (see `ChatRequest::sampler_fields`) this
    /// protocol carries to the provider; a request setting any other is refused by name.
    fn honours(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether messages may carry images (translated into the provider's form).
    fn takes_images(&self) -> bool {
        false
    }

    /// What this provider needs of a channel beyond the common settings (a second credential,
    /// an app id, model names it knows), checked when the channel is configured, so a mistake
    /// stops the server at start instead of failing every request.
    fn check(&self, _channel: &Channel) -> Result<(), String> {
        Ok(())
    }

    /// The URL schemes a `base_url` may have.
    fn schemes(&self) -> &'static [&'static str] {
        &["https", "http"]
    }

    /// The upstream HTTP request for `req` (sent to `channel`, as `model`). A future, because
    /// some providers need a token fetched first.
    fn request<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
        stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>>;

    /// A successful whole answer. Some providers report errors inside a 200: those come back as
    /// errors here.
    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError>;

    /// An unsuccessful HTTP answer.
    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError;

    /// A fresh translator for one stream.
    fn stream(&self) -> Box<dyn StreamTranslator>;

    /// A whole answer (by default: the request, then `parse_response`).
    fn chat<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, UpstreamError>> {
        Box::pin(http::chat(self, up, channel, model, req))
    }

    /// A streamed answer (by default: the request, then its SSE events through `stream`).
    fn chat_stream<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, UpstreamError>> {
        Box::pin(http::chat_stream(self, up, channel, model, req))
    }
}

/// Turns a provider's stream events into [`StreamEvent`]s, keeping what it must between events
/// (tool call indices, usage that arrives in pieces).
pub trait StreamTranslator: Send {
    /// Translates one event; `Ok(true)` when it was the last.
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError>;
}

pub fn protocol(kind: ProviderKind) -> &'static dyn Protocol {
    match kind {
        ProviderKind::OpenAi => &openai::OpenAi,
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::Gemini => &gemini::Gemini,
        ProviderKind::Palm => &palm::Palm,
        ProviderKind::DashScope => &dashscope::DashScope,
        ProviderKind::DashScopeCompatible => &dashscope::DashScopeCompatible,
        ProviderKind::Zhipu => &zhipu::Zhipu,
        ProviderKind::ZhipuV3 => &zhipu_v3::ZhipuV3,
        ProviderKind::Baichuan => &baichuan::Baichuan,
        ProviderKind::BaichuanLegacy => &baichuan::BaichuanLegacy,
        ProviderKind::Ernie => &ernie::Ernie,
        ProviderKind::ErnieV2 => &ernie_v2::ErnieV2,
        ProviderKind::Spark => &spark::Spark,
        ProviderKind::SparkHttp => &spark_http::SparkHttp,
        ProviderKind::AnthropicLegacy => &anthropic_legacy::AnthropicLegacy,
    }
}

/// Checks a channel's settings completely (the common ones, then its provider's): the message
/// names the setting at fault.
pub fn check_channel(channel: &Channel) -> Result<(), String> {
    if channel.name.trim().is_empty() {
        return Err("`name` is empty".into());
    }
    if channel.models.is_empty() {
        return Err("`models` is empty: name the models this channel serves".into());
    }
    for m in &channel.models {
        if m.trim().is_empty() {
            return Err("`models` holds an empty name".into());
        }
        if let Some((client, upstream)) = m.split_once('=') {
            return Err(format!(
                "`models` entry {m:?} is a mapping: write models = [\"{client}\"] and model_map = {{ \"{client}\" = \"{upstream}\" }}"
            ));
        }
    }
    if let Some(unserved) = channel.model_map.keys().find(|k| !channel.models.contains(k)) {
        return Err(format!("`model_map` maps {unserved:?}, which is not in `models`"));
    }
    if channel.weight == 0 {
        return Err("`weight` must be at least 1".into());
    }
    if channel.api_key.expose().is_empty() {
        return Err("`api_key` is empty".into());
    }
    let protocol = protocol(channel.provider);
    if let Some(base) = &channel.base_url {
        let url = url::Url::parse(base).map_err(|e| format!("`base_url` {base:?} is not a URL: {e}"))?;
        if !protocol.schemes().contains(&url.scheme()) {
            return Err(format!(
                "`base_url` {base:?}: a {} channel takes {} URLs",
                channel.provider.name(),
                protocol.schemes().join(" or ")
            ));
        }
    }
    protocol.check(channel)
}

/// A channel setting its provider cannot do without.
pub(crate) fn require<'a, T>(
    value: &'a Option<T>,
    provider: &str,
    key: &str,
    hint: &str,
) -> Result<&'a T, String> {
    value.as_ref().ok_or_else(|| format!("a {provider} channel needs `{key}`{hint}"))
}

/// Refuses a request this protocol cannot carry whole: a field it does not honour, or images
/// for a text-only API (dropping either would change the answer without saying so).
pub(crate) fn refuse_unsupported(protocol: &dyn Protocol, req: &ChatRequest) -> Result<(), UpstreamError> {
    let name = protocol.name();
    let refuse = |what: String| Err(UpstreamError::new(name, crate::error::ErrorKind::BadRequest, what));
    if let Some(field) = req.sampler_fields().into_iter().find(|f| !protocol.honours().contains(f)) {
        return refuse(format!("`{field}` is not supported by {name} models"));
    }
    if req.has_images() && !protocol.takes_images() {
        return refuse(format!("{name} models take no images"));
    }
    Ok(())
}

/// Refuses a request that offers tools to an API that cannot call them (dropping them quietly
/// would let the client wait for a call that never comes).
pub(crate) fn refuse_tools(provider: &'static str, req: &ChatRequest) -> Result<(), UpstreamError> {
    let wants_tools = !req.tools.is_empty() && req.tool_choice != Some(crate::types::ToolChoice::None);
    if wants_tools {
        return Err(UpstreamError::new(
            provider,
            crate::error::ErrorKind::BadRequest,
            format!("{provider} models cannot call tools"),
        ));
    }
    Ok(())
}

/// Appends the conversation's messages to `turns` as strictly alternating `{"role", "content"}`
/// turns for the early APIs that had only users and assistants (Zhipu v3, Baichuan's legacy API):
/// system messages are left to the caller, tool results speak as the user, and consecutive turns
/// of one role are joined by a newline.
pub(crate) fn alternating_turns(
    mut turns: Vec<serde_json::Value>,
    req: &ChatRequest,
) -> Vec<serde_json::Value> {
    use crate::types::Role;
    for m in &req.messages {
        let role = match m.role {
            Role::System | Role::Developer => continue,
            Role::Assistant => "assistant",
            Role::User | Role::Tool | Role::Function => "user",
        };
        let content = m.content.clone().unwrap_or_default();
        match turns.last_mut() {
            Some(last) if last["role"] == role => {
                let joined = format!("{}\n{content}", last["content"].as_str().unwrap_or(""));
                last["content"] = joined.into();
            }
            _ => turns.push(serde_json::json!({"role": role, "content": content})),
        }
    }
    turns
}

/// Reads a JSON body, or says the provider sent something unreadable.
pub(crate) fn json_body(provider: &'static str, body: &[u8]) -> Result<serde_json::Value, UpstreamError> {
    serde_json::from_slice(body).map_err(|e| {
        UpstreamError::new(provider, crate::error::ErrorKind::Protocol, format!("unreadable answer: {e}"))
    })
}
