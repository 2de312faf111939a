//! GGUF repositories on the hub (`owner/name:QUANT`, `hf.co/owner/name`, `owner/name/file.gguf`,
//! and `owner/name` for a repository without a config.json) against a local server shaped like
//! the hub: its tree listing with sizes and LFS sha256s, resolve redirects, range requests.
//! (That the parts of a split GGUF read as one model: `tests/cli.rs`.)

mod support;

use std::fs;
use std::path::Path;

use baimo_hub::Fetcher;
use support::{HubServer, sha256_hex};

const REPO: &str = "org/Tiny-GGUF";

fn fetcher(endpoint: &str, root: &Path) -> Fetcher {
    support::hub_fetcher(endpoint, root)
}

/// A repository of several quantizations, a vision projector, a split set and a README; each
/// file's content names it.
fn gguf_repo() -> HubServer {
    let server = HubServer::start();
    for file in [
        "Tiny-Q8_0.gguf",
        "Tiny-Q4_K_M.gguf",
        "Tiny-IQ4_XS.gguf",
        "mmproj-Tiny-f16.gguf",
        "Q6_K/Tiny-Q6_K-00001-of-00002.gguf",
        "Q6_K/Tiny-Q6_K-00002-of-00002.gguf",
        "README.md",
    ] {
        server.add_file(REPO, file, format!("GGUF content of {file} ").repeat(50).into_bytes());
    }
    server
}

fn content(path: &Path) -> String {
    String::from_utf8(fs::read(path).unwrap()).unwrap()
}

#[test]
fn the_asked_quantization_is_fetched_verified_and_reused() {
    let server = gguf_repo();
    let root = tempfile::tempdir().unwrap();
    let f = fetcher(&server.endpoint, root.path());
    let path = f.resolve(&format!("{REPO}:Q8_0")).unwrap();
    assert!(content(&path).starts_with("GGUF content of Tiny-Q8_0.gguf"), "{}", path.display());
    assert!(path.starts_with(root.path().join("hf").join(REPO).join("main")));
    assert_eq!(server.cdn_requests().len(), 1);
    // Lower case and the hf.co/ form name the same file; nothing is downloaded again.
    assert_eq!(f.resolve(&format!("hf.co/{REPO}:q8_0")).unwrap(), path);
    assert_eq!(server.cdn_requests().len(), 1);
    let listings = server.requests().iter().filter(|r| r.path.contains("/tree/main")).count();
    assert_eq!(listings, 2, "each resolve lists the repository once");
}

#[test]
fn without_a_quantization_q4_k_m_is_taken() {
    let server = gguf_repo();
    let root = tempfile::tempdir().unwrap();
    let f = fetcher(&server.endpoint, root.path());
    for spec in [format!("hf.co/{REPO}"), REPO.to_owned()] {
        let path = f.resolve(&spec).unwrap();
        assert!(content(&path).starts_with("GGUF content of Tiny-Q4_K_M.gguf"), "{spec}");
    }
    let path = f.resolve(&format!("{REPO}/Tiny-IQ4_XS.gguf")).unwrap();
    assert!(content(&path).starts_with("GGUF content of Tiny-IQ4_XS.gguf"));
}

#[test]
fn a_missing_quantization_lists_the_ones_there_are() {
    let server = gguf_repo();
    let root = tempfile::tempdir().unwrap();
    let err =
        fetcher(&server.endpoint, root.path()).resolve(&format!("{REPO}:Q2_K")).unwrap_err().to_string();
    assert_eq!(err, format!("{REPO} has no GGUF of quantization Q2_K (it has: IQ4_XS, Q4_K_M, Q6_K, Q8_0)"));
    assert!(server.cdn_requests().is_empty());
}

#[test]
fn every_part_of_a_split_gguf_is_fetched_beside_the_first() {
    let server = gguf_repo();
    let root = tempfile::tempdir().unwrap();
    let first = fetcher(&server.endpoint, root.path()).resolve(&format!("{REPO}:Q6_K")).unwrap();
    assert!(first.ends_with("Q6_K/Tiny-Q6_K-00001-of-00002.gguf"), "{}", first.display());
    let second = first.with_file_name("Tiny-Q6_K-00002-of-00002.gguf");
    assert!(content(&second).starts_with("GGUF content of Q6_K/Tiny-Q6_K-00002-of-00002.gguf"));
    assert_eq!(server.cdn_requests().len(), 2);
}

