//! Anthropic's messages front: the request body read once into a [`ChatRequest`]
//! (`ChatRequest::from_anthropic`: the system prompt, text / image / tool_use / tool_result
//! blocks, tools and tool_choice), the answer written once as Anthropic's message
//! ([`message_json`]) or event sequence ([`EventWriter`]: `message_start`, `content_block_*`,
//! `message_delta` with the stop reason and usage, `message_stop`).

use serde_json::{Map, Value, json};

use crate::answer::Answer;
use crate::types::{
    ChatRequest, FinishReason, Image, Message, RequestError, Role, StreamEvent, Tool, ToolCall, ToolChoice,
    Usage,
};

const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "thinking",
    // Bookkeeping only.
    "metadata",
    "service_tier",
];

fn field(name: &str, message: impl Into<String>) -> RequestError {
    RequestError::field(name, message)
}

fn image_of(block: &Value) -> Result<Image, RequestError> {
    let source = block.get("source").ok_or_else(|| field("messages", "an image block has no source"))?;
    let s = |k: &str| source.get(k).and_then(Value::as_str).map(String::from);
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => Ok(Image::Base64 {
            media_type: s("media_type")
                .ok_or_else(|| field("messages", "an image source has no media_type"))?,
            data: s("data").ok_or_else(|| field("messages", "an image source has no data"))?,
        }),
        Some("url") => {
            Ok(Image::Url(s("url").ok_or_else(|| field("messages", "an image source has no url"))?))
        }
        other => Err(field("messages", format!("image sources of type {other:?} are not supported"))),
    }
}

/// The text and images of a content that holds only those (a system prompt, a tool result).
fn text_and_images(content: &Value, what: &str) -> Result<(String, Vec<Image>), RequestError> {
    match content {
        Value::String(s) => Ok((s.clone(), Vec::new())),
        Value::Null => Ok((String::new(), Vec::new())),
        Value::Array(blocks) => {
            let (mut text, mut images) = (String::new(), Vec::new());
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("image") => images.push(image_of(b)?),
                    other => {
                        return Err(field(
                            what,
                            format!("{what}: blocks of type {other:?} are not supported here"),
                        ));
                    }
                }
            }
            Ok((text, images))
        }
        _ => Err(field(what, format!("{what}: content must be a string or an array of blocks"))),
    }
}

fn number(body: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, RequestError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(field(key, format!("{key}: must be a number between {lo} and {hi}"))),
        },
    }
}

