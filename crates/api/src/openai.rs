//! OpenAI's chat completions front: the request body read once into a [`ChatRequest`]
//! (`ChatRequest::from_openai`), the answer written once from an [`Answer`] (whole) or from
//! [`StreamEvent`]s (`chat.completion.chunk`s, [`ChunkWriter`]).
//!
//! Every field is honoured or refused: a field that would change the answer and that baimo does
//! not know is a 400 naming it, never dropped. Fields that change nothing about the answer
//! (`user`, `metadata`, `store`, ...) are accepted.

use serde_json::{Map, Value, json};

use crate::answer::{Answer, Choice};
use crate::types::{
    ChatRequest, FinishReason, Image, Message, RequestError, ResponseFormat, Role, StreamEvent, TokenLogprob,
    Tool, ToolCall, ToolChoice, Usage, tool_calls_json,
};

/// Stop strings a request may give at most (OpenAI documents 4 and accepts more).
pub const MAX_STOP: usize = 16;

/// Fields read below, and fields that cannot change the answer (accepted, not used).
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "repeat_penalty",
    "n",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "user",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "json_schema",
    "grammar",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    // Bookkeeping only.
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "cache_prompt",
];

fn bad(message: impl Into<String>) -> RequestError {
    RequestError::new(message)
}

fn field(name: &str, message: impl Into<String>) -> RequestError {
    RequestError::field(name, message)
}

/// The text and images of OpenAI `content`: a string, `null`, or an array of parts.
fn content_of(v: &Value) -> Result<(Option<String>, Vec<Image>), RequestError> {
    match v {
        Value::Null => Ok((None, Vec::new())),
        Value::String(s) => Ok((Some(s.clone()), Vec::new())),
        Value::Array(parts) => {
            let (mut text, mut images) = (String::new(), Vec::new());
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") | Some("input_text") => {
                        let t = part.get("text").and_then(Value::as_str);
                        text.push_str(t.ok_or_else(|| field("messages", "a text part has no `text`"))?);
                    }
                    // An assistant's earlier refusal, given back as context.
                    Some("refusal") => {
                        text.push_str(part.get("refusal").and_then(Value::as_str).unwrap_or(""))
                    }
                    Some("image_url") => {
                        let url = part.get("image_url").and_then(|u| u.get("url").or(Some(u)));
                        let url = url
                            .and_then(Value::as_str)
                            .ok_or_else(|| field("messages", "an image part has no url"))?;
                        images.push(Image::Url(url.to_string()));
                    }
                    Some(other) => {
                        return Err(field(
                            "messages",
                            format!("content parts of type {other:?} are not supported"),
                        ));
                    }
                    None => return Err(field("messages", "a content part has no type")),
                }
            }
            Ok((Some(text), images))
        }
        _ => Err(field("messages", "`content` must be a string, null or an array of parts")),
    }
}

fn number(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, RequestError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| field(key, format!("`{key}` must be a number"))),
    }
}

fn in_range(body: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, RequestError> {
    let v = number(body, key)?;
    if let Some(x) = v
        && !(lo..=hi).contains(&x)
    {
        return Err(field(key, format!("`{key}` is {x}; it must be between {lo} and {hi}")));
    }
    Ok(v)
}

fn count(body: &Map<String, Value>, key: &str) -> Result<Option<u64>, RequestError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_u64().map(Some).ok_or_else(|| field(key, format!("`{key}` must be a non-negative integer")))
        }
    }
}

fn tool_call_from(v: &Value) -> Result<ToolCall, RequestError> {
    let function = v.get("function").ok_or_else(|| field("messages", "a tool call has no `function`"))?;
    let arguments = match function.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "{}".into(),
        Some(other) => other.to_string(),
    };
    Ok(ToolCall {
        id: v.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
        name: function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| field("messages", "a tool call has no name"))?
            .into(),
        arguments,
    })
}

fn response_format(v: &Value) -> Result<ResponseFormat, RequestError> {
    let f = |m: &str| field("response_format", m.to_string());
    Ok(match v.get("type").and_then(Value::as_str) {
        Some("text") => ResponseFormat::Text,
        Some("json_object") => ResponseFormat::JsonObject,
        Some("json_schema") => {
            let spec =
                v.get("json_schema").ok_or_else(|| f("`json_schema` is required with type json_schema"))?;
            let schema = spec.get("schema").cloned().unwrap_or_else(|| json!({}));
            if !schema.is_object() && !schema.is_boolean() {
                return Err(f("`json_schema.schema` must be a JSON Schema object"));
            }
            ResponseFormat::JsonSchema {
                name: spec.get("name").and_then(Value::as_str).unwrap_or("response").to_string(),
                schema,
                strict: spec.get("strict").and_then(Value::as_bool).unwrap_or(false),
            }
        }
        other => return Err(f(&format!("unknown response_format type {other:?}"))),
    })
}

