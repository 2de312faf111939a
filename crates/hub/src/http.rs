//! Downloading one file over HTTP(S): redirects, resuming with `Range`, size and sha256 checks,
//! and an atomic move into place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::ProgressBar;
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, RANGE};

use crate::cache::{self, COPY_BUFFER_BYTES, with_suffix};
use crate::error::{HubError, error_chain};
use crate::ui::Ui;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The blocking client applies this to sending a request and to each read of the body, so it
/// bounds a stall, not the length of a large download.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per download when the connection drops after some progress.
const MAX_ATTEMPTS: u32 = 5;
const RETRY_PAUSE: Duration = Duration::from_millis(300);

pub(crate) fn build_client() -> Result<Client, HubError> {
    // reqwest is built without a default crypto provider; ring is the one the workspace
    // chose. Installing fails harmlessly when another part of the program already did it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .user_agent(concat!("baimo/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(STALL_TIMEOUT)
        .build()
        .map_err(|error| HubError::HttpClient { reason: error_chain(&error) })
}

/// `{endpoint}/{repo}/resolve/{revision}/{file}`, as the hub serves raw files.
pub(crate) fn hf_file_url(
    endpoint: &str,
    repo: &str,
    revision: &str,
    file: &str,
) -> Result<String, HubError> {
    let bad_endpoint = |reason: String| HubError::BadEndpoint { endpoint: endpoint.to_owned(), reason };
    let parsed = reqwest::Url::parse(endpoint).map_err(|error| bad_endpoint(error.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad_endpoint("not an http(s) address".to_owned()));
    }
    // Like the official client: the revision is one path segment (so `refs/pr/1` is encoded),
    // the file keeps its folders.
    Ok(format!(
        "{}/{}/resolve/{}/{}",
        endpoint.trim_end_matches('/'),
        percent_encode(repo.trim_matches('/'), true),
        percent_encode(revision, false),
        percent_encode(file.trim_start_matches('/'), true),
    ))
}

pub(crate) fn percent_encode(text: &str, keep_slashes: bool) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~');
        if unreserved || (keep_slashes && byte == b'/') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// What the downloaded file must be, when known.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected<'a> {
    pub(crate) size: u64,
    pub(crate) sha256: &'a str,
}

pub(crate) struct Download<'a> {
    pub(crate) client: &'a Client,
    pub(crate) token: Option<&'a str>,
    pub(crate) url: &'a str,
    pub(crate) dest: &'a Path,
    pub(crate) expected: Option<Expected<'a>>,
    pub(crate) ui: Ui,
}

enum Failure {
    /// The connection dropped after some bytes arrived: resuming may well succeed.
    Retry(HubError),
    Fatal(HubError),
}

