//! `baimo serve`: an OpenAI- and Anthropic-compatible HTTP API for one model.
//!
//! Settings come from flags, or from a TOML file (`--config FILE`) whose keys are the flags'
//! long names with underscores; a flag given on the command line wins over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use baimo_server::App;
use serde::Deserialize;

use crate::common::{self, ArithmeticArg, ModelOptions};

#[derive(clap::Args, Debug)]
#[command(after_help = CONFIG_HELP)]
pub struct Args {
    /// A GGUF path, a Hugging Face model folder, a known model name (default smollm2-135m), or a
    /// hub address: `owner/name`, `owner/name:QUANT`, `hf.co/owner/name[:QUANT]`, `owner/name/file.gguf`.
    model_spec: Option<String>,
    #[command(flatten)]
    model: ModelOptions,
    /// A TOML file with any of the settings below (see the end of this help).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Another model to serve, loaded on its first request (repeatable; a GGUF path, a model
    /// folder or a known name). Requests choose by `model`.
    #[arg(long = "extra-model", value_name = "MODEL")]
    extra_models: Vec<String>,
    /// Weights the loaded models may take together, in MiB; beyond, the least recently used
    /// extra models are unloaded [default: 8192].
    #[arg(long, value_name = "MIB")]
    memory_budget_mib: Option<usize>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on; 0: any free port, printed on stderr [default: 8080].
    #[arg(long)]
    port: Option<u16>,
    /// Requests decoded together at most (continuous batching); later ones wait [default: 16].
    #[arg(long)]
    parallel: Option<usize>,
    /// Finished conversations kept for the prefix cache (their KV caches), so the next turn reads
    /// only what is new; 0: off [default: 32].
    #[arg(long)]
    cache_entries: Option<usize>,
    /// Memory the prefix cache may take, in MiB [default: 1024].
    #[arg(long)]
    cache_mib: Option<usize>,
    /// Requests allowed to wait for the engine; beyond, 429 with Retry-After; 0: no limit
    /// [default: 256].
    #[arg(long)]
    queue: Option<usize>,
    /// Accept only requests with this key (repeatable; `Authorization: Bearer` or `x-api-key`).
    /// Keys are kept as SHA-256 digests and compared in constant time.
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    /// A file of API keys, one per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    api_keys_file: Option<PathBuf>,
    /// Largest max_tokens a request may ask for [default: the context's room].
    #[arg(long, value_name = "N")]
    max_tokens_limit: Option<usize>,
    /// Allow browsers on this origin to call the API (repeatable; `*` for any).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Serve no local model: only the hosted models of the configured channels.
    #[arg(long)]
    no_local: bool,
    /// The database of keys, channels and usage (see `baimo keys`); used by default when
    /// ~/.local/share/baimo/baimo.db exists.
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Turn on the admin API (/admin/...) for requests with this key (or env:VARIABLE).
    #[arg(long, value_name = "KEY")]
    admin_key: Option<String>,
    /// Without any API key, answer only requests whose Host is localhost, an IP address or one
    /// of these names (repeatable; `*`: any), and browsers only from the same host or a
    /// --cors-origin: a web page cannot reach the server through a DNS name it controls.
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Connections open at once at most; more wait [default: 3/4 of the descriptor limit].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Close a connection that sends no request for this long, in seconds [default: 60].
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// Close a connection whose request head takes longer than this, in seconds [default: 10].
    #[arg(long, value_name = "SECS")]
    header_timeout: Option<u64>,
    /// Fail a request whose body stalls this long between two pieces, in seconds [default: 30].
    #[arg(long, value_name = "SECS")]
    body_timeout: Option<u64>,
    /// On SIGTERM or Ctrl-C, wait this long for requests in flight, in seconds [default: 30].
    #[arg(long, value_name = "SECS")]
    drain_timeout: Option<u64>,
}

impl Args {
    /// Whether to print errors only.
    pub fn quiet(&self) -> bool {
        self.model.quiet
    }
}

