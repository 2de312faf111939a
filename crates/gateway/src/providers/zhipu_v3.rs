//! Zhipu AI's v3 API ([`ZhipuV3`], 2023), with v4's token and error codes (from `zhipu`):
//! `…/v3/model-api/{model}/invoke` (`prompt` list, errors inside a 200) and `/sse-invoke`
//! (`event: add` plain-text deltas, `event: finish` with usage on a `meta:` line).

use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::http::{self, ByteStream};
use super::zhipu::{clamp_sampling, code_of, credential, error_from};
use super::{BoxFuture, EventStream, Protocol, StreamTranslator, Upstream, json_body};
use crate::channel::Channel;
use crate::error::{ErrorKind, UpstreamError, retry_after_from_headers};
use crate::sse::{MAX_EVENT_BYTES, SseEvent};
use crate::types::{ChatRequest, ChatResponse, FinishReason, StreamEvent, Usage};

const V3_NAME: &str = "zhipu-v3";
pub const V3_PREFIX: &str = "/api/paas/v3/model-api";

fn protocol_error(provider: &'static str, msg: impl Into<String>) -> UpstreamError {
    UpstreamError::new(provider, ErrorKind::Protocol, msg)
}

/// Zhipu v3 (the 2023 API): `prompt` instead of `messages`, no system role, no tools.
pub struct ZhipuV3;

/// The v3 body. The early API had no system role: the system text becomes a first user turn
/// answered by the assistant (⚠️ a common client convention, not documented). Tool turns become
/// user turns: v3 had no function calling.
pub fn v3_request_body(req: &ChatRequest, stream: bool) -> Value {
    let mut prompt: Vec<Value> = Vec::new();
    if let Some(system) = req.system_text() {
        prompt.push(json!({"role": "user", "content": system}));
        prompt.push(json!({"role": "assistant", "content": "好的。"}));
    }
    // Consecutive turns of one role are merged: v3 wants them to alternate.
    let prompt = super::alternating_turns(prompt, req);
    let mut body = Map::new();
    body.insert("prompt".into(), prompt.into());
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), clamp_sampling(t).into());
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), clamp_sampling(p).into());
    }
    if stream {
        // Each `add` event then carries only the new text.
        body.insert("incremental".into(), true.into());
    }
    Value::Object(body)
}

fn v3_usage(v: Option<&Value>) -> Usage {
    let n = |k: &str| v.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    Usage { prompt_tokens: n("prompt_tokens"), completion_tokens: n("completion_tokens") }
}

/// v3 answers wrap the text in literal quotes (a JSON string literal): unwrap it.
fn unquote(content: &str) -> String {
    if content.len() >= 2 && content.starts_with('"') && content.ends_with('"') {
        serde_json::from_str::<String>(content).unwrap_or_else(|_| content[1..content.len() - 1].to_string())
    } else {
        content.to_string()
    }
}

impl ZhipuV3 {
    fn url(channel: &Channel, model: &str, stream: bool) -> String {
        let action = if stream { "sse-invoke" } else { "invoke" };
        format!("{}{V3_PREFIX}/{model}/{action}", channel.base_url())
    }
}

