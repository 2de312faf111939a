//! A chat request made ready for the local engine: the conversation rendered with the model's
//! chat template (tools passed to it as transformers passes them, or described by baimo where
//! the template knows no tools), tokenized so that text from a message can never become a
//! control token, and the request's sampling made into [`GenerateOptions`].
//!
//! This is where every field of [`ChatRequest`] meets the local engine: each is honoured here
//! or refused with a [`PrepareError`] naming it.

use std::time::{SystemTime, UNIX_EPOCH};

use baimo_api::{ChatRequest, Message, ResponseFormat, Role, ToolChoice};
use baimo_chat::{ChatMessage, ChatTemplate, RenderRequest};
use serde_json::{Value, json};

use crate::constrain::{GrammarRequest, GrammarSpec, gbnf_to_lark};
use crate::tools::{ToolCallParser, ToolSyntax};
use crate::{GenerateOptions, LoadedModel, SamplingParams};

/// Why a request cannot run on this model.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PrepareError {
    #[error("{message}")]
    BadRequest { message: String, param: Option<&'static str> },
    #[error(
        "This model's maximum context length is {max} tokens. However, your messages resulted in {prompt} tokens."
    )]
    ContextLength { max: usize, prompt: usize },
}

fn refuse(param: &'static str, message: impl Into<String>) -> PrepareError {
    PrepareError::BadRequest { message: message.into(), param: Some(param) }
}

/// How tool calls are read back from the answer.
#[derive(Clone, Debug)]
pub struct ToolPlan {
    pub syntax: ToolSyntax,
    pub names: Vec<String>,
    /// At most one call.
    pub single: bool,
    /// Text the prompt ends with that opens a call (a forced `tool_choice`).
    pub prefill: Option<String>,
}

impl ToolPlan {
    pub fn parser(&self) -> ToolCallParser {
        ToolCallParser::new(self.syntax, self.names.clone(), self.single, self.prefill.as_deref())
    }
}

/// A request ready for the engine.
#[derive(Clone, Debug)]
pub struct PreparedChat {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    pub tools: Option<ToolPlan>,
}

/// Where the engine's limits come from: positions per sequence, and the largest answer a
/// request may ask for.
#[derive(Clone, Copy, Debug)]
pub struct EngineLimits {
    pub context: usize,
    pub max_tokens: Option<usize>,
}

/// The tools described in the system message, for templates that know no tools: the Hermes
/// syntax, which [`ToolSyntax::Hermes`] reads back.
fn tool_instructions(req: &ChatRequest) -> String {
    let mut text = String::from(
        "# Tools\n\nYou can call functions to help answer. Their signatures, one JSON object per line:\n<tools>\n",
    );
    for t in &req.tools {
        text.push_str(&t.openai_json().to_string());
        text.push('\n');
    }
    text.push_str(
        "</tools>\n\nTo call a function, answer with one block per call, and nothing after them:\n\
         <tool_call>\n{\"name\": \"<function name>\", \"arguments\": <the arguments as a JSON object>}\n</tool_call>",
    );
    text
}

/// A tool call as chat templates read it: arguments as a JSON object where they are one.
fn template_call(c: &baimo_api::ToolCall) -> Value {
    let arguments = serde_json::from_str::<Value>(&c.arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::String(c.arguments.clone()));
    json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments}})
}

/// The conversation as template messages. `described`: the tools are described by baimo (the
/// template knows none), so calls and results are written as Hermes text.
fn template_messages(req: &ChatRequest, described: bool) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(req.messages.len() + 1);
    // The name of each call by its id, for tool results that give only the id.
    let name_of = |id: &str| {
        req.messages.iter().flat_map(|m| &m.tool_calls).find(|c| c.id == id).map(|c| c.name.clone())
    };
    for m in &req.messages {
        let text = m.content.clone().unwrap_or_default();
        let message = match m.role {
            Role::System | Role::Developer => ChatMessage::system(text),
            Role::User => ChatMessage::user(text),
            Role::Assistant if described && !m.tool_calls.is_empty() => {
                let mut t = text;
                for c in &m.tool_calls {
                    if !t.is_empty() {
                        t.push('\n');
                    }
                    let call =
                        json!({"name": c.name, "arguments": template_call(c)["function"]["arguments"]});
                    t.push_str(&format!("<tool_call>\n{call}\n</tool_call>"));
                }
                ChatMessage::assistant(t)
            }
            Role::Assistant => {
                let mut a = ChatMessage::assistant(text);
                // An assistant turn that only calls tools has `content: ""` (not null): templates
                // test or search it (`'</think>' in content`), as transformers users pass it.
                if !m.tool_calls.is_empty() {
                    a = a.with_field("tool_calls", m.tool_calls.iter().map(template_call).collect());
                }
                a
            }
            Role::Tool | Role::Function if described => {
                ChatMessage::user(format!("<tool_response>\n{text}\n</tool_response>"))
            }
            Role::Tool | Role::Function => {
                let mut t = ChatMessage::new("tool", text);
                let name = m.name.clone().or_else(|| m.tool_call_id.as_deref().and_then(name_of));
                if let Some(id) = &m.tool_call_id {
                    t = t.with_field("tool_call_id", json!(id));
                }
                if let Some(name) = name {
                    t = t.with_field("name", json!(name));
                }
                t
            }
        };
        out.push(message);
    }
    if described && req.wants_tools() {
        let instructions = tool_instructions(req);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                let system = first.text().unwrap_or_default().to_string();
                first.content = Value::String(format!("{system}\n\n{instructions}"));
            }
            _ => out.insert(0, ChatMessage::system(instructions)),
        }
    }
    out
}

