//! The gateway end to end: `baimo serve` with `[[channels]]` in front of `baimo mock-provider`
//! processes, over real HTTP on loopback. Answers in OpenAI's and Anthropic's shapes whichever
//! provider is behind a name, retries that honour the provider's hint, failover on 5xx and
//! timeouts, a stream cut midway ending with an error event, weights really used, and no
//! credential in any answer or log line.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// A child process killed when the test ends, with what it printed on stderr.
struct Proc {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `baimo ARGS` (a command that prints `listening on URL` first) with extra environment.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = common::baimo();
    cmd.args(args).stderr(Stdio::piped()).stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = Arc::new(Mutex::new(String::new()));
    let mut base = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.lock().unwrap().push_str(&line);
        log.lock().unwrap().push('\n');
        if let Some(url) = line.trim().strip_prefix("listening on ") {
            base = Some(url.to_string());
            break;
        }
    }
    let base = base.unwrap_or_else(|| panic!("{args:?} did not start: {}", log.lock().unwrap()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    Proc { child, base, log }
}

/// Log text without its terminal colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until `done` holds (polling; a bound only so a broken build fails instead of hanging).
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let held = (0..3000).any(|_| {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
        false
    });
    assert!(held, "never happened: {what}");
}

/// `baimo usage --json` once it holds `n` records (a stream's is written after its last byte).
fn usage_rows(db: &str, n: usize) -> Value {
    let mut v = Value::Null;
    eventually(&format!("{n} usage records"), || {
        v = serde_json::from_str(&run(&["usage", "--db", db, "--json"])).unwrap();
        v["data"].as_array().is_some_and(|rows| rows.len() >= n)
    });
    v
}

fn mock(provider: &str, key: &str) -> Proc {
    spawn(&["mock-provider", provider, "--port", "0", "--key", key], &[])
}

/// `baimo serve` for hosted models only, with this config (channels, retry settings).
fn gateway(config: &str) -> Proc {
    gateway_with(config, &[])
}

/// As [`gateway`], with more flags.
fn gateway_with(config: &str, flags: &[&str]) -> Proc {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("baimo.toml");
    // Top-level keys must come before the first table.
    let (top, tables) = match config.find("[[channels]]").or_else(|| config.find("[retry]")) {
        Some(i) => config.split_at(i),
        None => (config, ""),
    };
    let config = format!("{top}\n{tables}");
    std::fs::write(&path, format!("local = false\n{config}")).unwrap();
    let mut args = vec!["serve", "--config", path.to_str().unwrap(), "--port", "0", "-q"];
    args.extend_from_slice(flags);
    spawn(&args, &[("BAIMO_LOG", "debug"), ("UPSTREAM_SECRET", "sk-from-env-7f3a")])
}

fn channel(name: &str, provider: &str, base: &str, key: &str, models: &[&str], extra: &str) -> String {
    format!(
        "[[channels]]\nname = \"{name}\"\nprovider = \"{provider}\"\nbase_url = \"{base}\"\napi_key = \"{key}\"\nmodels = {}\n{extra}\n",
        json!(models)
    )
}

/// Fast retries so the fault tests take milliseconds.
const QUICK_RETRY: &str = "[retry]\nbase_backoff_ms = 10\ntimeout_secs = 1\nidle_timeout_secs = 2\n";

fn client() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

struct Answer {
    status: u16,
    channel: String,
    retries: u64,
    body: Value,
    /// `x-should-retry` and `retry-after`, as given ("" when absent).
    should_retry: String,
    retry_after: String,
}

fn post(base: &str, path: &str, body: &Value) -> Answer {
    let r = client().post(format!("{base}{path}")).json(body).send().unwrap();
    let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (status, channel, retries) =
        (r.status().as_u16(), header("x-baimo-channel"), header("x-baimo-retries"));
    let (should_retry, retry_after) = (header("x-should-retry"), header("retry-after"));
    Answer {
        status,
        channel,
        retries: retries.parse().unwrap_or(0),
        body: r.json().unwrap(),
        should_retry,
        retry_after,
    }
}

/// The `data:` payloads of a streamed answer, in order.
fn stream(base: &str, path: &str, body: &Value) -> (u16, Vec<String>) {
    let r = client().post(format!("{base}{path}")).json(body).send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, text.lines().filter_map(|l| l.strip_prefix("data: ")).map(String::from).collect())
}

fn faults(mock: &Proc, body: Value) {
    let r = client().post(format!("{}/_mock/faults", mock.base)).json(&body).send().unwrap();
    assert_eq!(r.status(), 200);
}

fn mock_requests(mock: &Proc) -> u64 {
    let v: Value = client().get(format!("{}/_mock/stats", mock.base)).send().unwrap().json().unwrap();
    v["requests"].as_u64().unwrap()
}

/// The mocks say which provider answered ("mock-openai ..."); the rest must be the same.
fn without_label(text: &str) -> String {
    text.split_once(' ').map_or(text, |(_, rest)| rest).to_string()
}

fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
        "max_tokens": 50, "stream": stream, "stream_options": {"include_usage": true},
    })
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}])
}

/// Text, finish reason, usage and tool calls gathered from OpenAI chunks.
fn gather(chunks: &[String]) -> (String, String, Value, Vec<(String, String)>) {
    let (mut text, mut finish, mut usage) = (String::new(), String::new(), Value::Null);
    let mut calls: Vec<(String, String)> = Vec::new();
    assert_eq!(chunks.last().map(String::as_str), Some("[DONE]"), "{chunks:?}");
    for c in &chunks[..chunks.len() - 1] {
        let v: Value = serde_json::from_str(c).unwrap();
        assert!(v.get("error").is_none(), "{c}");
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            usage = u.clone();
        }
        let Some(choice) = v["choices"].get(0) else { continue };
        text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = call["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.push((String::new(), String::new()));
            }
            calls[i].0.push_str(call["function"]["name"].as_str().unwrap_or(""));
            calls[i].1.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish, usage, calls)
}