const CONFIG_HELP: &str = "\
Config file (--config FILE, TOML; flags win):
  model = \"qwen2.5-coder-0.5b\"    # as MODEL_SPEC
  extra_models = [\"smollm2-135m\"] # as --extra-model
  memory_budget_mib = 8192
  host = \"0.0.0.0\"
  port = 8080
  parallel = 16
  queue = 256
  cache_entries = 32
  cache_mib = 1024
  ctx = 4096
  threads = 2
  arithmetic = \"fast\"             # or \"llama-cpp\" (llama.cpp's rounding, as `baimo run`)
  api_keys = [\"sk-...\"]           # added to --api-key
  api_keys_file = \"/etc/baimo/keys\"
  max_tokens_limit = 2048
  cors_origins = [\"http://localhost:3000\"]
  local = false                     # as --no-local: hosted models only
  database = \"/var/lib/baimo/baimo.db\"  # as --db
  admin_key = \"env:BAIMO_ADMIN_KEY\"     # as --admin-key
  allowed_hosts = [\"baimo.internal\"]   # as --allowed-host
  max_connections = 1000
  idle_timeout = 60                 # seconds, as --idle-timeout
  header_timeout = 10
  body_timeout = 30
  drain_timeout = 30

  [[channels]]                      # a hosted provider account (repeatable)
  name = \"openai-main\"
  provider = \"openai\"             # openai, anthropic, ...
  base_url = \"https://api.openai.com\"   # optional
  api_key = \"env:OPENAI_API_KEY\"  # a key, or env:VARIABLE to read it from the environment
  models = [\"gpt-4\", \"gpt-3.5-turbo\"]
  model_map = { \"gpt-4\" = \"gpt-4-0613\" }  # optional: client name -> provider's name
  weight = 3                        # share among channels of the same priority
  priority = 0                      # higher first; lower ones when those fail

  [retry]                           # optional
  retries_per_channel = 1
  timeout_secs = 120";

/// The config file's settings (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    model: Option<String>,
    #[serde(default)]
    extra_models: Vec<String>,
    memory_budget_mib: Option<usize>,
    host: Option<String>,
    port: Option<u16>,
    parallel: Option<usize>,
    queue: Option<usize>,
    cache_entries: Option<usize>,
    cache_mib: Option<usize>,
    ctx: Option<usize>,
    threads: Option<usize>,
    arithmetic: Option<ArithmeticArg>,
    #[serde(default)]
    api_keys: Vec<String>,
    api_keys_file: Option<PathBuf>,
    max_tokens_limit: Option<usize>,
    #[serde(default)]
    cors_origins: Vec<String>,
    local: Option<bool>,
    database: Option<PathBuf>,
    admin_key: Option<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    max_connections: Option<usize>,
    idle_timeout: Option<u64>,
    header_timeout: Option<u64>,
    body_timeout: Option<u64>,
    drain_timeout: Option<u64>,
    #[serde(default)]
    channels: Vec<baimo_gateway::Channel>,
    #[serde(default)]
    retry: RetryConfig,
}

/// How hard the gateway tries (the `[retry]` table).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryConfig {
    retries_per_channel: Option<u32>,
    base_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    failures_to_open: Option<u32>,
    cool_down_secs: Option<u64>,
}

impl RetryConfig {
    fn policy(&self) -> baimo_gateway::RetryPolicy {
        use std::time::Duration;
        let d = baimo_gateway::RetryPolicy::default();
        baimo_gateway::RetryPolicy {
            retries_per_channel: self.retries_per_channel.unwrap_or(d.retries_per_channel),
            base_backoff: self.base_backoff_ms.map_or(d.base_backoff, Duration::from_millis),
            max_backoff: self.max_backoff_ms.map_or(d.max_backoff, Duration::from_millis),
            timeout: self.timeout_secs.map_or(d.timeout, Duration::from_secs),
            idle_timeout: self.idle_timeout_secs.map_or(d.idle_timeout, Duration::from_secs),
            failures_to_open: self.failures_to_open.unwrap_or(d.failures_to_open),
            cool_down: self.cool_down_secs.map_or(d.cool_down, Duration::from_secs),
        }
    }
}

/// A setting written as `env:NAME` is read from the environment (so config files need not
/// hold secrets); `what` names the setting in the error.
fn resolve_env(value: &str, what: &str) -> Result<String> {
    match value.strip_prefix("env:") {
        Some(var) => {
            std::env::var(var).with_context(|| format!("{what}: the environment variable {var} is not set"))
        }
        None => Ok(value.to_string()),
    }
}

fn resolve_secret(secret: &mut baimo_gateway::Secret, what: &str) -> Result<()> {
    *secret = baimo_gateway::Secret::new(resolve_env(secret.expose(), what)?);
    Ok(())
}

/// The config file's channels with their `env:` settings read, each checked whole (every
/// mistake stops the start, naming the file, the channel and the setting).
fn resolve_channels(
    mut channels: Vec<baimo_gateway::Channel>,
    file: &str,
) -> Result<Vec<baimo_gateway::Channel>> {
    for c in &mut channels {
        let at = |key: &str| format!("{file}: channel {:?}: `{key}`", c.name);
        let (api_key, secret_key, app_id) = (at("api_key"), at("secret_key"), at("app_id"));
        resolve_secret(&mut c.api_key, &api_key)?;
        if let Some(s) = &mut c.secret_key {
            resolve_secret(s, &secret_key)?;
        }
        if let Some(a) = &mut c.app_id {
            *a = resolve_env(a, &app_id)?;
        }
        baimo_gateway::providers::check_channel(c)
            .map_err(|m| anyhow::anyhow!("{file}: channel {:?}: {m}", c.name))?;
    }
    for (i, c) in channels.iter().enumerate() {
        if channels[..i].iter().any(|o| o.name == c.name) {
            anyhow::bail!("{file}: two channels are named {:?}", c.name);
        }
    }
    Ok(channels)
}

fn read_config(path: &PathBuf) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid baimo serve config", path.display()))
}

pub fn main(mut args: Args) -> Result<()> {
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    args.model.ctx = args.model.ctx.or(file.ctx);
    args.model.threads = args.model.threads.or(file.threads);
    let model_spec = args.model_spec.clone().or(file.model.clone());
    let local = !args.no_local && file.local.unwrap_or(true);
    let config_name = args.config.as_ref().map_or("the command line".into(), |p| p.display().to_string());
    let channels = resolve_channels(file.channels, &config_name)?;
    // The database: named, or the default one when it exists.
    let db_path = args.db.clone().or(file.database.clone()).or_else(|| {
        let default = crate::records::default_db();
        default.exists().then_some(default)
    });
    let store: Option<Arc<dyn baimo_store::Store>> = match &db_path {
        Some(path) => Some(Arc::new(
            baimo_store::SqliteStore::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        None => None,
    };
    let stored_channels = match &store {
        Some(s) => s.channels()?.len(),
        None => 0,
    };
    let admin_key = match args.admin_key.clone().or(file.admin_key.clone()) {
        Some(k) => {
            let mut secret = baimo_gateway::Secret::new(k);
            let what = match &args.admin_key {
                Some(_) => "--admin-key".to_string(),
                None => format!("{config_name}: `admin_key`"),
            };
            resolve_secret(&mut secret, &what)?;
            if secret.expose().len() < 16 {
                anyhow::bail!("the admin key must be at least 16 characters");
            }
            if store.is_none() {
                anyhow::bail!("the admin API needs a database (--db)");
            }
            Some(secret.expose().to_string())
        }
        None => None,
    };
    if !local && channels.is_empty() && stored_channels == 0 && admin_key.is_none() {
        anyhow::bail!(
            "nothing to serve: no local model (--no-local) and no channels (config [[channels]] or `baimo channels add`)"
        );
    }
    if !local && model_spec.is_some() {
        anyhow::bail!("a model was named but --no-local (or local = false) says to serve none");
    }
    let model = if local { Some(common::load_model(model_spec.as_deref(), &args.model)?) } else { None };
    let pool = common::thread_pool(&args.model);
    let context =
        model.as_ref().map_or(args.model.ctx.unwrap_or(4096), |m| common::context_len(m, &args.model));
    // Requests may name the model as given on the command line, by its own name or by its
    // file or folder name.
    let mut names = Vec::new();
    if let Some(model) = &model {
        names.push(model.name.clone());
        let spec = model_spec.unwrap_or_else(|| baimo_hub::DEFAULT_MODEL.to_string());
        let file_name = std::path::Path::new(&spec).file_name().map(|f| f.to_string_lossy().into_owned());
        for alias in [Some(spec.clone()), file_name].into_iter().flatten() {
            if !alias.is_empty() && !names.contains(&alias) {
                names.push(alias);
            }
        }
    }
    let host = args.host.or(file.host).unwrap_or_else(|| "127.0.0.1".into());
    let port = args.port.or(file.port).unwrap_or(8080);
    let addr: SocketAddr =
        format!("{host}:{port}").parse().with_context(|| format!("listen address {host}:{port}"))?;
    let config = baimo_server::WorkerConfig {
        context,
        max_active: args.parallel.or(file.parallel).unwrap_or(16).clamp(1, 64),
        // Serving batches requests, where llama.cpp's rounding order costs the most (its kernels
        // redo the float steps per token); answers still do not depend on the batch.
        arithmetic: args.model.arithmetic.or(file.arithmetic).unwrap_or(ArithmeticArg::Fast).into(),
        cache_entries: args.cache_entries.or(file.cache_entries).unwrap_or(32),
        cache_bytes: args.cache_mib.or(file.cache_mib).unwrap_or(1024).saturating_mul(1 << 20),
    };
    let mut keys = args.api_keys.clone();
    keys.extend(file.api_keys.iter().cloned());
    for path in [&args.api_keys_file, &file.api_keys_file].into_iter().flatten() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        keys.extend(
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
        );
    }
    let mut cors_origins = args.cors_origins.clone();
    cors_origins.extend(file.cors_origins.iter().cloned());
    let mut allowed_hosts = args.allowed_hosts.clone();
    allowed_hosts.extend(file.allowed_hosts.iter().cloned());
    let limits = baimo_server::Limits {
        keys: baimo_server::ApiKeys::new(&keys),
        max_tokens: args.max_tokens_limit.or(file.max_tokens_limit),
        queue: args.queue.or(file.queue).unwrap_or(256),
        cors_origins,
        allowed_hosts,
    };
    let secs = std::time::Duration::from_secs;
    let d = baimo_server::ConnectionLimits::default();
    let connections = baimo_server::ConnectionLimits {
        max_connections: args.max_connections.or(file.max_connections).unwrap_or(d.max_connections),
        idle_timeout: args.idle_timeout.or(file.idle_timeout).map_or(d.idle_timeout, secs),
        header_timeout: args.header_timeout.or(file.header_timeout).map_or(d.header_timeout, secs),
        body_timeout: args.body_timeout.or(file.body_timeout).map_or(d.body_timeout, secs),
        drain_timeout: args.drain_timeout.or(file.drain_timeout).map_or(d.drain_timeout, secs),
    };
    // Extra models: fetched now if they are known names, loaded on their first request.
    let mut others: Vec<(Vec<String>, baimo_server::Loader)> = Vec::new();
    for spec in args.extra_models.iter().chain(&file.extra_models) {
        let path = common::resolve_model(Some(spec), args.model.quiet)?;
        let mut aliases = vec![spec.clone()];
        if let Some(f) = path.file_name().map(|f| f.to_string_lossy().into_owned())
            && !aliases.contains(&f)
        {
            aliases.push(f);
        }
        let quantize = args.model.quantize.map(Into::into);
        others.push((
            aliases,
            Box::new(move || {
                baimo_engine::LoadedModel::load_with(&path, quantize).map_err(|e| e.to_string())
            }),
        ));
    }
    let budget = args.memory_budget_mib.or(file.memory_budget_mib).unwrap_or(8192).saturating_mul(1 << 20);
    let hosted = baimo_server::Hosted { channels, policy: file.retry.policy(), store, admin_key };
    let app = App::with_models(model, names, others, pool, config, limits, budget)
        .with_hosted(hosted)
        .map_err(|e| anyhow::anyhow!("the channels: {e}"))?;
    let app = Arc::new(app);
    let names = app.model_names();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let quiet = args.model.quiet;
    runtime.block_on(baimo_server::serve(app, addr, connections, |bound| {
        if !quiet {
            eprintln!(
                "serving {} at http://{bound} (OpenAI API under /v1, chat page at /)",
                names.join(", ")
            );
        } else {
            eprintln!("listening on http://{bound}");
        }
    }))?;
    Ok(())
}