#[test]
fn a_cut_transfer_is_resumed_and_a_wrong_hash_is_refused() {
    let server = gguf_repo();
    let root = tempfile::tempdir().unwrap();
    let f = fetcher(&server.endpoint, root.path());
    server.interrupt(1, 300);
    let path = f.resolve(&format!("{REPO}:IQ4_XS")).unwrap();
    assert!(content(&path).starts_with("GGUF content of Tiny-IQ4_XS.gguf"));
    let ranges: Vec<_> = server.cdn_requests().iter().map(|r| r.range.clone()).collect();
    assert_eq!(ranges, [None, Some("bytes=300-".to_owned())]);

    server.list_sha256(REPO, "Tiny-Q8_0.gguf", &"0".repeat(64));
    let err = f.resolve(&format!("{REPO}:Q8_0")).unwrap_err().to_string();
    assert!(err.contains("sha256"), "{err}");
    assert!(!root.path().join("hf").join(REPO).join("main").join("Tiny-Q8_0.gguf").exists());
}

#[test]
fn a_file_in_the_hugging_face_cache_is_used_where_it_is() {
    let server = gguf_repo();
    let root = tempfile::tempdir().unwrap();
    let hf = tempfile::tempdir().unwrap();
    let bytes = "GGUF content of Tiny-Q4_K_M.gguf ".repeat(50).into_bytes();
    let blobs = hf.path().join("models--org--Tiny-GGUF").join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    let blob = blobs.join(sha256_hex(&bytes));
    fs::write(&blob, &bytes).unwrap();
    let f = fetcher(&server.endpoint, root.path()).with_hf_cache(Some(hf.path().to_path_buf()));
    assert_eq!(f.resolve(&format!("{REPO}:Q4_K_M")).unwrap(), blob);
    assert!(server.cdn_requests().is_empty());
    // A blob of another size is not taken for it.
    fs::write(&blob, b"truncated").unwrap();
    let path = f.resolve(&format!("{REPO}:Q4_K_M")).unwrap();
    assert_ne!(path, blob);
    assert_eq!(server.cdn_requests().len(), 1);
}

#[test]
fn offline_only_what_is_cached() {
    let server = gguf_repo();
    let root = tempfile::tempdir().unwrap();
    let online = fetcher(&server.endpoint, root.path());
    let fetched = online.resolve(&format!("{REPO}:Q8_0")).unwrap();
    let before = server.requests().len();
    let offline = fetcher(&server.endpoint, root.path()).offline(true);
    // What is cached is found without asking the hub, by quantization or as the only GGUF.
    assert_eq!(offline.resolve(&format!("{REPO}:Q8_0")).unwrap(), fetched);
    assert_eq!(offline.resolve(&format!("hf.co/{REPO}")).unwrap(), fetched);
    let err = offline.resolve(&format!("{REPO}:Q4_K_M")).unwrap_err().to_string();
    assert!(err.contains("Q4_K_M"), "{err}");
    let err = offline.resolve("org/elsewhere").unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert_eq!(server.requests().len(), before, "offline asked the hub");
}

#[test]
fn the_store_lists_finds_and_removes_what_was_fetched() {
    let server = gguf_repo();
    let root = tempfile::tempdir().unwrap();
    let f = fetcher(&server.endpoint, root.path());
    for quant in ["Q8_0", "Q4_K_M", "Q6_K"] {
        f.resolve(&format!("{REPO}:{quant}")).unwrap();
    }
    let names: Vec<(String, usize)> =
        f.cached_models().iter().map(|m| (m.name.clone(), m.files.len())).collect();
    assert_eq!(
        names,
        [
            (format!("{REPO}/Q6_K/Tiny-Q6_K-00001-of-00002.gguf"), 2),
            (format!("{REPO}/Tiny-Q4_K_M.gguf"), 1),
            (format!("{REPO}/Tiny-Q8_0.gguf"), 1),
        ]
    );
    let err = f.find_cached(REPO).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{REPO} names several cached models: ")), "{err}");
    assert_eq!(
        f.find_cached(&format!("hf.co/{REPO}:q4_k_m")).unwrap().name,
        format!("{REPO}/Tiny-Q4_K_M.gguf")
    );

    let removed = f.remove_cached(&format!("{REPO}:Q6_K")).unwrap();
    assert_eq!(removed.files.len(), 2);
    assert!(removed.files.iter().all(|p| !p.exists()));
    let dir = root.path().join("hf").join(REPO).join("main");
    assert!(!dir.join("Q6_K").exists(), "the parts' folder went with them");
    assert!(!dir.join("Tiny-Q6_K-00001-of-00002.gguf.sha256").exists());
    assert_eq!(f.cached_models().len(), 2);
    assert!(dir.join("Tiny-Q8_0.gguf").is_file() && dir.join("Tiny-Q4_K_M.gguf").is_file());
    let err = f.remove_cached(&format!("{REPO}:Q6_K")).unwrap_err().to_string();
    assert!(err.contains("is not in baimo's cache"), "{err}");
}