impl ChatRequest {
    /// Reads an OpenAI chat completion request body.
    pub fn from_openai(body: &Value) -> Result<ChatRequest, RequestError> {
        let body = body.as_object().ok_or_else(|| bad("the body must be a JSON object"))?;
        if let Some(unknown) = body.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
            return Err(field(unknown, format!("unknown field `{unknown}`: baimo does not support it")));
        }
        let model =
            body.get("model").and_then(Value::as_str).ok_or_else(|| field("model", "`model` is required"))?;
        let raw_messages = body
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| field("messages", "`messages` must be an array"))?;
        if raw_messages.is_empty() {
            return Err(field("messages", "`messages` must not be empty"));
        }
        let mut messages = Vec::with_capacity(raw_messages.len());
        for m in raw_messages {
            let role: Role = serde_json::from_value(m.get("role").cloned().unwrap_or(Value::Null))
                .map_err(|_| field("messages", format!("unknown role in {m}")))?;
            let mut tool_calls = Vec::new();
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                for c in calls {
                    tool_calls.push(tool_call_from(c)?);
                }
            }
            if let Some(f) = m.get("function_call").filter(|f| f.is_object()) {
                tool_calls.push(tool_call_from(&json!({"id": "", "function": f}))?);
            }
            let (content, images) = content_of(m.get("content").unwrap_or(&Value::Null))?;
            messages.push(Message {
                role,
                content,
                images,
                tool_calls,
                tool_call_id: m.get("tool_call_id").and_then(Value::as_str).map(String::from),
                name: m.get("name").and_then(Value::as_str).map(String::from),
            });
        }
        let stop = match body.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) if a.len() <= MAX_STOP => a
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(String::from)
                        .ok_or_else(|| field("stop", "stop sequences must be strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Array(_)) => return Err(field("stop", format!("at most {MAX_STOP} stop sequences"))),
            _ => return Err(field("stop", "`stop` must be a string or an array of strings")),
        };
        let mut tools = Vec::new();
        let mut legacy_functions = false;
        if let Some(list) = body.get("tools").filter(|t| !t.is_null()) {
            for t in list.as_array().ok_or_else(|| field("tools", "`tools` must be an array"))? {
                if t.get("type").and_then(Value::as_str).is_some_and(|k| k != "function") {
                    return Err(field("tools", format!("tools of type {} are not supported", t["type"])));
                }
                let f = t.get("function").ok_or_else(|| field("tools", "a tool has no `function`"))?;
                tools.push(
                    serde_json::from_value::<Tool>(f.clone())
                        .map_err(|e| field("tools", format!("tool: {e}")))?,
                );
            }
        } else if let Some(list) = body.get("functions").and_then(Value::as_array) {
            legacy_functions = true;
            for f in list {
                tools.push(
                    serde_json::from_value(f.clone())
                        .map_err(|e| field("functions", format!("function: {e}")))?,
                );
            }
        }
        for t in &mut tools {
            if t.parameters.is_null() {
                t.parameters = json!({"type": "object", "properties": {}});
            }
        }
        let choice = body.get("tool_choice").or_else(|| body.get("function_call"));
        let tool_choice = match choice {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" | "any" => ToolChoice::Required,
                other => return Err(field("tool_choice", format!("unknown tool_choice {other:?}"))),
            }),
            Some(v) => {
                let name = v.pointer("/function/name").or_else(|| v.get("name")).and_then(Value::as_str);
                Some(ToolChoice::Function(
                    name.ok_or_else(|| field("tool_choice", "tool_choice names no function"))?.into(),
                ))
            }
        };
        if let Some(ToolChoice::Function(name)) = &tool_choice
            && !tools.iter().any(|t| &t.name == name)
        {
            return Err(field(
                "tool_choice",
                format!("tool_choice names {name:?}, which is not among the tools"),
            ));
        }
        if matches!(tool_choice, Some(ToolChoice::Required | ToolChoice::Function(_))) && tools.is_empty() {
            return Err(field("tool_choice", "tool_choice asks for a tool call but no tools are given"));
        }
        let mut format =
            body.get("response_format").filter(|f| !f.is_null()).map(response_format).transpose()?;
        if let Some(schema) = body.get("json_schema").filter(|s| !s.is_null()) {
            format = Some(ResponseFormat::JsonSchema {
                name: "response".into(),
                schema: schema.clone(),
                strict: true,
            });
        }
        let mut logit_bias = Vec::new();
        if let Some(map) = body.get("logit_bias").filter(|b| !b.is_null()) {
            let map = map
                .as_object()
                .ok_or_else(|| field("logit_bias", "`logit_bias` must map token ids to numbers"))?;
            for (k, v) in map {
                let id =
                    k.parse::<u32>().map_err(|_| field("logit_bias", format!("{k:?} is not a token id")))?;
                let bias = v.as_f64().filter(|b| (-100.0..=100.0).contains(b));
                logit_bias.push((
                    id,
                    bias.ok_or_else(|| field("logit_bias", "biases must be numbers in [-100, 100]"))? as f32,
                ));
            }
        }
        let logprobs = body.get("logprobs").and_then(Value::as_bool).unwrap_or(false);
        let top_logprobs = count(body, "top_logprobs")?;
        if top_logprobs.is_some_and(|k| k > 20) {
            return Err(field("top_logprobs", "top_logprobs must be between 0 and 20"));
        }
        if top_logprobs.is_some() && !logprobs {
            return Err(field("top_logprobs", "top_logprobs needs logprobs set to true"));
        }
        let n = count(body, "n")?.unwrap_or(1);
        if n == 0 {
            return Err(field("n", "n must be at least 1"));
        }
        let top_k = match body.get("top_k") {
            None | Some(Value::Null) => None,
            Some(v) => {
                Some(v.as_u64().ok_or_else(|| field("top_k", "top_k must be a non-negative integer"))?)
            }
        };
        let repetition_penalty = number(body, "repetition_penalty")?.or(number(body, "repeat_penalty")?);
        if repetition_penalty.is_some_and(|p| p <= 0.0) {
            return Err(field("repetition_penalty", "repetition_penalty must be above 0"));
        }
        // OpenAI reads -1 (and other negatives) as "no seed".
        let seed = match body.get("seed") {
            None | Some(Value::Null) => None,
            Some(v) if v.as_i64().is_some_and(|s| s < 0) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| field("seed", "`seed` must be an integer"))?),
        };
        let max_tokens = count(body, "max_completion_tokens")?.or(count(body, "max_tokens")?);
        if max_tokens == Some(0) {
            return Err(field("max_tokens", "max_tokens must be at least 1"));
        }
        Ok(ChatRequest {
            model: model.to_string(),
            messages,
            max_tokens,
            temperature: in_range(body, "temperature", 0.0, 2.0)?,
            top_p: in_range(body, "top_p", 0.0, 1.0)?,
            top_k,
            min_p: in_range(body, "min_p", 0.0, 1.0)?,
            repetition_penalty,
            stop,
            presence_penalty: in_range(body, "presence_penalty", -2.0, 2.0)?,
            frequency_penalty: in_range(body, "frequency_penalty", -2.0, 2.0)?,
            seed,
            user: body.get("user").and_then(Value::as_str).map(String::from),
            tools,
            tool_choice,
            parallel_tool_calls: body.get("parallel_tool_calls").and_then(Value::as_bool).unwrap_or(true),
            legacy_functions,
            response_format: format,
            grammar: body.get("grammar").and_then(Value::as_str).map(String::from),
            logit_bias,
            n: n.min(usize::MAX as u64) as usize,
            logprobs: logprobs.then(|| top_logprobs.unwrap_or(0) as usize),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

fn finish_str(reason: FinishReason, legacy: bool) -> &'static str {
    match reason {
        FinishReason::ToolCalls if legacy => "function_call",
        other => other.as_str(),
    }
}

/// OpenAI's `usage` object (`cached`: prompt tokens served from a cache).
pub fn usage_json(u: Usage, cached: u64) -> Value {
    let mut v = u.to_json();
    v["prompt_tokens_details"] = json!({"cached_tokens": cached});
    v
}

/// OpenAI's `logprobs.content` entries.
pub fn logprobs_json(entries: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|lp| {
            let top: Vec<Value> =
                lp.top.iter().map(|(t, b, l)| json!({"token": t, "logprob": l, "bytes": b})).collect();
            json!({"token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes, "top_logprobs": top})
        })
        .collect();
    json!({"content": content})
}

fn message_json(choice: &Choice, legacy: bool) -> Value {
    let mut message = json!({"role": "assistant", "content": choice.content, "refusal": null});
    if !choice.tool_calls.is_empty() {
        if legacy {
            let c = &choice.tool_calls[0];
            message["function_call"] = json!({"name": c.name, "arguments": c.arguments});
        } else {
            message["tool_calls"] = tool_calls_json(&choice.tool_calls);
        }
    }
    message
}

/// The whole answer in OpenAI's `chat.completion` shape.
pub fn completion_json(
    req: &ChatRequest,
    answer: &Answer,
    id: &str,
    created: u64,
    fingerprint: &str,
) -> Value {
    let choices: Vec<Value> = answer
        .choices
        .iter()
        .enumerate()
        .map(|(index, c)| {
            json!({
                "index": index,
                "message": message_json(c, req.legacy_functions),
                "logprobs": c.logprobs.as_deref().map_or(Value::Null, logprobs_json),
                "finish_reason": finish_str(c.finish_reason, req.legacy_functions),
            })
        })
        .collect();
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "system_fingerprint": fingerprint,
        "choices": choices,
        "usage": usage_json(answer.usage, answer.cached_tokens),
    })
}