impl LoadedModel {
    /// How this model spells tool calls (`None`: its template knows no tools).
    pub fn tool_syntax(&self) -> Option<ToolSyntax> {
        ToolSyntax::of_template(self.chat_template.source())
    }

    /// Whether the model has roles at all (a base model's plain format cannot take tools).
    fn has_roles(&self) -> bool {
        let source = self.chat_template.source();
        source.contains("role")
    }

    /// The grammar the answer must match (`response_format`, `grammar`), checked to compile.
    fn answer_grammar(&self, req: &ChatRequest) -> Result<Option<GrammarRequest>, PrepareError> {
        if req.grammar.is_some() && req.response_format.as_ref().is_some_and(|f| *f != ResponseFormat::Text) {
            return Err(refuse("grammar", "give `grammar` or a JSON `response_format`, not both"));
        }
        if let Some(gbnf) = &req.grammar {
            let lark = gbnf_to_lark(gbnf).map_err(|e| refuse("grammar", format!("grammar: {e}")))?;
            return self.grammar_request(GrammarSpec::Lark(lark), "grammar").map(Some);
        }
        let spec = match &req.response_format {
            None | Some(ResponseFormat::Text) => return Ok(None),
            Some(ResponseFormat::JsonObject) => {
                GrammarSpec::JsonSchema(json_layout(json!({"type": "object"})))
            }
            Some(ResponseFormat::JsonSchema { schema, .. }) => {
                GrammarSpec::JsonSchema(json_layout(schema.clone()))
            }
        };
        self.grammar_request(spec, "response_format").map(Some)
    }

    fn grammar_request(
        &self,
        spec: GrammarSpec,
        param: &'static str,
    ) -> Result<GrammarRequest, PrepareError> {
        let grammars = self.grammars().map_err(|e| refuse(param, format!("constrained decoding: {e}")))?;
        let request = GrammarRequest { grammars, spec };
        request.constraint().map_err(|e| refuse(param, format!("the grammar is not usable: {e}")))?;
        Ok(request)
    }