impl ChatRequest {
    /// Reads an Anthropic messages request body.
    pub fn from_anthropic(body: &Value) -> Result<ChatRequest, RequestError> {
        let body = body.as_object().ok_or_else(|| RequestError::new("the body must be a JSON object"))?;
        if let Some(unknown) = body.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
            return Err(field(unknown, format!("{unknown}: Extra inputs are not permitted")));
        }
        let model = body
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| field("model", "model: Field required"))?;
        let max_tokens = match body.get("max_tokens") {
            Some(v) => v
                .as_u64()
                .filter(|&n| n >= 1)
                .ok_or_else(|| field("max_tokens", "max_tokens: must be at least 1"))?,
            None => return Err(field("max_tokens", "max_tokens: Field required")),
        };
        let raw = body
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| field("messages", "messages: Field required"))?;
        if raw.is_empty() {
            return Err(field("messages", "messages: at least one message is required"));
        }
        if let Some(thinking) = body.get("thinking")
            && thinking.get("type").and_then(Value::as_str) != Some("disabled")
        {
            return Err(field("thinking", "thinking: extended thinking is not supported"));
        }
        let mut messages = Vec::with_capacity(raw.len() + 1);
        if let Some(system) = body.get("system").filter(|s| !s.is_null()) {
            let (text, images) = text_and_images(system, "system")?;
            if !images.is_empty() {
                return Err(field("system", "system: images are not allowed here"));
            }
            messages.push(Message::text(Role::System, text));
        }
        for m in raw {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("");
            if role != "user" && role != "assistant" {
                return Err(field(
                    "messages",
                    format!("messages: role must be \"user\" or \"assistant\", not {role:?}"),
                ));
            }
            let blocks = match m.get("content").unwrap_or(&Value::Null) {
                Value::String(s) => vec![json!({"type": "text", "text": s})],
                Value::Array(b) => b.clone(),
                _ => {
                    return Err(field(
                        "messages",
                        "messages: content must be a string or an array of blocks",
                    ));
                }
            };
            let mut text = String::new();
            let mut images = Vec::new();
            let mut calls = Vec::new();
            for b in &blocks {
                match (role, b.get("type").and_then(Value::as_str)) {
                    (_, Some("text")) => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                    ("user", Some("image")) => images.push(image_of(b)?),
                    // Tool results answer the previous turn: they go first, as tool messages.
                    ("user", Some("tool_result")) => {
                        let (mut result, result_images) =
                            text_and_images(b.get("content").unwrap_or(&Value::Null), "tool_result")?;
                        if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                            result = format!("Error: {result}");
                        }
                        let mut message = Message::text(Role::Tool, result);
                        message.images = result_images;
                        message.tool_call_id = b.get("tool_use_id").and_then(Value::as_str).map(String::from);
                        messages.push(message);
                    }
                    ("assistant", Some("tool_use")) => calls.push(ToolCall {
                        id: b.get("id").and_then(Value::as_str).unwrap_or_default().into(),
                        name: b
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| field("messages", "a tool_use block has no name"))?
                            .into(),
                        arguments: b.get("input").unwrap_or(&json!({})).to_string(),
                    }),
                    // Earlier reasoning given back: not part of what the model reads again.
                    ("assistant", Some("thinking" | "redacted_thinking")) => {}
                    (_, other) => {
                        return Err(field(
                            "messages",
                            format!("messages: {role} blocks of type {other:?} are not supported"),
                        ));
                    }
                }
            }
            let only_results = role == "user" && !blocks.is_empty() && text.is_empty() && images.is_empty();
            if only_results {
                continue;
            }
            let mut message = Message::text(if role == "user" { Role::User } else { Role::Assistant }, text);
            if role == "assistant" && message.content.as_deref() == Some("") && !calls.is_empty() {
                message.content = None;
            }
            message.images = images;
            message.tool_calls = calls;
            messages.push(message);
        }
        let mut tools = Vec::new();
        for t in body.get("tools").and_then(Value::as_array).into_iter().flatten() {
            if t.get("type").and_then(Value::as_str).is_some_and(|k| k != "custom") {
                return Err(field("tools", format!("tools: server tools ({}) are not supported", t["type"])));
            }
            tools.push(Tool {
                name: t
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| field("tools", "tools: a tool has no name"))?
                    .into(),
                description: t.get("description").and_then(Value::as_str).map(String::from),
                parameters: t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
            });
        }
        let mut parallel_tool_calls = true;
        let tool_choice = match body.get("tool_choice") {
            None | Some(Value::Null) => None,
            Some(c) => {
                parallel_tool_calls =
                    c.get("disable_parallel_tool_use").and_then(Value::as_bool) != Some(true);
                Some(match c.get("type").and_then(Value::as_str) {
                    Some("auto") => ToolChoice::Auto,
                    Some("any") => ToolChoice::Required,
                    Some("none") => ToolChoice::None,
                    Some("tool") => ToolChoice::Function(
                        c.get("name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| field("tool_choice", "tool_choice: name required"))?
                            .into(),
                    ),
                    other => {
                        return Err(field("tool_choice", format!("tool_choice: unknown type {other:?}")));
                    }
                })
            }
        };
        if let Some(ToolChoice::Function(name)) = &tool_choice
            && !tools.iter().any(|t| &t.name == name)
        {
            return Err(field("tool_choice", format!("tool_choice: {name:?} is not among the tools")));
        }
        let stop = match body.get("stop_sequences") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(String::from)
                        .ok_or_else(|| field("stop_sequences", "stop_sequences: strings only"))
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(field("stop_sequences", "stop_sequences: must be an array of strings")),
        };
        let top_k = match body.get("top_k") {
            None | Some(Value::Null) => None,
            Some(v) => {
                Some(v.as_u64().ok_or_else(|| field("top_k", "top_k: must be a non-negative integer"))?)
            }
        };
        let mut req = ChatRequest::new(model, messages);
        req.max_tokens = Some(max_tokens);
        req.temperature = number(body, "temperature", 0.0, 1.0)?;
        req.top_p = number(body, "top_p", 0.0, 1.0)?;
        req.top_k = top_k;
        req.stop = stop;
        req.user =
            body.get("metadata").and_then(|m| m.get("user_id")).and_then(Value::as_str).map(String::from);
        req.tools = tools;
        req.tool_choice = tool_choice;
        req.parallel_tool_calls = parallel_tool_calls;
        req.stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        req.include_usage = true;
        Ok(req)
    }
}