#[test]
fn every_provider_answers_in_openai_and_anthropic_shapes_alike() {
    let (openai, anthropic) = (mock("openai", "sk-up-openai-1"), mock("anthropic", "sk-ant-up-2"));
    let server = gateway(&format!(
        "{}{}",
        channel("oa", "openai", &openai.base, "sk-up-openai-1", &["gpt-4", "via-openai"], ""),
        channel("an", "anthropic", &anthropic.base, "sk-ant-up-2", &["claude-2", "via-anthropic"], ""),
    ));
    let models: Value = client().get(format!("{}/v1/models", server.base)).send().unwrap().json().unwrap();
    let ids: Vec<&str> =
        models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["claude-2", "gpt-4", "via-anthropic", "via-openai"]);

    let mut seen = Vec::new();
    for (model, expect_channel) in [("via-openai", "oa"), ("via-anthropic", "an")] {
        // Whole.
        let a = post(&server.base, "/v1/chat/completions", &chat_body(model, false));
        assert_eq!((a.status, a.channel.as_str()), (200, expect_channel), "{}", a.body);
        let message = &a.body["choices"][0]["message"];
        let text = message["content"].as_str().unwrap().to_string();
        assert_eq!(without_label(&text), format!("{model} heard: hello there"));
        assert_eq!(a.body["choices"][0]["finish_reason"], "stop");
        assert_eq!(a.body["object"], "chat.completion");
        // Streamed: the same text, finish reason and usage.
        let (status, chunks) = stream(&server.base, "/v1/chat/completions", &chat_body(model, true));
        assert_eq!(status, 200);
        let (streamed, finish, usage, _) = gather(&chunks);
        assert_eq!((streamed.as_str(), finish.as_str()), (text.as_str(), "stop"));
        assert_eq!(usage["completion_tokens"], a.body["usage"]["completion_tokens"]);
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
        // A tool call, whole and streamed.
        let mut body = chat_body(model, false);
        body["tools"] = weather_tool();
        let a = post(&server.base, "/v1/chat/completions", &body);
        let call = &a.body["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(a.body["choices"][0]["finish_reason"], "tool_calls", "{}", a.body);
        assert_eq!(call["function"]["name"], "weather");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"query": "hello there"}));
        assert!(call["id"].as_str().unwrap().len() > 4);
        body["stream"] = json!(true);
        let (_, chunks) = stream(&server.base, "/v1/chat/completions", &body);
        let (_, finish, _, calls) = gather(&chunks);
        assert_eq!(finish, "tool_calls");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "weather");
        assert_eq!(serde_json::from_str::<Value>(&calls[0].1).unwrap(), args);
        // The tool's result goes back and the answer quotes it.
        let id = call["id"].as_str().unwrap();
        let follow = json!({"model": model, "tools": weather_tool(), "messages": [
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "sunny"}]});
        let a = post(&server.base, "/v1/chat/completions", &follow);
        assert_eq!(a.body["choices"][0]["message"]["content"], "The tool answered: sunny", "{}", a.body);
        // Anthropic's shape for the same model.
        let body = json!({"model": model, "max_tokens": 50, "system": "Be brief.",
                          "messages": [{"role": "user", "content": "hello there"}]});
        let a = post(&server.base, "/v1/messages", &body);
        assert_eq!(a.body["type"], "message", "{}", a.body);
        assert_eq!(a.body["content"][0]["text"], text.as_str());
        assert_eq!(a.body["stop_reason"], "end_turn");
        seen.push((without_label(&text).replace(model, "M"), a.body["usage"].clone()));
    }
    assert_eq!(seen[0], seen[1], "the same answer whichever provider is behind the name");
}

#[test]
fn upstream_auth_failures_are_reported_without_the_credential() {
    let openai = mock("openai", "sk-right-key-0000");
    let server = gateway(&channel("oa", "openai", &openai.base, "env:UPSTREAM_SECRET", &["gpt-4"], ""));
    for stream in [false, true] {
        let r = client()
            .post(format!("{}/v1/chat/completions", server.base))
            .json(&chat_body("gpt-4", stream))
            .send()
            .unwrap();
        assert_eq!(r.status(), 502);
        // Wrong upstream credentials do not mend on a retry: SDKs are told so.
        assert_eq!(r.headers().get("x-should-retry").map(|v| v.to_str().unwrap()), Some("false"));
        let body = r.text().unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_authentication_failed", "{body}");
        // Not the key, nor the fragment the provider quoted (`sk-fro****7f3a`).
        assert!(!body.contains("sk-from-env-7f3a") && !body.contains("7f3a"), "{body}");
        assert!(body.contains("Incorrect API key provided: [redacted]"), "{body}");
    }
    // A client's own bad request is a 400 and never reaches a provider.
    let a = post(&server.base, "/v1/chat/completions", &json!({"model": "gpt-4", "messages": []}));
    assert_eq!(a.status, 400);
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("upstream failed"), "the failure is logged: {log}");
    assert!(!log.contains("7f3a"), "{log}");
    assert!(!log.contains("sk-from-env-7f3a"), "{log}");
}

#[test]
fn rate_limits_are_retried_after_the_hint_and_errors_fail_over() {
    let (a, b) = (mock("openai", "sk-a-0001"), mock("anthropic", "sk-b-0002"));
    let config = format!(
        "{}{}{QUICK_RETRY}",
        channel("first", "openai", &a.base, "sk-a-0001", &["gpt-4"], "priority = 1"),
        channel("second", "anthropic", &b.base, "sk-b-0002", &["gpt-4"], ""),
    );
    // The circuit breaker would rest the first channel after its failures below.
    let server = gateway(&format!("{config}failures_to_open = 1000\n"));
    // 429 with a retry hint, then success on the same channel: one answer, one retry.
    faults(&a, json!({"next": [{"type": "status", "status": 429, "retry_after_ms": 150}]}));
    let r = post(&server.base, "/v1/chat/completions", &chat_body("gpt-4", false));
    assert_eq!((r.status, r.channel.as_str(), r.retries), (200, "first", 1), "{}", r.body);
    // The wait the gateway chose is the provider's hint (its log says so; no clock is read here).
    let log = plain(&server.log.lock().unwrap());
    assert!(log.contains("retrying on the same channel channel=first wait_ms=150"), "{log}");
    assert_eq!(mock_requests(&a), 2);
    // 500s on the first channel: served by the second.
    faults(&a, json!({"always": {"type": "status", "status": 500}}));
    let r = post(&server.base, "/v1/chat/completions", &chat_body("gpt-4", false));
    assert_eq!((r.status, r.channel.as_str()), (200, "second"), "{}", r.body);
    assert_eq!(r.retries, 2, "one retry on the first channel, then failover");
    // A timeout on the first channel: served by the second.
    faults(&a, json!({"always": {"type": "delay", "ms": 3000}}));
    let (status, chunks) = stream(&server.base, "/v1/chat/completions", &chat_body("gpt-4", true));
    assert_eq!(status, 200);
    assert!(gather(&chunks).0.ends_with("heard: hello there"), "{chunks:?}");
    // An exhausted quota is neither retried nor failed over: the client hears of it at once, and
    // the channel rests, so the next request goes to the other channel.
    faults(
        &a,
        json!({"always": null, "next": [{"type": "status", "status": 429, "code": "insufficient_quota"}]}),
    );
    let (a_before, b_before) = (mock_requests(&a), mock_requests(&b));
    let r = post(&server.base, "/v1/chat/completions", &chat_body("gpt-4", false));
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (429, Some("insufficient_quota")), "{}", r.body);
    // SDKs are told not to retry (and not when): waiting does not refill a quota.
    assert_eq!((r.should_retry.as_str(), r.retry_after.as_str()), ("false", ""));
    assert_eq!((mock_requests(&a) - a_before, mock_requests(&b) - b_before), (1, 0));
    let r = post(&server.base, "/v1/chat/completions", &chat_body("gpt-4", false));
    assert_eq!((r.status, r.channel.as_str()), (200, "second"), "{}", r.body);
    // A client's 400 is not retried or failed over either.
    faults(&b, json!({"next": [{"type": "status", "status": 400}]}));
    let b_before = mock_requests(&b);
    let r = post(&server.base, "/v1/chat/completions", &chat_body("gpt-4", false));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(mock_requests(&b) - b_before, 1);
}

