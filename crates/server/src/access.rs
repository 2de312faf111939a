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
use crate::usage::{UsageLog, UsageRecord};

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
    /// [`UsageLog::record`], so a request does not sum the key's usage records again. Beside it,
    /// what the key's requests in flight have reserved.
    lifetime: Mutex<HashMap<i64, (Totals, Reserved)>>,
}

/// What a key's requests in flight may still use: each reserved its maximum at admission.
#[derive(Clone, Copy, Debug, Default)]
struct Reserved {
    tokens: u64,
    requests: u64,
}

/// A request's share of its key's quotas, held while it runs; dropping it (after the request's
/// usage is recorded) gives the share back.
pub struct Reservation {
    access: Arc<Access>,
    key_id: i64,
    tokens: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut lifetime = self.access.lifetime.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, r)) = lifetime.get_mut(&self.key_id) {
            r.tokens = r.tokens.saturating_sub(self.tokens);
            r.requests = r.requests.saturating_sub(1);
        }
    }
}

/// What a request may use at most, as far as it is known before it runs.
#[derive(Clone, Copy, Debug)]
pub struct RequestBound {
    /// The prompt's tokens (counted, or an upper bound).
    pub prompt_tokens: u64,
    /// The tokens each answer may have (`None`: as many as its backend allows).
    pub max_tokens: Option<u64>,
    /// Answers generated (`n`).
    pub choices: u64,
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

    /// The key `presented` is, if it is a live one with quota left and room in its minute.
    /// Nothing is counted: [`Access::count`] does that once the request is admitted whole.
    pub fn check(&self, presented: &str) -> Result<KeyRecord, ApiError> {
        let key = match find_key(&self.keys()?, presented) {
            Some(k) => k.clone(),
            // A key created a moment ago (by `baimo keys create` in another process) is in the
            // store but not yet in the cached list: read it again before refusing. At most once
            // a second, so wrong keys cannot make every request read the store.
            None if self.may_refresh() => {
                find_key(&self.refresh()?, presented).cloned().ok_or_else(ApiError::unauthorized)?
            }
            None => return Err(ApiError::unauthorized()),
        };
        if key.revoked {
            return Err(ApiError::unauthorized());
        }
        let limits = &key.limits;
        if limits.token_quota.is_some() || limits.request_quota.is_some() {
            let (used, _) = self.lifetime_usage(key.id)?;
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
        Ok(key)
    }

    /// Whether an unknown key may make the key list be read again now.
    fn may_refresh(&self) -> bool {
        let cached = self.keys.read().unwrap_or_else(|p| p.into_inner());
        cached.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
    }

    /// Counts an admitted request against its key's requests per minute.
    pub fn count(&self, key: &KeyRecord) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.entry(key.id).or_default().requests.push_back(Instant::now());
    }

    /// Reserves the request's maximum against the key's quotas (none when it has none). When
    /// less than the maximum is left, the request's `max_tokens` is lowered to what is left (it
    /// then ends with `length`); when not even its prompt fits, or no request is left, it is
    /// refused. Concurrent requests thus never use more than the quota together.
    pub fn reserve(
        self: &Arc<Self>,
        key: &KeyRecord,
        bound: RequestBound,
    ) -> Result<(Option<Reservation>, Option<u64>), ApiError> {
        let limits = &key.limits;
        if limits.token_quota.is_none() && limits.request_quota.is_none() {
            return Ok((None, bound.max_tokens));
        }
        self.lifetime_usage(key.id)?;
        let mut lifetime = self.lifetime.lock().unwrap_or_else(|p| p.into_inner());
        let (used, reserved) = lifetime.get_mut(&key.id).ok_or_else(|| ApiError::unavailable("key usage"))?;
        if let Some(q) = limits.request_quota
            && used.requests + reserved.requests >= q
        {
            return Err(limited(
                format!("This key's quota of {q} requests is used or held by requests in flight."),
                None,
                true,
            ));
        }
        let mut max_tokens = bound.max_tokens;
        let mut tokens = 0;
        if let Some(q) = limits.token_quota {
            let left = q.saturating_sub(used.prompt_tokens + used.completion_tokens + reserved.tokens);
            let room = left.saturating_sub(bound.prompt_tokens) / bound.choices.max(1);
            if room == 0 {
                return Err(limited(
                    format!(
                        "This key has {left} tokens of its quota of {q} left (requests in flight hold part of \
                         it); this prompt may take up to {}.",
                        bound.prompt_tokens
                    ),
                    None,
                    true,
                ));
            }
            let most = max_tokens.map_or(room, |m| m.min(room));
            max_tokens = Some(most);
            tokens = bound.prompt_tokens + most * bound.choices.max(1);
        }
        reserved.tokens += tokens;
        reserved.requests += 1;
        Ok((Some(Reservation { access: self.clone(), key_id: key.id, tokens }), max_tokens))
    }
}

impl Access {
    /// The key's usage over its life (from the store the first time).
    fn lifetime_usage(&self, key_id: i64) -> Result<(Totals, Reserved), ApiError> {
        let mut lifetime = self.lifetime.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = lifetime.get(&key_id) {
            return Ok(*t);
        }
        let filter = UsageFilter { key_id: Some(key_id), ..UsageFilter::default() };
        let totals = self.store.totals(&filter).map_err(|e| ApiError::unavailable(e.to_string()))?;
        lifetime.insert(key_id, (totals, Reserved::default()));
        Ok((totals, Reserved::default()))
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
            estimated: r.estimated,
        };
        // The lifetime totals count the record under the same lock the store write happens in,
        // so a first read of the store cannot count it twice or miss it.
        let mut lifetime = self.lifetime.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.store.record_usage(&row) {
            tracing::error!("a usage record was lost: {e}");
        } else if let Some((t, _)) = row.key_id.and_then(|id| lifetime.get_mut(&id)) {
            t.requests += 1;
            t.prompt_tokens += row.prompt_tokens;
            t.completion_tokens += row.completion_tokens;
        }
    }
}
