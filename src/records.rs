//! `baimo keys`, `baimo channels`, `baimo usage`: the records `baimo serve` reads (client keys
//! with their limits, upstream channels) and writes (one usage record per request), in the
//! SQLite database (`--db`, default `$BAIMO_DATA/baimo.db`, else
//! `$XDG_DATA_HOME/baimo/baimo.db`, else `~/.local/share/baimo/baimo.db`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use baimo_store::{ChannelRecord, KeyLimits, SqliteStore, Store, UsageFilter};

/// The database every command uses unless told otherwise.
pub fn default_db() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("BAIMO_DATA") {
        return dir.join("baimo.db");
    }
    let data = var("XDG_DATA_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("baimo/baimo.db")
}

#[derive(clap::Args, Debug)]
pub struct DbArg {
    /// The database file [default: ~/.local/share/baimo/baimo.db].
    #[arg(long, value_name = "FILE", global = true)]
    db: Option<PathBuf>,
}

impl DbArg {
    fn open(&self) -> Result<SqliteStore> {
        let path = self.db.clone().unwrap_or_else(default_db);
        SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))
    }
}

#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    #[command(flatten)]
    db: DbArg,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(clap::Subcommand, Debug)]
enum KeysCommand {
    /// Create a client key; it is printed once (only its digest is kept).
    Create {
        /// A name to recognise it by.
        name: String,
        /// Tokens (prompt + completion) the key may use in all.
        #[arg(long)]
        token_quota: Option<u64>,
        /// Requests the key may make in all.
        #[arg(long)]
        request_quota: Option<u64>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// A model the key may use (repeatable; none: every model).
        #[arg(long = "model")]
        models: Vec<String>,
    },
    /// List the keys (their first characters, limits and usage).
    List,
    /// Revoke a key by id.
    Revoke { id: i64 },
}