/// Writes a streamed answer as `chat.completion.chunk` payloads (the `data:` of each SSE event).
pub struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    legacy: bool,
    include_usage: bool,
    /// Per choice: whether its finish was sent.
    finished: Vec<bool>,
}

impl ChunkWriter {
    pub fn new(req: &ChatRequest, id: &str, created: u64, fingerprint: &str) -> ChunkWriter {
        ChunkWriter {
            id: id.to_string(),
            created,
            model: req.model.clone(),
            fingerprint: fingerprint.to_string(),
            legacy: req.legacy_functions,
            include_usage: req.include_usage,
            finished: vec![false; req.n.max(1)],
        }
    }

    fn chunk(&self, index: usize, delta: Value, finish: Option<&str>, logprobs: Value) -> String {
        let mut c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c.to_string()
    }

    /// The first chunk of choice `index` (the assistant's role).
    pub fn start(&self, index: usize) -> String {
        self.chunk(index, json!({"role": "assistant", "content": ""}), None, Value::Null)
    }

    /// The chunk for one event of choice `index` (`None`: nothing to send for it).
    pub fn event(&mut self, index: usize, event: &StreamEvent) -> Option<String> {
        let delta = match event {
            StreamEvent::Text(text) => json!({"content": text}),
            StreamEvent::ToolCall { name, arguments, .. } if self.legacy => {
                let mut f = json!({"arguments": arguments});
                if let Some(name) = name {
                    f["name"] = json!(name);
                }
                json!({"function_call": f})
            }
            StreamEvent::ToolCall { index: call, id, name, arguments } => {
                let mut c = json!({"index": call, "function": {"arguments": arguments}});
                if let Some(id) = id {
                    c["id"] = json!(id);
                    c["type"] = json!("function");
                }
                if let Some(name) = name {
                    c["function"]["name"] = json!(name);
                }
                json!({"tool_calls": [c]})
            }
            StreamEvent::Logprobs(entries) => {
                return Some(self.chunk(index, json!({}), None, logprobs_json(entries)));
            }
            StreamEvent::Finish(reason) => {
                let slot = self.finished.get_mut(index)?;
                if *slot {
                    return None;
                }
                *slot = true;
                return Some(self.chunk(
                    index,
                    json!({}),
                    Some(finish_str(*reason, self.legacy)),
                    Value::Null,
                ));
            }
            StreamEvent::StopSequence(_) | StreamEvent::Usage(_) => return None,
        };
        Some(self.chunk(index, delta, None, Value::Null))
    }

