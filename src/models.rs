//! The model store, Ollama-shaped: `baimo pull`, `list`, `show`, `rm`, and `ps` (what a running
//! `baimo serve` has loaded, through its API).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use baimo_formats::{Gguf, HfFolder, Value};
use baimo_hub::{CachedKind, CachedModel, Fetcher, known_models};
use serde_json::{Map, json};

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// A known model name, or a hub address: `owner/name` (a model folder, or the Q4_K_M GGUF
    /// of a GGUF repository), `owner/name:QUANT`, `hf.co/owner/name[:QUANT]`,
    /// `owner/name/file.gguf`.
    model: String,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// A model file or folder, or a cached model as `baimo list` names it (or any name `run`
    /// takes for it). Nothing is downloaded.
    model: String,
    /// Everything as one JSON object (the whole chat template included).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// Cached models, as `baimo list` names them (or any name `run` takes for them).
    #[arg(required = true)]
    models: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// The running `baimo serve`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Its client key, when it asks for one (default: $BAIMO_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn pull(args: PullArgs) -> Result<()> {
    let path = Fetcher::new().resolve(&args.model).with_context(|| format!("model {:?}", args.model))?;
    println!("{}", path.display());
    Ok(())
}

/// What `list` and `show` say about a model file or folder, read from its metadata.
#[derive(Default)]
struct Facts {
    architecture: Option<String>,
    name: Option<String>,
    parameters: Option<u64>,
    quant: Option<String>,
    context_length: Option<u64>,
    embedding_length: Option<u64>,
    layers: Option<u64>,
    heads: Option<u64>,
    vocab_size: Option<u64>,
    license: Option<String>,
    chat_template: Option<String>,
    bos: Option<(u64, String)>,
    eos: Option<(u64, String)>,
}

/// llama.cpp's `general.file_type` (`enum llama_ftype`) by number.
fn file_type_name(n: u64) -> Option<&'static str> {
    Some(match n {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        _ => return None,
    })
}

fn gguf_facts(path: &Path) -> Result<Facts> {
    let g = Gguf::open(path).with_context(|| format!("{}", path.display()))?;
    let arch = g.get_str("general.architecture").ok().map(str::to_owned);
    let num = |key: &str| g.get(key).and_then(Value::as_u64);
    let per_arch = |key: &str| arch.as_deref().and_then(|a| num(&format!("{a}.{key}")));
    let text = |key: &str| g.get_str(key).ok().map(str::to_owned);
    let tokens = g.get_str_array("tokenizer.ggml.tokens").ok();
    let token = |key: &str| {
        let id = num(key)?;
        Some((id, tokens.and_then(|t| t.get(id as usize)).cloned().unwrap_or_default()))
    };
    // The file type the quantizer wrote, else the type most of the weights have.
    let quant = num("general.file_type").and_then(file_type_name).map(str::to_owned).or_else(|| {
        let mut bytes: Vec<(String, u64)> = Vec::new();
        for t in g.tensors() {
            match bytes.iter_mut().find(|(name, _)| name == t.dtype.name()) {
                Some((_, n)) => *n += t.n_bytes,
                None => bytes.push((t.dtype.name().to_owned(), t.n_bytes)),
            }
        }
        bytes.into_iter().max_by_key(|(_, n)| *n).map(|(name, _)| name)
    });
    Ok(Facts {
        name: text("general.name"),
        parameters: Some(g.tensors().iter().map(|t| t.n_elements()).sum()),
        quant,
        context_length: per_arch("context_length"),
        embedding_length: per_arch("embedding_length"),
        layers: per_arch("block_count"),
        heads: per_arch("attention.head_count"),
        vocab_size: tokens.map(|t| t.len() as u64),
        license: text("general.license"),
        chat_template: text("tokenizer.chat_template"),
        bos: token("tokenizer.ggml.bos_token_id"),
        eos: token("tokenizer.ggml.eos_token_id"),
        architecture: arch,
    })
}

