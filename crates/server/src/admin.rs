//! The admin API, off unless an admin key is configured (then every `/admin` request must carry
//! it, compared in constant time): channels (`GET`/`POST /admin/channels`,
//! `DELETE /admin/channels/{name}`, `POST /admin/channels/{name}/enable|disable`), client keys
//! (`GET`/`POST /admin/keys`, `DELETE /admin/keys/{id}`; a key's text is shown once, in the
//! answer that creates it) and usage (`GET /admin/usage?key_id=&model=&since_ms=&limit=`).
//! Channel credentials are never sent back.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use baimo_store::{ChannelRecord, KeyLimits, Store, UsageFilter};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::App;
use crate::error::ApiError;

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/admin/channels", get(list_channels).post(put_channel))
        .route("/admin/channels/{name}", delete(remove_channel))
        .route("/admin/channels/{name}/{action}", post(toggle_channel))
        .route("/admin/keys", get(list_keys).post(create_key))
        .route("/admin/keys/{id}", delete(revoke_key))
        .route("/admin/usage", get(usage))
}

fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: Some("unknown_url"),
        param: None,
        message: "Unknown request URL.".into(),
        retry_after: None,
    }
}

/// The store, when the admin API is on and the request carries its key.
fn guard(app: &App, headers: &HeaderMap) -> Result<Arc<dyn Store>, ApiError> {
    let hosted = app.hosted();
    // Off: as if the routes did not exist.
    let (Some(admin_key), Some(store)) = (&hosted.admin_key, &hosted.store) else {
        return Err(not_found());
    };
    let presented = crate::auth::presented_key(headers).unwrap_or("");
    let (a, b) = (sha(presented), sha(admin_key));
    if !bool::from(a.ct_eq(&b)) {
        return Err(ApiError::unauthorized());
    }
    Ok(store.clone())
}