impl Protocol for ZhipuV3 {
    fn name(&self) -> &'static str {
        V3_NAME
    }

    fn request<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
        stream: bool,
    ) -> BoxFuture<'a, Result<reqwest::RequestBuilder, UpstreamError>> {
        Box::pin(async move {
            super::refuse_tools(V3_NAME, req)?;
            let token = credential(up, channel).await?;
            let mut builder = up
                .http
                .post(ZhipuV3::url(channel, model, stream))
                // v3 took the bare token, without "Bearer " (as one-api sends it).
                .header("Authorization", token.expose())
                .json(&v3_request_body(req, stream));
            if stream {
                builder = builder.header("Accept", "text/event-stream");
            }
            Ok(builder)
        })
    }

    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, UpstreamError> {
        let v = json_body(V3_NAME, body)?;
        if v.get("success").and_then(Value::as_bool) != Some(true) {
            let message = v.get("msg").and_then(Value::as_str).unwrap_or("(no message)");
            return Err(error_from(V3_NAME, None, code_of(v.get("code")), message, None));
        }
        let data = v.get("data").ok_or_else(|| protocol_error(V3_NAME, "an answer without data"))?;
        let content = data
            .pointer("/choices/0/content")
            .and_then(Value::as_str)
            .ok_or_else(|| protocol_error(V3_NAME, "an answer without choices"))?;
        Ok(ChatResponse {
            content: Some(unquote(content)),
            tool_calls: Vec::new(),
            finish_reason: FinishReason::Stop,
            usage: v3_usage(data.get("usage")),
        })
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let retry_after = retry_after_from_headers(headers);
        let v = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        let message = match v.get("msg").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
        };
        error_from(V3_NAME, Some(status), code_of(v.get("code")), &message, retry_after)
    }

    fn stream(&self) -> Box<dyn StreamTranslator> {
        Box::new(V3Stream::default())
    }

    /// The SSE path, with each `meta:` line (usage, which standard SSE would drop) moved into an
    /// event of its own named `meta` at the end of its block.
    fn chat_stream<'a>(
        &'a self,
        up: &'a Upstream,
        channel: &'a Channel,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, UpstreamError>> {
        Box::pin(async move {
            let response = http::send(self, up, channel, model, req, true).await?;
            let bytes = meta_as_events(Box::pin(response.bytes_stream()));
            Ok(http::event_stream(
                bytes,
                V3_NAME,
                self.stream(),
                up.idle_timeout,
                channel.secrets().into_iter().map(String::from).collect(),
            ))
        })
    }
}

/// Rewrites a v3 SSE body so `meta: {…}` lines arrive as `event:meta` / `data:{…}` events of their
/// own, after the rest of their block. Lines are held until complete (at most an SSE event's size;
/// a longer line is passed on for the decoder to refuse).
fn meta_as_events(bytes: ByteStream) -> ByteStream {
    struct Rewriter {
        line: Vec<u8>,
        meta: Option<Vec<u8>>,
    }
    impl Rewriter {
        fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
            for &b in chunk {
                self.line.push(b);
                if b == b'\n' {
                    self.end_line(out);
                } else if self.line.len() > MAX_EVENT_BYTES {
                    out.append(&mut self.line);
                }
            }
        }
        fn end_line(&mut self, out: &mut Vec<u8>) {
            let line = std::mem::take(&mut self.line);
            let content = line.strip_suffix(b"\n").unwrap_or(&line);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            if let Some(meta) = content.strip_prefix(b"meta:") {
                self.meta = Some(meta.to_vec());
            } else if content.is_empty() {
                out.push(b'\n');
                self.flush_meta(out);
            } else {
                out.extend_from_slice(&line);
            }
        }
        fn flush_meta(&mut self, out: &mut Vec<u8>) {
            if let Some(meta) = self.meta.take() {
                out.extend_from_slice(b"event:meta\ndata:");
                out.extend_from_slice(&meta);
                out.extend_from_slice(b"\n\n");
            }
        }
        fn finish(&mut self, out: &mut Vec<u8>) {
            if !self.line.is_empty() {
                self.line.push(b'\n');
                self.end_line(out);
            }
            if self.meta.is_some() {
                out.push(b'\n');
                self.flush_meta(out);
            }
        }
    }
    let state = (bytes, Rewriter { line: Vec::new(), meta: None }, false);
    Box::pin(futures_util::stream::unfold(state, |(mut bytes, mut rw, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let mut out = Vec::new();
            match bytes.next().await {
                Some(Ok(chunk)) => rw.feed(&chunk, &mut out),
                Some(Err(e)) => return Some((Err(e), (bytes, rw, true))),
                None => {
                    rw.finish(&mut out);
                    return Some((Ok(bytes::Bytes::from(out)), (bytes, rw, true)));
                }
            }
            if !out.is_empty() {
                return Some((Ok(bytes::Bytes::from(out)), (bytes, rw, false)));
            }
        }
    }))
}

#[derive(Default)]
struct V3Stream {
    finished: bool,
}

