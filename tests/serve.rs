//! `baimo serve` over real HTTP on loopback: OpenAI's response and chunk formats, errors with
//! their statuses, and a client that leaves mid-stream cancelling its generation.

mod common;

use std::io::Read;
use std::time::Duration;

use serde_json::{Value, json};

use common::Server;

/// Starts `baimo serve MODEL --port 0` and reads the address it prints.
fn start(model: &str, extra: &[&str]) -> Server {
    let mut args = vec!["serve", model, "--port", "0", "-q"];
    args.extend_from_slice(extra);
    common::serve(&args)
}

fn start_with(args: &[&str]) -> Server {
    common::serve(args)
}

fn client() -> reqwest::blocking::Client {
    common::http()
}

fn chat(server: &Server, body: Value) -> (u16, Value) {
    let r = client().post(format!("{}/v1/chat/completions", server.base)).json(&body).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn fixture(path: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
        .to_string_lossy()
        .into_owned()
}

fn metric(server: &Server, name: &str) -> f64 {
    let text = client().get(format!("{}/metrics", server.base)).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .parse()
        .unwrap()
}

#[test]
fn openai_chat_completions_whole_and_streamed() {
    let server = start(&fixture("hf/llama-trained"), &[]);
    let request = json!({
        "model": "llama-trained",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "max_tokens": 12,
        "temperature": 0,
    });
    let (status, whole) = chat(&server, request.clone());
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(matches!(choice["finish_reason"].as_str(), Some("stop" | "length")));
    let usage = &whole["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // The same request streamed: chunks in OpenAI's format that add up to the same answer.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = client().post(format!("{}/v1/chat/completions", server.base)).json(&streamed).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let body = r.text().unwrap();
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect::<Vec<_>>()
        .concat();
    assert_eq!(text, choice["message"]["content"].as_str().unwrap());
    let last_choice = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(last_choice["finish_reason"], choice["finish_reason"]);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], usage["completion_tokens"]);
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()));

    // The model list.
    let models: Value = client().get(format!("{}/v1/models", server.base)).send().unwrap().json().unwrap();
    assert_eq!(models["object"], "list");
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["id"] == "llama-trained"));
    assert_eq!(client().get(format!("{}/health", server.base)).send().unwrap().status().as_u16(), 200);
    // The two requests show in the time-to-first-token and generation-time summaries.
    assert_eq!(metric(&server, "baimo_time_to_first_token_seconds_count"), 2.0);
    assert!(metric(&server, "baimo_time_to_first_token_seconds_sum") > 0.0);
    assert!(metric(&server, "baimo_generation_seconds_sum") > 0.0);
    assert_eq!(
        metric(&server, "baimo_completion_tokens_total"),
        2.0 * usage["completion_tokens"].as_f64().unwrap()
    );
}

