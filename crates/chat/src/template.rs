//! Hugging Face chat templates: Jinja source from `tokenizer_config.json` or the GGUF key
//! `tokenizer.chat_template`, rendered the way transformers' `apply_chat_template` renders it.

use std::cell::Cell;
use std::error::Error as _;
use std::time::SystemTime;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Serde, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};
use serde_json::Map;

use crate::message::ChatMessage;
use crate::python;
use crate::strftime::DateTime;

/// The name the template is registered under; error messages show it.
const TEMPLATE_NAME: &str = "chat_template";

/// Work one render may do, in minijinja fuel: one per instruction, plus one per 64 bytes of
/// data created. On a 500-message conversation with 10 tools the corpus's templates spend
/// 20k-110k, and the two that rescan the conversation for every message (Gemma 4, Reka Edge)
/// 1.2M and 2.2M, growing with the square of its length. The budget grows with the request
/// so that long conversations fit (those two need about 9 n² for n messages: 2600 fit;
/// tests/long_conversations.rs renders 2000 with 20 tools through every template),
/// while a template that loops (nested `range`s) or doubles a string stops within a fraction
/// of a second and, as data is paid for, after creating at most 64 bytes per unit of fuel.
const BASE_FUEL: u64 = 10_000_000;
const FUEL_PER_MESSAGE_OR_TOOL: u64 = 20_000;

/// Deepest nesting of macro calls and includes. Real templates recurse only as deep as the
/// JSON they format (a handful of levels); the bound keeps a runaway recursion from
/// overflowing the thread's stack, even a small one.
const RECURSION_LIMIT: usize = 100;

/// Why a chat template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template source is not valid Jinja (for minijinja).
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    /// The template called `raise_exception(message)`, usually because the conversation breaks
    /// its rules (roles that do not alternate, a system message it does not support...).
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),
    /// The template did more work or recursed deeper than a prompt ever needs.
    #[error("chat template exceeded its limits: {0}")]
    LimitExceeded(String),
    /// Any other failure while rendering (an undefined attribute, a type mismatch...).
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// What to render: the conversation and the variables transformers passes next to it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RenderRequest<'a> {
    pub messages: &'a [ChatMessage],
    /// End the prompt with the header of an assistant turn, for the model to complete.
    pub add_generation_prompt: bool,
    /// Tool definitions (OpenAI style `{"type": "function", "function": {...}}`), if any.
    /// Without them templates see `tools` as `none`, as transformers passes it.
    pub tools: Option<&'a [serde_json::Value]>,
    /// Further template variables, such as `enable_thinking` or `reasoning_effort`. They may
    /// override `bos_token`/`eos_token` but not the variables above.
    pub extra_context: Option<&'a Map<String, serde_json::Value>>,
    /// The moment `strftime_now` formats; `None` means now. Set it for reproducible prompts.
    pub now: Option<SystemTime>,
}

