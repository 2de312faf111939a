//! `Fetcher::download_hf_file` against a local server shaped like the hub and its CDN.

mod support;

use std::fs;
use std::path::Path;

use baimo_hub::{Fetcher, HubError};
use support::{HubServer, names_in, serve_raw, sha256_hex, test_bytes};

const REPO: &str = "owner/model-GGUF";
const FILE: &str = "model.Q4.gguf";

fn fetcher(endpoint: &str, root: &Path) -> Fetcher {
    Fetcher::new().with_endpoint(endpoint).with_cache_root(root).with_token(None).quiet(true)
}

fn server_with(content: &[u8]) -> HubServer {
    let server = HubServer::start();
    server.add_file(REPO, FILE, content.to_vec());
    server
}

#[test]
fn download_follows_the_redirect_and_verifies_sha256() {
    let content = test_bytes(300_000, 1);
    let server = server_with(&content);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("models/x/model.gguf");
    let sha = sha256_hex(&content);

    fetcher(&server.endpoint, dir.path())
        .download_hf_file(REPO, "main", FILE, &dest, Some((content.len() as u64, &sha)))
        .unwrap();

    assert_eq!(fs::read(&dest).unwrap(), content);
    let paths: Vec<String> = server.requests().into_iter().map(|seen| seen.path).collect();
    assert_eq!(paths, [format!("/{REPO}/resolve/main/{FILE}"), format!("/cdn/{REPO}/{FILE}")]);
    let user_agent = server.requests()[0].user_agent.clone().unwrap();
    assert!(user_agent.starts_with("baimo/"), "{user_agent}");
    assert_eq!(names_in(dest.parent().unwrap()), ["model.gguf", "model.gguf.lock", "model.gguf.sha256"]);
}

#[test]
fn an_already_verified_file_is_not_downloaded_again() {
    let content = test_bytes(10_000, 2);
    let server = server_with(&content);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");
    let sha = sha256_hex(&content);
    let fetcher = fetcher(&server.endpoint, dir.path());
    let expected = Some((content.len() as u64, sha.as_str()));
    fetcher.download_hf_file(REPO, "main", FILE, &dest, expected).unwrap();
    fetcher.download_hf_file(REPO, "main", FILE, &dest, expected).unwrap();
    assert_eq!(server.cdn_requests().len(), 1);
}

#[test]
fn without_an_expected_hash_the_file_is_downloaded_as_served() {
    let content = test_bytes(5_000, 3);
    let server = server_with(&content);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("config.json");
    fetcher(&server.endpoint, dir.path()).download_hf_file(REPO, "main", FILE, &dest, None).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), content);
}

#[test]
fn a_wrong_sha256_is_an_error_and_leaves_no_file() {
    let content = test_bytes(50_000, 4);
    let server = server_with(&content);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m/model.gguf");
    let wrong = "0".repeat(64);

    let error = fetcher(&server.endpoint, dir.path())
        .download_hf_file(REPO, "main", FILE, &dest, Some((content.len() as u64, &wrong)))
        .unwrap_err();

    assert!(matches!(error, HubError::HashMismatch { .. }), "{error}");
    assert!(error.to_string().contains(&sha256_hex(&content)), "{error}");
    assert_eq!(names_in(dest.parent().unwrap()), ["model.gguf.lock"]);
}

#[test]
fn a_wrong_size_is_refused_before_downloading() {
    let content = test_bytes(50_000, 5);
    let server = server_with(&content);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");
    let error = fetcher(&server.endpoint, dir.path())
        .download_hf_file(REPO, "main", FILE, &dest, Some((49_999, &sha256_hex(&content))))
        .unwrap_err();
    assert!(matches!(error, HubError::SizeMismatch { expected: 49_999, actual: 50_000, .. }), "{error}");
    assert!(!dest.exists());
}

#[test]
fn a_missing_file_is_an_error_that_names_the_url() {
    let server = server_with(b"x");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");
    let error = fetcher(&server.endpoint, dir.path())
        .download_hf_file(REPO, "main", "absent.gguf", &dest, None)
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, HubError::HttpStatus { .. }), "{message}");
    assert!(message.contains(&format!("{}/{REPO}/resolve/main/absent.gguf", server.endpoint)), "{message}");
    assert!(
        message.ends_with("HTTP 404 Not Found: Entry not found (no such repository, revision or file)"),
        "{message}"
    );
    assert!(!dest.exists());
}

#[test]
fn a_transfer_cut_short_is_resumed_with_range() {
    let content = test_bytes(300_000, 6);
    let server = server_with(&content);
    server.interrupt(1, 100_000);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");
    let sha = sha256_hex(&content);

    fetcher(&server.endpoint, dir.path())
        .download_hf_file(REPO, "main", FILE, &dest, Some((content.len() as u64, &sha)))
        .unwrap();

    assert_eq!(fs::read(&dest).unwrap(), content);
    let ranges: Vec<Option<String>> = server.cdn_requests().into_iter().map(|seen| seen.range).collect();
    assert_eq!(ranges, [None, Some("bytes=100000-".to_owned())]);
}