#[test]
fn bad_requests_get_openai_errors_with_their_status() {
    let server = start(&fixture("hf/llama-trained"), &[]);
    let error = |status: u16, body: &Value, code: Option<&str>| {
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        if let Some(code) = code {
            assert_eq!(body["error"]["code"], code, "{status} {body}");
        }
    };
    let (status, body) =
        chat(&server, json!({"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(status, 404);
    error(status, &body, Some("model_not_found"));
    let long = "word ".repeat(2000);
    let (status, body) =
        chat(&server, json!({"model": "llama-trained", "messages": [{"role": "user", "content": long}]}));
    assert_eq!(status, 400);
    error(status, &body, Some("context_length_exceeded"));
    for bad in [
        json!({"model": "llama-trained", "messages": []}),
        json!({"model": "llama-trained", "messages": [{"role": "user", "content": "x"}], "temperature": 5}),
        json!({"model": "llama-trained", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
        json!({"model": "llama-trained", "messages": [{"role": "user", "content": "x"}], "n": 9}),
        json!({"messages": [{"role": "user", "content": "x"}]}),
    ] {
        let (status, body) = chat(&server, bad.clone());
        assert_eq!(status, 400, "{bad}: {body}");
        error(status, &body, None);
    }
    // Malformed JSON.
    let r = client()
        .post(format!("{}/v1/chat/completions", server.base))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    error(400, &r.json().unwrap(), None);
    // An unknown path.
    let r = client().get(format!("{}/v2/whatever", server.base)).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

/// A client that reads the first chunk and hangs up: its generation stops at once and the
/// engine is free again (metrics: running back to 0, one cancelled request).
#[test]
fn a_client_that_leaves_mid_stream_cancels_its_generation() {
    let server = start(&common::model(common::SMOLLM2).to_string_lossy(), &["--ctx", "2048"]);
    let models: Value = client().get(format!("{}/v1/models", server.base)).send().unwrap().json().unwrap();
    let name = models["data"][0]["id"].as_str().unwrap().to_string();
    let body = json!({
        "model": name,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": 1500,
        "temperature": 0.8,
        "seed": 7,
        "stream": true,
    });
    let mut r = client().post(format!("{}/v1/chat/completions", server.base)).json(&body).send().unwrap();
    let mut first = [0u8; 64];
    r.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"data: "));
    drop(r);
    // Wait for the engine to notice (a bound only so a broken build fails instead of hanging).
    let noticed = (0..3000).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        metric(&server, "baimo_requests_cancelled_total") == 1.0
            && metric(&server, "baimo_requests_running") == 0.0
    });
    assert!(noticed, "the cancelled generation is still counted as running");
    // Far fewer tokens than asked for were generated.
    assert!(metric(&server, "baimo_completion_tokens_total") < 1000.0);
    // And the server answers the next request.
    let (status, _) = chat(
        &server,
        json!({"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    );
    assert_eq!(status, 200);
}

#[test]
fn anthropic_messages_whole_streamed_and_errors() {
    let server = start(&fixture("hf/llama-trained"), &[]);
    let url = format!("{}/v1/messages", server.base);
    let request = json!({
        "model": "llama-trained",
        "max_tokens": 6,
        "temperature": 0,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    });
    let whole: Value = client().post(&url).json(&request).send().unwrap().json().unwrap();
    assert_eq!(whole["type"], "message");
    assert_eq!(whole["role"], "assistant");
    assert_eq!(whole["content"][0]["type"], "text");
    assert!(matches!(whole["stop_reason"].as_str(), Some("end_turn" | "max_tokens")));

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let body = client().post(&url).json(&streamed).send().unwrap().text().unwrap();
    let names: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    let datas: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(&names[..3], ["message_start", "ping", "content_block_start"]);
    assert_eq!(&names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    assert!(names[3..names.len() - 3].iter().all(|n| *n == "content_block_delta"));
    // Every event's data repeats its name as `type`.
    assert!(names.iter().zip(&datas).all(|(n, d)| d["type"] == *n));
    let text: String = datas.iter().filter_map(|d| d["delta"]["text"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(text, whole["content"][0]["text"].as_str().unwrap());
    assert_eq!(datas[datas.len() - 2]["usage"]["output_tokens"], whole["usage"]["output_tokens"]);

    // Errors in Anthropic's envelope.
    let r = client()
        .post(&url)
        .json(&json!({"model": "claude-2", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let e: Value = r.json().unwrap();
    assert_eq!((e["type"].as_str(), e["error"]["type"].as_str()), (Some("error"), Some("not_found_error")));
    let r = client()
        .post(&url)
        .json(&json!({"model": "llama-trained", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"]["type"], "invalid_request_error");
}

/// 16 clients × 25 streamed requests at once on SmolLM2 (loopback): no errors, and under greedy
/// sampling every answer equals the one its prompt gets alone. The requests are decoded
/// together (metrics: more sequences than steps).
#[test]
fn concurrent_requests_are_batched_and_answer_as_alone() {
    let server =
        start(&common::model(common::SMOLLM2).to_string_lossy(), &["--parallel", "16", "--ctx", "2048"]);
    let models: Value = client().get(format!("{}/v1/models", server.base)).send().unwrap().json().unwrap();
    let name = models["data"][0]["id"].as_str().unwrap().to_string();
    let prompts: Vec<String> =
        (0..25).map(|i| format!("Tell me one fact about the number {i}, in a sentence.")).collect();
    let request = |prompt: &str, stream: bool| {
        json!({
            "model": name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 16 + prompt.len() % 7,
            "temperature": 0,
            "stream": stream,
        })
    };
    // Each prompt alone first.
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            let (status, body) = chat(&server, request(p, false));
            assert_eq!(status, 200, "{body}");
            let text = body["choices"][0]["message"]["content"].as_str().unwrap().to_string();
            assert!(
                body["usage"]["completion_tokens"].as_u64().unwrap() >= 8 && !text.trim().is_empty(),
                "{body}"
            );
            text
        })
        .collect();
    let steps_before = metric(&server, "baimo_decode_steps_total");
    let rows_before = metric(&server, "baimo_decode_step_rows_total");
    std::thread::scope(|scope| {
        for client_id in 0..16 {
            let (server, prompts, alone) = (&server, &prompts, &alone);
            scope.spawn(move || {
                for k in 0..25 {
                    let i = (client_id * 7 + k) % prompts.len();
                    let r = client()
                        .post(format!("{}/v1/chat/completions", server.base))
                        .json(&request(&prompts[i], true))
                        .send()
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    let body = r.text().unwrap();
                    let text: String = body
                        .lines()
                        .filter_map(|l| l.strip_prefix("data: "))
                        .filter(|d| *d != "[DONE]")
                        .filter_map(|d| {
                            let v: Value = serde_json::from_str(d).unwrap();
                            assert!(v.get("error").is_none(), "{d}");
                            v["choices"][0]["delta"]["content"].as_str().map(str::to_string)
                        })
                        .collect();
                    assert_eq!(text, alone[i], "client {client_id} request {k} (prompt {i})");
                }
            });
        }
    });
    let steps = metric(&server, "baimo_decode_steps_total") - steps_before;
    let rows = metric(&server, "baimo_decode_step_rows_total") - rows_before;
    eprintln!("{rows} sequence-steps in {steps} decoding steps: {:.1} sequences per step", rows / steps);
    assert!(rows > 2.0 * steps, "requests were not decoded together ({rows} rows in {steps} steps)");
}

#[test]
fn keys_limits_cors_and_overload() {
    let keys_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys_file.path(), "# one per line\nsk-from-file\n").unwrap();
    let server = start(
        &fixture("hf/llama-trained"),
        &[
            "--api-key",
            "sk-test",
            "--api-keys-file",
            keys_file.path().to_str().unwrap(),
            "--max-tokens-limit",
            "32",
            "--cors-origin",
            "*",
            "--parallel",
            "1",
            "--queue",
            "1",
        ],
    );
    let body =
        json!({"model": "llama-trained", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    let post = |path: &str, auth: Option<(&str, &str)>, body: &Value| {
        let mut r = client().post(format!("{}{path}", server.base)).json(body);
        if let Some((h, v)) = auth {
            r = r.header(h, v);
        }
        r.send().unwrap()
    };
    // No key, a wrong key: 401 in each API's format.
    let r = post("/v1/chat/completions", None, &body);
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "invalid_api_key");
    let r = post("/v1/chat/completions", Some(("authorization", "Bearer sk-wrong")), &body);
    assert_eq!(r.status().as_u16(), 401);
    let anthropic =
        json!({"model": "llama-trained", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]});
    let r = post("/v1/messages", None, &anthropic);
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().unwrap()["error"]["type"], "authentication_error");
    assert_eq!(client().get(format!("{}/v1/models", server.base)).send().unwrap().status().as_u16(), 401);
    // Either header, either key.
    assert_eq!(
        post("/v1/chat/completions", Some(("authorization", "Bearer sk-test")), &body).status().as_u16(),
        200
    );
    assert_eq!(post("/v1/messages", Some(("x-api-key", "sk-from-file")), &anthropic).status().as_u16(), 200);
    // max_tokens over the limit.
    let mut big = body.clone();
    big["max_tokens"] = json!(100);
    let r = post("/v1/chat/completions", Some(("authorization", "Bearer sk-test")), &big);
    assert_eq!(r.status().as_u16(), 400);
    // CORS: a browser's preflight is answered.
    let r = client()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/chat/completions", server.base))
        .header("origin", "http://example.com")
        .header("access-control-request-method", "POST")
        .send()
        .unwrap();
    assert_eq!(r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap()), Some("*"));
    // Overload: one request decoding, one waiting, the rest get 429 with Retry-After.
    let mut long = body.clone();
    long["max_tokens"] = json!(32);
    // A burst of 12 at once; repeated (at most 5 times) in case a slow machine spreads it out.
    let mut all = Vec::new();
    for _ in 0..5 {
        let statuses: Vec<(u16, bool)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..12)
                .map(|_| {
                    scope.spawn(|| {
                        let r =
                            post("/v1/chat/completions", Some(("authorization", "Bearer sk-test")), &long);
                        (r.status().as_u16(), r.headers().contains_key("retry-after"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        all.extend(statuses);
        if all.iter().any(|&(s, _)| s == 429) {
            break;
        }
    }
    assert!(all.iter().all(|&(s, retry)| s == 200 || (s == 429 && retry)), "{all:?}");
    assert!(all.iter().any(|&(s, _)| s == 429), "no request was turned away: {all:?}");
    assert!(all.iter().any(|&(s, _)| s == 200));
}

/// The second turn of a conversation reuses the first turn's cached keys and values (usage
/// reports them as cached) and answers exactly as a server without the cache.
#[test]
fn the_next_turn_of_a_conversation_reads_only_what_is_new() {
    let cached = start(&fixture("hf/llama-trained"), &[]);
    let uncached = start(&fixture("hf/llama-trained"), &["--cache-entries", "0"]);
    let turn = |server: &Server, messages: &Value| {
        let (status, body) = chat(
            server,
            json!({"model": "llama-trained", "messages": messages, "max_tokens": 8, "temperature": 0}),
        );
        assert_eq!(status, 200, "{body}");
        body
    };
    let first = json!([{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "What is free software?"}]);
    let a = turn(&cached, &first);
    assert_eq!(a["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let answer = a["choices"][0]["message"]["content"].as_str().unwrap();
    let second = json!([
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is free software?"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And copyleft?"},
    ]);
    let b = turn(&cached, &second);
    let reused = b["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(reused >= 8, "nothing reused: {b}");
    assert!(metric(&cached, "baimo_prompt_tokens_cached_total") >= 8.0);
    let fresh = turn(&uncached, &second);
    assert_eq!(fresh["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(b["choices"][0]["message"]["content"], fresh["choices"][0]["message"]["content"]);
}

/// Settings from a TOML file (`--config`), a flag winning over the file; a bad key is a clean
/// error.
#[test]
fn a_config_file_sets_the_server_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baimo.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\nport = 1\napi_keys = [\"sk-toml\"]\nmax_tokens_limit = 8\ncache_entries = 0\n",
            fixture("hf/llama-trained")
        ),
    )
    .unwrap();
    // --port 0 on the command line wins over the file's port 1.
    let server = start_with(&["serve", "--config", config.to_str().unwrap(), "--port", "0", "-q"]);
    let body =
        json!({"model": "llama-trained", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    let r = client().post(format!("{}/v1/chat/completions", server.base)).json(&body).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth("sk-toml")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut big = body.clone();
    big["max_tokens"] = json!(9);
    let r = client()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth("sk-toml")
        .json(&big)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    std::fs::write(&config, "prot = 8080\n").unwrap();
    let out = common::baimo().args(["serve", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid baimo serve config") && err.contains("prot"), "{err}");
}

/// `logprobs` / `top_logprobs`: one entry per generated token, in OpenAI's form, the same whole
/// and streamed; under greedy decoding every chosen token is the most likely one.
#[test]
fn token_logprobs_whole_and_streamed() {
    let server = start(&fixture("hf/llama-trained"), &[]);
    let request = json!({
        "model": "llama-trained",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": true,
        "top_logprobs": 3,
    });
    let (status, whole) = chat(&server, request.clone());
    assert_eq!(status, 200, "{whole}");
    let content = whole["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
    assert_eq!(content.len() as u64, whole["usage"]["completion_tokens"].as_u64().unwrap());
    for entry in &content {
        let lp = entry["logprob"].as_f64().unwrap();
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert!(lp <= 0.0);
        assert_eq!(top[0]["token"], entry["token"], "greedy picks the most likely token");
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        assert_eq!(entry["bytes"].as_array().unwrap().len(), entry["token"].as_str().unwrap().len());
    }
    let text: String = content.iter().map(|e| e["token"].as_str().unwrap()).collect();
    assert_eq!(text, whole["choices"][0]["message"]["content"].as_str().unwrap());

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let body = client()
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&streamed)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let entries: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .flat_map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"][0]["logprobs"]["content"].as_array().cloned().unwrap_or_default()
        })
        .collect();
    assert_eq!(entries, content);
    // top_logprobs without logprobs, or over 20: 400.
    let mut bad = request.clone();
    bad["logprobs"] = json!(false);
    assert_eq!(chat(&server, bad).0, 400);
    let mut bad = request.clone();
    bad["top_logprobs"] = json!(21);
    assert_eq!(chat(&server, bad).0, 400);
}

/// `n` choices: as many sequences decoded together with seeds seed, seed + 1, …; the same
/// choices whole and streamed (chunks carry their choice's index), usage summed.
#[test]
fn several_choices_whole_and_streamed() {
    let server = start(&fixture("hf/llama-trained"), &[]);
    let request = json!({
        "model": "llama-trained",
        "messages": [{"role": "user", "content": "Tell me about freedom."}],
        "max_tokens": 10,
        "temperature": 1.0,
        "seed": 42,
        "n": 3,
    });
    let (status, whole) = chat(&server, request.clone());
    assert_eq!(status, 200, "{whole}");
    let choices = whole["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let texts: Vec<&str> = choices.iter().map(|c| c["message"]["content"].as_str().unwrap()).collect();
    assert!(choices.iter().enumerate().all(|(i, c)| c["index"] == i));
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "three seeds gave one answer: {texts:?}");
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let body = client()
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&streamed)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let mut by_index = vec![String::new(); 3];
    let mut usage = Value::Null;
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]") {
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(c) = v["choices"].as_array().and_then(|c| c.first()) {
            if let Some(piece) = c["delta"]["content"].as_str() {
                by_index[c["index"].as_u64().unwrap() as usize].push_str(piece);
            }
        } else {
            usage = v["usage"].clone();
        }
    }
    assert_eq!(by_index, texts);
    assert_eq!(usage["completion_tokens"], whole["usage"]["completion_tokens"]);
    assert!(body.trim_end().ends_with("data: [DONE]"));
}

/// Several models: extras load on their first request and the least recently used extra is
/// unloaded when the memory budget is exceeded (the default model stays).
#[test]
fn several_models_load_on_demand_within_a_memory_budget() {
    let server = start(
        &fixture("hf/llama-trained"),
        &[
            "--extra-model",
            &fixture("hf/qwen3"),
            "--extra-model",
            &fixture("hf/gpt2"),
            "--memory-budget-mib",
            "1",
        ],
    );
    let loaded = || -> Vec<(String, bool)> {
        let v: Value = client().get(format!("{}/v1/models", server.base)).send().unwrap().json().unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["id"].as_str().unwrap().to_string(), m["loaded"].as_bool().unwrap()))
            .collect()
    };
    let is_loaded = |name: &str| loaded().iter().any(|(n, l)| n == name && *l);
    assert!(is_loaded("llama-trained") && !is_loaded("qwen3") && !is_loaded("gpt2"), "{:?}", loaded());
    let ask = |model: &str| {
        chat(
            &server,
            json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}),
        )
    };
    assert_eq!(ask("qwen3").0, 200);
    assert!(is_loaded("qwen3"));
    assert_eq!(ask("gpt2").0, 200);
    assert!(is_loaded("gpt2") && !is_loaded("qwen3") && is_loaded("llama-trained"), "{:?}", loaded());
    assert_eq!(ask("qwen3").0, 200, "reloaded after eviction");
    assert_eq!(ask("llama-trained").0, 200);
    assert_eq!(ask("gpt-5").0, 404);
}

/// A long prompt is read a piece at a time between decoding steps (so a stream already running
/// keeps going): both answers stay those each request gets alone (greedy; prefix cache off so
/// every prompt is read in full).
#[test]
fn a_long_prompt_read_in_pieces_beside_a_running_stream_answers_as_alone() {
    let server =
        start(&common::model(common::SMOLLM2).to_string_lossy(), &["--ctx", "4096", "--cache-entries", "0"]);
    let models: Value = client().get(format!("{}/v1/models", server.base)).send().unwrap().json().unwrap();
    let name = models["data"][0]["id"].as_str().unwrap().to_string();
    let long: String = (0..500).map(|i| format!("item {i}, ")).collect();
    let request = |content: &str, max_tokens: u32| {
        json!({"model": name, "messages": [{"role": "user", "content": content}],
               "max_tokens": max_tokens, "temperature": 0})
    };
    let short = request("Write a long story about a lighthouse.", 120);
    let long = request(&format!("Count these: {long}. How many items?"), 12);
    let text = |body: &Value| body["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let (status, short_alone) = chat(&server, short.clone());
    assert_eq!(status, 200);
    let (status, long_alone) = chat(&server, long.clone());
    assert_eq!(status, 200);
    assert!(long_alone["usage"]["prompt_tokens"].as_u64().unwrap() > 1000, "{long_alone}");
    let steps_before = metric(&server, "baimo_decode_steps_total");
    let (short_together, long_together) = std::thread::scope(|scope| {
        let running = scope.spawn(|| chat(&server, short.clone()));
        // Let the short request start decoding before the long prompt arrives.
        let decoding = (0..20_000).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            metric(&server, "baimo_decode_steps_total") >= steps_before + 5.0
        });
        assert!(decoding, "the short request never started decoding");
        let long_together = chat(&server, long.clone());
        (running.join().unwrap(), long_together)
    });
    assert_eq!((short_together.0, long_together.0), (200, 200));
    assert_eq!(text(&short_together.1), text(&short_alone));
    assert_eq!(text(&long_together.1), text(&long_alone));
    assert!(!text(&long_alone).trim().is_empty() && !text(&short_alone).trim().is_empty());
}

/// A GGUF whose architecture is a megabyte of `A`: the loader's error quotes it.
fn gguf_with_a_huge_architecture(path: &std::path::Path) {
    let key = b"general.architecture";
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes()); // tensors
    bytes.extend(1u64.to_le_bytes()); // metadata keys
    bytes.extend((key.len() as u64).to_le_bytes());
    bytes.extend(key);
    bytes.extend(8u32.to_le_bytes()); // a string
    bytes.extend((1u64 << 20).to_le_bytes());
    bytes.extend(std::iter::repeat_n(b'A', 1 << 20));
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_broken_model_file_gives_a_short_503_without_being_read_again_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    gguf_with_a_huge_architecture(&path);
    let server = start(&fixture("hf/llama-trained"), &["--extra-model", path.to_str().unwrap()]);
    // The model list names models, never where their files are.
    let listed = client().get(format!("{}/v1/models", server.base)).send().unwrap().text().unwrap();
    assert!(listed.contains("broken.gguf") && !listed.contains(&*dir.path().to_string_lossy()), "{listed}");
    let body =
        json!({"model": "broken.gguf", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    let first = client().post(format!("{}/v1/chat/completions", server.base)).json(&body).send().unwrap();
    assert_eq!(first.status(), 503);
    assert!(first.headers().contains_key("retry-after"));
    let text = first.text().unwrap();
    assert!(
        text.len() < 4096 && text.contains("could not be loaded") && text.contains("more bytes"),
        "{:.500}",
        text
    );
    // The file is mended; the failure is remembered for a while rather than read again per request.
    std::fs::copy(fixture("gguf/gpt2.gguf"), &path).unwrap();
    let (status, again) = chat(&server, body);
    assert_eq!(
        (status, again["error"]["message"].as_str().map(str::len)),
        (503, serde_json::from_str::<Value>(&text).unwrap()["error"]["message"].as_str().map(str::len)),
        "{again}"
    );
}