fn folder_facts(dir: &Path) -> Result<Facts> {
    let folder = HfFolder::open(dir).with_context(|| format!("{}", dir.display()))?;
    let c = &folder.config;
    let num = |keys: &[&str]| keys.iter().find_map(|k| c[*k].as_u64());
    let template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|t| t["chat_template"].as_str().map(str::to_owned))
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    Ok(Facts {
        architecture: c["model_type"].as_str().map(str::to_owned),
        name: c["_name_or_path"].as_str().map(str::to_owned),
        parameters: Some(
            folder.tensors.names().filter_map(|n| folder.tensors.get(n)).map(|t| t.n_elements() as u64).sum(),
        ),
        quant: c["torch_dtype"].as_str().or(c["dtype"].as_str()).map(str::to_owned),
        context_length: num(&["max_position_embeddings", "seq_length", "n_positions", "max_sequence_length"]),
        embedding_length: num(&["hidden_size", "n_embd"]),
        layers: num(&["num_hidden_layers", "num_layers", "n_layer"]),
        heads: num(&["num_attention_heads", "n_head"]),
        vocab_size: num(&["vocab_size", "padded_vocab_size"]),
        license: None,
        chat_template: template,
        bos: num(&["bos_token_id"]).map(|id| (id, String::new())),
        eos: num(&["eos_token_id"]).map(|id| (id, String::new())),
    })
}

fn facts(path: &Path) -> Result<Facts> {
    if path.is_dir() { folder_facts(path) } else { gguf_facts(path) }
}