impl Download<'_> {
    /// Downloads into `<dest>.partial`, checks it, then renames it to `dest`.
    ///
    /// A partial file (from this call or an earlier one) is resumed only when the expected
    /// sha256 is known, because only then a file that changed on the server between two
    /// attempts is caught. A file that fails its checks is deleted.
    pub(crate) fn run(&self) -> Result<(), HubError> {
        let partial = with_suffix(self.dest, ".partial");
        let label = self.dest.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        let bar = self.ui.bytes_bar(self.expected.map(|e| e.size), &label);
        let mut resumed_an_earlier_run = self.expected.is_some() && file_len(&partial)? > 0;
        let mut attempt = 1;
        loop {
            match self.attempt(&partial, &bar) {
                Ok(()) => {}
                Err(Failure::Retry(error)) if attempt < MAX_ATTEMPTS => {
                    bar.suspend(|| self.ui.status(&format!("{error}; resuming")));
                    std::thread::sleep(RETRY_PAUSE * attempt);
                    attempt += 1;
                    continue;
                }
                Err(Failure::Retry(error) | Failure::Fatal(error)) => {
                    bar.finish_and_clear();
                    return Err(error);
                }
            }
            bar.finish_and_clear();
            match self.verify_and_install(&partial) {
                // A partial file left by an earlier run may belong to an older version of the
                // file on the server; one fresh start settles that.
                Err(HubError::HashMismatch { .. }) if resumed_an_earlier_run => {
                    self.ui.status("the resumed download did not verify; starting over");
                    resumed_an_earlier_run = false;
                    bar.reset();
                }
                result => return result,
            }
        }
    }

    fn attempt(&self, partial: &Path, bar: &ProgressBar) -> Result<(), Failure> {
        let Some(expected) = self.expected else {
            // Nothing to check a resumed file against: every attempt starts from scratch.
            return self.transfer(partial, 0, bar);
        };
        let mut start = file_len(partial).map_err(Failure::Fatal)?;
        if start > expected.size {
            remove_if_present(partial).map_err(Failure::Fatal)?;
            start = 0;
        }
        if start == expected.size {
            // Complete already (an earlier run was stopped before the rename).
            bar.set_position(start);
            return Ok(());
        }
        self.transfer(partial, start, bar)
    }

    /// One request for the bytes from `start` on, appended to `partial` (or replacing it when
    /// the server sends the whole file).
    fn transfer(&self, partial: &Path, start: u64, bar: &ProgressBar) -> Result<(), Failure> {
        let response = self.send(start).map_err(Failure::Fatal)?;
        let status = response.status();
        let offset = match status {
            StatusCode::PARTIAL_CONTENT => {
                let range = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|value| value.to_str().ok())
                    .and_then(parse_content_range)
                    .ok_or_else(|| Failure::Fatal(self.bad_response("206 without a valid Content-Range")))?;
                if range.start != start {
                    return Err(Failure::Fatal(self.bad_response(&format!(
                        "asked for bytes from {start}, got a range from {}",
                        range.start
                    ))));
                }
                start
            }
            // The server ignores Range (or none was sent): the body is the whole file.
            StatusCode::OK => 0,
            StatusCode::RANGE_NOT_SATISFIABLE if start > 0 => {
                remove_if_present(partial).map_err(Failure::Fatal)?;
                return Err(Failure::Retry(
                    self.bad_response("the server cannot resume this file; starting over"),
                ));
            }
            _ => return Err(Failure::Fatal(self.status_error(&response))),
        };

        if let (Some(expected), Some(length)) = (self.expected, response.content_length()) {
            let total = offset.saturating_add(length);
            if total != expected.size {
                return Err(Failure::Fatal(HubError::SizeMismatch {
                    what: self.url.to_owned(),
                    expected: expected.size,
                    actual: total,
                }));
            }
        }
        let content_length = response.content_length();
        let file =
            if offset == 0 { File::create(partial) } else { OpenOptions::new().append(true).open(partial) }
                .map_err(|error| Failure::Fatal(HubError::io("write", partial, error)))?;
        bar.set_position(offset);
        if bar.length().is_none()
            && let Some(length) = content_length
        {
            bar.set_length(offset.saturating_add(length));
        }
        let received = self.copy_body(response, file, offset, partial, bar)?;
        if let Some(length) = content_length
            && received != length
        {
            return Err(Failure::Retry(HubError::Network {
                url: self.url.to_owned(),
                reason: format!("connection closed after {received} of {length} bytes"),
            }));
        }
        Ok(())
    }

    fn send(&self, start: u64) -> Result<Response, HubError> {
        let mut request = self.client.get(self.url);
        if let Some(token) = self.token {
            // reqwest drops this header when a redirect leaves the host, so the hub's CDN
            // never sees the token.
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if start > 0 {
            request = request.header(RANGE, format!("bytes={start}-"));
        }
        request.send().map_err(|error| self.network_error(error))
    }

    /// Streams the body to `file`; returns the number of bytes received.
    fn copy_body(
        &self,
        mut response: Response,
        file: File,
        offset: u64,
        partial: &Path,
        bar: &ProgressBar,
    ) -> Result<u64, Failure> {
        let mut writer = io::BufWriter::with_capacity(COPY_BUFFER_BYTES, file);
        let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
        let mut received = 0u64;
        let write_error = |error| Failure::Fatal(HubError::io("write", partial, error));
        loop {
            let read = match response.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    writer.flush().map_err(write_error)?;
                    let lost = HubError::Network {
                        url: self.url.to_owned(),
                        reason: format!(
                            "connection lost after {} bytes: {}",
                            offset + received,
                            error_chain(&error)
                        ),
                    };
                    // A connection that delivered something is worth another attempt; one
                    // that delivered nothing is probably down.
                    return Err(if received > 0 { Failure::Retry(lost) } else { Failure::Fatal(lost) });
                }
            };
            received += read as u64;
            if let Some(expected) = self.expected
                && offset.saturating_add(received) > expected.size
            {
                drop(writer);
                let _ = fs::remove_file(partial);
                return Err(Failure::Fatal(
                    self.bad_response(&format!("sent more than the expected {} bytes", expected.size)),
                ));
            }
            writer.write_all(&buffer[..read]).map_err(write_error)?;
            bar.inc(read as u64);
        }
        let file = writer.into_inner().map_err(|error| write_error(error.into_error()))?;
        file.sync_all().map_err(write_error)?;
        Ok(received)
    }

    fn verify_and_install(&self, partial: &Path) -> Result<(), HubError> {
        if let Some(expected) = self.expected {
            let actual_size = file_len(partial)?;
            if actual_size != expected.size {
                remove_if_present(partial)?;
                return Err(HubError::SizeMismatch {
                    what: self.url.to_owned(),
                    expected: expected.size,
                    actual: actual_size,
                });
            }
            let verifying = self.ui.bytes_bar(Some(expected.size), "verifying sha256");
            let actual = cache::sha256_of_file(partial, &verifying)?;
            verifying.finish_and_clear();
            if !actual.eq_ignore_ascii_case(expected.sha256) {
                remove_if_present(partial)?;
                return Err(HubError::HashMismatch {
                    what: self.url.to_owned(),
                    expected: expected.sha256.to_owned(),
                    actual,
                });
            }
        }
        install(partial, self.dest, self.expected.map(|e| e.sha256))
    }

    fn network_error(&self, error: reqwest::Error) -> HubError {
        let timed_out = error.is_timeout();
        let mut reason = error_chain(&error.without_url());
        if timed_out && !reason.contains("timed out") {
            reason.push_str(" (timed out)");
        }
        HubError::Network { url: self.url.to_owned(), reason }
    }

    fn status_error(&self, response: &Response) -> HubError {
        let status = response.status();
        let hint = match status.as_u16() {
            401 | 403 if self.token.is_none() => "a gated or private repository needs a token in HF_TOKEN",
            401 | 403 => "check that HF_TOKEN is valid and grants access",
            404 => "no such repository, revision or file",
            _ => "",
        };
        // The hub explains its refusals in this header ("Access to model ... is restricted").
        let server_says = response
            .headers()
            .get("x-error-message")
            .and_then(|value| value.to_str().ok())
            .map(|text| text.chars().take(300).collect::<String>())
            .filter(|text| !text.trim().is_empty());
        let detail = match (server_says, hint) {
            (Some(message), "") => format!(": {}", message.trim()),
            (Some(message), hint) => format!(": {} ({hint})", message.trim()),
            (None, "") => String::new(),
            (None, hint) => format!(" ({hint})"),
        };
        HubError::HttpStatus { url: self.url.to_owned(), status: status.to_string(), detail }
    }

    fn bad_response(&self, reason: &str) -> HubError {
        HubError::BadResponse { url: self.url.to_owned(), reason: reason.to_owned() }
    }
}

