//! What is in baimo's model cache, named the way the user would name it, and removing it.
//!
//! Layout (see [`crate::Fetcher`]): catalogue models in `models/<name>/<file>`, files of hub
//! repositories in `hf/<owner>/<name>/<revision>/<path>` (a complete model folder has a
//! `.baimo-complete` marker), each verified file with a `<file>.sha256` marker beside it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cache::{marker_path, with_suffix};
use crate::error::HubError;
use crate::fetcher::Fetcher;
use crate::gguf_repo::{HubSpec, gguf_stem, quant_of, split_part};
use crate::{find_known, known_models};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachedKind {
    /// A model of the catalogue (`baimo list` shows its name).
    Catalogue,
    /// A GGUF file of a hub repository.
    HubGguf,
    /// A Hugging Face model folder fetched from the hub.
    HubFolder,
}

/// One model in the cache.
#[derive(Clone, Debug)]
pub struct CachedModel {
    /// What to give `baimo run` for it: a catalogue name, `owner/name/path.gguf`, `owner/name`
    /// (with `@revision` when not `main`).
    pub name: String,
    pub kind: CachedKind,
    /// The file to open (the first part of a split GGUF) or the folder.
    pub path: PathBuf,
    /// Every file it takes.
    pub files: Vec<PathBuf>,
    /// Its hub repository and revision (hub models).
    pub repo: Option<(String, String)>,
    pub size: u64,
    pub modified: SystemTime,
}

impl CachedModel {
    /// The quantization its file name says (GGUF models).
    pub fn quant(&self) -> Option<String> {
        match self.kind {
            CachedKind::HubFolder => None,
            _ => quant_of(&self.path.to_string_lossy()),
        }
    }
}

