//! baimo's records, behind the [`Store`] trait so a server database can come later:
//! upstream channels (credentials included — the file is created readable by its owner only),
//! client API keys (only their SHA-256 digests are kept; the key is shown once, at creation)
//! with token and request quotas and per-minute limits, and one usage record per request.
//!
//! [`SqliteStore`] is the embedded one: SQLite in WAL mode (readers do not wait for the writer),
//! the schema versioned with `user_version`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("a stored {what} is unreadable: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the randomness source: {0}")]
    Random(String),
}

/// An upstream channel as stored (the gateway's `Channel` fields).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelRecord {
    pub name: String,
    pub provider: String,
    #[serde(default)]
    pub base_url: Option<String>,
    pub api_key: String,
    #[serde(default)]
    pub secret_key: Option<String>,
    #[serde(default)]
    pub app_id: Option<String>,
    pub models: Vec<String>,
    #[serde(default)]
    pub model_map: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

impl fmt::Debug for ChannelRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelRecord")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("api_key", &"[redacted]")
            .field("secret_key", &self.secret_key.as_ref().map(|_| "[redacted]"))
            .field("models", &self.models)
            .field("weight", &self.weight)
            .field("priority", &self.priority)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// What a client key may use. `None`: no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyLimits {
    /// Prompt + completion tokens over the key's life.
    #[serde(default)]
    pub token_quota: Option<u64>,
    /// Requests over the key's life.
    #[serde(default)]
    pub request_quota: Option<u64>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// The models the key may use (empty: all).
    #[serde(default)]
    pub models: Vec<String>,
}

/// A client key as stored: its digest, never the key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyRecord {
    pub id: i64,
    pub name: String,
    /// The key's first characters, to recognise it in a list.
    pub prefix: String,
    #[serde(skip)]
    pub digest: [u8; 32],
    /// Unix seconds.
    pub created: i64,
    pub revoked: bool,
    pub limits: KeyLimits,
}

/// A key just created: the only time its text is known.
#[derive(Debug)]
pub struct NewKey {
    pub record: KeyRecord,
    pub key: String,
}

/// One request's usage.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    pub id: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub key_id: Option<i64>,
    pub model: String,
    pub channel: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
    pub status: u16,
    pub retries: u32,
    pub stream: bool,
    /// Whether the token counts are estimated from the text seen (a hosted stream cut before
    /// its provider reported usage) rather than counted or reported.
    pub estimated: bool,
}

/// Which usage records to read.
#[derive(Clone, Debug, Default)]
pub struct UsageFilter {
    pub key_id: Option<i64>,
    pub model: Option<String>,
    /// Unix milliseconds.
    pub since_ms: Option<i64>,
    /// At most this many rows, newest first (0: no limit).
    pub limit: usize,
}

/// Sums over usage records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Where baimo keeps channels, keys and usage.
pub trait Store: Send + Sync {
    /// Adds a channel, or replaces the one of the same name.
    fn put_channel(&self, channel: &ChannelRecord) -> Result<(), StoreError>;
    fn channels(&self) -> Result<Vec<ChannelRecord>, StoreError>;
    /// Whether there was such a channel.
    fn remove_channel(&self, name: &str) -> Result<bool, StoreError>;
    fn set_channel_enabled(&self, name: &str, enabled: bool) -> Result<bool, StoreError>;

    /// A new random key (`bm-` and 40 hex digits); only its digest is stored.
    fn create_key(&self, name: &str, limits: &KeyLimits) -> Result<NewKey, StoreError>;
    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    fn revoke_key(&self, id: i64) -> Result<bool, StoreError>;

    fn record_usage(&self, usage: &UsageRow) -> Result<(), StoreError>;
    fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, StoreError>;
    fn totals(&self, filter: &UsageFilter) -> Result<Totals, StoreError>;
}

/// The SHA-256 digest a key is stored and looked up by.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().as_bytes()).into()
}

/// The key among `keys` whose digest is `presented`'s. Every digest is compared, in constant
/// time, whatever matched before: the time taken says nothing about how close a guess was.
pub fn find_key<'a>(keys: &'a [KeyRecord], presented: &str) -> Option<&'a KeyRecord> {
    let d = key_digest(presented);
    let mut found = None;
    for k in keys {
        if bool::from(k.digest.ct_eq(&d)) {
            found = Some(k);
        }
    }
    found
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

