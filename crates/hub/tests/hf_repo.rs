//! Fetching a whole model folder from a hub repository (`Fetcher::fetch_repo`, and
//! `Fetcher::resolve` for `owner/name`) against a local server shaped like the hub.

mod support;

use std::fs;
use std::path::Path;

use baimo_hub::Fetcher;
use support::HubServer;

fn fetcher(endpoint: &str, root: &Path) -> Fetcher {
    support::hub_fetcher(endpoint, root)
}

#[test]
fn a_repository_becomes_a_cached_model_folder() {
    let server = HubServer::start();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf/llama-sharded");
    let mut expected = Vec::new();
    for entry in fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        server.add_file("org/tiny-llama", &name, fs::read(entry.path()).unwrap());
        expected.push(name);
    }
    // Files a model folder does not need are left on the hub.
    server.add_file("org/tiny-llama", "README.md", b"# tiny".to_vec());
    let root = tempfile::tempdir().unwrap();
    let dir = fetcher(&server.endpoint, root.path()).resolve("org/tiny-llama").unwrap();
    for name in expected.iter().filter(|n| n.as_str() != "expected.json" && n.as_str() != "logits.f32") {
        assert_eq!(fs::read(dir.join(name)).unwrap(), fs::read(fixture.join(name)).unwrap(), "{name}");
    }
    assert!(!dir.join("README.md").exists() && !dir.join("logits.f32").exists());
    // Fetched once: a second resolve asks the server nothing.
    let before = server.requests().len();
    assert_eq!(fetcher(&server.endpoint, root.path()).resolve("org/tiny-llama").unwrap(), dir);
    assert_eq!(server.requests().len(), before);
    // The store lists it as a folder and removes it whole.
    let f = fetcher(&server.endpoint, root.path());
    let cached = f.cached_models();
    assert_eq!(cached.len(), 1);
    assert_eq!(
        (cached[0].name.as_str(), cached[0].kind),
        ("org/tiny-llama", baimo_hub::CachedKind::HubFolder)
    );
    assert_eq!(cached[0].path, dir);
    f.remove_cached("org/tiny-llama").unwrap();
    assert!(!dir.exists() && f.cached_models().is_empty());
}

#[test]
fn a_repository_without_a_config_or_unknown_is_an_error() {
    let server = HubServer::start();
    server.add_file("org/just-readme", "README.md", b"# hello".to_vec());
    let root = tempfile::tempdir().unwrap();
    let f = fetcher(&server.endpoint, root.path());
    let err = f.resolve("org/just-readme").unwrap_err().to_string();
    assert!(err.contains("neither a GGUF file nor a config.json"), "{err}");
    let err = f.resolve("org/missing").unwrap_err().to_string();
    assert!(err.contains("404"), "{err}");
    assert!(f.resolve("../etc/passwd").is_err());
}
