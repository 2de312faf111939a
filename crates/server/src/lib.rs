//! `baimo serve`: the engine behind an OpenAI-compatible HTTP API (axum on tokio; the engine on
//! its own thread).
//!
//! So far: several models (extras loaded on demand within a memory budget), concurrent requests
//! decoded together (continuous batching), `POST /v1/chat/completions` and
//! Anthropic's `POST /v1/messages` (whole or streamed), `GET /v1/models`, `GET /health`,
//! `GET /metrics`, API keys and limits, and the chat page at `/`. Still to come (see the serving
//! issue): a faster batched step (≥ 3× at 8 streams).

mod access;
mod admin;
mod anthropic;
mod auth;
mod backend;
mod error;
mod listener;
mod metrics;
mod openai;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use baimo_engine::LoadedModel;
use baimo_threads::ThreadPool;

pub use access::Access;
pub use auth::ApiKeys;
pub use baimo_engine::{Counters, Worker, WorkerConfig};
pub use error::ApiError;
pub use listener::{ConnectionLimits, shutdown_signal};
pub use usage::{UsageLog, UsageRecord};

/// Reported as `system_fingerprint`.
pub const FINGERPRINT: &str = concat!("baimo-", env!("CARGO_PKG_VERSION"));

/// How often the store's channels are read for changes made by other processes.
const STORE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 8 << 20;

/// Limits and access settings of the server.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    pub keys: ApiKeys,
    /// Largest `max_tokens` a request may ask for (`None`: the context's room).
    pub max_tokens: Option<usize>,
    /// Requests waiting for the engine at most; more get 429 with `Retry-After`.
    pub queue: usize,
    /// Origins browsers may call the API from (`*` for any); none: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Host names an open server (no API key) answers besides localhost and IP addresses
    /// (`*`: any); see [`check_host`].
    pub allowed_hosts: Vec<String>,
}

/// A model being served: its engine thread and the context its sequences get.
pub struct Served {
    pub model: Arc<LoadedModel>,
    pub worker: Worker,
    pub context: usize,
}

/// How a model's file is opened (lazily, on its first request, when it is not the default).
pub type Loader = Box<dyn Fn() -> Result<LoadedModel, String> + Send + Sync>;

/// A configured model: the names requests may use, how to load it, and whether it is loaded.
pub struct ModelEntry {
    pub names: Vec<String>,
    loader: Loader,
    loaded: Mutex<Option<Arc<Served>>>,
    last_used: AtomicU64,
    /// The last failure to load, and when: requests meanwhile get it without the file being
    /// read again each time.
    failed: Mutex<Option<(std::time::Instant, String)>>,
}

/// How long a model that failed to load is not tried again.
const LOAD_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// What the handlers share.
pub struct App {
    pub entries: Vec<ModelEntry>,
    pub limits: Limits,
    pool: Arc<ThreadPool>,
    config: WorkerConfig,
    /// Weight bytes the loaded models may take together; the least recently used other models
    /// are unloaded to make room.
    budget_bytes: usize,
    pub counters: Arc<Counters>,
    /// Every request's end, by model and channel (see `metrics`).
    pub request_metrics: metrics::RequestMetrics,
    pub started: u64,
    clock: AtomicU64,
    /// Whether entry 0 is a model loaded at start that stays loaded.
    pinned_default: bool,
    /// Hosted models, reached through their channels (rebuilt when the stored channels change).
    gateway: RwLock<Option<Arc<baimo_gateway::Gateway>>>,
    hosted: Hosted,
    /// Where requests' usage goes.
    pub usage_log: Option<Arc<dyn UsageLog>>,
    /// Keys kept in the store, with their limits.
    pub access: Option<Arc<Access>>,
}

/// Where hosted models come from: channels of the config file and of the store, and how hard
/// the gateway tries.
#[derive(Default)]
pub struct Hosted {
    pub channels: Vec<baimo_gateway::Channel>,
    pub policy: baimo_gateway::RetryPolicy,
    pub store: Option<Arc<dyn baimo_store::Store>>,
    /// The admin API (`/admin/...`) answers only requests with this key; none: it is off.
    pub admin_key: Option<String>,
}

/// A stored channel as the gateway's.
pub fn channel_from_record(record: &baimo_store::ChannelRecord) -> Result<baimo_gateway::Channel, String> {
    serde_json::to_value(record)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("stored channel {:?}: {e}", record.name))
}