    /// The chunks after the last event: a finish for a choice that never sent one, the usage
    /// when asked for. `[DONE]` is the caller's.
    pub fn end(&mut self, usage: Usage, cached: u64) -> Vec<String> {
        let mut out = Vec::new();
        for index in 0..self.finished.len() {
            if let Some(c) = self.event(index, &StreamEvent::Finish(FinishReason::Stop)) {
                out.push(c);
            }
        }
        if self.include_usage {
            out.push(
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "system_fingerprint": self.fingerprint, "choices": [], "usage": usage_json(usage, cached),
                })
                .to_string(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ChatRequest, RequestError> {
        ChatRequest::from_openai(&body)
    }

    #[test]
    fn reads_tools_parts_and_the_legacy_functions_form() {
        let r = parse(json!({
            "model": "gpt-4", "stream": true, "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "weather "}, {"type": "text", "text": "in Paris?"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "max_tokens": 20, "stop": "END"
        }))
        .unwrap();
        assert_eq!(r.messages[1].content.as_deref(), Some("weather in Paris?"));
        assert_eq!(r.messages[2].tool_calls[0].arguments, "{\"city\":\"Paris\"}");
        assert_eq!(r.messages[2].content, None);
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(r.tool_choice, Some(ToolChoice::Function("weather".into())));
        assert_eq!(
            (r.max_tokens, r.stop.clone(), r.stream, r.include_usage),
            (Some(20), vec!["END".into()], true, true)
        );
        assert_eq!(r.system_text().as_deref(), Some("be brief"));

        let r = parse(json!({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}],
            "functions": [{"name": "f", "parameters": {}}], "function_call": {"name": "f"}}))
        .unwrap();
        assert!(r.legacy_functions);
        assert_eq!((r.tools[0].name.as_str(), r.tool_choice), ("f", Some(ToolChoice::Function("f".into()))));
    }

