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
//! - **ChatGLM-6B** (`chat()`): a single question as it is; with history
//!   `[Round i]\n问：q\n答：r\n` from round 0, then `[Round n]\n问：q\n答：`; then `[gMASK]<sop>`,
//!   which its tokenizer appends.
//! - **ChatGLM2** (`build_prompt`): `[gMASK]sop`, rounds from 1, `[Round i]\n\n问：q\n\n答：r\n\n`.
//! - **ChatGLM3** (`build_chat_input`): `[gMASK]sop`, then per message `<|role|>metadata\n content`
//!   (llama.cpp's text form of the token-level original: SentencePiece puts a space before each
//!   encoded piece), then `<|assistant|>`. Tools go into the system message as indented JSON; a
//!   tool call is `<|assistant|>name\n```python\ntool_call(k=v, ...)\n```` and its result an
//!   `<|observation|>` message ([`parse_chatglm3_tool_call`] reads the call back).
//! - **GLM-4** (its chat template): `[gMASK]<sop>`, then `<|role|>\ncontent` per message, then
//!   `<|assistant|>`. Tools go into a system message (its default text, then `# 可用工具`), one
//!   `## name` section each; a call is `<|assistant|>name\n{arguments}` and its result an `<|observation|>` message.
//! - **Gemma** (Google's chat template, gemma-2-2b-it): `<bos>`, then per message
//!   `<start_of_turn>role\ncontent<end_of_turn>\n` with the role `model` for the assistant and
//!   the content trimmed, then `<start_of_turn>model\n`. Gemma 2's template refuses a system
//!   message; this one puts it before the first user message followed by a blank line, as Gemma
//!   3's template does.
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
    /// ChatGLM-6B.
    ChatGlm,
    ChatGlm2,
    ChatGlm3,
    Glm4,
    Gemma,
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
            BuiltinFormat::ChatGlm => "chatglm",
            BuiltinFormat::ChatGlm2 => "chatglm2",
            BuiltinFormat::ChatGlm3 => "chatglm3",
            BuiltinFormat::Glm4 => "glm4",
            BuiltinFormat::Gemma => "gemma",
            BuiltinFormat::Plain => "plain",
        }
    }

    /// The format as a chat template (rendered with `bos_token`/`eos_token` of the model).
    pub fn template_source(&self) -> String {
        match self {
            BuiltinFormat::Llama2 => concat!(
                "{% if messages and messages[0]['role'] == 'system' %}",
                "{% set system = messages[0]['content'] %}{% set rest = messages[1:] %}",
                "{% else %}{% set system = none %}{% set rest = messages %}{% endif %}",
                "{% for message in rest %}",
                "{% if message['role'] == 'user' %}",
                "{% set content = message['content'] | trim %}",
                // Meta's chat_completion joins system and first turn, then strips the whole.
                "{% if loop.first and system is not none %}",
                "{% set content = ('<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content']) | trim %}{% endif %}",
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
            BuiltinFormat::ChatGlm => concat!(
                "{%- set users = messages | selectattr('role', 'equalto', 'user') | list -%}",
                "{%- set single = users | length == 1 and messages[-1]['role'] == 'user' -%}",
                "{%- set ns = namespace(round=0) -%}",
                "{%- for message in messages -%}",
                "{%- if message['role'] == 'system' -%}{{ message['content'] }}{{ '\\n' }}",
                "{%- elif message['role'] == 'user' and single -%}{{ message['content'] }}",
                "{%- elif message['role'] == 'user' -%}",
                "[Round {{ ns.round }}]{{ '\\n' }}问：{{ message['content'] }}{{ '\\n' }}答：",
                "{%- set ns.round = ns.round + 1 -%}",
                "{%- elif message['role'] == 'assistant' -%}{{ message['content'] }}{{ '\\n' }}",
                "{%- endif -%}{%- endfor -%}",
                // The tokenizer appends [gMASK] and <sop>: the answer is the span after them.
                "{%- if add_generation_prompt -%}[gMASK]<sop>{%- endif -%}"
            )
            .to_string(),
            BuiltinFormat::ChatGlm2 => concat!(
                "[gMASK]sop{%- set ns = namespace(round=1) -%}",
                "{%- for message in messages -%}",
                "{%- if message['role'] == 'system' -%}{{ message['content'] }}{{ '\\n\\n' }}",
                "{%- elif message['role'] == 'user' -%}",
                "[Round {{ ns.round }}]{{ '\\n\\n' }}问：{{ message['content'] }}{{ '\\n\\n' }}答：",
                "{%- set ns.round = ns.round + 1 -%}",
                "{%- elif message['role'] == 'assistant' -%}{{ message['content'] }}{{ '\\n\\n' }}",
                "{%- endif -%}{%- endfor -%}"
            )
            .to_string(),
            BuiltinFormat::ChatGlm3 => concat!(
                "[gMASK]sop",
                "{%- if tools -%}<|system|>{{ '\\n' }} Answer the following questions as best as you can. ",
                "You have access to the following tools:{{ '\\n' }}{{ tools | tojson(indent=4) }}{%- endif -%}",
                "{%- for message in messages -%}",
                "{%- if message['role'] == 'assistant' and message['tool_calls'] -%}",
                "{%- for call in message['tool_calls'] -%}",
                "<|assistant|>{{ call['function']['name'] }}{{ '\\n' }} ```python{{ '\\n' }}tool_call(",
                "{%- for key, value in call['function']['arguments'] | items -%}",
                "{{ key }}={{ value | tojson }}{% if not loop.last %}, {% endif %}",
                "{%- endfor -%}){{ '\\n' }}```",
                "{%- endfor -%}",
                "{%- else -%}",
                "{%- set role = 'observation' if message['role'] == 'tool' else message['role'] -%}",
                "<|{{ role }}|>{{ message['metadata'] or '' }}{{ '\\n' }} {{ message['content'] }}",
                "{%- endif -%}{%- endfor -%}",
                "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
            )
            .to_string(),
            BuiltinFormat::Glm4 => concat!(
                "[gMASK]<sop>",
                // glm-4-9b-chat's template opens the tools message with its default system text.
                "{%- if tools -%}<|system|>{{ '\\n' }}你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，你的任务是针对用户的问题和要求提供适当的答复和支持。{{ '\\n\\n' }}# 可用工具",
                "{%- for tool in tools -%}{{ '\\n\\n' }}## {{ tool['function']['name'] }}{{ '\\n\\n' }}",
                "{{ tool['function'] | tojson(indent=4) }}{{ '\\n' }}在调用上述函数时，请使用 Json 格式表示调用的参数。",
                "{%- endfor -%}{%- endif -%}",
                "{%- for message in messages -%}",
                "{%- if message['role'] == 'assistant' and message['tool_calls'] -%}",
                "{%- for call in message['tool_calls'] -%}",
                "<|assistant|>{{ call['function']['name'] }}{{ '\\n' }}{{ call['function']['arguments'] | tojson }}",
                "{%- endfor -%}",
                "{%- else -%}",
                "{%- set role = 'observation' if message['role'] == 'tool' else message['role'] -%}",
                "<|{{ role }}|>{{ '\\n' }}{{ message['content'] }}",
                "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
            )
            .to_string(),
            BuiltinFormat::Gemma => concat!(
                "{{ bos_token }}",
                "{% if messages and messages[0]['role'] == 'system' %}",
                "{% set prefix = messages[0]['content'] + '\n\n' %}{% set rest = messages[1:] %}",
                "{% else %}{% set prefix = '' %}{% set rest = messages %}{% endif %}",
                "{% for message in rest %}",
                "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}",
                "{{ '<start_of_turn>' + role + '\n' }}{% if loop.first %}{{ prefix }}{% endif %}",
                "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}",
                "{% endfor %}",
                "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
            )
            .to_string(),
            BuiltinFormat::Plain => {
                "{% for message in messages %}{{ message['content'] }}{% if not loop.last %}{{ '\\n\\n' }}{% endif %}{% endfor %}"
                    .to_string()
            }
        }
    }
}