#[test]
fn the_timeout_fails_over() {
    let (a, b) = (mock("openai", "sk-a-0001"), mock("openai", "sk-b-0002"));
    let config = format!(
        "{}{}{QUICK_RETRY}",
        channel("slow", "openai", &a.base, "sk-a-0001", &["gpt-4"], "priority = 1"),
        channel("quick", "openai", &b.base, "sk-b-0002", &["gpt-4"], ""),
    );
    let server = gateway(&config);
    faults(&a, json!({"always": {"type": "delay", "ms": 3000}}));
    let r = post(&server.base, "/v1/chat/completions", &chat_body("gpt-4", false));
    assert_eq!((r.status, r.channel.as_str()), (200, "quick"), "{}", r.body);
    assert!(r.retries >= 1);
}

#[test]
fn a_stream_cut_midway_ends_with_an_error_event() {
    for provider in ["openai", "anthropic"] {
        let up = mock(provider, "sk-up-0003");
        let server = gateway(&channel("only", provider, &up.base, "sk-up-0003", &["m"], ""));
        faults(&up, json!({"next": [{"type": "drop_stream", "after_events": 3}]}));
        let (status, chunks) = stream(&server.base, "/v1/chat/completions", &chat_body("m", true));
        assert_eq!(status, 200, "the stream had begun");
        let last: Value = serde_json::from_str(chunks.last().unwrap()).unwrap();
        assert_eq!(last["error"]["type"], "upstream_error", "{provider}: {chunks:?}");
        assert!(!chunks.iter().any(|c| c == "[DONE]"), "never a normal end");
        // The provider's own error event midway, the same.
        faults(&up, json!({"next": [{"type": "error_event", "after_events": 2}]}));
        let (_, chunks) = stream(&server.base, "/v1/chat/completions", &chat_body("m", true));
        let last: Value = serde_json::from_str(chunks.last().unwrap()).unwrap();
        assert!(last.get("error").is_some(), "{provider}: {chunks:?}");
        // In Anthropic's shape: an `error` event.
        faults(&up, json!({"next": [{"type": "drop_stream", "after_events": 3}]}));
        let body = json!({"model": "m", "max_tokens": 20, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let (_, events) = stream(&server.base, "/v1/messages", &body);
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["type"], "error", "{provider}: {events:?}");
    }
}

#[test]
fn fifty_parallel_requests_follow_the_weights() {
    let (a, b) = (mock("openai", "sk-a-0001"), mock("anthropic", "sk-b-0002"));
    let config = format!(
        "{}{}",
        channel("heavy", "openai", &a.base, "sk-a-0001", &["gpt-4"], "weight = 3"),
        channel("light", "anthropic", &b.base, "sk-b-0002", &["gpt-4"], "weight = 1"),
    );
    let server = gateway(&config);
    let base = server.base.clone();
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || post(&base, "/v1/chat/completions", &chat_body("gpt-4", false)))
        })
        .collect();
    let answers: Vec<Answer> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(answers.iter().all(|a| a.status == 200));
    let heavy = answers.iter().filter(|a| a.channel == "heavy").count();
    // 75% of 50 is 37.5; ±10% of the requests is ±5.
    assert!((33..=42).contains(&heavy), "heavy served {heavy} of 50");
    assert_eq!(mock_requests(&a) + mock_requests(&b), 50);
    assert_eq!(mock_requests(&a) as usize, heavy);
}