    #[test]
    fn what_clients_send_is_accepted() {
        let r = parse(json!({
            "model": "m", "top_p": 0, "seed": -1, "stop": ["a", "b", "c", "d", "e"],
            "messages": [{"role": "developer", "content": "sys"}, {"role": "user", "content": "x"},
                         {"role": "assistant", "content": null}, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
            "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "logit_bias": {"15": -100},
            "logprobs": true, "top_logprobs": 3, "n": 2, "user": "u", "metadata": {"a": "b"},
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": true}},
        }))
        .unwrap();
        assert_eq!((r.top_p, r.seed, r.stop.len()), (Some(0.0), None, 5));
        assert_eq!(r.messages[0].role, Role::Developer);
        assert_eq!(r.messages[2].content, None);
        assert_eq!(r.messages[3].images[0].base64(), Some(("image/png".into(), "AAAA".into())));
        assert_eq!((r.top_k, r.min_p, r.repetition_penalty), (Some(40), Some(0.05), Some(1.1)));
        assert_eq!((r.logit_bias.clone(), r.logprobs, r.n), (vec![(15, -100.0)], Some(3), 2));
        assert!(matches!(r.response_format, Some(ResponseFormat::JsonSchema { strict: true, .. })));
        assert_eq!(
            r.sampler_fields(),
            ["top_k", "min_p", "repetition_penalty", "logit_bias", "logprobs", "n", "response_format"]
        );
    }

    #[test]
    fn bad_bodies_are_errors_naming_the_field() {
        for (body, param) in [
            (json!([]), None),
            (json!({"messages": []}), Some("model")),
            (json!({"model": "m", "messages": []}), Some("messages")),
            (json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}), Some("messages")),
            (json!({"model": "m", "messages": [{"role": "user", "content": 5}]}), Some("messages")),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                Some("messages"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
                Some("max_tokens"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"}),
                Some("tool_choice"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}),
                Some("tool_choice"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_k": -5}),
                Some("top_k"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "mirostat": 2}),
                Some("mirostat"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}),
                Some("temperature"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"x": 1}}),
                Some("logit_bias"),
            ),
        ] {
            let e = parse(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.param.as_deref(), param, "{body}: {e}");
        }
    }

    #[test]
    fn chunks_carry_deltas_and_one_finish_per_choice() {
        let mut req = ChatRequest::new("m", vec![Message::text(Role::User, "x")]);
        req.include_usage = true;
        let mut w = ChunkWriter::new(&req, "id1", 7, "fp");
        let call = StreamEvent::ToolCall {
            index: 0,
            id: Some("c1".into()),
            name: Some("f".into()),
            arguments: "{}".into(),
        };
        let chunks: Vec<Value> = [
            Some(w.start(0)),
            w.event(0, &StreamEvent::Text("hi".into())),
            w.event(0, &call),
            w.event(0, &StreamEvent::Finish(FinishReason::ToolCalls)),
        ]
        .into_iter()
        .flatten()
        .chain(w.end(Usage { prompt_tokens: 3, completion_tokens: 2 }, 0))
        .map(|c| serde_json::from_str(&c).unwrap())
        .collect();
        let choice = |delta: Value, finish: Value| {
            json!({"id": "id1", "object": "chat.completion.chunk", "created": 7, "model": "m", "system_fingerprint": "fp",
                   "usage": null, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        };
        let call =
            json!({"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}});
        let usage = json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 0}});
        assert_eq!(
            chunks,
            [
                choice(json!({"role": "assistant", "content": ""}), Value::Null),
                choice(json!({"content": "hi"}), Value::Null),
                choice(json!({"tool_calls": [call]}), Value::Null),
                choice(json!({}), json!("tool_calls")),
                json!({"id": "id1", "object": "chat.completion.chunk", "created": 7, "model": "m", "system_fingerprint": "fp",
                       "choices": [], "usage": usage}),
            ]
        );
    }
}