impl App {
    /// Serves `model` (loaded already) under `names`, plus `others` loaded on first use.
    pub fn new(
        model: Arc<LoadedModel>,
        pool: Arc<ThreadPool>,
        names: Vec<String>,
        config: WorkerConfig,
        limits: Limits,
    ) -> App {
        App::with_models(Some(model), names, Vec::new(), pool, config, limits, usize::MAX)
    }

    /// Serves `model` (loaded already, if any) under `names`, plus `others` loaded on first
    /// use within `budget_bytes` of weights.
    pub fn with_models(
        model: Option<Arc<LoadedModel>>,
        names: Vec<String>,
        others: Vec<(Vec<String>, Loader)>,
        pool: Arc<ThreadPool>,
        config: WorkerConfig,
        limits: Limits,
        budget_bytes: usize,
    ) -> App {
        let counters = Arc::new(Counters::default());
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut entries = Vec::new();
        let pinned_default = model.is_some();
        if let Some(model) = model {
            let served = App::start_model(model, &pool, config, &counters);
            entries.push(ModelEntry {
                names,
                // The default model stays loaded; this loader is only a fallback.
                loader: Box::new(move || Err("the default model cannot be reloaded".into())),
                loaded: Mutex::new(Some(served)),
                last_used: AtomicU64::new(0),
                failed: Mutex::new(None),
            });
        }
        for (names, loader) in others {
            entries.push(ModelEntry {
                names,
                loader,
                loaded: Mutex::new(None),
                last_used: AtomicU64::new(0),
                failed: Mutex::new(None),
            });
        }
        App {
            entries,
            limits,
            pool,
            config,
            budget_bytes,
            counters,
            request_metrics: metrics::RequestMetrics::default(),
            started,
            clock: AtomicU64::new(1),
            pinned_default,
            gateway: RwLock::new(None),
            hosted: Hosted::default(),
            usage_log: None,
            access: None,
        }
    }

    /// Adds hosted models, stored keys and usage records, and the admin API.
    pub fn with_hosted(mut self, hosted: Hosted) -> Result<App, String> {
        if let Some(store) = &hosted.store {
            let access = Arc::new(Access::new(store.clone()));
            self.usage_log = Some(access.clone());
            self.access = Some(access);
        }
        self.hosted = hosted;
        self.rebuild_gateway()?;
        Ok(self)
    }

