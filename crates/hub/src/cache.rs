//! Where the cache lives, and how a file in it is trusted without hashing it on every run.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use crate::error::HubError;
use crate::ui::Ui;

/// The cache root: `$BAIMO_HOME` if set, else `$XDG_CACHE_HOME/baimo`, else `~/.cache/baimo`.
pub fn cache_root() -> PathBuf {
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .or_else(|| std::env::home_dir().map(PathBuf::into_os_string));
    cache_root_from(
        std::env::var_os("BAIMO_HOME").as_deref(),
        std::env::var_os("XDG_CACHE_HOME").as_deref(),
        home.as_deref(),
    )
}

/// The Hugging Face cache other tools fill (`huggingface_hub`, transformers, llama.cpp's `-hf`):
/// `HF_HUB_CACHE`, else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`; `None` when it does not exist.
pub fn hf_hub_cache() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|home| home.join("hub")))
        .or_else(|| {
            var("XDG_CACHE_HOME").filter(|p| p.is_absolute()).map(|c| c.join("huggingface").join("hub"))
        })
        .or_else(|| var("HOME").map(|home| home.join(".cache").join("huggingface").join("hub")))?;
    dir.is_dir().then_some(dir)
}

/// [`cache_root`] from given values of `BAIMO_HOME`, `XDG_CACHE_HOME` and the home folder.
///
/// Empty values count as unset, and so does a relative `XDG_CACHE_HOME`, as the XDG base
/// directory specification asks. Without any of them the cache goes to the temporary folder,
/// which is better than failing for a program that can run without a home.
pub fn cache_root_from(
    baimo_home: Option<&OsStr>,
    xdg_cache_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> PathBuf {
    if let Some(baimo_home) = baimo_home.filter(|value| !value.is_empty()) {
        return PathBuf::from(baimo_home);
    }
    if let Some(xdg) = xdg_cache_home.map(Path::new).filter(|path| path.is_absolute()) {
        return xdg.join("baimo");
    }
    if let Some(home) = home.filter(|value| !value.is_empty()) {
        return Path::new(home).join(".cache").join("baimo");
    }
    std::env::temp_dir().join("baimo")
}

/// `path` with `suffix` appended to its file name: `a.gguf` → `a.gguf.partial`.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

pub(crate) fn marker_path(file: &Path) -> PathBuf {
    with_suffix(file, ".sha256")
}

/// What the marker next to a verified file says: the hash it was verified against, and the
/// size and modification time it had then, so a file replaced or touched since is hashed again.
fn marker_text(sha256: &str, metadata: &fs::Metadata) -> Option<String> {
    let modified = metadata.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!(
        "sha256 {sha256} size {} mtime {}.{:09}\n",
        metadata.len(),
        modified.as_secs(),
        modified.subsec_nanos()
    ))
}

/// Records that `file` was found to have `sha256`. Failing to write the marker only costs a
/// rehash on the next run, so errors are ignored.
pub(crate) fn write_marker(file: &Path, sha256: &str) {
    if let Ok(metadata) = fs::metadata(file)
        && let Some(text) = marker_text(sha256, &metadata)
    {
        let _ = fs::write(marker_path(file), text);
    }
}

pub(crate) fn remove_marker(file: &Path) {
    let _ = fs::remove_file(marker_path(file));
}

fn marker_vouches_for(file: &Path, sha256: &str, metadata: &fs::Metadata) -> bool {
    // A marker is a few dozen bytes; anything much larger is not ours.
    let Ok(marker) = File::open(marker_path(file)) else {
        return false;
    };
    let mut text = String::new();
    if marker.take(512).read_to_string(&mut text).is_err() {
        return false;
    }
    marker_text(sha256, metadata).is_some_and(|expected| text == expected)
}