/// Anthropic's name for why the answer ended.
pub fn stop_reason(reason: FinishReason, stop_sequence: Option<&str>) -> &'static str {
    match reason {
        FinishReason::Stop if stop_sequence.is_some() => "stop_sequence",
        FinishReason::Stop | FinishReason::ContentFilter => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
    }
}

fn tool_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
}

/// The whole answer (its first choice) as Anthropic's message.
pub fn message_json(model: &str, answer: &Answer, id: &str) -> Value {
    let mut content = Vec::new();
    let (mut reason, mut stop_sequence) = (FinishReason::Stop, None);
    if let Some(c) = answer.choices.first() {
        if let Some(text) = c.content.as_deref().filter(|t| !t.is_empty() || c.tool_calls.is_empty()) {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in &c.tool_calls {
            content.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(&call.arguments)}));
        }
        (reason, stop_sequence) = (c.finish_reason, c.stop_sequence.clone());
    }
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason(reason, stop_sequence.as_deref()), "stop_sequence": stop_sequence,
        "usage": {"input_tokens": answer.usage.prompt_tokens, "output_tokens": answer.usage.completion_tokens},
    })
}

/// Which content block is open in the stream being written.
#[derive(PartialEq)]
enum Open {
    None,
    Text,
    Tool(usize),
}

/// Writes a streamed answer as Anthropic's events: `(event name, data)` pairs.
pub struct EventWriter {
    open: Open,
    blocks: usize,
    finish: Option<FinishReason>,
    stop_sequence: Option<String>,
    pub usage: Usage,
}

impl Default for EventWriter {
    fn default() -> Self {
        EventWriter::new()
    }
}

impl EventWriter {
    pub fn new() -> EventWriter {
        EventWriter {
            open: Open::None,
            blocks: 0,
            finish: None,
            stop_sequence: None,
            usage: Usage::default(),
        }
    }