/// Files that are a cached file's bookkeeping, not a model.
fn is_bookkeeping(name: &str) -> bool {
    [".sha256", ".lock", ".partial", ".part"].iter().any(|s| name.ends_with(s)) || name == ".baimo-complete"
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => files_under(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

fn size_and_time(files: &[PathBuf]) -> (u64, SystemTime) {
    files.iter().filter_map(|f| fs::metadata(f).ok()).fold((0, SystemTime::UNIX_EPOCH), |(size, time), m| {
        (size + m.len(), time.max(m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
    })
}

fn plain_dirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

impl Fetcher {
    /// Every model in the cache: catalogue models that verify, hub GGUF files (split parts as
    /// one), complete hub model folders.
    pub fn cached_models(&self) -> Vec<CachedModel> {
        let mut out = Vec::new();
        for model in known_models() {
            if let Some(path) = self.cached_path(model) {
                let files = vec![path.clone()];
                let (size, modified) = size_and_time(&files);
                out.push(CachedModel {
                    name: model.name.to_owned(),
                    kind: CachedKind::Catalogue,
                    path,
                    files,
                    repo: None,
                    size,
                    modified,
                });
            }
        }
        let hf = self.cache_root().join("hf");
        for (owner, owner_dir) in plain_dirs(&hf) {
            for (name, repo_dir) in plain_dirs(&owner_dir) {
                for (revision_dir_name, dir) in plain_dirs(&repo_dir) {
                    let repo = format!("{owner}/{name}");
                    let revision = revision_dir_name.replace("--", "/");
                    let at = if revision == "main" { String::new() } else { format!("@{revision}") };
                    self.cached_in_repo_dir(&repo, &revision, &at, &dir, &mut out);
                }
            }
        }
        out
    }

    fn cached_in_repo_dir(
        &self,
        repo: &str,
        revision: &str,
        at: &str,
        dir: &Path,
        out: &mut Vec<CachedModel>,
    ) {
        let mut files = Vec::new();
        files_under(dir, &mut files);
        files.retain(|f| !f.file_name().is_some_and(|n| is_bookkeeping(&n.to_string_lossy())));
        let relative = |f: &Path| f.strip_prefix(dir).unwrap_or(f).to_string_lossy().replace('\\', "/");
        let entry = |name: String, kind, path: PathBuf, files: Vec<PathBuf>| {
            let (size, modified) = size_and_time(&files);
            CachedModel {
                name,
                kind,
                path,
                files,
                repo: Some((repo.to_owned(), revision.to_owned())),
                size,
                modified,
            }
        };
        let is_gguf = |f: &Path| gguf_stem(&f.to_string_lossy()).is_some();
        let start = out.len();
        if dir.join(".baimo-complete").is_file() {
            let folder: Vec<PathBuf> = files.iter().filter(|f| !is_gguf(f)).cloned().collect();
            out.push(entry(format!("{repo}{at}"), CachedKind::HubFolder, dir.to_path_buf(), folder));
        }
        // GGUF files; the parts of a split set (one folder, one base name and count) as one
        // model, named by its lowest part (the first, unless a fetch was cut short).
        let mut sets: Vec<((PathBuf, String, u32), Vec<PathBuf>)> = Vec::new();
        for file in files.iter().filter(|f| is_gguf(f)) {
            let name = file.to_string_lossy();
            match gguf_stem(&name).and_then(split_part) {
                Some((base, _, count)) => {
                    let key =
                        (file.parent().map(Path::to_path_buf).unwrap_or_default(), base.to_owned(), count);
                    match sets.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, parts)) => parts.push(file.clone()),
                        None => sets.push((key, vec![file.clone()])),
                    }
                }
                None => out.push(entry(
                    format!("{repo}/{}{at}", relative(file)),
                    CachedKind::HubGguf,
                    file.clone(),
                    vec![file.clone()],
                )),
            }
        }
        for (_, mut parts) in sets {
            parts.sort();
            let first = parts[0].clone();
            out.push(entry(format!("{repo}/{}{at}", relative(&first)), CachedKind::HubGguf, first, parts));
        }
        out[start..].sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The cached model `spec` names, as `baimo run` would find it (a catalogue name, or any
    /// hub form: `owner/name[:QUANT]`, `hf.co/...`, `owner/name/file.gguf`).
    pub fn find_cached(&self, spec: &str) -> Result<CachedModel, HubError> {
        let cached = self.cached_models();
        let not_cached = || HubError::NotCached { spec: spec.to_owned() };
        if let Some(known) = find_known(spec) {
            return cached
                .into_iter()
                .find(|m| m.kind == CachedKind::Catalogue && m.name == known.name)
                .ok_or_else(not_cached);
        }
        let in_repo = |repo: &str, revision: &str| {
            cached
                .iter()
                .filter(|m| m.repo.as_ref().is_some_and(|(r, v)| r == repo && v == revision))
                .cloned()
                .collect::<Vec<_>>()
        };
        let one = |found: Vec<CachedModel>| match found.len() {
            0 => Err(not_cached()),
            1 => Ok(found.into_iter().next().unwrap()),
            _ => Err(HubError::Ambiguous {
                spec: spec.to_owned(),
                candidates: found.iter().map(|m| m.name.clone()).collect::<Vec<_>>().join(", "),
            }),
        };
        match HubSpec::parse(spec) {
            Some(HubSpec::GgufFile { repo, revision, file }) => {
                let path =
                    self.cache_root().join("hf").join(&repo).join(revision.replace('/', "--")).join(&file);
                one(in_repo(&repo, &revision).into_iter().filter(|m| m.path == path).collect())
            }
            Some(HubSpec::Gguf { repo, revision, quant }) => one(in_repo(&repo, &revision)
                .into_iter()
                .filter(|m| m.kind == CachedKind::HubGguf)
                .filter(|m| quant.is_none() || m.quant() == quant)
                .collect()),
            Some(HubSpec::Repo { repo, revision }) => {
                let all = in_repo(&repo, &revision);
                match all.iter().find(|m| m.kind == CachedKind::HubFolder) {
                    Some(folder) => Ok(folder.clone()),
                    None => one(all),
                }
            }
            None => Err(not_cached()),
        }
    }

    /// Removes the cached model `spec` names (its files and their bookkeeping, then folders
    /// left empty) and returns what it was.
    pub fn remove_cached(&self, spec: &str) -> Result<CachedModel, HubError> {
        let model = self.find_cached(spec)?;
        let root = self.cache_root().to_path_buf();
        let remove = |path: &Path| match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(HubError::io("remove", path, e)),
            _ => Ok(()),
        };
        if let Some(outside) = model.files.iter().find(|f| !f.starts_with(&root)) {
            return Err(HubError::NotCached {
                spec: format!("{spec} ({} is outside the cache)", outside.display()),
            });
        }
        for file in &model.files {
            for path in
                [file.clone(), marker_path(file), with_suffix(file, ".lock"), with_suffix(file, ".partial")]
            {
                remove(&path)?;
            }
        }
        if model.kind == CachedKind::HubFolder {
            remove(&model.path.join(".baimo-complete"))?;
        }
        // Folders left empty, up to the cache's own.
        let stop = [root.join("hf"), root.join("models"), root.clone()];
        let mut dirs: Vec<PathBuf> =
            model.files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
        dirs.push(model.path.clone());
        for start in dirs {
            let mut dir = Some(start.as_path());
            while let Some(d) = dir.filter(|d| d.starts_with(&root) && !stop.iter().any(|s| s == d)) {
                // A folder holding nothing but lock files (of downloads that ended) goes too.
                let entries: Vec<_> = fs::read_dir(d).map(|e| e.flatten().collect()).unwrap_or_default();
                if !entries.iter().all(|e| e.file_name().to_string_lossy().ends_with(".lock")) {
                    break;
                }
                for e in &entries {
                    let _ = fs::remove_file(e.path());
                }
                if fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
        Ok(model)
    }
}
