//! Chat prompts for baimo: OpenAI-style chat messages, rendered into the text prompt a model
//! expects.
//!
//! Models that ship a Hugging Face chat template (Jinja, in `tokenizer_config.json` or the GGUF
//! key `tokenizer.chat_template`) are rendered with [`ChatTemplate`], which reproduces
//! transformers' `apply_chat_template` byte for byte on real templates (see
//! `tests/hf_reference.rs` and `scripts/render_chat_templates.py`). Built-in prompt formats for
//! models without a template belong beside it in this crate.
//!
//! Known differences from transformers (Python's Jinja2); the first three only show where
//! transformers fails or garbles the prompt:
//!
//! * iterating over `none` renders nothing, where Jinja2 raises a TypeError (templates that
//!   loop over `tools` unconditionally);
//! * `map` gives a list, which `tojson` serializes, where Python's generator makes
//!   `json.dumps` fail;
//! * `"..." | safe + text` concatenates plainly, where Jinja2's Markup HTML-escapes `text`;
//! * `strftime_now` knows UTC only (transformers uses the machine's local time);
//! * Python's `repr` of unusual characters is approximated without Unicode tables.
//!
//! Templates are untrusted input: compiling and rendering never panic, and a render is bounded
//! in work (minijinja fuel, growing with the conversation) and recursion depth.
//!
//! ```
//! use baimo_chat::{ChatMessage, ChatTemplate, RenderRequest};
//!
//! let template = ChatTemplate::new(
//!     "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
//!      {% if add_generation_prompt %}<|assistant|>{% endif %}",
//!     "<s>",
//!     "</s>",
//! )?;
//! let messages = [ChatMessage::system("Be brief."), ChatMessage::user("Hi!")];
//! let prompt = template.render(&RenderRequest {
//!     messages: &messages,
//!     add_generation_prompt: true,
//!     ..Default::default()
//! })?;
//! assert_eq!(prompt, "<|system|>Be brief.\n<|user|>Hi!\n<|assistant|>");
//! # Ok::<(), baimo_chat::ChatError>(())
//! ```

mod builtin;
mod message;
mod nesting;
mod python;
mod rewrite;
mod strftime;
mod template;

pub use builtin::{BuiltinFormat, parse_chatglm3_tool_call};
pub use message::ChatMessage;
pub use strftime::format_utc;
pub use template::{ChatError, ChatTemplate, RenderRequest};