    /// `message_start` (with the prompt's tokens when known) and a `ping`.
    pub fn start(&self, model: &str, id: &str, input_tokens: u64) -> Vec<(&'static str, Value)> {
        vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": id, "type": "message", "role": "assistant", "content": [], "model": model,
                    "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 0}}}),
            ),
            ("ping", json!({"type": "ping"})),
        ]
    }

    fn switch_to(&mut self, open: Open, block: Value, out: &mut Vec<(&'static str, Value)>) {
        if self.open == open {
            return;
        }
        if self.open != Open::None {
            out.push(("content_block_stop", json!({"type": "content_block_stop", "index": self.blocks - 1})));
        }
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": self.blocks, "content_block": block}),
        ));
        self.blocks += 1;
        self.open = open;
    }

    /// The events for one stream event.
    pub fn event(&mut self, event: StreamEvent) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        match event {
            StreamEvent::Text(text) => {
                if text.is_empty() {
                    return out;
                }
                self.switch_to(Open::Text, json!({"type": "text", "text": ""}), &mut out);
                out.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": self.blocks - 1, "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            StreamEvent::ToolCall { index, id, name, arguments } => {
                let block = json!({"type": "tool_use", "id": id.unwrap_or_default(), "name": name.unwrap_or_default(), "input": {}});
                self.switch_to(Open::Tool(index), block, &mut out);
                if !arguments.is_empty() {
                    out.push((
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": self.blocks - 1, "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                    ));
                }
            }
            StreamEvent::Finish(reason) => self.finish = self.finish.or(Some(reason)),
            StreamEvent::StopSequence(s) => self.stop_sequence = Some(s),
            StreamEvent::Usage(u) => self.usage = u,
            StreamEvent::Logprobs(_) => {}
        }
        out
    }

    /// The closing events: the open block's stop, `message_delta`, `message_stop`.
    pub fn end(&mut self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        if self.open != Open::None {
            out.push(("content_block_stop", json!({"type": "content_block_stop", "index": self.blocks - 1})));
            self.open = Open::None;
        }
        let reason = stop_reason(self.finish.unwrap_or(FinishReason::Stop), self.stop_sequence.as_deref());
        out.push((
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": reason, "stop_sequence": self.stop_sequence},
                   "usage": {"input_tokens": self.usage.prompt_tokens, "output_tokens": self.usage.completion_tokens}}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
        out
    }
}

/// Anthropic's error envelope.
pub fn error_json(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tool_use_tool_result_image_blocks_and_tool_choice() {
        let r = ChatRequest::from_anthropic(&json!({
            "model": "claude", "max_tokens": 64, "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"role": "assistant", "content": [{"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "tu_1", "name": "look", "input": {"q": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "a cat"}]},
            ],
            "tools": [{"name": "look", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"], "top_k": 5, "metadata": {"user_id": "u1"},
        }))
        .unwrap();
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Tool]);
        assert_eq!(
            r.messages[1].images,
            [Image::Base64 { media_type: "image/png".into(), data: "AAAA".into() }]
        );
        assert_eq!(r.messages[2].tool_calls[0].arguments, r#"{"q":1}"#);
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("tu_1"));
        assert_eq!(
            (r.tool_choice, r.parallel_tool_calls, r.top_k),
            (Some(ToolChoice::Required), false, Some(5))
        );
        assert_eq!(r.stop, ["END"]);
    }

    #[test]
    fn refuses_what_it_cannot_honour_naming_the_field() {
        let base = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]});
        for (extra, param) in [
            (json!({"temperature": 1.5}), "temperature"),
            (json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}), "thinking"),
            (json!({"mcp_servers": []}), "mcp_servers"),
            (json!({"messages": [{"role": "user", "content": [{"type": "document"}]}]}), "messages"),
            (json!({"messages": [{"role": "system", "content": "x"}]}), "messages"),
            (json!({"max_tokens": 0}), "max_tokens"),
        ] {
            let mut body = base.clone();
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let e = ChatRequest::from_anthropic(&body).expect_err(&body.to_string());
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
        }
    }

    #[test]
    fn a_stop_sequence_is_reported_as_such() {
        let mut w = EventWriter::new();
        let mut events = w.event(StreamEvent::Text("a".into()));
        events.extend(w.event(StreamEvent::StopSequence("END".into())));
        events.extend(w.event(StreamEvent::Finish(FinishReason::Stop)));
        events.extend(w.end());
        let delta = &events.iter().find(|e| e.0 == "message_delta").unwrap().1;
        assert_eq!(delta["delta"], json!({"stop_reason": "stop_sequence", "stop_sequence": "END"}));
        assert_eq!(stop_reason(FinishReason::Stop, None), "end_turn");
    }
}
