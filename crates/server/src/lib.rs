//! `baimo serve`: the engine behind an OpenAI-compatible HTTP API (axum on tokio; the engine on
//! its own thread).
//!
//! So far: one model, concurrent requests decoded together (continuous batching), `POST /v1/chat/completions` and
//! Anthropic's `POST /v1/messages` (whole or streamed), `GET /v1/models`, `GET /health`,
//! `GET /metrics`, API keys and limits, and the chat page at `/`. Still to come (see the serving
//! issue): several models, a TOML config.

mod anthropic;
mod auth;
mod error;
mod openai;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use baimo_engine::LoadedModel;
use baimo_threads::ThreadPool;

pub use auth::ApiKeys;
pub use error::ApiError;
pub use worker::{Counters, Worker, WorkerConfig};

/// Reported as `system_fingerprint`.
pub const FINGERPRINT: &str = concat!("baimo-", env!("CARGO_PKG_VERSION"));

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
}

/// What the handlers share.
pub struct App {
    pub model: Arc<LoadedModel>,
    pub limits: Limits,
    /// Names the model answers to in requests (the first is the one `/v1/models` lists first).
    pub names: Vec<String>,
    pub context: usize,
    pub worker: Worker,
    pub started: u64,
}

impl App {
    pub fn new(
        model: Arc<LoadedModel>,
        pool: Arc<ThreadPool>,
        names: Vec<String>,
        config: WorkerConfig,
        limits: Limits,
    ) -> App {
        let context = config.context;
        let worker = Worker::start(model.clone(), pool, config);
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        App { model, limits, names, context, worker, started }
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
        .fallback(|| async {
            ApiError {
                status: axum::http::StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                code: Some("unknown_url"),
                param: None,
                message: "Unknown request URL.".into(),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app);
    match cors {
        Some(layer) => router.layer(layer),
        None => router,
    }
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
    let c = &app.worker.counters;
    let line = |name: &str, help: &str, kind: &str, value: usize| {
        format!("# HELP baimo_{name} {help}\n# TYPE baimo_{name} {kind}\nbaimo_{name} {value}\n")
    };
    [
        line("requests_total", "Chat requests accepted.", "counter", c.requests.load(Ordering::Relaxed)),
        line(
            "requests_queued",
            "Requests waiting for the engine.",
            "gauge",
            c.queued.load(Ordering::Relaxed),
        ),
        line("requests_running", "Requests being generated.", "gauge", c.running.load(Ordering::Relaxed)),
        line(
            "requests_cancelled_total",
            "Requests whose client went away.",
            "counter",
            c.cancelled.load(Ordering::Relaxed),
        ),
        line(
            "prompt_tokens_total",
            "Prompt tokens read.",
            "counter",
            c.prompt_tokens.load(Ordering::Relaxed),
        ),
        line(
            "completion_tokens_total",
            "Tokens generated.",
            "counter",
            c.completion_tokens.load(Ordering::Relaxed),
        ),
        line(
            "prompt_tokens_cached_total",
            "Prompt tokens taken from the prefix cache instead of being read.",
            "counter",
            c.cached_tokens.load(Ordering::Relaxed),
        ),
        line(
            "decode_steps_total",
            "Decoding steps (one token of every active request).",
            "counter",
            c.steps.load(Ordering::Relaxed),
        ),
        line(
            "decode_step_rows_total",
            "Sequences the decoding steps carried.",
            "counter",
            c.step_rows.load(Ordering::Relaxed),
        ),
    ]
    .concat()
        + &summary(
            "time_to_first_token_seconds",
            "Time from a request's arrival at the engine to its first token.",
            c.ttft_micros.load(Ordering::Relaxed),
            c.finished.load(Ordering::Relaxed),
        )
        + &summary(
            "generation_seconds",
            "Time spent generating after the first token (tokens/s = completion tokens / this sum).",
            c.generation_micros.load(Ordering::Relaxed),
            c.finished.load(Ordering::Relaxed),
        )
}

/// A Prometheus summary without quantiles: `_sum` (seconds) and `_count`.
fn summary(name: &str, help: &str, sum_micros: usize, count: usize) -> String {
    format!(
        "# HELP baimo_{name} {help}\n# TYPE baimo_{name} summary\nbaimo_{name}_sum {}\nbaimo_{name}_count {count}\n",
        sum_micros as f64 / 1e6
    )
}

/// Serves until Ctrl-C; `on_listening` gets the bound address (the port may have been 0).
pub async fn serve(
    app: Arc<App>,
    addr: SocketAddr,
    on_listening: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    on_listening(listener.local_addr()?);
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