const SCHEMA_VERSION: i64 = 2;

/// What each schema version adds to the one before (version 1 is [`SCHEMA`] without them).
const MIGRATIONS: &[(i64, &str)] =
    &[(2, "ALTER TABLE usage ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0;")];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS channels (
    name TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    base_url TEXT,
    api_key TEXT NOT NULL,
    secret_key TEXT,
    app_id TEXT,
    models TEXT NOT NULL,      -- JSON array
    model_map TEXT NOT NULL,   -- JSON object
    weight INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    enabled INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    digest BLOB NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    limits TEXT NOT NULL       -- JSON KeyLimits
);
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    key_id INTEGER,
    model TEXT NOT NULL,
    channel TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    status INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    stream INTEGER NOT NULL
    -- later columns: see MIGRATIONS
);
CREATE INDEX IF NOT EXISTS usage_by_key ON usage (key_id, at_ms);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (at_ms);
";

/// The embedded store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, its folder included.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let file_error = |source| StoreError::File { path: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(file_error)?;
        }
        let existed = path.exists();
        let conn = Connection::open(path)?;
        #[cfg(unix)]
        if !existed {
            // Channel credentials live here: readable by the owner only.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(file_error)?;
        }
        let _ = existed;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        SqliteStore::init(conn)
    }

    /// A database in memory (tests).
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Invalid(format!(
                "the database was written by a newer baimo (schema {version}, this one knows {SCHEMA_VERSION})"
            )));
        }
        conn.execute_batch(SCHEMA)?;
        // A new database has version 0 and the version-1 tables just made: every migration runs.
        for &(to, sql) in MIGRATIONS {
            if version < to {
                conn.execute_batch(sql)?;
            }
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn corrupt(what: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
    move |e| StoreError::Corrupt { what, detail: e.to_string() }
}

fn usage_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UsageRow> {
    Ok(UsageRow {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        key_id: r.get(2)?,
        model: r.get(3)?,
        channel: r.get(4)?,
        prompt_tokens: r.get::<_, i64>(5)?.max(0) as u64,
        completion_tokens: r.get::<_, i64>(6)?.max(0) as u64,
        latency_ms: r.get::<_, i64>(7)?.max(0) as u64,
        status: r.get::<_, i64>(8)?.clamp(0, 999) as u16,
        retries: r.get::<_, i64>(9)?.clamp(0, u32::MAX as i64) as u32,
        stream: r.get(10)?,
        estimated: r.get(11)?,
    })
}

/// The WHERE clause and parameters of a usage filter.
fn usage_where(filter: &UsageFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut clauses = Vec::new();
    let mut values = Vec::new();
    if let Some(k) = filter.key_id {
        clauses.push("key_id = ?");
        values.push(Value::Integer(k));
    }
    if let Some(m) = &filter.model {
        clauses.push("model = ?");
        values.push(Value::Text(m.clone()));
    }
    if let Some(t) = filter.since_ms {
        clauses.push("at_ms >= ?");
        values.push(Value::Integer(t));
    }
    let clause = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    (clause, values)
}

fn clamp_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Store for SqliteStore {
    fn put_channel(&self, c: &ChannelRecord) -> Result<(), StoreError> {
        if c.name.trim().is_empty() || c.models.is_empty() || c.weight == 0 {
            return Err(StoreError::Invalid(format!(
                "channel {:?} needs a name, at least one model and a weight of at least 1",
                c.name
            )));
        }
        self.conn().execute(
            "INSERT OR REPLACE INTO channels
             (name, provider, base_url, api_key, secret_key, app_id, models, model_map, weight, priority, enabled)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                c.name,
                c.provider,
                c.base_url,
                c.api_key,
                c.secret_key,
                c.app_id,
                serde_json::to_string(&c.models).unwrap_or_default(),
                serde_json::to_string(&c.model_map).unwrap_or_default(),
                c.weight,
                c.priority,
                c.enabled,
            ],
        )?;
        Ok(())
    }

    fn channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, provider, base_url, api_key, secret_key, app_id, models, model_map, weight, priority, enabled
             FROM channels ORDER BY priority DESC, name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, bool>(10)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                name,
                provider,
                base_url,
                api_key,
                secret_key,
                app_id,
                models,
                model_map,
                weight,
                priority,
                enabled,
            ) = row?;
            out.push(ChannelRecord {
                name,
                provider,
                base_url,
                api_key,
                secret_key,
                app_id,
                models: serde_json::from_str(&models).map_err(corrupt("channel's model list"))?,
                model_map: serde_json::from_str(&model_map).map_err(corrupt("channel's model map"))?,
                weight: weight.clamp(1, u32::MAX as i64) as u32,
                priority: priority.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
                enabled,
            });
        }
        Ok(out)
    }

    fn remove_channel(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.conn().execute("DELETE FROM channels WHERE name = ?1", [name])? > 0)
    }

    fn set_channel_enabled(&self, name: &str, enabled: bool) -> Result<bool, StoreError> {
        Ok(self.conn().execute("UPDATE channels SET enabled = ?2 WHERE name = ?1", params![name, enabled])?
            > 0)
    }

    fn create_key(&self, name: &str, limits: &KeyLimits) -> Result<NewKey, StoreError> {
        let mut random = [0u8; 20];
        getrandom::fill(&mut random).map_err(|e| StoreError::Random(e.to_string()))?;
        let key = format!("bm-{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let digest = key_digest(&key);
        let prefix = key[..10].to_string();
        let created = now_ms() / 1000;
        let limits_json = serde_json::to_string(limits).unwrap_or_default();
        let conn = self.conn();
        conn.execute(
            "INSERT INTO keys (name, prefix, digest, created, limits) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, prefix, digest.as_slice(), created, limits_json],
        )?;
        let id = conn.last_insert_rowid();
        let record = KeyRecord {
            id,
            name: name.to_string(),
            prefix,
            digest,
            created,
            revoked: false,
            limits: limits.clone(),
        };
        Ok(NewKey { record, key })
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, name, prefix, digest, created, revoked, limits FROM keys ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, prefix, digest, created, revoked, limits) = row?;
            let digest: [u8; 32] = digest
                .try_into()
                .map_err(|_| StoreError::Corrupt { what: "key digest", detail: "not 32 bytes".into() })?;
            let limits = serde_json::from_str(&limits).map_err(corrupt("key's limits"))?;
            out.push(KeyRecord { id, name, prefix, digest, created, revoked, limits });
        }
        Ok(out)
    }

    fn revoke_key(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.conn().execute("UPDATE keys SET revoked = 1 WHERE id = ?1", [id])? > 0)
    }

    fn record_usage(&self, u: &UsageRow) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO usage (at_ms, key_id, model, channel, prompt_tokens, completion_tokens, latency_ms, status, retries, stream, estimated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                u.at_ms,
                u.key_id,
                u.model,
                u.channel,
                clamp_i64(u.prompt_tokens),
                clamp_i64(u.completion_tokens),
                clamp_i64(u.latency_ms),
                u.status,
                u.retries,
                u.stream,
                u.estimated,
            ],
        )?;
        Ok(())
    }

    fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, StoreError> {
        let (clause, values) = usage_where(filter);
        let limit = if filter.limit == 0 { String::new() } else { format!("LIMIT {}", filter.limit) };
        let sql = format!(
            "SELECT id, at_ms, key_id, model, channel, prompt_tokens, completion_tokens, latency_ms, status, retries, stream, estimated
             FROM usage {clause} ORDER BY id DESC {limit}"
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(values), usage_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn totals(&self, filter: &UsageFilter) -> Result<Totals, StoreError> {
        let (clause, values) = usage_where(filter);
        let sql = format!(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM usage {clause}"
        );
        let conn = self.conn();
        let totals = conn
            .query_row(&sql, rusqlite::params_from_iter(values), |r| {
                Ok(Totals {
                    requests: r.get::<_, i64>(0)?.max(0) as u64,
                    prompt_tokens: r.get::<_, i64>(1)?.max(0) as u64,
                    completion_tokens: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })
            .optional()?;
        Ok(totals.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> ChannelRecord {
        ChannelRecord {
            name: name.into(),
            provider: "openai".into(),
            base_url: Some("http://127.0.0.1:1".into()),
            api_key: "sk-stored-secret".into(),
            secret_key: None,
            app_id: None,
            models: vec!["gpt-4".into()],
            model_map: BTreeMap::from([("gpt-4".into(), "gpt-4-0613".into())]),
            weight: 3,
            priority: 1,
            enabled: true,
        }
    }

    #[test]
    fn channels_round_trip_and_hide_their_keys_in_debug() {
        let store = SqliteStore::in_memory().unwrap();
        store.put_channel(&channel("a")).unwrap();
        store.put_channel(&ChannelRecord { priority: 5, ..channel("b") }).unwrap();
        let all = store.channels().unwrap();
        assert_eq!(all.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(all[1], channel("a"));
        assert!(!format!("{:?}", all[0]).contains("sk-stored-secret"));
        assert!(store.set_channel_enabled("a", false).unwrap());
        assert!(!store.channels().unwrap()[1].enabled);
        assert!(store.remove_channel("a").unwrap() && !store.remove_channel("a").unwrap());
        let bad = ChannelRecord { models: vec![], ..channel("c") };
        assert!(matches!(store.put_channel(&bad), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn keys_are_kept_as_digests_and_found_in_constant_time() {
        let store = SqliteStore::in_memory().unwrap();
        let limits = KeyLimits { rpm: Some(2), ..KeyLimits::default() };
        let a = store.create_key("alice", &limits).unwrap();
        let b = store.create_key("bob", &KeyLimits::default()).unwrap();
        assert!(a.key.starts_with("bm-") && a.key.len() == 43 && a.key != b.key);
        let keys = store.keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(find_key(&keys, &a.key).map(|k| k.id), Some(a.record.id));
        assert_eq!(find_key(&keys, &b.key).map(|k| k.name.as_str()), Some("bob"));
        assert!(find_key(&keys, "bm-0000").is_none());
        assert_eq!(keys[0].limits.rpm, Some(2));
        assert!(store.revoke_key(a.record.id).unwrap());
        assert!(store.keys().unwrap()[0].revoked);
    }

    #[test]
    fn usage_is_filtered_and_summed() {
        let store = SqliteStore::in_memory().unwrap();
        for (i, key) in [Some(1), Some(1), Some(2), None].into_iter().enumerate() {
            store
                .record_usage(&UsageRow {
                    at_ms: 1000 + i as i64,
                    key_id: key,
                    model: if i == 2 { "claude-2".into() } else { "gpt-4".into() },
                    channel: "a".into(),
                    prompt_tokens: 10,
                    completion_tokens: i as u64,
                    status: 200,
                    ..UsageRow::default()
                })
                .unwrap();
        }
        let f = UsageFilter { key_id: Some(1), ..UsageFilter::default() };
        assert_eq!(
            store.totals(&f).unwrap(),
            Totals { requests: 2, prompt_tokens: 20, completion_tokens: 1 }
        );
        let rows = store.usage(&UsageFilter { limit: 2, ..UsageFilter::default() }).unwrap();
        assert_eq!(rows.iter().map(|r| r.completion_tokens).collect::<Vec<_>>(), [3, 2]);
        let f = UsageFilter { model: Some("gpt-4".into()), since_ms: Some(1001), ..UsageFilter::default() };
        assert_eq!(store.totals(&f).unwrap().requests, 2);
    }

    #[test]
    fn a_version_1_database_gains_the_estimated_column_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO usage (at_ms, key_id, model, channel, prompt_tokens, completion_tokens, latency_ms, status, retries, stream)
                 VALUES (5, 1, 'gpt-4', 'a', 7, 3, 1, 200, 0, 1)",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let row =
            UsageRow { model: "spark".into(), completion_tokens: 9, estimated: true, ..UsageRow::default() };
        store.record_usage(&row).unwrap();
        let rows = store.usage(&UsageFilter::default()).unwrap();
        assert_eq!(
            rows.iter().map(|r| (r.completion_tokens, r.estimated)).collect::<Vec<_>>(),
            [(9, true), (3, false)]
        );
        drop(store);
        // Opened again at the current version: no migration runs twice.
        assert_eq!(SqliteStore::open(&path).unwrap().usage(&UsageFilter::default()).unwrap().len(), 2);
    }

    #[test]
    fn the_file_is_reopened_with_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/baimo.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store.put_channel(&channel("kept")).unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.channels().unwrap()[0].name, "kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("junk.db"), b"not a database at all, not at all").unwrap();
        assert!(SqliteStore::open(&dir.path().join("junk.db")).is_err());
    }
}
