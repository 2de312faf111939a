//! Checking a [`Tokenizer`] against token ids that llama.cpp produced, for tests in this crate
//! and elsewhere in the workspace.
//!
//! Two formats are read:
//! - JSON lines `{"text": .., "parse_special": .., "ids": [..]}`, made with
//!   `llama_tokenize(add_special = false, parse_special)`;
//! - llama.cpp's own vocabulary tests, `<vocab>.gguf.inp` / `.gguf.out`, read the way its
//!   `test-tokenizer-0` reads them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    BadLine { path: PathBuf, line: usize, message: String },
    #[error("{inputs} has {n_inputs} inputs but {outputs} has {n_outputs} lines")]
    CountMismatch { inputs: PathBuf, n_inputs: usize, outputs: PathBuf, n_outputs: usize },
}

/// One text whose ids differ from llama.cpp's.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub text: String,
    pub parse_special: bool,
    pub expected: Vec<u32>,
    pub got: Vec<u32>,
}

/// The outcome of checking a list of texts.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub total: usize,
    pub mismatches: Vec<Mismatch>,
}

impl CheckReport {
    pub fn passed(&self) -> usize {
        self.total - self.mismatches.len()
    }

    pub fn all_passed(&self) -> bool {
        self.mismatches.is_empty()
    }

    fn check(&mut self, tokenizer: &Tokenizer, text: &str, parse_special: bool, expected: &[u32]) {
        self.total += 1;
        let got = tokenizer.encode(text, parse_special);
        if got != expected {
            self.mismatches.push(Mismatch {
                text: text.to_string(),
                parse_special,
                expected: expected.to_vec(),
                got,
            });
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}/{} passed", self.passed(), self.total)?;
        for m in &self.mismatches {
            writeln!(f, "  text {:?} (parse_special {})", m.text, m.parse_special)?;
            writeln!(f, "    expected {:?}", m.expected)?;
            writeln!(f, "    got      {:?}", m.got)?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct JsonlCase {
    text: String,
    parse_special: bool,
    ids: Vec<u32>,
}

/// Encodes every line's `text` with its `parse_special` and compares with its `ids`.
pub fn check_against_jsonl(tokenizer: &Tokenizer, jsonl: &Path) -> Result<CheckReport, CheckError> {
    let content = read(jsonl)?;
    let mut report = CheckReport::default();
    for (index, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let case: JsonlCase = serde_json::from_str(line).map_err(|e| CheckError::BadLine {
            path: jsonl.to_path_buf(),
            line: index + 1,
            message: e.to_string(),
        })?;
        report.check(tokenizer, &case.text, case.parse_special, &case.ids);
    }
    Ok(report)
}

/// Reads llama.cpp's vocabulary test pair: inputs separated by `\n__ggml_vocab_test__\n` and
/// one line of space-separated ids per input. Like `test-tokenizer-0`, a repeated input keeps
/// its last expected ids, and the texts come back sorted.
pub fn read_vocab_cases(inputs: &Path, outputs: &Path) -> Result<Vec<(String, Vec<u32>)>, CheckError> {
    const SEPARATOR: &str = "\n__ggml_vocab_test__\n";
    let raw_inputs = read(inputs)?;
    let raw_outputs = read(outputs)?;

    let mut texts = Vec::new();
    let mut rest = raw_inputs.as_str();
    while !rest.is_empty() {
        match rest.split_once(SEPARATOR) {
            Some((text, after)) => {
                texts.push(text);
                rest = after;
            }
            None => {
                texts.push(rest);
                rest = "";
            }
        }
    }
    let lines: Vec<&str> = raw_outputs.lines().collect();
    if texts.len() != lines.len() {
        return Err(CheckError::CountMismatch {
            inputs: inputs.to_path_buf(),
            n_inputs: texts.len(),
            outputs: outputs.to_path_buf(),
            n_outputs: lines.len(),
        });
    }

    let mut cases = BTreeMap::new();
    for (index, (text, line)) in texts.into_iter().zip(lines).enumerate() {
        let ids =
            line.split_whitespace().map(str::parse::<u32>).collect::<Result<Vec<_>, _>>().map_err(|e| {
                CheckError::BadLine { path: outputs.to_path_buf(), line: index + 1, message: e.to_string() }
            })?;
        cases.insert(text.to_string(), ids);
    }
    Ok(cases.into_iter().collect())
}

/// Checks `<vocab>.inp` / `<vocab>.out` beside a vocabulary file, as `test-tokenizer-0` does
/// (`add_special = false`, `parse_special = false`).
pub fn check_vocab_cases(tokenizer: &Tokenizer, vocab_path: &Path) -> Result<CheckReport, CheckError> {
    let with_suffix = |suffix: &str| {
        let mut path = vocab_path.as_os_str().to_owned();
        path.push(suffix);
        PathBuf::from(path)
    };
    let cases = read_vocab_cases(&with_suffix(".inp"), &with_suffix(".out"))?;
    let mut report = CheckReport::default();
    for (text, ids) in &cases {
        report.check(tokenizer, text, false, ids);
    }
    Ok(report)
}

fn read(path: &Path) -> Result<String, CheckError> {
    std::fs::read_to_string(path).map_err(|source| CheckError::Io { path: path.to_path_buf(), source })
}