/// A compiled chat template. Compile once per model, render per request, from any thread.
pub struct ChatTemplate {
    environment: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("source_len", &self.source.len())
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token`/`eos_token` are the strings templates see as the
    /// variables of those names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, ChatError> {
        if let Some(problem) = crate::nesting::too_deep(source) {
            return Err(ChatError::LimitExceeded(problem));
        }
        let mut environment = transformers_environment().map_err(|err| ChatError::Syntax(one_line(&err)))?;
        environment
            .add_template_owned(TEMPLATE_NAME, crate::rewrite::rewrite_for_minijinja(source))
            .map_err(|err| ChatError::Syntax(one_line(&err)))?;
        Ok(ChatTemplate {
            environment,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The template source as given (before any rewriting for minijinja).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the prompt for `request`.
    pub fn render(&self, request: &RenderRequest) -> Result<String, ChatError> {
        // The fuel budget depends on the request, and it is a setting of the environment:
        // render with a copy (its parts are shared, so this costs a few small allocations).
        let mut environment = self.environment.clone();
        environment.set_fuel(Some(fuel_budget(request)));
        let template =
            environment.get_template(TEMPLATE_NAME).map_err(|err| ChatError::Render(one_line(&err)))?;
        let _clock = PinnedClock::set(request.now);
        template.render(self.context(request)).map_err(|err| classify_render_error(&err))
    }

    /// The variables transformers' `render_jinja_template` passes: the tokenizer's special
    /// tokens, overridable by the caller's extra keyword arguments, then `messages`, `tools`
    /// (None when absent), `documents` (always None here) and `add_generation_prompt`.
    fn context(&self, request: &RenderRequest) -> Value {
        let mut variables: Vec<(String, Value)> = vec![
            ("bos_token".into(), Value::from(self.bos_token.as_str())),
            ("eos_token".into(), Value::from(self.eos_token.as_str())),
        ];
        let fixed = ["messages", "tools", "documents", "add_generation_prompt"];
        for (name, value) in request.extra_context.into_iter().flatten() {
            if fixed.contains(&name.as_str()) {
                continue;
            }
            let value = Value::from(Serde(value));
            match variables.iter_mut().find(|(existing, _)| existing == name) {
                Some(slot) => slot.1 = value,
                None => variables.push((name.clone(), value)),
            }
        }
        variables.push(("messages".into(), Value::from(Serde(request.messages))));
        variables
            .push(("tools".into(), request.tools.map_or(Value::from(()), |tools| Value::from(Serde(tools)))));
        variables.push(("documents".into(), Value::from(())));
        variables.push(("add_generation_prompt".into(), Value::from(request.add_generation_prompt)));
        Value::from_pairs(variables)
    }
}

fn fuel_budget(request: &RenderRequest) -> u64 {
    let items = request.messages.len() + request.tools.map_or(0, <[_]>::len);
    BASE_FUEL.saturating_add(FUEL_PER_MESSAGE_OR_TOOL.saturating_mul(items as u64))
}

/// The environment of transformers' `_compile_jinja_template`: an immutable sandbox with
/// `trim_blocks`, `lstrip_blocks`, loop controls, a `tojson` that does not escape HTML,
/// `raise_exception` and `strftime_now`; plus Python's printing and string methods, which
/// Jinja2 gets for free from running on Python.
fn transformers_environment() -> Result<Environment<'static>, Error> {
    let mut environment = Environment::new();
    // Errors that name the undefined variable, in release builds as in debug ones (minijinja
    // otherwise follows `debug_assertions`, and error texts would differ between builds).
    environment.set_debug(true);
    environment.set_syntax(
        SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).keep_trailing_newline(false).build()?,
    );
    environment.set_auto_escape_callback(|_| AutoEscape::None);
    // Jinja2's default Undefined: prints as nothing, iterates as empty, is falsy, and fails
    // on attribute access.
    environment.set_undefined_behavior(UndefinedBehavior::Lenient);
    environment.set_recursion_limit(RECURSION_LIMIT);
    environment.set_formatter(python::format_output);
    environment.set_unknown_method_callback(python::call_method);
    environment.add_filter("tojson", python::tojson);
    environment.add_filter("string", python::string_filter);
    environment.add_filter("indent", python::indent_filter);
    environment.add_test("sequence", python::is_sequence);
    environment.add_test("iterable", python::is_iterable);
    environment.add_function("raise_exception", raise_exception);
    environment.add_function("strftime_now", strftime_now);
    Ok(environment)
}

/// Marks an error as the template's own `raise_exception`, so that it can be told apart from
/// engine errors however deep in macro calls it was raised.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

fn raise_exception(message: Option<Value>) -> Result<Value, Error> {
    let message = match message {
        Some(message) => python::python_str(&message)?,
        None => String::new(),
    };
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedByTemplate(message)))
}

thread_local! {
    /// The moment `strftime_now` reports during the render running on this thread, when the
    /// caller pinned one. Rendering never leaves the calling thread, so a thread-local is
    /// enough and keeps the clock out of the template's variables.
    static PINNED_NOW: Cell<Option<SystemTime>> = const { Cell::new(None) };
}

/// Pins the clock for one render and unpins it when dropped, even if rendering fails.
struct PinnedClock {
    previous: Option<SystemTime>,
}

impl PinnedClock {
    fn set(now: Option<SystemTime>) -> PinnedClock {
        PinnedClock { previous: PINNED_NOW.with(|pinned| pinned.replace(now)) }
    }
}

impl Drop for PinnedClock {
    fn drop(&mut self) {
        PINNED_NOW.with(|pinned| pinned.set(self.previous));
    }
}

fn strftime_now(format: &str) -> String {
    let now = PINNED_NOW.with(Cell::get).unwrap_or_else(SystemTime::now);
    DateTime::from_system_time(now).format(format)
}

fn classify_render_error(err: &Error) -> ChatError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(raised) = current.downcast_ref::<RaisedByTemplate>() {
            return ChatError::Raised(raised.0.clone());
        }
        source = current.source();
    }
    let is_limit = err.kind() == ErrorKind::OutOfFuel
        || err.detail().is_some_and(|detail| detail.contains("recursion limit"));
    if is_limit { ChatError::LimitExceeded(one_line(err)) } else { ChatError::Render(one_line(err)) }
}

/// minijinja's message (kind, detail, template line) with the causes appended, on one line.
fn one_line(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
