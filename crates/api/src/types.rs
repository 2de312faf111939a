//! The one chat request and answer: what a client asked for, whichever front it came through
//! (OpenAI's chat completions, Anthropic's messages) and whichever backend answers it (the local
//! engine, a hosted provider). Fronts parse into these once (`openai`, `anthropic`) and render
//! from them once; backends read them and nothing else.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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

/// An image given in a message: a URL (`https:` or a `data:` URL), or base64 bytes with their
/// media type (Anthropic's form).
#[derive(Clone, Debug, PartialEq)]
pub enum Image {
    Url(String),
    Base64 { media_type: String, data: String },
}

impl Image {
    /// The image as one URL (base64 images as a `data:` URL).
    pub fn url(&self) -> String {
        match self {
            Image::Url(u) => u.clone(),
            Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        }
    }

    /// `(media_type, base64)` when the image carries its bytes (as given, or in a `data:` URL).
    pub fn base64(&self) -> Option<(String, String)> {
        match self {
            Image::Base64 { media_type, data } => Some((media_type.clone(), data.clone())),
            Image::Url(u) => {
                let rest = u.strip_prefix("data:")?;
                let (media_type, data) = rest.split_once(";base64,")?;
                Some((media_type.to_string(), data.to_string()))
            }
        }
    }
}

/// One message of the conversation: its text (text parts joined) and its images apart, so a
/// backend that reads text only sees at once that it was given more.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    /// The text (parts joined); `None` for an assistant turn that only calls tools.
    pub content: Option<String>,
    pub images: Vec<Image>,
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
            images: Vec::new(),
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

impl Tool {
    /// The tool in OpenAI's `{"type": "function", "function": {...}}` form (what chat templates
    /// read, as transformers passes them).
    pub fn openai_json(&self) -> Value {
        let mut function = json!({"name": self.name, "parameters": self.parameters});
        if let Some(d) = &self.description {
            function["description"] = json!(d);
        }
        json!({"type": "function", "function": function})
    }
}

/// Whether and which tool the model must call.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

/// The shape the answer must have.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `schema` (`strict`: exactly the schema, no extra properties).
    JsonSchema {
        name: String,
        schema: Value,
        strict: bool,
    },
}

/// A chat request, as a client sent it. Sampling extensions (`top_k`, `min_p`,
/// `repetition_penalty`, `grammar`) are named as llama.cpp's server names them.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stop: Vec<String>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// `None` also for OpenAI's `-1` (a random seed).
    pub seed: Option<u64>,
    pub user: Option<String>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// `false`: at most one tool call per answer.
    pub parallel_tool_calls: bool,
    /// The request used the 2023 `functions` form: answer with `function_call`.
    pub legacy_functions: bool,
    pub response_format: Option<ResponseFormat>,
    /// A GBNF grammar the answer must match (llama.cpp's field).
    pub grammar: Option<String>,
    /// Token id → bias added to its logit (OpenAI: -100 bans, 100 forces).
    pub logit_bias: Vec<(u32, f32)>,
    /// Answers to generate (`n`).
    pub n: usize,
    /// Report each token's log-probability and this many alternatives (`None`: off).
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

impl ChatRequest {
    /// A request with these messages and every option at its default.
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: model.into(),
            messages,
            max_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            min_p: None,
            repetition_penalty: None,
            stop: Vec::new(),
            presence_penalty: None,
            frequency_penalty: None,
            seed: None,
            user: None,
            tools: Vec::new(),
            tool_choice: None,
            parallel_tool_calls: true,
            legacy_functions: false,
            response_format: None,
            grammar: None,
            logit_bias: Vec::new(),
            n: 1,
            logprobs: None,
            stream: false,
            include_usage: false,
        }
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

    /// Whether any message carries an image.
    pub fn has_images(&self) -> bool {
        self.messages.iter().any(|m| !m.images.is_empty())
    }

    /// Whether the model is offered tools it may call.
    pub fn wants_tools(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != Some(ToolChoice::None)
    }

    /// The request fields set that only a backend running the model itself can honour (they
    /// act on the logits or the sampler), by their wire names. A backend that cannot honour
    /// one refuses the request naming it.
    pub fn sampler_fields(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        if self.top_k.is_some() {
            set.push("top_k");
        }
        if self.min_p.is_some() {
            set.push("min_p");
        }
        if self.repetition_penalty.is_some() {
            set.push("repetition_penalty");
        }
        if self.grammar.is_some() {
            set.push("grammar");
        }
        if !self.logit_bias.is_empty() {
            set.push("logit_bias");
        }
        if self.logprobs.is_some() {
            set.push("logprobs");
        }
        if self.n != 1 {
            set.push("n");
        }
        if self.response_format.as_ref().is_some_and(|f| *f != ResponseFormat::Text) {
            set.push("response_format");
        }
        set
    }
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

/// Tokens of a request, as the backend counted them.
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

/// One generated token's log-probability. `token` is the text the token completes: a token
/// holding part of a character has `""`, and the token completing it has the whole character,
/// so the `token`s of an answer join to its text; `bytes` are the token's own bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at that step (`token` lossily decoded on its own).
    pub top: Vec<(String, Vec<u8>, f32)>,
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
    /// Log-probabilities of the tokens generated since the last such event.
    Logprobs(Vec<TokenLogprob>),
    /// The stop sequence that ended the answer (before its `Finish`).
    StopSequence(String),
    Finish(FinishReason),
    Usage(Usage),
}

/// Why a request body is not a chat request: the message, and the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub message: String,
    pub param: Option<String>,
}

impl RequestError {
    pub fn new(message: impl Into<String>) -> RequestError {
        RequestError { message: message.into(), param: None }
    }

    pub fn field(param: impl Into<String>, message: impl Into<String>) -> RequestError {
        RequestError { message: message.into(), param: Some(param.into()) }
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