/// Whether `file` exists with exactly `size` bytes and the content `sha256`: trusted from its
/// marker when that matches, else hashed (once; a good result leaves a marker).
pub(crate) fn verify_cached(file: &Path, size: u64, sha256: &str, ui: Ui) -> Result<bool, HubError> {
    let metadata = match fs::metadata(file) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(HubError::io("read", file, error)),
    };
    if !metadata.is_file() || metadata.len() != size {
        return Ok(false);
    }
    if marker_vouches_for(file, sha256, &metadata) {
        return Ok(true);
    }
    let label = format!("verifying {}", file.file_name().unwrap_or_default().to_string_lossy());
    let progress = ui.bytes_bar(Some(size), &label);
    let actual = sha256_of_file(file, &progress)?;
    progress.finish_and_clear();
    if actual == sha256 {
        write_marker(file, sha256);
        Ok(true)
    } else {
        remove_marker(file);
        Ok(false)
    }
}

/// Lowercase hex sha256 of a whole file, advancing `progress` by the bytes read.
pub(crate) fn sha256_of_file(path: &Path, progress: &ProgressBar) -> Result<String, HubError> {
    let mut file = File::open(path).map_err(|error| HubError::io("open", path, error))?;
    let mut hasher = Sha256::new();
    hash_reader(&mut file, &mut hasher, progress).map_err(|error| HubError::io("read", path, error))?;
    Ok(hex(&hasher.finalize()))
}

/// Feeds all of `reader` into `hasher`; returns the number of bytes.
pub(crate) fn hash_reader(
    reader: &mut impl Read,
    hasher: &mut Sha256,
    progress: &ProgressBar,
) -> io::Result<u64> {
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut total = 0u64;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..read]);
        total += read as u64;
        progress.inc(read as u64);
    }
}

pub(crate) const COPY_BUFFER_BYTES: usize = 256 * 1024;

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(baimo: Option<&str>, xdg: Option<&str>, home: Option<&str>) -> PathBuf {
        cache_root_from(baimo.map(OsStr::new), xdg.map(OsStr::new), home.map(OsStr::new))
    }

    #[test]
    fn baimo_home_wins_over_everything() {
        assert_eq!(root(Some("/b"), Some("/x"), Some("/h")), PathBuf::from("/b"));
    }

    #[test]
    fn xdg_cache_home_comes_next() {
        assert_eq!(root(None, Some("/x"), Some("/h")), PathBuf::from("/x/baimo"));
        assert_eq!(root(Some(""), Some("/x"), Some("/h")), PathBuf::from("/x/baimo"));
    }

    #[test]
    fn home_cache_is_the_usual_default() {
        assert_eq!(root(None, None, Some("/h")), PathBuf::from("/h/.cache/baimo"));
        // Empty or relative XDG_CACHE_HOME is ignored, as the XDG specification asks.
        assert_eq!(root(None, Some(""), Some("/h")), PathBuf::from("/h/.cache/baimo"));
        assert_eq!(root(None, Some("rel"), Some("/h")), PathBuf::from("/h/.cache/baimo"));
    }

    #[test]
    fn without_any_home_the_temporary_folder_is_used() {
        assert_eq!(root(None, None, None), std::env::temp_dir().join("baimo"));
        assert_eq!(root(None, None, Some("")), std::env::temp_dir().join("baimo"));
    }

    #[test]
    fn hex_encodes_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x5f]), "00ab5f");
    }

    #[test]
    fn marker_is_trusted_only_for_the_same_hash_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.gguf");
        fs::write(&file, b"hello").unwrap();
        let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let hidden = Ui { quiet: true };
        assert!(verify_cached(&file, 5, sha, hidden).unwrap());
        assert!(marker_path(&file).exists());
        let metadata = fs::metadata(&file).unwrap();
        assert!(marker_vouches_for(&file, sha, &metadata));
        assert!(!marker_vouches_for(&file, &"0".repeat(64), &metadata));
        // Same size, other content: the marker no longer matches the modification time.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&file, b"jello").unwrap();
        assert!(!verify_cached(&file, 5, sha, hidden).unwrap());
        assert!(!marker_path(&file).exists());
        assert!(!verify_cached(&file, 6, sha, hidden).unwrap());
        assert!(!verify_cached(&dir.path().join("absent"), 5, sha, hidden).unwrap());
    }
}
