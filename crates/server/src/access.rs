//! Client keys kept in the store, with their limits: a key's lifetime token and request quotas
//! (from its usage records) and its requests and tokens per minute (counted here, in memory, over
//! the last sixty seconds). A request over a limit gets 429 with a `Retry-After` when waiting
//! helps, and OpenAI's `insufficient_quota` when it does not.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use baimo_store::{KeyRecord, Store, Totals, UsageFilter, UsageRow, find_key, now_ms};

use crate::error::ApiError;
use crate::remote::{UsageLog, UsageRecord};

const MINUTE: Duration = Duration::from_secs(60);
/// How long a read of the key table is trusted (keys created or revoked elsewhere show up
/// within this time; the admin API refreshes at once).
const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// What happened in a key's last minute.
#[derive(Default)]
struct Window {
    requests: VecDeque<Instant>,
    tokens: VecDeque<(Instant, u64)>,
}

impl Window {
    fn trim(&mut self, now: Instant) {
        while self.requests.front().is_some_and(|&t| now.duration_since(t) >= MINUTE) {
            self.requests.pop_front();
        }
        while self.tokens.front().is_some_and(|&(t, _)| now.duration_since(t) >= MINUTE) {
            self.tokens.pop_front();
        }
    }
}

/// The store's keys, checked for each request.
pub struct Access {
    store: Arc<dyn Store>,
    keys: RwLock<(Option<Instant>, Arc<Vec<KeyRecord>>)>,
    windows: Mutex<HashMap<i64, Window>>,
    /// Each quota-bound key's lifetime usage: read from the store once, then kept up to date by
    /// [`UsageLog::record`], so a request does not sum the key's usage records again.
    lifetime: Mutex<HashMap<i64, Totals>>,
}

fn limited(message: String, retry_after: Option<u64>, quota: bool) -> ApiError {
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        kind: if quota { "insufficient_quota" } else { "requests" },
        code: Some(if quota { "insufficient_quota" } else { "rate_limit_exceeded" }),
        param: None,
        message,
        retry_after,
    }
}

impl Access {
    pub fn new(store: Arc<dyn Store>) -> Access {
        Access {
            store,
            keys: RwLock::new((None, Arc::new(Vec::new()))),
            windows: Mutex::new(HashMap::new()),
            lifetime: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The stored keys (read again when the cached list is older than a few seconds).
    pub fn keys(&self) -> Result<Arc<Vec<KeyRecord>>, ApiError> {
        {
            let cached = self.keys.read().unwrap_or_else(|p| p.into_inner());
            if cached.0.is_some_and(|t| t.elapsed() < KEY_CACHE_TTL) {
                return Ok(cached.1.clone());
            }
        }
        self.refresh()
    }

    /// Reads the keys now (after the admin API changed them).
    pub fn refresh(&self) -> Result<Arc<Vec<KeyRecord>>, ApiError> {
        let keys = Arc::new(self.store.keys().map_err(|e| ApiError::unavailable(e.to_string()))?);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = (Some(Instant::now()), keys.clone());
        Ok(keys)
    }

    /// Whether any key is stored (none: the store does not restrict access).
    pub fn has_keys(&self) -> Result<bool, ApiError> {
        Ok(!self.keys()?.is_empty())
    }

    /// The key `presented` is, if it is a live one and within its limits; the request is
    /// counted against its per-minute limit.
    pub fn admit(&self, presented: &str) -> Result<KeyRecord, ApiError> {
        let keys = self.keys()?;
        let key =
            find_key(&keys, presented).filter(|k| !k.revoked).cloned().ok_or_else(ApiError::unauthorized)?;
        let limits = &key.limits;
        if limits.token_quota.is_some() || limits.request_quota.is_some() {
            let used = self.lifetime_usage(key.id)?;
            if let Some(q) = limits.token_quota
                && used.prompt_tokens + used.completion_tokens >= q
            {
                return Err(limited(format!("This key has used its quota of {q} tokens."), None, true));
            }
            if let Some(q) = limits.request_quota
                && used.requests >= q
            {
                return Err(limited(format!("This key has used its quota of {q} requests."), None, true));
            }
        }
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.entry(key.id).or_default();
        w.trim(now);
        let wait = |since: Instant| {
            (MINUTE.saturating_sub(now.duration_since(since)).as_secs_f64().ceil() as u64).max(1)
        };
        if let Some(rpm) = limits.rpm
            && w.requests.len() >= rpm as usize
        {
            let after = w.requests.front().map(|&t| wait(t));
            return Err(limited(
                format!("Rate limit reached: {rpm} requests per minute for this key."),
                after,
                false,
            ));
        }
        if let Some(tpm) = limits.tpm {
            let used: u64 = w.tokens.iter().map(|t| t.1).sum();
            if used >= tpm {
                let after = w.tokens.front().map(|&(t, _)| wait(t));
                return Err(limited(
                    format!("Rate limit reached: {tpm} tokens per minute for this key."),
                    after,
                    false,
                ));
            }
        }
        w.requests.push_back(now);
        Ok(key)
    }
}

impl Access {
    /// The key's usage over its life (from the store the first time).
    fn lifetime_usage(&self, key_id: i64) -> Result<Totals, ApiError> {
        let mut lifetime = self.lifetime.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = lifetime.get(&key_id) {
            return Ok(*t);
        }
        let filter = UsageFilter { key_id: Some(key_id), ..UsageFilter::default() };
        let totals = self.store.totals(&filter).map_err(|e| ApiError::unavailable(e.to_string()))?;
        lifetime.insert(key_id, totals);
        Ok(totals)
    }
}

impl UsageLog for Access {
    fn record(&self, r: UsageRecord) {
        if let Some(id) = r.key_id {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            windows
                .entry(id)
                .or_default()
                .tokens
                .push_back((Instant::now(), r.prompt_tokens + r.completion_tokens));
        }
        let row = UsageRow {
            id: 0,
            at_ms: now_ms(),
            key_id: r.key_id,
            model: r.model,
            channel: r.channel,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            latency_ms: r.latency_ms,
            status: r.status,
            retries: r.retries,
            stream: r.stream,
        };
        // The lifetime totals count the record under the same lock the store write happens in,
        // so a first read of the store cannot count it twice or miss it.
        let mut lifetime = self.lifetime.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.store.record_usage(&row) {
            tracing::error!("a usage record was lost: {e}");
        } else if let Some(t) = row.key_id.and_then(|id| lifetime.get_mut(&id)) {
            t.requests += 1;
            t.prompt_tokens += row.prompt_tokens;
            t.completion_tokens += row.completion_tokens;
        }
    }
}
