//! Prompt formats for models whose files carry no chat template: each family's own convention,
//! as its reference code builds it, written as a template so it renders like any other.
//!
//! - **Llama 2 chat** (Meta's `generation.py`): the system message folded into the first user
//!   turn between `<<SYS>>` markers; every finished exchange `<s>[INST] user [/INST] answer </s>`,
//!   the open one `<s>[INST] user [/INST]`; messages stripped of surrounding whitespace.
//! - **Llama 3 instruct** (Meta's `ChatFormat`): `<|begin_of_text|>`, then per message
//!   `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>`.
//! - **ChatML** (Qwen): `<|im_start|>role\ncontent<|im_end|>\n`; Qwen v1's `make_context` adds the
//!   system message "You are a helpful assistant." when there is none.
//! - **Baichuan** (`generation_utils.build_chat_input`): the system text, then each user message
//!   after the user token (id 195) and each answer after the assistant token (id 196); the
//!   assistant token again to ask for the answer. No separators, no end tokens between turns.
//! - **Plain** (GPT-2 and other base models): the messages' text, one paragraph each.

/// A family's prompt format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuiltinFormat {
    Llama2,
    Llama3,
    /// ChatML, with the system message to use when the conversation has none.
    ChatMl {
        default_system: Option<String>,
    },
    /// Baichuan's role tokens, as the vocabulary spells ids 195 and 196 (`<reserved_106>` and
    /// `<reserved_107>` in Baichuan2, `<reserved_102>` and `<reserved_103>` in Baichuan-13B).
    Baichuan {
        user_token: String,
        assistant_token: String,
    },
    Plain,
}

/// Quotes `text` as a Jinja string literal.
fn literal(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

impl BuiltinFormat {
    pub fn name(&self) -> &'static str {
        match self {
            BuiltinFormat::Llama2 => "llama-2",
            BuiltinFormat::Llama3 => "llama-3",
            BuiltinFormat::ChatMl { .. } => "chatml",
            BuiltinFormat::Baichuan { .. } => "baichuan",
            BuiltinFormat::Plain => "plain",
        }
    }

    /// The format as a chat template (rendered with `bos_token`/`eos_token` of the model).
    pub fn template_source(&self) -> String {
        match self {
            BuiltinFormat::Llama2 => concat!(
                "{% if messages and messages[0]['role'] == 'system' %}",
                "{% set system = messages[0]['content'] | trim %}{% set rest = messages[1:] %}",
                "{% else %}{% set system = none %}{% set rest = messages %}{% endif %}",
                "{% for message in rest %}",
                "{% if message['role'] == 'user' %}",
                "{% set content = message['content'] | trim %}",
                "{% if loop.first and system is not none %}",
                "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content %}{% endif %}",
                "{{ bos_token }}[INST] {{ content }} [/INST]",
                "{% elif message['role'] == 'assistant' %}",
                " {{ message['content'] | trim }} {{ eos_token }}",
                "{% endif %}{% endfor %}"
            )
            .to_string(),
            BuiltinFormat::Llama3 => concat!(
                "{{ bos_token }}{% for message in messages %}",
                "<|start_header_id|>{{ message['role'] }}<|end_header_id|>{{ '\\n\\n' }}",
                "{{ message['content'] | trim }}<|eot_id|>{% endfor %}",
                "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{{ '\\n\\n' }}{% endif %}"
            )
            .to_string(),
            BuiltinFormat::ChatMl { default_system } => {
                let mut source = String::new();
                if let Some(system) = default_system {
                    source.push_str(&format!(
                        "{{% if not messages or messages[0]['role'] != 'system' %}}<|im_start|>system{{{{ '\\n' }}}}{{{{ {} }}}}<|im_end|>{{{{ '\\n' }}}}{{% endif %}}",
                        literal(system)
                    ));
                }
                source.push_str(concat!(
                    "{% for message in messages %}<|im_start|>{{ message['role'] + '\\n' }}",
                    "{{ message['content'] }}<|im_end|>{{ '\\n' }}{% endfor %}",
                    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
                ));
                source
            }
            BuiltinFormat::Baichuan { user_token, assistant_token } => format!(
                concat!(
                    "{{% for message in messages %}}",
                    "{{% if message['role'] == 'system' %}}{{{{ message['content'] }}}}",
                    "{{% elif message['role'] == 'user' %}}{{{{ {user} }}}}{{{{ message['content'] }}}}",
                    "{{% else %}}{{{{ {assistant} }}}}{{{{ message['content'] }}}}{{% endif %}}",
                    "{{% endfor %}}",
                    "{{% if add_generation_prompt and (not messages or messages[-1]['role'] != 'assistant') %}}",
                    "{{{{ {assistant} }}}}{{% endif %}}"
                ),
                user = literal(user_token),
                assistant = literal(assistant_token)
            ),
            BuiltinFormat::Plain => {
                "{% for message in messages %}{{ message['content'] }}{% if not loop.last %}{{ '\\n\\n' }}{% endif %}{% endfor %}"
                    .to_string()
            }
        }
    }
}