    /// Renders and tokenizes `req` for this model, with its options. `limits` bound the
    /// answer's length.
    pub fn prepare_chat(
        &self,
        req: &ChatRequest,
        limits: EngineLimits,
    ) -> Result<PreparedChat, PrepareError> {
        if req.has_images() {
            return Err(refuse(
                "messages",
                format!("{} reads text only: image content is not supported", self.name),
            ));
        }
        let mut grammar = self.answer_grammar(req)?;
        if req.messages.is_empty() {
            return Err(refuse("messages", "`messages` must not be empty"));
        }
        let offered = req.wants_tools();
        let syntax = self.tool_syntax();
        if offered && syntax.is_none() && !self.has_roles() {
            return Err(refuse("tools", format!("{} has no chat roles and cannot call tools", self.name)));
        }
        let (mut text, messages) =
            render_request(&self.chat_template, req, true).map_err(|e| refuse("messages", e.to_string()))?;
        let plan = if offered {
            let syntax = syntax.unwrap_or(ToolSyntax::Hermes);
            let forced = match &req.tool_choice {
                Some(ToolChoice::Required) => Some(None),
                Some(ToolChoice::Function(name)) => Some(Some(name.as_str())),
                _ => None,
            };
            let prefill = match forced {
                Some(name) => {
                    // A grammar makes the call certain and its arguments fit the schema; where
                    // the syntax has none here, opening the call in the prompt forces it.
                    if let Some((opening, lark)) = call_grammar(syntax, req, name) {
                        if grammar.is_some() {
                            return Err(refuse(
                                "response_format",
                                "response_format and a forced tool call together are not supported",
                            ));
                        }
                        grammar = Some(self.grammar_request(GrammarSpec::Lark(lark), "tools")?);
                        Some(opening)
                    } else {
                        Some(syntax.call_opening(name).ok_or_else(|| {
                            refuse(
                                "tool_choice",
                                format!(
                                    "{} cannot be made to call a tool; use tool_choice \"auto\"",
                                    self.name
                                ),
                            )
                        })?)
                    }
                }
                None => None,
            };
            if let Some(p) = &prefill {
                text.push_str(p);
            }
            Some(ToolPlan {
                syntax,
                names: req.tools.iter().map(|t| t.name.clone()).collect(),
                single: !req.parallel_tool_calls,
                prefill,
            })
        } else {
            None
        };
        let contents: Vec<&str> = messages.iter().filter_map(ChatMessage::text).collect();
        let prompt = self.tokenize_rendered(&text, &contents)?;
        if prompt.is_empty() {
            return Err(refuse("messages", "the prompt is empty"));
        }
        if prompt.len() >= limits.context {
            return Err(PrepareError::ContextLength { max: limits.context, prompt: prompt.len() });
        }
        let mut options = self.generate_options(req, prompt.len(), limits)?;
        options.grammar = grammar;
        if let Some(plan) = &plan {
            options.shown_tokens = plan
                .syntax
                .markers()
                .iter()
                .filter_map(|m| self.tokenizer.token_id(m))
                .filter(|&id| self.tokenizer.is_control(id))
                .collect();
        }
        Ok(PreparedChat { prompt, options, tools: plan })
    }

    /// The request's sampling and limits as the engine's options, for a prompt of
    /// `prompt_len` tokens.
    pub fn generate_options(
        &self,
        req: &ChatRequest,
        prompt_len: usize,
        limits: EngineLimits,
    ) -> Result<GenerateOptions, PrepareError> {
        let room = limits.context.saturating_sub(prompt_len) as u64;
        let max_tokens = match (req.max_tokens, limits.max_tokens) {
            (Some(m), Some(l)) if m > l as u64 => {
                return Err(refuse(
                    "max_tokens",
                    format!("max_tokens is {m}; this server allows at most {l}"),
                ));
            }
            (Some(m), _) => m,
            (None, Some(l)) => l as u64,
            (None, None) => room,
        };
        let vocab = self.info.vocab_size;
        if let Some(&(t, _)) = req.logit_bias.iter().find(|(t, _)| *t as usize >= vocab) {
            return Err(refuse(
                "logit_bias",
                format!("token {t} is outside the vocabulary ({vocab} tokens)"),
            ));
        }
        // top_p 0 keeps only the most likely token, as it does at OpenAI.
        let top_p = req.top_p.unwrap_or(1.0) as f32;
        let temperature = if top_p <= 0.0 { 0.0 } else { req.temperature.unwrap_or(1.0) as f32 };
        let seed = req.seed.unwrap_or_else(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        Ok(GenerateOptions {
            sampling: SamplingParams {
                temperature,
                top_k: req.top_k.unwrap_or(0).min(vocab as u64) as usize,
                top_p: top_p.max(f32::MIN_POSITIVE),
                min_p: req.min_p.unwrap_or(0.0) as f32,
                repeat_penalty: req.repetition_penalty.unwrap_or(1.0) as f32,
                repeat_last_n: 64,
                presence_penalty: req.presence_penalty.unwrap_or(0.0) as f32,
                frequency_penalty: req.frequency_penalty.unwrap_or(0.0) as f32,
                seed,
            },
            logprobs: req.logprobs.map(|k| k.min(20)),
            max_tokens: max_tokens.min(room) as usize,
            stop: req.stop.clone(),
            stop_at_eog: true,
            logit_bias: req.logit_bias.clone(),
            shown_tokens: Vec::new(),
            grammar: None,
        })
    }

    /// Tokens of a rendered prompt in which the text of `contents` (the messages) is read as
    /// text only: a control token's text typed in a message (`<|im_end|>`) stays text, so a
    /// message cannot forge a turn. The template's own text is read with control tokens.
    pub fn tokenize_rendered(&self, text: &str, contents: &[&str]) -> Result<Vec<u32>, PrepareError> {
        let tokenizer = &self.tokenizer;
        let risky: Vec<&str> = contents
            .iter()
            .copied()
            .filter(|c| !c.is_empty() && tokenizer.control_text_in(c).is_some())
            .collect();
        if risky.is_empty() {
            return Ok(self.tokenize_prompt(text));
        }
        // Cut the prompt at each risky message's text (in order) and read those pieces plainly.
        let mut ids: Vec<u32> = self.bos_for(text).into_iter().collect();
        let mut at = 0;
        for content in risky {
            // Templates may trim a message; a text that cannot be found is refused, since
            // its control token would otherwise be read as one.
            let found = [content, content.trim()]
                .into_iter()
                .find_map(|c| text[at..].find(c).map(|i| (i, c)))
                .filter(|(_, c)| !c.is_empty());
            let Some((offset, piece)) = found else {
                let token = tokenizer.control_text_in(content).unwrap_or_default();
                return Err(refuse(
                    "messages",
                    format!(
                        "a message holds the control token {token:?}, which this model's template rewrites"
                    ),
                ));
            };
            ids.extend(tokenizer.encode(&text[at..at + offset], true));
            ids.extend(tokenizer.encode(piece, false));
            at += offset + piece.len();
        }
        ids.extend(tokenizer.encode(&text[at..], true));
        Ok(ids)
    }
}

/// The prompt text of `req` rendered with `template`, and the messages the template read: tools
/// passed to the template as transformers passes them, or described by baimo in the system
/// message (and calls and results written in the Hermes syntax) when the template takes none.
pub fn render_request(
    template: &ChatTemplate,
    req: &ChatRequest,
    add_generation_prompt: bool,
) -> Result<(String, Vec<ChatMessage>), baimo_chat::ChatError> {
    let offered = req.wants_tools();
    let knows_tools = ToolSyntax::of_template(template.source()).is_some();
    let described = !knows_tools && (offered || has_tool_turns(&req.messages));
    let messages = template_messages(req, described);
    let tools_json: Vec<Value> = req.tools.iter().map(|t| t.openai_json()).collect();
    let render = RenderRequest {
        messages: &messages,
        add_generation_prompt,
        tools: (offered && knows_tools).then_some(&tools_json[..]),
        ..Default::default()
    };
    Ok((template.render(&render)?, messages))
}

/// A JSON Schema with the layout constrained JSON is written in: one line, `", "` and `": "`
/// between items (as Python's `json.dumps`), no free whitespace a model could wander in. A
/// schema that sets its own layout (`x-guidance`) keeps it.
fn json_layout(mut schema: Value) -> Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance")
            .or_insert(json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}));
    }
    schema
}

