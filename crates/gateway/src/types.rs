//! The gateway's one request and answer shape: OpenAI's chat completion, which baimo's own API
//! speaks. Every provider module translates from and to these.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    /// OpenAI's newer name for system instructions; treated as `system`.
    Developer,
    User,
    Assistant,
    Tool,
    /// The 2023 `functions` API's result message.
    Function,
}

/// A call the assistant asks the client to make. `arguments` is a JSON text, as OpenAI sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// One message of the conversation. Content parts other than text (images) are kept as given.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    /// The text (parts joined); `None` for an assistant turn that only calls tools.
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// For `tool` (and `function`) messages: the call answered, or the function's name.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

impl Message {
    pub fn text(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: Some(content.into()),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// A function the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default)]
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

/// A chat request, as a client sent it (OpenAI's fields; the legacy `functions` form is read
/// into `tools`).
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub seed: Option<u64>,
    pub user: Option<String>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// The request used the 2023 `functions` form: answer with `function_call`.
    pub legacy_functions: bool,
    pub stream: bool,
    pub include_usage: bool,
}

/// Why generation stopped, in OpenAI's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// Tokens of a request, as the provider counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// A whole answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatResponse {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// One piece of a streamed answer, in order. Usage is the total so far (providers that report it
/// cumulatively are passed through; incremental ones are summed by the provider module).
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    Text(String),
    /// A fragment of tool call `index`: the id and name come with its first fragment.
    ToolCall {
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    Finish(FinishReason),
    Usage(Usage),
}

/// Why a request body is not a chat request.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

fn bad(msg: impl Into<String>) -> RequestError {
    RequestError(msg.into())
}

/// The text of OpenAI `content`: a string, or the text parts of an array joined.
fn content_text(v: &Value) -> Result<Option<String>, RequestError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(part.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some(other) => {
                        return Err(bad(format!("content parts of type {other:?} are not supported")));
                    }
                    None => return Err(bad("a content part has no type")),
                }
            }
            Ok(Some(text))
        }
        _ => Err(bad("`content` must be a string or an array of parts")),
    }
}

fn opt_f64(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, RequestError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(format!("`{key}` must be a number"))),
    }
}

fn opt_u64(body: &Map<String, Value>, key: &str) -> Result<Option<u64>, RequestError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| bad(format!("`{key}` must be a non-negative integer"))),
    }
}

fn tool_call_from(v: &Value) -> Result<ToolCall, RequestError> {
    let function = v.get("function").ok_or_else(|| bad("a tool call has no `function`"))?;
    let arguments = match function.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "{}".into(),
    };
    Ok(ToolCall {
        id: v.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
        name: function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a tool call has no name"))?
            .into(),
        arguments,
    })
}

impl ChatRequest {
    /// Reads an OpenAI chat completion request body.
    pub fn from_openai(body: &Value) -> Result<ChatRequest, RequestError> {
        let body = body.as_object().ok_or_else(|| bad("the body must be a JSON object"))?;
        let model = body.get("model").and_then(Value::as_str).ok_or_else(|| bad("`model` is required"))?;
        let raw_messages = body
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("`messages` must be an array"))?;
        if raw_messages.is_empty() {
            return Err(bad("`messages` must not be empty"));
        }
        let mut messages = Vec::with_capacity(raw_messages.len());
        for m in raw_messages {
            let role: Role = serde_json::from_value(m.get("role").cloned().unwrap_or(Value::Null))
                .map_err(|_| bad(format!("unknown role in {m}")))?;
            let mut tool_calls = Vec::new();
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                for c in calls {
                    tool_calls.push(tool_call_from(c)?);
                }
            }
            if let Some(f) = m.get("function_call").filter(|f| f.is_object()) {
                tool_calls.push(tool_call_from(&json!({"id": "", "function": f}))?);
            }
            messages.push(Message {
                role,
                content: content_text(m.get("content").unwrap_or(&Value::Null))?,
                tool_calls,
                tool_call_id: m.get("tool_call_id").and_then(Value::as_str).map(String::from),
                name: m.get("name").and_then(Value::as_str).map(String::from),
            });
        }
        let stop = match body.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
            _ => return Err(bad("`stop` must be a string or an array of strings")),
        };
        let mut tools = Vec::new();
        let mut legacy_functions = false;
        if let Some(list) = body.get("tools").and_then(Value::as_array) {
            for t in list {
                let f = t.get("function").ok_or_else(|| bad("a tool has no `function`"))?;
                tools.push(serde_json::from_value(f.clone()).map_err(|e| bad(format!("tool: {e}")))?);
            }
        } else if let Some(list) = body.get("functions").and_then(Value::as_array) {
            legacy_functions = true;
            for f in list {
                tools.push(serde_json::from_value(f.clone()).map_err(|e| bad(format!("function: {e}")))?);
            }
        }
        let choice = body.get("tool_choice").or_else(|| body.get("function_call"));
        let tool_choice = match choice {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => return Err(bad(format!("unknown tool_choice {other:?}"))),
            }),
            Some(v) => {
                let name = v.pointer("/function/name").or_else(|| v.get("name")).and_then(Value::as_str);
                Some(ToolChoice::Function(name.ok_or_else(|| bad("tool_choice names no function"))?.into()))
            }
        };
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        Ok(ChatRequest {
            model: model.to_string(),
            messages,
            max_tokens: opt_u64(body, "max_completion_tokens")?.or(opt_u64(body, "max_tokens")?),
            temperature: opt_f64(body, "temperature")?,
            top_p: opt_f64(body, "top_p")?,
            stop,
            presence_penalty: opt_f64(body, "presence_penalty")?,
            frequency_penalty: opt_f64(body, "frequency_penalty")?,
            seed: opt_u64(body, "seed")?,
            user: body.get("user").and_then(Value::as_str).map(String::from),
            tools,
            tool_choice,
            legacy_functions,
            stream,
            include_usage: body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The system text (system and developer messages joined), for providers that take it apart
    /// from the conversation.
    pub fn system_text(&self) -> Option<String> {
        let parts: Vec<&str> = self
            .messages
            .iter()
            .filter(|m| matches!(m.role, Role::System | Role::Developer))
            .filter_map(|m| m.content.as_deref())
            .collect();
        (!parts.is_empty()).then(|| parts.join("\n"))
    }
}

/// OpenAI's `tool_calls` array for a message or a whole answer.
pub fn tool_calls_json(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tools_parts_and_the_legacy_functions_form() {
        let body = json!({
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
        });
        let r = ChatRequest::from_openai(&body).unwrap();
        assert_eq!(r.messages[1].content.as_deref(), Some("weather in Paris?"));
        assert_eq!(r.messages[2].tool_calls[0].arguments, "{\"city\":\"Paris\"}");
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(r.tool_choice, Some(ToolChoice::Function("weather".into())));
        assert_eq!(
            (r.max_tokens, r.stop.clone(), r.stream, r.include_usage),
            (Some(20), vec!["END".into()], true, true)
        );
        assert_eq!(r.system_text().as_deref(), Some("be brief"));

        let legacy = json!({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}],
            "functions": [{"name": "f", "parameters": {}}], "function_call": {"name": "f"}});
        let r = ChatRequest::from_openai(&legacy).unwrap();
        assert!(r.legacy_functions);
        assert_eq!(r.tools[0].name, "f");
        assert_eq!(r.tool_choice, Some(ToolChoice::Function("f".into())));
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        for body in [
            json!([]),
            json!({"messages": []}),
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"}),
        ] {
            assert!(ChatRequest::from_openai(&body).is_err(), "{body}");
        }
    }
}