/// `baimo ARGS` to completion: its stdout.
fn run(args: &[&str]) -> String {
    let out = common::baimo().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn post_with_key(base: &str, key: &str, body: &Value) -> (u16, Option<String>, Value) {
    let r = client().post(format!("{base}/v1/chat/completions")).bearer_auth(key).json(body).send().unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
    (status, retry, r.json().unwrap())
}

#[test]
fn one_usage_record_per_request_with_its_retries() {
    let up = mock("openai", "sk-up-0004");
    let db = tempfile::tempdir().unwrap().keep().join("baimo.db");
    let db = db.to_str().unwrap();
    let config = format!(
        "database = \"{db}\"\n{}{QUICK_RETRY}",
        channel("oa", "openai", &up.base, "sk-up-0004", &["gpt-4"], "")
    );
    let server = gateway(&config);
    faults(&up, json!({"next": [{"type": "status", "status": 429, "retry_after_ms": 20}]}));
    let a = post(&server.base, "/v1/chat/completions", &chat_body("gpt-4", false));
    assert_eq!((a.status, a.retries), (200, 1));
    let (_, chunks) = stream(&server.base, "/v1/chat/completions", &chat_body("gpt-4", true));
    let (_, _, usage, _) = gather(&chunks);
    // The stream's record is written when it ends, just after the client saw [DONE].
    let v = usage_rows(db, 2);
    let rows = v["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "one record per request, not per try: {v}");
    let (streamed, whole) = (&rows[0], &rows[1]);
    assert_eq!((whole["retries"].as_u64(), whole["status"].as_u64()), (Some(1), Some(200)));
    assert_eq!(whole["completion_tokens"], a.body["usage"]["completion_tokens"]);
    assert_eq!((streamed["stream"].as_bool(), streamed["retries"].as_u64()), (Some(true), Some(0)));
    assert_eq!(streamed["completion_tokens"], usage["completion_tokens"]);
    assert_eq!(v["totals"]["requests"], 2);
    // The same in the metrics, by model, channel and status.
    let metrics = client().get(format!("{}/metrics", server.base)).send().unwrap().text().unwrap();
    let labels = "model=\"gpt-4\",channel=\"oa\"";
    for line in [
        format!("baimo_requests_total{{{labels},status=\"200\"}} 2"),
        format!("baimo_upstream_retries_total{{{labels}}} 1"),
        format!("baimo_request_duration_seconds_count{{{labels}}} 2"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in\n{metrics}");
    }
}

#[test]
fn stored_keys_enforce_quotas_rate_limits_and_models() {
    let up = mock("openai", "sk-up-0005");
    let dir = tempfile::tempdir().unwrap().keep();
    let db = dir.join("baimo.db");
    let db = db.to_str().unwrap();
    let create = |extra: &[&str]| {
        let mut args = vec!["keys", "create", "--db", db];
        args.extend_from_slice(extra);
        run(&args).trim().to_string()
    };
    let limited = create(&["per-minute", "--rpm", "2"]);
    let small = create(&["small", "--token-quota", "40"]);
    let only_claude = create(&["claude-only", "--model", "claude-2"]);
    let revoked = create(&["gone"]);
    assert!(limited.starts_with("bm-") && limited != small);
    let list = run(&["keys", "list", "--db", db]);
    assert!(!list.contains(&limited) && list.contains(&limited[..10]), "{list}");
    run(&["keys", "revoke", "4", "--db", db]);
    let config = format!(
        "database = \"{db}\"\n{}",
        channel("oa", "openai", &up.base, "sk-up-0005", &["gpt-4", "claude-2"], "")
    );
    let server = gateway(&config);
    let body = chat_body("gpt-4", false);
    // No key, or a wrong or revoked one: 401.
    assert_eq!(post(&server.base, "/v1/chat/completions", &body).status, 401);
    assert_eq!(post_with_key(&server.base, "bm-not-a-key", &body).0, 401);
    assert_eq!(post_with_key(&server.base, &revoked, &body).0, 401);
    // Two requests a minute, the third waits.
    assert_eq!(post_with_key(&server.base, &limited, &body).0, 200);
    assert_eq!(post_with_key(&server.base, &limited, &body).0, 200);
    let (status, retry, v) = post_with_key(&server.base, &limited, &body);
    assert_eq!((status, v["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")), "{v}");
    let retry: u64 = retry.unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    // Forty tokens in all. The first request may take 36 for its prompt (every byte a token,
    // until the provider counts): its answer is held to the 4 left. Then not even a prompt fits.
    let (status, _, v) = post_with_key(&server.base, &small, &body);
    assert_eq!((status, v["choices"][0]["finish_reason"].as_str()), (200, Some("length")), "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 4, "{v}");
    let (status, _, v) = post_with_key(&server.base, &small, &body);
    assert_eq!((status, v["error"]["code"].as_str()), (429, Some("insufficient_quota")), "{v}");
    // A key for one model only.
    assert_eq!(post_with_key(&server.base, &only_claude, &body).0, 403);
    assert_eq!(post_with_key(&server.base, &only_claude, &chat_body("claude-2", false)).0, 200);
    let v: Value = serde_json::from_str(&run(&["usage", "--db", db, "--json", "--key", "1"])).unwrap();
    assert_eq!(v["totals"]["requests"], 2, "refused requests leave no usage: {v}");
}

#[test]
fn the_admin_api_is_off_unless_a_key_is_set_and_manages_channels_and_keys() {
    let up = mock("anthropic", "sk-ant-up-0006");
    let dir = tempfile::tempdir().unwrap().keep();
    let db = dir.join("baimo.db");
    let db = db.to_str().unwrap();
    let off =
        gateway(&format!("database = \"{db}\"\n{}", channel("x", "anthropic", &up.base, "k", &["m"], "")));
    let r = client().get(format!("{}/admin/channels", off.base)).bearer_auth("whatever").send().unwrap();
    assert_eq!(r.status(), 404);
    drop(off);
    let admin = "adm-0123456789abcdef";
    let server = gateway(&format!(
        "database = \"{db}\"\nadmin_key = \"{admin}\"\n{}",
        channel("configured", "anthropic", &up.base, "sk-ant-up-0006", &["claude-instant"], "")
    ));
    let url = |p: &str| format!("{}{p}", server.base);
    assert_eq!(
        client().get(url("/admin/keys")).bearer_auth("adm-wrong-000000000").send().unwrap().status(),
        401
    );
    // A channel added at run time serves at once.
    assert_eq!(post(&server.base, "/v1/chat/completions", &chat_body("claude-2", false)).status, 404);
    let channel = json!({"name": "claude", "provider": "anthropic", "base_url": up.base,
                         "api_key": "sk-ant-up-0006", "models": ["claude-2"], "weight": 2});
    let r = client().post(url("/admin/channels")).bearer_auth(admin).json(&channel).send().unwrap();
    assert_eq!(r.status(), 201);
    let a = post(&server.base, "/v1/chat/completions", &chat_body("claude-2", false));
    assert_eq!((a.status, a.channel.as_str()), (200, "claude"), "{}", a.body);
    let listed: Value =
        client().get(url("/admin/channels")).bearer_auth(admin).send().unwrap().json().unwrap();
    let sources: Vec<(&str, &str)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["source"].as_str().unwrap()))
        .collect();
    assert_eq!(sources, [("configured", "config"), ("claude", "store")], "{listed}");
    assert!(!listed.to_string().contains("sk-ant-up-0006"), "{listed}");
    // A stored channel may not take a configured one's name.
    let clash = json!({"name": "configured", "provider": "anthropic", "api_key": "k", "models": ["x"]});
    let r = client().post(url("/admin/channels")).bearer_auth(admin).json(&clash).send().unwrap();
    assert_eq!(r.status(), 400);
    // A bad channel is refused before it is stored.
    let bad = json!({"name": "bad", "provider": "nobody", "api_key": "k", "models": ["m"]});
    assert_eq!(
        client().post(url("/admin/channels")).bearer_auth(admin).json(&bad).send().unwrap().status(),
        400
    );
    // Keys: created (shown once), then required.
    let r: Value = client()
        .post(url("/admin/keys"))
        .bearer_auth(admin)
        .json(&json!({"name": "app", "rpm": 100}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let key = r["key"].as_str().unwrap().to_string();
    assert_eq!(post(&server.base, "/v1/chat/completions", &chat_body("claude-2", false)).status, 401);
    assert_eq!(post_with_key(&server.base, &key, &chat_body("claude-2", false)).0, 200);
    let usage: Value =
        client().get(url("/admin/usage?key_id=1")).bearer_auth(admin).send().unwrap().json().unwrap();
    assert_eq!(usage["totals"]["requests"], 1, "{usage}");
    // Disabled, the channel no longer serves.
    let r = client().post(url("/admin/channels/claude/disable")).bearer_auth(admin).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(post_with_key(&server.base, &key, &chat_body("claude-2", false)).0, 404);
    // A channel added from the command line (another process) serves without a restart; one
    // that would stop the server is refused before it is stored.
    let bad = common::baimo()
        .args([
            "channels",
            "add",
            "sp",
            "--provider",
            "spark",
            "--api-key",
            "k",
            "--model",
            "spark-3.5",
            "--db",
            db,
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("app_id"));
    let args = ["channels", "add", "cli", "--provider", "anthropic", "--base-url", &up.base];
    run(&[&args[..], &["--api-key", "sk-ant-up-0006", "--model", "claude-3", "--db", db]].concat());
    eventually("the new channel serves", || {
        post_with_key(&server.base, &key, &chat_body("claude-3", false)).0 == 200
    });
}

#[test]
fn no_credential_appears_in_any_log_line_or_answer() {
    let (openai, anthropic) = (mock("openai", "sk-good-openai-51c2"), mock("anthropic", "sk-ant-good-8e0d"));
    let dir = tempfile::tempdir().unwrap().keep();
    let db = dir.join("baimo.db");
    let db = db.to_str().unwrap();
    let client_key = run(&["keys", "create", "app", "--db", db]).trim().to_string();
    let admin = "adm-secret-4b1f9c2d7e";
    let config = format!(
        "database = \"{db}\"\nadmin_key = \"{admin}\"\n{}{}{}{QUICK_RETRY}",
        // Tried first and refused: a wrong key, from the environment.
        channel("wrong", "anthropic", &anthropic.base, "env:UPSTREAM_SECRET", &["m"], "priority = 2"),
        channel("oa", "openai", &openai.base, "sk-good-openai-51c2", &["m"], "priority = 1"),
        channel("an", "anthropic", &anthropic.base, "sk-ant-good-8e0d", &["m"], ""),
    );
    let server = gateway(&config);
    let mut seen = String::new();
    let mut send = |path: &str, body: Value| {
        let r = client()
            .post(format!("{}{path}", server.base))
            .bearer_auth(&client_key)
            .json(&body)
            .send()
            .unwrap();
        seen.push_str(&format!("{:?}\n", r.headers()));
        seen.push_str(&r.text().unwrap());
    };
    send("/v1/chat/completions", chat_body("m", false));
    send("/v1/chat/completions", chat_body("m", true));
    faults(
        &openai,
        json!({"next": [{"type": "status", "status": 429, "retry_after_ms": 10}, {"type": "status", "status": 401}]}),
    );
    send("/v1/chat/completions", chat_body("m", false));
    faults(&openai, json!({"always": {"type": "status", "status": 500}}));
    faults(&anthropic, json!({"always": {"type": "status", "status": 500}}));
    send("/v1/chat/completions", chat_body("m", false));
    send(
        "/v1/messages",
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    );
    faults(&openai, json!({"always": null, "next": [{"type": "drop_stream", "after_events": 2}]}));
    faults(&anthropic, json!({"always": null, "next": [{"type": "drop_stream", "after_events": 2}]}));
    send("/v1/chat/completions", chat_body("m", true));
    let admin_get = |p: &str| {
        client().get(format!("{}{p}", server.base)).bearer_auth(admin).send().unwrap().text().unwrap()
    };
    seen.push_str(&admin_get("/admin/channels"));
    seen.push_str(&admin_get("/admin/keys"));
    seen.push_str(&admin_get("/admin/usage"));
    seen.push_str(&run(&["channels", "list", "--db", db]));
    seen.push_str(&run(&["keys", "list", "--db", db]));
    eventually("every request's log line", || {
        server.log.lock().unwrap().matches(" request id=").count() >= 6
    });
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("upstream failed") && log.contains(" request id="), "debug logging is on: {log}");
    // Not a terminal: no colour codes in the log.
    assert!(!log.contains('\u{1b}'), "{log}");
    for secret in ["sk-from-env-7f3a", "sk-good-openai-51c2", "sk-ant-good-8e0d", &client_key, admin] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        assert!(!seen.contains(secret), "{secret} in an answer:\n{seen}");
    }
}

/// One hosted provider as the tests set it up: its mock's credentials and a model of its own.
struct Provider {
    kind: &'static str,
    key: &'static str,
    secret: Option<&'static str>,
    app_id: Option<&'static str>,
    /// The provider's model name (clients use `via-<kind>`).
    model: &'static str,
    tools: bool,
}

const PROVIDERS: &[Provider] = &[
    Provider { kind: "openai", key: "sk-oa-1111", secret: None, app_id: None, model: "gpt-4", tools: true },
    Provider {
        kind: "anthropic",
        key: "sk-ant-2222",
        secret: None,
        app_id: None,
        model: "claude-2",
        tools: true,
    },
    Provider {
        kind: "gemini",
        key: "AIza-gem-3333",
        secret: None,
        app_id: None,
        model: "gemini-pro",
        tools: true,
    },
    Provider {
        kind: "palm",
        key: "AIza-palm-4444",
        secret: None,
        app_id: None,
        model: "chat-bison-001",
        tools: false,
    },
    Provider {
        kind: "ernie",
        key: "ak-ernie-5555",
        secret: Some("sk-ernie-5555"),
        app_id: None,
        model: "ernie-bot-4",
        tools: true,
    },
    Provider {
        kind: "ernie-v2",
        key: "bce-v3/ALTAK-6666/abcd",
        secret: None,
        app_id: None,
        model: "ernie-4.0-8k",
        tools: true,
    },
    Provider {
        kind: "spark",
        key: "spark-key-7777",
        secret: Some("spark-secret-7777"),
        app_id: Some("app7777"),
        model: "spark-3.5",
        tools: true,
    },
    Provider {
        kind: "spark-http",
        key: "spark-pass-8888",
        secret: None,
        app_id: None,
        model: "generalv3.5",
        tools: true,
    },
    Provider {
        kind: "dashscope",
        key: "sk-ds-9999",
        secret: None,
        app_id: None,
        model: "qwen-max",
        tools: true,
    },
    Provider {
        kind: "dashscope-compatible",
        key: "sk-dsc-1010",
        secret: None,
        app_id: None,
        model: "qwen-plus",
        tools: true,
    },
    Provider {
        kind: "zhipu",
        key: "zp1111.zhipusecret1111",
        secret: None,
        app_id: None,
        model: "glm-4",
        tools: true,
    },
    Provider {
        kind: "zhipu-v3",
        key: "zp1212.zhipusecret1212",
        secret: None,
        app_id: None,
        model: "chatglm_turbo",
        tools: false,
    },
    Provider {
        kind: "baichuan",
        key: "sk-bc-1313",
        secret: None,
        app_id: None,
        model: "Baichuan2-Turbo",
        tools: true,
    },
    Provider {
        kind: "baichuan-legacy",
        key: "bc-legacy-1414",
        secret: Some("bc-legacy-secret-1414"),
        app_id: None,
        model: "Baichuan2-53B",
        tools: false,
    },
];

fn provider_mock(p: &Provider) -> Proc {
    let mut args = vec!["mock-provider", p.kind, "--port", "0", "--key", p.key];
    if let Some(s) = p.secret {
        args.extend(["--secret", s]);
    }
    if let Some(a) = p.app_id {
        args.extend(["--app-id", a]);
    }
    spawn(&args, &[])
}

/// A channel to `p`'s mock serving `via-<kind>` (good credentials) or `bad-<kind>` (every
/// credential wrong).
fn provider_channel(p: &Provider, mock: &Proc, good: bool) -> String {
    let base = if p.kind == "spark" { mock.base.replacen("http://", "ws://", 1) } else { mock.base.clone() };
    let spoil = |s: &str| if good { s.to_string() } else { format!("{s}-wrong") };
    let client_name = format!("{}-{}", if good { "via" } else { "bad" }, p.kind);
    let mut extra = format!("model_map = {{ \"{client_name}\" = \"{}\" }}\n", p.model);
    if let Some(s) = p.secret {
        extra.push_str(&format!("secret_key = \"{}\"\n", spoil(s)));
    }
    if let Some(a) = p.app_id {
        extra.push_str(&format!("app_id = \"{a}\"\n"));
    }
    // Zhipu's key is `id.secret`: spoil the secret half so the signature is what is wrong.
    let key = if good { p.key.to_string() } else { format!("{}x", p.key) };
    channel(&client_name, p.kind, &base, &key, &[&client_name], &extra)
}

#[test]
fn every_provider_end_to_end_through_baimo() {
    let mocks: Vec<Proc> = PROVIDERS.iter().map(provider_mock).collect();
    let mut config = String::new();
    for (p, m) in PROVIDERS.iter().zip(&mocks) {
        config.push_str(&provider_channel(p, m, true));
        config.push_str(&provider_channel(p, m, false));
    }
    config.push_str(QUICK_RETRY);
    let server = gateway(&config);
    let mut normalised = Vec::new();
    for (p, m) in PROVIDERS.iter().zip(&mocks) {
        let model = format!("via-{}", p.kind);
        let kind = p.kind;
        // Whole, then streamed: the same text.
        let a = post(&server.base, "/v1/chat/completions", &chat_body(&model, false));
        assert_eq!((a.status, a.channel.as_str()), (200, model.as_str()), "{kind}: {}", a.body);
        let text = a.body["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        // (An API without a system role hears the system text before the user's.)
        assert!(text.contains("heard: ") && text.ends_with("hello there"), "{kind}: {text}");
        assert_eq!(a.body["choices"][0]["finish_reason"], "stop", "{kind}");
        assert!(a.body["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{kind}: {}", a.body);
        let (status, chunks) = stream(&server.base, "/v1/chat/completions", &chat_body(&model, true));
        assert_eq!(status, 200, "{kind}");
        let (streamed, finish, usage, _) = gather(&chunks);
        assert_eq!((streamed.as_str(), finish.as_str()), (text.as_str(), "stop"), "{kind}");
        assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{kind}: {usage}");
        assert!(chunks.len() > 4, "{kind}: the answer arrives in pieces: {chunks:?}");
        // A tool call (or a clear refusal where the API has none).
        let mut body = chat_body(&model, false);
        body["tools"] = weather_tool();
        let a = post(&server.base, "/v1/chat/completions", &body);
        let mut call_seen = Value::Null;
        if p.tools {
            let call = &a.body["choices"][0]["message"]["tool_calls"][0];
            assert_eq!(a.body["choices"][0]["finish_reason"], "tool_calls", "{kind}: {}", a.body);
            assert_eq!(call["function"]["name"], "weather", "{kind}");
            let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(args, json!({"query": "hello there"}), "{kind}");
            assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()), "{kind}: {call}");
            body["stream"] = json!(true);
            let (_, chunks) = stream(&server.base, "/v1/chat/completions", &body);
            let (_, finish, _, calls) = gather(&chunks);
            assert_eq!(finish, "tool_calls", "{kind}: {chunks:?}");
            assert_eq!((calls.len(), calls[0].0.as_str()), (1, "weather"), "{kind}");
            assert_eq!(serde_json::from_str::<Value>(&calls[0].1).unwrap(), args, "{kind}");
            call_seen = json!({"name": "weather", "arguments": args});
        } else {
            assert_eq!(a.status, 400, "{kind}: {}", a.body);
            assert!(a.body["error"]["message"].as_str().unwrap().contains("tools"), "{kind}: {}", a.body);
        }
        // Wrong credentials: a 502 naming the failure, without the credential.
        let bad = post(&server.base, "/v1/chat/completions", &chat_body(&format!("bad-{kind}"), false));
        assert_eq!(bad.status, 502, "{kind}: {}", bad.body);
        assert_eq!(bad.body["error"]["code"], "upstream_authentication_failed", "{kind}: {}", bad.body);
        let shown = bad.body.to_string();
        assert!(!shown.contains(p.key) && p.secret.is_none_or(|s| !shown.contains(s)), "{kind}: {shown}");
        // Throttled once: retried, then answered.
        faults(m, json!({"next": [{"type": "status", "status": 429, "retry_after_ms": 20}]}));
        let r = post(&server.base, "/v1/chat/completions", &chat_body(&model, false));
        assert_eq!((r.status, r.retries), (200, 1), "{kind}: {}", r.body);
        // The mocks name themselves and the model (ERNIE's endpoint) before "heard:".
        let heard = text.split_once("heard: ").map_or("", |(_, rest)| rest).to_string();
        normalised.push((kind, heard, call_seen));
    }
    // Whichever provider is behind the name, the client reads the same answer.
    for (kind, text, _) in &normalised {
        assert!(text == "hello there" || text == "Be brief.\n\nhello there", "{kind}: {text}");
    }
    let calls: Vec<&Value> = normalised.iter().filter(|n| !n.2.is_null()).map(|n| &n.2).collect();
    assert!(calls.windows(2).all(|w| w[0] == w[1]), "{calls:?}");
}

#[test]
fn run_and_chat_reach_a_hosted_model_from_the_terminal() {
    let up = mock("anthropic", "sk-ant-up-0016");
    let data = tempfile::tempdir().unwrap();
    let baimo = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = common::baimo()
            .env("BAIMO_DATA", data.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    baimo(
        &[
            "channels",
            "add",
            "claude",
            "--provider",
            "anthropic",
            "--base-url",
            &up.base,
            "--api-key",
            "sk-ant-up-0016",
            "--model",
            "claude-2",
        ],
        "",
    );
    let (listed, _) = baimo(&["channels", "list"], "");
    assert!(listed.contains("claude") && !listed.contains("sk-ant-up-0016"), "{listed}");
    let (out, err) = baimo(&["run", "claude-2", "hello there", "--system", "Be brief."], "");
    assert_eq!(out.trim(), "mock-anthropic claude-2 heard: hello there");
    assert!(err.contains("(hosted)") && err.contains("answer 5 tokens"), "{err}");
    // The prompt from stdin, as for local models.
    let (out, _) = baimo(&["run", "claude-2", "-q"], "from a pipe");
    assert_eq!(out.trim(), "mock-anthropic claude-2 heard: from a pipe");
    // A conversation: each turn is answered with the history sent along.
    let (out, _) = baimo(&["chat", "claude-2"], "first turn\nsecond turn\n/exit\n");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines[0].ends_with("heard: first turn") && lines[1].ends_with("heard: second turn"), "{out}");
    assert_eq!(mock_requests(&up), 4);
}

#[test]
fn local_models_are_billed_to_keys_like_hosted_ones() {
    let dir = tempfile::tempdir().unwrap().keep();
    let db = dir.join("baimo.db");
    let db = db.to_str().unwrap();
    let key = run(&["keys", "create", "local-user", "--db", db, "--request-quota", "2"]).trim().to_string();
    let model = format!("{}/tests/fixtures/hf/llama-trained", env!("CARGO_MANIFEST_DIR"));
    let server = spawn(&["serve", &model, "--port", "0", "-q", "--db", db], &[]);
    let body = json!({"model": "llama-trained", "max_tokens": 5, "temperature": 0,
                      "messages": [{"role": "user", "content": "Hello"}]});
    let (status, _, whole) = post_with_key(&server.base, &key, &body);
    assert_eq!(status, 200, "{whole}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = client()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(&key)
        .json(&streamed)
        .send()
        .unwrap();
    assert!(r.text().unwrap().contains("[DONE]"));
    let v = usage_rows(db, 2);
    let rows = v["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert!(rows.iter().all(|r| r["channel"] == "local" && r["key_id"] == 1 && r["status"] == 200), "{v}");
    assert_eq!(rows[1]["completion_tokens"], whole["usage"]["completion_tokens"]);
    // The request quota (2) is used up.
    let (status, _, v) = post_with_key(&server.base, &key, &body);
    assert_eq!((status, v["error"]["code"].as_str()), (429, Some("insufficient_quota")), "{v}");
}

/// Reads `chunks` data events of a streamed request, then hangs up; what the client saw.
fn cut_after(base: &str, path: &str, key: Option<&str>, body: &Value, chunks: usize) -> Vec<String> {
    let mut request = client().post(format!("{base}{path}")).json(body);
    if let Some(k) = key {
        request = request.bearer_auth(k);
    }
    let r = request.send().unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = Vec::new();
    for line in BufReader::new(r).lines() {
        if let Some(data) = line.unwrap().strip_prefix("data: ") {
            seen.push(data.to_string());
            if seen.len() == chunks {
                break;
            }
        }
    }
    seen
}

fn local_server(db: &str) -> Proc {
    let model = format!("{}/tests/fixtures/hf/llama-trained", env!("CARGO_MANIFEST_DIR"));
    spawn(&["serve", &model, "--port", "0", "-q", "--db", db], &[])
}

#[test]
fn cut_streams_are_billed_for_what_was_generated_on_both_fronts() {
    let dir = tempfile::tempdir().unwrap().keep();
    let db = dir.join("baimo.db");
    let db = db.to_str().unwrap();
    let key = run(&["keys", "create", "cutter", "--db", db]).trim().to_string();
    let server = local_server(db);
    // This model never ends an answer early: 200 tokens are still coming when the client leaves.
    let body = json!({"model": "llama-trained", "max_tokens": 200, "stream": true,
                      "messages": [{"role": "user", "content": "Hello"}]});
    let openai = cut_after(&server.base, "/v1/chat/completions", Some(&key), &body, 6);
    let anthropic = cut_after(&server.base, "/v1/messages", Some(&key), &body, 6);
    // Content chunks seen: OpenAI's first chunk holds the role only; Anthropic's first events
    // are message_start, content_block_start, ping.
    let seen = [openai.len() - 1, anthropic.iter().filter(|e| e.contains("text_delta")).count()];
    let v = usage_rows(db, 2);
    let rows = v["data"].as_array().unwrap();
    for (row, seen) in rows.iter().rev().zip(seen) {
        let completion = row["completion_tokens"].as_u64().unwrap();
        assert!(row["prompt_tokens"].as_u64().unwrap() > 0, "{v}");
        // The engine generated at least what the client received (each chunk is a token).
        assert!(completion >= seen as u64 && seen >= 2, "{seen} tokens seen: {v}");
        assert_eq!(row["estimated"], false, "{v}");
        assert!(row["status"] == 499 || (row["status"] == 200 && completion == 200), "{v}");
    }
}

#[test]
fn a_token_quota_holds_under_sixteen_concurrent_requests() {
    let dir = tempfile::tempdir().unwrap().keep();
    let db = dir.join("baimo.db");
    let db = db.to_str().unwrap();
    let key = run(&["keys", "create", "small", "--db", db, "--token-quota", "50"]).trim().to_string();
    let server = local_server(db);
    let body = json!({"model": "llama-trained", "max_tokens": 100,
                      "messages": [{"role": "user", "content": "Hello"}]});
    let answers: Vec<(u16, Option<String>, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16).map(|_| s.spawn(|| post_with_key(&server.base, &key, &body))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let answered: Vec<&Value> = answers.iter().filter(|a| a.0 == 200).map(|a| &a.2).collect();
    let refused = answers.iter().filter(|a| a.0 == 429).count();
    assert!(!answered.is_empty() && answered.len() + refused == 16, "{answers:?}");
    assert!(
        answers.iter().filter(|a| a.0 == 429).all(|a| a.2["error"]["code"] == "insufficient_quota"),
        "{answers:?}"
    );
    let billed: u64 = answered.iter().map(|v| v["usage"]["total_tokens"].as_u64().unwrap()).sum();
    assert!(billed <= 50, "the key's quota is 50 tokens, {billed} were used: {answers:?}");
    // An answer cut short by the quota says so.
    assert!(answered.iter().all(|v| v["choices"][0]["finish_reason"] == "length"), "{answered:?}");
    let v: Value = serde_json::from_str(&run(&["usage", "--db", db, "--json"])).unwrap();
    let t = &v["totals"];
    assert_eq!(
        t["prompt_tokens"].as_u64().unwrap() + t["completion_tokens"].as_u64().unwrap(),
        billed,
        "{v}"
    );
}

#[test]
fn hosted_requests_ended_early_are_recorded_counted_or_estimated() {
    let up = mock("openai", "sk-up-0031");
    let spark = spawn(
        &["mock-provider", "spark", "--port", "0", "--key", "sk-s", "--secret", "sec", "--app-id", "app1"],
        &[],
    );
    let db = tempfile::tempdir().unwrap().keep().join("baimo.db");
    let db = db.to_str().unwrap();
    let config = format!(
        "database = \"{db}\"\n{}{}{QUICK_RETRY}",
        channel("oa", "openai", &up.base, "sk-up-0031", &["gpt-4"], ""),
        channel(
            "sp",
            "spark",
            &spark.base.replacen("http://", "ws://", 1),
            "sk-s",
            &["spark-3.5"],
            "secret_key = \"sec\"\napp_id = \"app1\"\n"
        ),
    );
    let server = gateway(&config);
    // 1. The client gives up before the provider answers.
    faults(&up, json!({"next": [{"type": "delay", "ms": 1500}]}));
    let gone = client()
        .post(format!("{}/v1/chat/completions", server.base))
        .timeout(Duration::from_millis(300))
        .json(&chat_body("gpt-4", false))
        .send();
    assert!(gone.is_err());
    let v = usage_rows(db, 1);
    assert_eq!(
        (v["data"][0]["status"].as_u64(), v["data"][0]["channel"].as_str()),
        (Some(499), Some("oa")),
        "{v}"
    );
    // 2. Spark reports usage in its last frame only: a stream it cuts is billed by estimate.
    faults(&spark, json!({"next": [{"type": "drop_stream", "after_events": 3}]}));
    let (_, mut chunks) = stream(&server.base, "/v1/chat/completions", &chat_body("spark-3.5", true));
    assert!(chunks.last().is_some_and(|c| c.contains("\"error\"")), "{chunks:?}");
    chunks.pop();
    chunks.push("[DONE]".into());
    let (text, ..) = gather(&chunks);
    assert!(!text.is_empty(), "{chunks:?}");
    let v = usage_rows(db, 2);
    let row = &v["data"][0];
    assert_eq!((row["estimated"].as_bool(), row["status"].as_u64()), (Some(true), Some(502)), "{v}");
    // The estimate is of the text received (see `estimate_tokens`), and the prompt's.
    let words = text.split_whitespace().count() as u64;
    let completion = row["completion_tokens"].as_u64().unwrap();
    assert!(completion >= words / 2 && completion <= words * 2 + 2, "{words} words: {v}");
    assert!(row["prompt_tokens"].as_u64().unwrap() > 0, "{v}");
    // 3. A whole stream is billed by the provider's figures, not estimated.
    let (_, chunks) = stream(&server.base, "/v1/chat/completions", &chat_body("spark-3.5", true));
    let (_, _, usage, _) = gather(&chunks);
    let v = usage_rows(db, 3);
    assert_eq!(v["data"][0]["estimated"], false, "{v}");
    assert_eq!(v["data"][0]["completion_tokens"], usage["completion_tokens"], "{v}");
    // The table for people: dates as dates, estimates marked.
    let table = run(&["usage", "--db", db]);
    let is_date = |w: &str| {
        w.len() == 10
            && w.char_indices().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() })
    };
    let dated = table.lines().skip(1).filter(|l| l.split_whitespace().nth(1).is_some_and(is_date)).count();
    assert_eq!(dated, 3, "{table}");
    assert!(table.contains(&format!("~{}", v["data"][1]["completion_tokens"])), "{table}");
}

#[test]
fn configuration_mistakes_stop_the_start_naming_file_channel_and_setting() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("baimo.db");
    let cases = [
        (
            "mapping.toml",
            channel("oa", "openai", "http://127.0.0.1:9", "sk-x", &["gpt-4=gpt-4o"], ""),
            vec!["channel \"oa\"", "\"gpt-4=gpt-4o\"", "model_map"],
        ),
        (
            "spark.toml",
            channel("sp", "spark", "wss://spark-api.xf-yun.com", "k", &["spark-3.5"], "secret_key = \"s\"\n"),
            vec!["channel \"sp\"", "`app_id`"],
        ),
        (
            "spark-model.toml",
            channel("sp2", "spark", "wss://x", "k", &["gpt-4"], "secret_key = \"s\"\napp_id = \"a\"\n"),
            vec!["channel \"sp2\"", "no model \"gpt-4\""],
        ),
        (
            "ernie.toml",
            channel("wx", "ernie", "https://aip.baidubce.com", "k", &["ernie-4.0-8k"], ""),
            vec!["channel \"wx\"", "`secret_key`"],
        ),
        (
            "scheme.toml",
            channel("oa2", "openai", "ftp://example.com", "k", &["gpt-4"], ""),
            vec!["channel \"oa2\"", "`base_url`", "https or http"],
        ),
        (
            "env.toml",
            channel("oa3", "openai", "http://127.0.0.1:9", "env:BAIMO_TEST_UNSET_KEY", &["gpt-4"], ""),
            vec!["channel \"oa3\"", "`api_key`", "BAIMO_TEST_UNSET_KEY"],
        ),
        (
            "admin.toml",
            format!(
                "admin_key = \"env:BAIMO_TEST_UNSET_ADMIN\"\ndatabase = \"{}\"\n{}",
                db.display(),
                channel("ok", "openai", "http://127.0.0.1:9", "k", &["gpt-4"], "")
            ),
            vec!["`admin_key`", "BAIMO_TEST_UNSET_ADMIN"],
        ),
    ];
    for (file, config, wanted) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, format!("local = false\n{config}")).unwrap();
        let out = common::baimo()
            .args(["serve", "--config", path.to_str().unwrap(), "--port", "0", "-q"])
            .env_remove("BAIMO_TEST_UNSET_KEY")
            .env_remove("BAIMO_TEST_UNSET_ADMIN")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} started: {err}");
        for w in wanted.iter().chain([&path.to_str().unwrap()]) {
            assert!(err.contains(w), "{file}: {w:?} not in {err}");
        }
    }
}