/// `135M`, `494M`, `7.2B`.
fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.0}M", n as f64 / 1e6),
        n => format!("{:.0}K", n as f64 / 1e3),
    }
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.0} MB", bytes as f64 / 1e6)
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `3 minutes ago`, as Ollama's list says it.
fn ago(t: SystemTime) -> String {
    let secs = SystemTime::now().duration_since(t).map_or(0, |d| d.as_secs());
    let (n, unit) = match secs {
        s if s < 60 => return "just now".into(),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s if s < 30 * 86_400 => (s / 86_400, "day"),
        s => (s / (30 * 86_400), "month"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

fn kind_name(kind: CachedKind) -> &'static str {
    match kind {
        CachedKind::Catalogue => "catalogue",
        CachedKind::HubGguf => "gguf",
        CachedKind::HubFolder => "folder",
    }
}

fn list_entry(m: &CachedModel) -> serde_json::Value {
    let f = facts(&m.path).unwrap_or_default();
    json!({
        "name": m.name,
        "kind": kind_name(m.kind),
        "path": m.path,
        "files": m.files.len(),
        "size": m.size,
        "modified": unix(m.modified),
        "architecture": f.architecture,
        "parameters": f.parameters,
        "quantization": m.quant().or(f.quant),
    })
}

pub fn list(args: ListArgs) -> Result<()> {
    let fetcher = Fetcher::new().quiet(true);
    let cached = fetcher.cached_models();
    let entries: Vec<serde_json::Value> = cached.iter().map(list_entry).collect();
    if args.json {
        for e in &entries {
            println!("{e}");
        }
        return Ok(());
    }
    println!(
        "{:<58} {:<9} {:>8} {:<10} {:>7} {:<8} MODIFIED",
        "NAME", "KIND", "SIZE", "ARCH", "PARAMS", "QUANT"
    );
    for (m, e) in cached.iter().zip(&entries) {
        println!(
            "{:<58} {:<9} {:>8} {:<10} {:>7} {:<8} {}",
            m.name,
            kind_name(m.kind),
            size(m.size),
            e["architecture"].as_str().unwrap_or("?"),
            e["parameters"].as_u64().map_or("?".into(), count),
            e["quantization"].as_str().unwrap_or("?"),
            ago(m.modified)
        );
    }
    let missing: Vec<&str> =
        known_models().iter().filter(|k| !cached.iter().any(|m| m.name == k.name)).map(|k| k.name).collect();
    if !missing.is_empty() {
        println!("\nknown, not downloaded (`baimo pull NAME`): {}", missing.join(", "));
    }
    Ok(())
}

pub fn show(args: ShowArgs) -> Result<()> {
    let fetcher = Fetcher::new().quiet(true);
    let local = Path::new(&args.model);
    let (path, cached) = if local.exists() {
        (local.to_path_buf(), None)
    } else {
        let m = fetcher.find_cached(&args.model)?;
        (m.path.clone(), Some(m))
    };
    let f = facts(&path)?;
    let mut out = Map::new();
    out.insert("model".into(), json!(args.model));
    out.insert("path".into(), json!(path));
    if let Some(m) = &cached {
        out.insert("kind".into(), json!(kind_name(m.kind)));
        out.insert("size".into(), json!(m.size));
        out.insert("files".into(), json!(m.files));
    }
    for (key, value) in [
        ("architecture", json!(f.architecture)),
        ("name", json!(f.name)),
        ("parameters", json!(f.parameters)),
        ("quantization", json!(cached.as_ref().and_then(CachedModel::quant).or(f.quant))),
        ("context_length", json!(f.context_length)),
        ("embedding_length", json!(f.embedding_length)),
        ("layers", json!(f.layers)),
        ("heads", json!(f.heads)),
        ("vocab_size", json!(f.vocab_size)),
        ("license", json!(f.license)),
        ("bos_token", json!(f.bos.as_ref().map(|(id, text)| json!({"id": id, "text": text})))),
        ("eos_token", json!(f.eos.as_ref().map(|(id, text)| json!({"id": id, "text": text})))),
        ("chat_template", json!(f.chat_template)),
    ] {
        out.insert(key.into(), value);
    }
    if args.json {
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    for (key, value) in &out {
        let text = match (key.as_str(), value) {
            (_, serde_json::Value::Null) => continue,
            ("parameters", v) => v.as_u64().map_or_else(String::new, count),
            ("size", v) => v.as_u64().map_or_else(String::new, size),
            ("files", v) => v.as_array().map_or(0, Vec::len).to_string(),
            ("chat_template", v) => {
                let t = v.as_str().unwrap_or_default();
                let first: Vec<&str> = t.lines().take(3).collect();
                format!(
                    "{} lines: {}{}",
                    t.lines().count(),
                    first.join(" ⏎ "),
                    if t.lines().count() > 3 { " …" } else { "" }
                )
            }
            (_, serde_json::Value::String(s)) => s.clone(),
            (_, v) if v.is_object() => format!("{} {}", v["id"], v["text"].as_str().unwrap_or_default()),
            (_, v) => v.to_string(),
        };
        println!("{key:<18} {text}");
    }
    Ok(())
}

pub fn rm(args: RmArgs) -> Result<()> {
    let fetcher = Fetcher::new().quiet(true);
    // Every name must be found before anything is removed.
    let found: Vec<CachedModel> =
        args.models.iter().map(|m| fetcher.find_cached(m)).collect::<Result<_, _>>()?;
    let mut seen = std::collections::HashSet::new();
    for (spec, m) in args.models.iter().zip(found) {
        if !seen.insert(m.path.clone()) {
            continue; // the same model named twice
        }
        let removed = fetcher.remove_cached(spec).with_context(|| format!("removing {}", m.name))?;
        if args.json {
            println!("{}", json!({"name": removed.name, "files": removed.files, "size": removed.size}));
        } else {
            println!(
                "removed {} ({}, {} file{})",
                removed.name,
                size(removed.size),
                removed.files.len(),
                if removed.files.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}

pub fn ps(args: PsArgs) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(10)).build()?;
    let url = format!("{}/v1/models", args.url.trim_end_matches('/'));
    let mut request = client.get(&url);
    if let Some(key) = args.api_key.or_else(|| std::env::var("BAIMO_API_KEY").ok().filter(|k| !k.is_empty()))
    {
        request = request.bearer_auth(key);
    }
    let response =
        request.send().with_context(|| format!("no baimo serve answers at {} (GET {url})", args.url))?;
    let status = response.status();
    let text = response.text().with_context(|| format!("GET {url}"))?;
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let detail =
            body["error"]["message"].as_str().map_or_else(|| text.chars().take(200).collect(), str::to_owned);
        bail!("GET {url}: HTTP {status}: {detail}");
    }
    if body.is_null() {
        bail!("GET {url}: not JSON");
    }
    let models = body["data"].as_array().cloned().unwrap_or_default();
    let rows: Vec<serde_json::Value> = models
        .iter()
        .map(|m| {
            let local = m["owned_by"] == "baimo";
            json!({
                "name": m["id"],
                "kind": if local { "local" } else { "hosted" },
                "provider": m["owned_by"],
                "loaded": m["loaded"],
            })
        })
        .collect();
    if args.json {
        for r in &rows {
            println!("{r}");
        }
        return Ok(());
    }
    println!("{:<40} {:<7} {:<12} STATE", "NAME", "KIND", "PROVIDER");
    for r in &rows {
        println!(
            "{:<40} {:<7} {:<12} {}",
            r["name"].as_str().unwrap_or_default(),
            r["kind"].as_str().unwrap_or_default(),
            r["provider"].as_str().unwrap_or_default(),
            if r["loaded"] == true { "loaded" } else { "available" }
        );
    }
    Ok(())
}
