//! Chat messages as OpenAI-style JSON carries them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One message of a conversation.
///
/// `content` is whatever the client sent: a string, `null` (an assistant turn that only calls
/// tools), or a list of content parts (`[{"type": "text", "text": "..."}]`). Every other field
/// (`name`, `tool_calls`, `tool_call_id`, `reasoning_content`, ...) is kept in `extra`, in the
/// order it arrived, and reaches the template unchanged: templates read such fields directly,
/// so dropping or reordering them would change the prompt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// A message with the given role and plain-text content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: Value::String(content.into()), extra: Map::new() }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }

    /// Adds an extra field (such as `tool_calls` or `name`) that the template will see.
    pub fn with_field(mut self, name: impl Into<String>, value: Value) -> Self {
        self.extra.insert(name.into(), value);
        self
    }

    /// The content when it is a plain string.
    pub fn text(&self) -> Option<&str> {
        self.content.as_str()
    }
}