fn sha(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

fn store_error(e: baimo_store::StoreError) -> ApiError {
    match e {
        baimo_store::StoreError::Invalid(m) => ApiError::bad_request(m),
        other => ApiError::unavailable(other.to_string()),
    }
}

/// A channel as the admin API shows it: everything but the credentials.
pub fn channel_json(c: &ChannelRecord) -> Value {
    json!({
        "name": c.name, "provider": c.provider, "base_url": c.base_url, "models": c.models,
        "model_map": c.model_map, "weight": c.weight, "priority": c.priority, "enabled": c.enabled,
        "app_id": c.app_id, "has_secret_key": c.secret_key.is_some(),
    })
}

/// A channel of the config file, shown as stored ones are (it cannot be changed here).
fn config_channel_json(c: &baimo_gateway::Channel) -> Value {
    json!({
        "name": c.name, "provider": c.provider.name(), "base_url": c.base_url, "models": c.models,
        "model_map": c.model_map, "weight": c.weight, "priority": c.priority, "enabled": c.enabled,
        "app_id": c.app_id, "has_secret_key": c.secret_key.is_some(), "source": "config",
    })
}

/// Every channel the gateway uses: the config file's (read-only), then the store's.
async fn list_channels(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let result = guard(&app, &headers).and_then(|store| store.channels().map_err(store_error));
    match result {
        Ok(channels) => {
            let configured = app.hosted().channels.iter().map(config_channel_json);
            let stored = channels.iter().map(|c| {
                let mut v = channel_json(c);
                v["source"] = json!("store");
                v
            });
            Json(json!({"data": configured.chain(stored).collect::<Vec<_>>()})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn put_channel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<ChannelRecord>, JsonRejection>,
) -> Response {
    let store = match guard(&app, &headers) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let record = match body {
        Ok(Json(r)) => r,
        Err(rejection) => return ApiError::bad_request(rejection.body_text()).into_response(),
    };
    // `env:` is read from the server's environment only in the config file and on the command
    // line: over HTTP it would be kept as the literal key and fail every request.
    let env_refs = [Some(&record.api_key), record.secret_key.as_ref(), record.app_id.as_ref()];
    if env_refs.into_iter().flatten().any(|v| v.starts_with("env:")) {
        return ApiError::bad_request("`env:` references are not read over the admin API: send the value")
            .into_response();
    }
    // Checked as the gateway will read it before it is kept: a record that would stop the next
    // start is never stored.
    let checked = crate::channel_from_record(&record).and_then(|c| {
        baimo_gateway::providers::check_channel(&c).map_err(|m| format!("channel {:?}: {m}", c.name))
    });
    if let Err(e) = checked {
        return ApiError::bad_request(e).into_response();
    }
    if app.hosted().channels.iter().any(|c| c.name == record.name) {
        return ApiError::bad_request(format!(
            "a channel of the config file is named {:?}: choose another name",
            record.name
        ))
        .into_response();
    }
    if let Err(e) = store.put_channel(&record) {
        return store_error(e).into_response();
    }
    if let Err(e) = app.rebuild_gateway() {
        return ApiError::bad_request(e).into_response();
    }
    (StatusCode::CREATED, Json(channel_json(&record))).into_response()
}

async fn remove_channel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let store = match guard(&app, &headers) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match store.remove_channel(&name) {
        Ok(true) => match app.rebuild_gateway() {
            Ok(()) => Json(json!({"deleted": name})).into_response(),
            Err(e) => ApiError::unavailable(e).into_response(),
        },
        Ok(false) => ApiError::bad_request(format!("no stored channel is named {name:?}")).into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

async fn toggle_channel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let store = match guard(&app, &headers) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let enabled = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => return not_found().into_response(),
    };
    match store.set_channel_enabled(&name, enabled) {
        Ok(true) => match app.rebuild_gateway() {
            Ok(()) => Json(json!({"name": name, "enabled": enabled})).into_response(),
            Err(e) => ApiError::unavailable(e).into_response(),
        },
        Ok(false) => ApiError::bad_request(format!("no stored channel is named {name:?}")).into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

async fn list_keys(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match guard(&app, &headers).and_then(|store| store.keys().map_err(store_error)) {
        Ok(keys) => Json(json!({"data": keys})).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    name: String,
    #[serde(default, flatten)]
    limits: KeyLimits,
}

async fn create_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<NewKeyBody>, JsonRejection>,
) -> Response {
    let store = match guard(&app, &headers) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let body = match body {
        Ok(Json(b)) => b,
        Err(rejection) => return ApiError::bad_request(rejection.body_text()).into_response(),
    };
    match store.create_key(&body.name, &body.limits) {
        Ok(new) => {
            if let Some(access) = &app.access {
                let _ = access.refresh();
            }
            (StatusCode::CREATED, Json(json!({"key": new.key, "record": new.record}))).into_response()
        }
        Err(e) => store_error(e).into_response(),
    }
}

async fn revoke_key(State(app): State<Arc<App>>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let store = match guard(&app, &headers) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match store.revoke_key(id) {
        Ok(true) => {
            if let Some(access) = &app.access {
                let _ = access.refresh();
            }
            Json(json!({"revoked": id})).into_response()
        }
        Ok(false) => ApiError::bad_request(format!("no key has id {id}")).into_response(),
        Err(e) => store_error(e).into_response(),
    }
}

#[derive(Deserialize)]
struct UsageQuery {
    key_id: Option<i64>,
    model: Option<String>,
    since_ms: Option<i64>,
    limit: Option<usize>,
}

async fn usage(State(app): State<Arc<App>>, headers: HeaderMap, Query(q): Query<UsageQuery>) -> Response {
    let store = match guard(&app, &headers) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let filter = UsageFilter {
        key_id: q.key_id,
        model: q.model,
        since_ms: q.since_ms,
        limit: q.limit.unwrap_or(100).min(10_000),
    };
    match (store.usage(&filter), store.totals(&UsageFilter { limit: 0, ..filter.clone() })) {
        (Ok(rows), Ok(totals)) => Json(json!({"data": rows, "totals": totals})).into_response(),
        (Err(e), _) | (_, Err(e)) => store_error(e).into_response(),
    }
}