/// What the server sends on a raw connection after `sent` (until it closes it or 10 s pass).
fn raw_exchange(base: &str, sent: &[u8]) -> (String, bool) {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    socket.write_all(sent).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match socket.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false, // still open after 10 s
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[test]
fn idle_slow_and_stalled_connections_are_closed_and_sigterm_drains() {
    let up = mock("openai", "sk-up-0041");
    let config = channel("oa", "openai", &up.base, "sk-up-0041", &["gpt-4"], "");
    let flags = ["--idle-timeout", "1", "--header-timeout", "1", "--body-timeout", "1"];
    let mut server = gateway_with(&config, &flags);
    // Connected, silent: closed (the bound of 10 s is far above the 1 s configured).
    let (got, closed) = raw_exchange(&server.base, b"");
    assert!(closed && got.is_empty(), "{got}");
    // Half a request head, then nothing: closed.
    let (_, closed) =
        raw_exchange(&server.base, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    assert!(closed);
    // A body announced at 100 MB that stops after ten bytes: refused, closed.
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{\"model\":";
    let (got, closed) = raw_exchange(&server.base, head.as_bytes());
    assert!(closed, "{got}");
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 4"), "{got}");
    // An open server answers local names and addresses, not a DNS name a web page controls.
    let (got, _) = raw_exchange(
        &server.base,
        b"GET /v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 403") && got.contains("evil.example"), "{got}");
    let (got, _) = raw_exchange(
        &server.base,
        b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // SIGTERM while a stream is in flight: the stream ends whole, then the server exits.
    faults(&up, json!({"next": [{"type": "delay", "ms": 1000}]}));
    let base = server.base.clone();
    let streaming =
        std::thread::spawn(move || stream(&base, "/v1/chat/completions", &chat_body("gpt-4", true)));
    eventually("the stream reached the provider", || mock_requests(&up) >= 1);
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let (status, chunks) = streaming.join().unwrap();
    assert_eq!(status, 200);
    let (text, ..) = gather(&chunks);
    assert!(!text.is_empty());
    let mut exit = None;
    eventually("the server exits after draining", || {
        exit = server.child.try_wait().unwrap();
        exit.is_some()
    });
    assert!(exit.unwrap().success(), "{exit:?}: {}", server.log.lock().unwrap());
    assert!(server.log.lock().unwrap().contains("every request finished"));
}