pub fn keys(args: KeysArgs) -> Result<()> {
    let store = args.db.open()?;
    match args.command {
        KeysCommand::Create { name, token_quota, request_quota, rpm, tpm, models } => {
            let limits = KeyLimits { token_quota, request_quota, rpm, tpm, models };
            let new = store.create_key(&name, &limits)?;
            eprintln!("key {} ({name}) created; it is shown only this once:", new.record.id);
            println!("{}", new.key);
        }
        KeysCommand::List => {
            println!(
                "{:>4}  {:<16} {:<12} {:<8} {:>10} {:>10}  limits",
                "id", "name", "prefix", "state", "requests", "tokens"
            );
            for k in store.keys()? {
                let used = store.totals(&UsageFilter { key_id: Some(k.id), ..UsageFilter::default() })?;
                let l = &k.limits;
                let mut limits = Vec::new();
                for (label, v) in [("tokens", l.token_quota), ("requests", l.request_quota), ("tpm", l.tpm)] {
                    if let Some(v) = v {
                        limits.push(format!("{label}≤{v}"));
                    }
                }
                if let Some(rpm) = l.rpm {
                    limits.push(format!("rpm≤{rpm}"));
                }
                if !l.models.is_empty() {
                    limits.push(format!("models={}", l.models.join(",")));
                }
                println!(
                    "{:>4}  {:<16} {:<12} {:<8} {:>10} {:>10}  {}",
                    k.id,
                    k.name,
                    format!("{}…", k.prefix),
                    if k.revoked { "revoked" } else { "active" },
                    used.requests,
                    used.prompt_tokens + used.completion_tokens,
                    limits.join(" ")
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke_key(id)? {
                bail!("no key has id {id}");
            }
            eprintln!("key {id} revoked");
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ChannelsArgs {
    #[command(flatten)]
    db: DbArg,
    #[command(subcommand)]
    command: ChannelsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ChannelsCommand {
    /// Add a channel (or replace the one of the same name).
    Add {
        name: String,
        /// The provider's protocol (openai, anthropic, gemini, ernie, spark, dashscope, zhipu, baichuan, ...).
        #[arg(long)]
        provider: String,
        #[arg(long)]
        base_url: Option<String>,
        /// The API key, or env:VARIABLE to store the variable's value.
        #[arg(long)]
        api_key: String,
        /// The second credential (ERNIE's secret key, Spark's API secret), or env:VARIABLE.
        #[arg(long)]
        secret_key: Option<String>,
        /// Spark's app id.
        #[arg(long)]
        app_id: Option<String>,
        /// A model the channel serves (repeatable), as `name` or `name=provider-name`.
        #[arg(long = "model", required = true)]
        models: Vec<String>,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i32,
    },
    /// List the channels (without their credentials).
    List,
    Remove {
        name: String,
    },
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
}

fn from_env(value: String) -> Result<String> {
    match value.strip_prefix("env:") {
        Some(var) => std::env::var(var).with_context(|| format!("the environment variable {var} is not set")),
        None => Ok(value),
    }
}

pub fn channels(args: ChannelsArgs) -> Result<()> {
    let store = args.db.open()?;
    match args.command {
        ChannelsCommand::Add {
            name,
            provider,
            base_url,
            api_key,
            secret_key,
            app_id,
            models,
            weight,
            priority,
        } => {
            if baimo_gateway::ProviderKind::from_name(&provider).is_none() {
                let names: Vec<&str> = baimo_gateway::ProviderKind::ALL.iter().map(|k| k.name()).collect();
                bail!("unknown provider {provider:?}; one of {}", names.join(", "));
            }
            let mut names = Vec::new();
            let mut model_map = BTreeMap::new();
            for m in models {
                match m.split_once('=') {
                    Some((client, upstream)) => {
                        model_map.insert(client.to_string(), upstream.to_string());
                        names.push(client.to_string());
                    }
                    None => names.push(m),
                }
            }
            let record = ChannelRecord {
                name: name.clone(),
                provider,
                base_url,
                api_key: from_env(api_key)?,
                secret_key: secret_key.map(from_env).transpose()?,
                app_id,
                models: names,
                model_map,
                weight,
                priority,
                enabled: true,
            };
            // Checked as `serve` will read it: a channel that would stop the server is not stored.
            let channel = baimo_server::channel_from_record(&record).map_err(|e| anyhow::anyhow!(e))?;
            baimo_gateway::providers::check_channel(&channel)
                .map_err(|e| anyhow::anyhow!("channel {name:?}: {e}"))?;
            store.put_channel(&record)?;
            eprintln!("channel {name} saved (a running server takes it up within seconds)");
        }
        ChannelsCommand::List => {
            println!(
                "{:<16} {:<20} {:>6} {:>8} {:<8}  models",
                "name", "provider", "weight", "priority", "state"
            );
            for c in store.channels()? {
                println!(
                    "{:<16} {:<20} {:>6} {:>8} {:<8}  {}",
                    c.name,
                    c.provider,
                    c.weight,
                    c.priority,
                    if c.enabled { "enabled" } else { "disabled" },
                    c.models.join(", ")
                );
            }
        }
        ChannelsCommand::Remove { name } => {
            if !store.remove_channel(&name)? {
                bail!("no channel is named {name:?}");
            }
        }
        ChannelsCommand::Enable { name } => toggle(&store, &name, true)?,
        ChannelsCommand::Disable { name } => toggle(&store, &name, false)?,
    }
    Ok(())
}

fn toggle(store: &SqliteStore, name: &str, enabled: bool) -> Result<()> {
    if !store.set_channel_enabled(name, enabled)? {
        bail!("no channel is named {name:?}");
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    db: DbArg,
    /// Only this key's requests.
    #[arg(long)]
    key: Option<i64>,
    /// Only this model's requests.
    #[arg(long)]
    model: Option<String>,
    /// The newest requests shown at most.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON (one object: rows and totals).
    #[arg(long)]
    json: bool,
}

pub fn usage(args: UsageArgs) -> Result<()> {
    let store = args.db.open()?;
    let filter =
        UsageFilter { key_id: args.key, model: args.model.clone(), since_ms: None, limit: args.limit };
    let rows = store.usage(&filter)?;
    let totals = store.totals(&UsageFilter { limit: 0, ..filter })?;
    if args.json {
        println!("{}", serde_json::json!({"data": rows, "totals": totals}));
        return Ok(());
    }
    println!(
        "{:>6} {:<24} {:>5} {:<20} {:<16} {:>7} {:>7} {:>8} {:>6} {:>7}",
        "id", "time (UTC)", "key", "model", "channel", "prompt", "output", "ms", "status", "retries"
    );
    for r in &rows {
        println!(
            "{:>6} {:<24} {:>5} {:<20} {:<16} {:>7} {:>7} {:>8} {:>6} {:>7}",
            r.id,
            baimo_chat::format_utc(r.at_ms.div_euclid(1000), "%Y-%m-%d %H:%M:%S"),
            r.key_id.map_or("-".into(), |k| k.to_string()),
            r.model,
            r.channel,
            r.prompt_tokens,
            if r.estimated { format!("~{}", r.completion_tokens) } else { r.completion_tokens.to_string() },
            r.latency_ms,
            r.status,
            r.retries
        );
    }
    if rows.iter().any(|r| r.estimated) {
        println!("~: estimated from the text received (a hosted stream cut before its provider counted)");
    }
    println!(
        "total: {} requests, {} prompt + {} completion tokens",
        totals.requests, totals.prompt_tokens, totals.completion_tokens
    );
    Ok(())
}