#[test]
fn without_an_expected_hash_a_cut_transfer_starts_over_rather_than_resuming() {
    let content = test_bytes(100_000, 11);
    let server = server_with(&content);
    server.interrupt(1, 40_000);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("tokenizer.json");

    fetcher(&server.endpoint, dir.path()).download_hf_file(REPO, "main", FILE, &dest, None).unwrap();

    assert_eq!(fs::read(&dest).unwrap(), content);
    let ranges: Vec<Option<String>> = server.cdn_requests().into_iter().map(|seen| seen.range).collect();
    assert_eq!(ranges, [None, None]);
}

#[test]
fn a_download_that_keeps_failing_is_resumed_by_the_next_call() {
    let content = test_bytes(400_000, 7);
    let server = server_with(&content);
    // More interruptions than one call makes attempts: the call gives up, keeping the part.
    server.interrupt(100, 20_000);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");
    let sha = sha256_hex(&content);
    let fetcher = fetcher(&server.endpoint, dir.path());
    let expected = Some((content.len() as u64, sha.as_str()));

    let error = fetcher.download_hf_file(REPO, "main", FILE, &dest, expected).unwrap_err();
    assert!(matches!(error, HubError::Network { .. }), "{error}");
    let partial = dir.path().join("model.gguf.partial");
    let kept = fs::metadata(&partial).unwrap().len();
    assert!((20_000..400_000).contains(&kept), "{kept}");
    assert!(!dest.exists());

    server.interrupt(0, 0);
    fetcher.download_hf_file(REPO, "main", FILE, &dest, expected).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), content);
    assert!(!partial.exists());
    let last = server.cdn_requests().pop().unwrap();
    assert_eq!(last.range, Some(format!("bytes={kept}-")));
}

#[test]
fn a_server_that_ignores_range_sends_the_whole_file_again() {
    let content = test_bytes(100_000, 8);
    let server = server_with(&content);
    server.honour_range(false);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");
    fs::write(dir.path().join("model.gguf.partial"), &content[..30_000]).unwrap();
    let sha = sha256_hex(&content);

    fetcher(&server.endpoint, dir.path())
        .download_hf_file(REPO, "main", FILE, &dest, Some((content.len() as u64, &sha)))
        .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), content);
}

#[test]
fn a_stale_partial_file_is_replaced_after_it_fails_to_verify() {
    let content = test_bytes(100_000, 9);
    let server = server_with(&content);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");
    // The first half of some other file, as if the server's copy changed since.
    fs::write(dir.path().join("model.gguf.partial"), &test_bytes(100_000, 99)[..50_000]).unwrap();
    let sha = sha256_hex(&content);

    fetcher(&server.endpoint, dir.path())
        .download_hf_file(REPO, "main", FILE, &dest, Some((content.len() as u64, &sha)))
        .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), content);
    let ranges: Vec<Option<String>> = server.cdn_requests().into_iter().map(|seen| seen.range).collect();
    assert_eq!(ranges, [Some("bytes=50000-".to_owned()), None]);
}

#[test]
fn the_token_is_sent_to_the_hub_and_not_to_another_host() {
    let content = test_bytes(1_000, 10);
    let server = server_with(&content);
    // The redirect leaves 127.0.0.1 for localhost, as the hub's redirect leaves for its CDN.
    server.redirect_to_host("localhost");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");

    fetcher(&server.endpoint, dir.path())
        .with_token(Some("hf_secret".to_owned()))
        .download_hf_file(REPO, "main", FILE, &dest, None)
        .unwrap();

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer hf_secret"));
    assert_eq!(requests[1].authorization, None);
}

#[test]
fn no_token_means_no_authorization_header() {
    let server = server_with(b"abc");
    let dir = tempfile::tempdir().unwrap();
    fetcher(&server.endpoint, dir.path())
        .download_hf_file(REPO, "main", FILE, &dir.path().join("f"), None)
        .unwrap();
    assert!(server.requests().iter().all(|seen| seen.authorization.is_none()));
}

#[test]
fn garbage_from_the_server_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");
    let responses: [&'static [u8]; 5] = [
        b"garbage garbage\r\n\r\n",
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: nonsense\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nabc",
        b"HTTP/1.1 302 Found\r\nLocation: \r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for response in responses {
        let endpoint = serve_raw(response);
        let result = fetcher(&endpoint, dir.path()).download_hf_file(
            REPO,
            "main",
            FILE,
            &dest,
            Some((10, &"0".repeat(64))),
        );
        let error = result.expect_err(&String::from_utf8_lossy(response));
        eprintln!("{error}");
        assert!(!dest.exists());
    }
}

#[test]
fn a_server_sending_more_than_expected_is_cut_off() {
    // No Content-Length: the body runs until the server closes the connection.
    let endpoint = serve_raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0123456789ABCDEF");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model.gguf");
    let error = fetcher(&endpoint, dir.path())
        .download_hf_file(REPO, "main", FILE, &dest, Some((10, &"0".repeat(64))))
        .unwrap_err();
    assert!(error.to_string().contains("more than the expected 10 bytes"), "{error}");
    assert_eq!(names_in(dir.path()), ["model.gguf.lock"]);
}

#[test]
fn a_refused_connection_is_a_network_error_naming_the_url() {
    let endpoint = support::refusing_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let error = fetcher(&endpoint, dir.path())
        .download_hf_file(REPO, "main", FILE, &dir.path().join("f"), None)
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, HubError::Network { .. }), "{message}");
    assert!(message.contains(&endpoint), "{message}");
    assert!(!message.contains('\n'));
}