/// A tool call as ChatGLM3 writes it after `<|assistant|>`: the tool's name on the first line,
/// then a fenced block `tool_call(key=value, ...)` with JSON-literal (or Python-literal) values.
/// Returns the name and the arguments as a JSON object, or `None` when the text is no call.
pub fn parse_chatglm3_tool_call(text: &str) -> Option<(String, serde_json::Map<String, serde_json::Value>)> {
    let (name, rest) = text.trim_start().split_once('\n')?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let body = rest.trim().strip_prefix("```python")?.trim_end().strip_suffix("```")?.trim();
    let inner = body.strip_prefix("tool_call(")?.strip_suffix(')')?;
    let mut args = serde_json::Map::new();
    for part in split_top_level(inner) {
        let (key, value) = part.split_once('=')?;
        let value = value.trim();
        // Python spellings of JSON literals.
        let json = match value {
            "True" => "true",
            "False" => "false",
            "None" => "null",
            other => other,
        };
        let parsed = serde_json::from_str(json).ok().or_else(|| {
            // 'single-quoted' Python strings
            let s = value.strip_prefix('\'')?.strip_suffix('\'')?;
            Some(serde_json::Value::String(s.replace("\\'", "'")))
        })?;
        args.insert(key.trim().to_string(), parsed);
    }
    Some((name.to_string(), args))
}

/// Splits `a=1, b="x, y", c=[1, 2]` at the commas outside strings and brackets.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut quote, mut start, mut escaped) = (Vec::new(), 0i32, None, 0, false);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(_), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{' | '(') => depth += 1,
            (None, ']' | '}' | ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        escaped = false;
    }
    if !text[start..].trim().is_empty() {
        parts.push(&text[start..]);
    }
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}