/// Moves a finished `partial` onto `dest` and, when its hash was checked, records that.
pub(crate) fn install(partial: &Path, dest: &Path, sha256: Option<&str>) -> Result<(), HubError> {
    // The marker describes the file it sits next to; it must not outlive that file.
    cache::remove_marker(dest);
    fs::rename(partial, dest).map_err(|error| HubError::io("move into place", dest, error))?;
    if let Some(sha256) = sha256 {
        cache::write_marker(dest, &sha256.to_ascii_lowercase());
    }
    Ok(())
}

pub(crate) fn file_len(path: &Path) -> Result<u64, HubError> {
    match fs::metadata(path) {
        Ok(metadata) => Ok(metadata.len()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(HubError::io("read", path, error)),
    }
}

pub(crate) fn remove_if_present(path: &Path) -> Result<(), HubError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(HubError::io("remove", path, error)),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    end: u64,
    total: Option<u64>,
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`).
fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    let consistent = end >= start && total.is_none_or(|total| end < total);
    consistent.then_some(ContentRange { start, end, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_encode_revision_as_one_segment() {
        assert_eq!(
            hf_file_url("https://huggingface.co/", "a/b", "main", "sub dir/f.gguf").unwrap(),
            "https://huggingface.co/a/b/resolve/main/sub%20dir/f.gguf"
        );
        assert_eq!(
            hf_file_url("http://127.0.0.1:9", "a/b", "refs/pr/1", "f").unwrap(),
            "http://127.0.0.1:9/a/b/resolve/refs%2Fpr%2F1/f"
        );
        assert!(hf_file_url("not a url", "a/b", "main", "f").is_err());
        assert!(hf_file_url("ftp://x", "a/b", "main", "f").is_err());
    }

    #[test]
    fn content_range_is_parsed_and_checked() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some(ContentRange { start: 100, end: 199, total: Some(200) })
        );
        assert_eq!(parse_content_range("bytes 0-9/*"), Some(ContentRange { start: 0, end: 9, total: None }));
        for garbage in [
            "",
            "bytes",
            "bytes */200",
            "bytes 5-1/200",
            "bytes 0-200/200",
            "bytes -1-5/9",
            "items 0-1/2",
            "bytes 0-99999999999999999999999/1",
        ] {
            assert_eq!(parse_content_range(garbage), None, "{garbage}");
        }
    }
}