impl StreamTranslator for V3Stream {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<bool, UpstreamError> {
        match event.event.as_deref().unwrap_or("add") {
            "add" => {
                if !event.data.is_empty() {
                    out.push(StreamEvent::Text(event.data.clone()));
                }
                Ok(false)
            }
            "finish" => {
                if !event.data.is_empty() {
                    out.push(StreamEvent::Text(event.data.clone()));
                }
                self.finished = true;
                out.push(StreamEvent::Finish(FinishReason::Stop));
                Ok(false)
            }
            // Generation stopped by moderation (⚠️ as the v3 docs described it).
            "interrupted" => {
                out.push(StreamEvent::Finish(FinishReason::ContentFilter));
                Ok(true)
            }
            "error" => {
                let message = if event.data.is_empty() { "an error event" } else { event.data.as_str() };
                Err(error_from(V3_NAME, None, None, message, None))
            }
            "meta" => {
                let meta: Value = serde_json::from_str(&event.data)
                    .map_err(|e| protocol_error(V3_NAME, format!("a bad meta line: {e}")))?;
                out.push(StreamEvent::Usage(v3_usage(meta.get("usage"))));
                // Usage comes with the finish event: the stream is over.
                Ok(self.finished)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::zhipu::MIN_SAMPLING;
    use crate::sse::SseDecoder;

    #[test]
    fn v3_requests_use_prompt_without_a_system_role() {
        let req = ChatRequest::from_openai(&json!({"model": "chatglm_turbo", "temperature": 0,
            "messages": [{"role": "system", "content": "brief"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}))
        .unwrap();
        let body = v3_request_body(&req, true);
        assert_eq!(
            body["prompt"],
            json!([{"role": "user", "content": "brief"}, {"role": "assistant", "content": "好的。"}, {"role": "user", "content": "a\nb"}])
        );
        assert_eq!(
            (body["temperature"].as_f64(), body["incremental"].as_bool()),
            (Some(MIN_SAMPLING), Some(true))
        );
    }

    #[test]
    fn v3_answers_are_unquoted_and_errors_in_a_200_are_errors() {
        let ok = r#"{"code":200,"msg":"操作成功","success":true,"data":{"request_id":"r","task_id":"t","task_status":"SUCCESS","choices":[{"role":"assistant","content":"\"line\\none\""}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}}"#;
        let r = ZhipuV3.parse_response(ok.as_bytes()).unwrap();
        assert_eq!(r.content.as_deref(), Some("line\none"));
        assert_eq!(r.usage, Usage { prompt_tokens: 3, completion_tokens: 2 });
        let bad = r#"{"code":1113,"msg":"您的账户已欠费","success":false}"#;
        assert_eq!(ZhipuV3.parse_response(bad.as_bytes()).unwrap_err().kind, ErrorKind::QuotaExhausted);
    }

    /// The raw v3 stream, cut anywhere, gives the text (multi-line data joined), the finish and
    /// the usage from the `meta:` line.
    #[tokio::test]
    async fn v3_streams_read_meta_lines_in_any_split() {
        let body = "id: 1\nevent: add\ndata: Hel\n\nid: 2\nevent: add\ndata: lo\ndata: there\n\nid: 3\nevent: finish\nmeta: {\"task_status\":\"SUCCESS\",\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":3,\"total_tokens\":7}}\ndata: !\n\n";
        for piece in 1..body.len() {
            let chunks: Vec<reqwest::Result<bytes::Bytes>> =
                body.as_bytes().chunks(piece).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
            let rewritten: Vec<u8> = meta_as_events(Box::pin(futures_util::stream::iter(chunks)))
                .map(|c| c.unwrap().to_vec())
                .concat()
                .await;
            let mut events = Vec::new();
            let mut decoder = SseDecoder::new();
            decoder.feed(&rewritten, &mut events).unwrap();
            decoder.finish(&mut events).unwrap();
            let mut s = ZhipuV3.stream();
            let mut out = Vec::new();
            let ends: Vec<bool> = events.iter().map(|e| s.on_event(e, &mut out).unwrap()).collect();
            assert_eq!(ends.last(), Some(&true), "piece {piece}");
            assert_eq!(
                out,
                vec![
                    StreamEvent::Text("Hel".into()),
                    StreamEvent::Text("lo\nthere".into()),
                    StreamEvent::Text("!".into()),
                    StreamEvent::Finish(FinishReason::Stop),
                    StreamEvent::Usage(Usage { prompt_tokens: 4, completion_tokens: 3 }),
                ],
                "piece {piece}"
            );
        }
        let mut s = ZhipuV3.stream();
        let err = SseEvent { event: Some("error".into()), data: "server busy".into() };
        assert_eq!(s.on_event(&err, &mut Vec::new()).unwrap_err().kind, ErrorKind::Server);
    }
}