    /// The gateway as the channels are now (none when there are no channels).
    pub fn gateway(&self) -> Option<Arc<baimo_gateway::Gateway>> {
        self.gateway.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Builds the gateway again from the config's and the store's channels (after the admin API
    /// changed them). Channels' health starts afresh.
    pub fn rebuild_gateway(&self) -> Result<(), String> {
        let stored = match &self.hosted.store {
            Some(store) => store.channels().map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        self.rebuild_gateway_from(&stored)
    }

    fn rebuild_gateway_from(&self, stored: &[baimo_store::ChannelRecord]) -> Result<(), String> {
        let mut channels = self.hosted.channels.clone();
        for record in stored {
            channels.push(channel_from_record(record)?);
        }
        let gateway = if channels.is_empty() {
            None
        } else {
            Some(Arc::new(
                baimo_gateway::Gateway::new(channels, self.hosted.policy.clone())
                    .map_err(|e| e.to_string())?,
            ))
        };
        *self.gateway.write().unwrap_or_else(|p| p.into_inner()) = gateway;
        Ok(())
    }

    /// Follows the store's channels: a change made elsewhere (`baimo channels add` in another
    /// process) is taken up within `every`, without a restart. A change the gateway cannot take
    /// (a channel that fails its checks) is logged and the channels stay as they were.
    pub async fn follow_stored_channels(self: Arc<Self>, every: std::time::Duration) {
        let Some(store) = self.hosted.store.clone() else { return };
        let read = move || {
            let store = store.clone();
            async move { tokio::task::spawn_blocking(move || store.channels()).await.ok().and_then(Result::ok) }
        };
        let mut seen = read().await;
        loop {
            tokio::time::sleep(every).await;
            let Some(now) = read().await else { continue };
            if seen.as_ref() == Some(&now) {
                continue;
            }
            match self.rebuild_gateway_from(&now) {
                Ok(()) => {
                    tracing::info!(channels = now.len(), "the stored channels changed: gateway rebuilt")
                }
                Err(e) => tracing::error!("the stored channels changed but cannot be used: {e}"),
            }
            seen = Some(now);
        }
    }

    pub fn hosted(&self) -> &Hosted {
        &self.hosted
    }

    /// Whether `name` is a hosted model (a local model of the same name wins).
    pub fn is_remote(&self, name: &str) -> bool {
        !self.entries.iter().any(|e| e.names.iter().any(|n| n == name))
            && self.gateway().is_some_and(|g| g.serves(name))
    }

    /// Every model name requests may use, local then hosted.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.iter().flat_map(|e| e.names.iter().cloned()).collect();
        for n in self.gateway().iter().flat_map(|g| g.models()) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
    }

    fn start_model(
        model: Arc<LoadedModel>,
        pool: &Arc<ThreadPool>,
        config: WorkerConfig,
        counters: &Arc<Counters>,
    ) -> Arc<Served> {
        let context = config.context.min(model.info.context_length).max(2);
        let config = WorkerConfig { context, ..config };
        let worker = Worker::start(model.clone(), pool.clone(), config, counters.clone());
        Arc::new(Served { model, worker, context })
    }

    /// The served model a request names, loading it if needed (and unloading others to stay
    /// within the memory budget).
    pub async fn served(self: &Arc<Self>, name: &str) -> Result<Arc<Served>, ApiError> {
        let Some(index) = self.entries.iter().position(|e| e.names.iter().any(|n| n == name)) else {
            return Err(ApiError::model_not_found(name, &self.model_names().join("`, `")));
        };
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.served_blocking(index))
            .await
            .map_err(|e| ApiError::unavailable(format!("loading the model: {e}")))?
    }

    fn served_blocking(&self, index: usize) -> Result<Arc<Served>, ApiError> {
        let entry = &self.entries[index];
        entry.last_used.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        let mut slot = entry.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(served) = &*slot {
            return Ok(served.clone());
        }
        let mut failed = entry.failed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, message)) = &*failed
            && at.elapsed() < LOAD_RETRY_AFTER
        {
            let wait = LOAD_RETRY_AFTER.saturating_sub(at.elapsed()).as_secs().max(1);
            return Err(ApiError::unavailable(message.clone()).with_retry_after(Some(wait)));
        }
        let model = match (entry.loader)() {
            Ok(m) => m,
            Err(e) => {
                let message = format!("the model could not be loaded: {}", error::bounded(&e));
                tracing::error!("{message}");
                *failed = Some((std::time::Instant::now(), message.clone()));
                return Err(ApiError::unavailable(message).with_retry_after(Some(LOAD_RETRY_AFTER.as_secs())));
            }
        };
        *failed = None;
        drop(failed);
        let served = App::start_model(Arc::new(model), &self.pool, self.config, &self.counters);
        *slot = Some(served.clone());
        drop(slot);
        self.evict(index);
        Ok(served)
    }

    /// Unloads the least recently used models (never `keep`, never the default) while the
    /// loaded ones exceed the budget. Requests in flight keep theirs until they finish.
    fn evict(&self, keep: usize) {
        loop {
            let loaded: Vec<(usize, usize, u64)> = self
                .entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let slot = e.loaded.lock().unwrap_or_else(|p| p.into_inner());
                    slot.as_ref().map(|s| (i, s.model.info.weight_bytes, e.last_used.load(Ordering::Relaxed)))
                })
                .collect();
            let total: usize = loaded.iter().map(|l| l.1).sum();
            if total <= self.budget_bytes {
                return;
            }
            let Some(&(victim, _, _)) = loaded
                .iter()
                .filter(|l| l.0 != keep && !(l.0 == 0 && self.pinned_default))
                .min_by_key(|l| l.2)
            else {
                return;
            };
            *self.entries[victim].loaded.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Whether a model is loaded now (for the model list).
    pub fn is_loaded(&self, index: usize) -> bool {
        self.entries[index].loaded.lock().map(|s| s.is_some()).unwrap_or(false)
    }
}