/// The grammar of a forced tool call (`name`: that tool, else any of them), and the text that
/// opens it in the prompt; `None` for syntaxes whose calls are not JSON.
fn call_grammar(syntax: ToolSyntax, req: &ChatRequest, name: Option<&str>) -> Option<(String, String)> {
    let (opening, key) = match syntax {
        ToolSyntax::Hermes => ("<tool_call>\n", "arguments"),
        ToolSyntax::Llama3Json => ("", "parameters"),
        ToolSyntax::Mistral => ("[TOOL_CALLS][", "arguments"),
        ToolSyntax::Glm4 => ("", ""),
        ToolSyntax::GlmXml | ToolSyntax::ChatGlm3 => return None,
    };
    let literal = |text: String| serde_json::to_string(&text).unwrap_or_default();
    let mut alternatives = Vec::new();
    let mut rules = String::new();
    for (i, tool) in req.tools.iter().enumerate().filter(|(_, t)| name.is_none_or(|n| n == t.name)) {
        let head = match syntax {
            ToolSyntax::Glm4 => format!("{}\n", tool.name),
            _ => format!("{{\"name\": {}, \"{key}\": ", Value::from(tool.name.as_str())),
        };
        let tail =
            if syntax == ToolSyntax::Glm4 { String::new() } else { format!(" {}", literal("}".into())) };
        alternatives.push(format!("{} args_{i}{tail}", literal(head)));
        let schema = json_layout(if tool.parameters.is_object() {
            tool.parameters.clone()
        } else {
            json!({"type": "object"})
        });
        rules.push_str(&format!("args_{i}: %json {schema}\n"));
    }
    let close =
        if syntax == ToolSyntax::Mistral { format!(" {}", literal("]".into())) } else { String::new() };
    Some((opening.to_string(), format!("start: ({}){close}\n{rules}", alternatives.join(" | "))))
}

fn has_tool_turns(messages: &[Message]) -> bool {
    messages.iter().any(|m| !m.tool_calls.is_empty() || matches!(m.role, Role::Tool | Role::Function))
}