pub fn router(app: Arc<App>) -> Router {
    let cors = cors_layer(&app.limits.cors_origins);
    let router = Router::new()
        .route("/", get(page))
        .route("/health", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/messages", post(anthropic::messages))
        .merge(admin::routes())
        .fallback(|| async {
            ApiError {
                status: axum::http::StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                code: Some("unknown_url"),
                param: None,
                message: "Unknown request URL.".into(),
                retry_after: None,
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(app.clone(), check_host))
        .with_state(app);
    match cors {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// Whether anyone may call the server (no key given on the command line, none stored).
fn is_open(app: &App) -> bool {
    app.limits.keys.is_open() && app.access.as_ref().is_none_or(|a| !a.has_keys().unwrap_or(false))
}

/// The host part of a `Host` header or an origin's authority, lowercased, without the port.
fn host_name(authority: &str) -> String {
    let name = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) { h } else { authority }
        }),
    };
    name.to_ascii_lowercase()
}

/// Names an open server answers to: localhost, IP addresses (no DNS involved, so a page cannot
/// rebind them), and the configured ones.
fn host_allowed(name: &str, allowed: &[String]) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok()
        || allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(name))
}

/// Guards a server without keys against web pages: a request naming the server by a DNS name
/// that is not allowed (DNS rebinding), or sent by a browser from another site that is not a
/// CORS origin, gets 403. Servers with keys check keys instead.
async fn check_host(
    State(app): State<Arc<App>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if is_open(&app)
        && let Err(message) = host_and_origin_allowed(&app.limits, request.headers())
    {
        return ApiError {
            status: axum::http::StatusCode::FORBIDDEN,
            kind: "permission_error",
            code: None,
            param: None,
            message,
            retry_after: None,
        }
        .into_response();
    }
    next.run(request).await
}

fn host_and_origin_allowed(limits: &Limits, headers: &axum::http::HeaderMap) -> Result<(), String> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let host = header(axum::http::header::HOST);
    if !host.is_empty() && !host_allowed(&host_name(host), &limits.allowed_hosts) {
        return Err(format!(
            "Host {host:?} is not allowed: this server has no API key, so it answers only localhost, IP addresses and --allowed-host names"
        ));
    }
    let origin = header(axum::http::header::ORIGIN);
    if !origin.is_empty() {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        let origin_host = host_name(authority);
        let same_site = authority.eq_ignore_ascii_case(host);
        let local = origin_host == "localhost"
            || origin_host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let listed = limits.cors_origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin));
        if !(same_site || local || listed) {
            return Err(format!(
                "Origin {origin:?} is not allowed: this server has no API key; allow it with --cors-origin"
            ));
        }
    }
    Ok(())
}

fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new().allow_methods(Any).allow_headers(Any);
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(Any));
    }
    let list: Vec<_> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    Some(layer.allow_origin(AllowOrigin::list(list)))
}

/// The chat page: one self-contained file (no CDN), built into the binary.
async fn page() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("page/index.html"))
}

/// Prometheus text format.
async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut out = String::new();
    app.request_metrics.render(&mut out);
    metrics::render_engine(&app.counters, &mut out);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Serves until SIGTERM or Ctrl-C, then drains the requests in flight; `on_listening` gets the
/// bound address (the port may have been 0).
pub async fn serve(
    app: Arc<App>,
    addr: SocketAddr,
    connections: ConnectionLimits,
    on_listening: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    on_listening(listener.local_addr()?);
    let follower = tokio::spawn(app.clone().follow_stored_channels(STORE_POLL));
    let served = listener::run(listener, router(app), connections, shutdown_signal()).await;
    follower.abort();
    served
}

#[cfg(test)]
mod host_tests {
    use super::*;

    fn check(host: &str, origin: Option<&str>, allowed: &[&str]) -> bool {
        let limits =
            Limits { allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(), ..Limits::default() };
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(axum::http::header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            headers.insert(axum::http::header::ORIGIN, o.parse().unwrap());
        }
        host_and_origin_allowed(&limits, &headers).is_ok()
    }

    #[test]
    fn an_open_server_answers_local_names_and_addresses_only() {
        for ok in ["localhost:8080", "127.0.0.1:8080", "[::1]:8080", "192.168.1.5", "app.localhost"] {
            assert!(check(ok, None, &[]), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "localhost.evil.example"] {
            assert!(!check(bad, None, &[]), "{bad}");
        }
        assert!(check("baimo.internal:80", None, &["baimo.internal"]));
        assert!(check("anything", None, &["*"]));
        // Browsers: the same site, local pages, nothing else.
        assert!(check("127.0.0.1:8080", Some("http://127.0.0.1:8080"), &[]));
        assert!(check("127.0.0.1:8080", Some("http://localhost:3000"), &[]));
        assert!(!check("127.0.0.1:8080", Some("https://evil.example"), &[]));
        assert!(!check("127.0.0.1:8080", Some("null"), &[]));
    }
}
