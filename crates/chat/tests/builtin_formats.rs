//! The built-in prompt formats (for model folders without a chat template) against each
//! family's own code. tests/fixtures/builtin_reference.json holds what that code builds for a
//! few conversations: Meta's `chat_completion` and `ChatFormat`, Qwen's `make_context`,
//! Baichuan 2's `build_chat_input`, ChatGLM-6B's `chat`, ChatGLM2's `build_prompt`, ChatGLM3's
//! `build_chat_input`, the chat templates of transformers (ChatML) and glm-4-9b-chat. It is made
//! by scripts/render_builtin_formats.py from the original files, whose repositories, commits and
//! sha256 it records; each rendering here must equal it byte for byte.
//!
//! Where the original code cannot express a conversation (a system message for ChatGLM-6B or
//! ChatGLM2, a conversation that ends with the answer for code that always ends with the
//! question) the fixture says so, and the rendering is only required to succeed. "plain" has no
//! model code behind it: its expected text is baimo's documented definition (see the fixture).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use baimo_chat::{BuiltinFormat, ChatMessage, ChatTemplate, RenderRequest, parse_chatglm3_tool_call};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Fixture {
    conversations: BTreeMap<String, Conversation>,
    formats: BTreeMap<String, Format>,
}

#[derive(Deserialize)]
struct Conversation {
    messages: Vec<ChatMessage>,
    tools: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct Format {
    bos_token: String,
    eos_token: String,
    /// Qwen's default system message (`QWenLMHeadModel.chat(system=...)`).
    default_system: Option<String>,
    /// Baichuan 2's ids 195 and 196 as its vocabulary spells them.
    user_token: Option<String>,
    assistant_token: Option<String>,
    cases: BTreeMap<String, Case>,
}

#[derive(Deserialize)]
struct Case {
    expected: Option<String>,
    /// Why the original code cannot build this conversation.
    unsupported: Option<String>,
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/builtin_reference.json");
    let text = std::fs::read_to_string(&path).expect("builtin reference fixture");
    serde_json::from_str(&text).expect("builtin reference fixture is JSON")
}

/// The format a fixture entry stands for.
fn builtin(name: &str, format: &Format) -> BuiltinFormat {
    match name {
        "llama-2" => BuiltinFormat::Llama2,
        "llama-3" => BuiltinFormat::Llama3,
        "chatml" => BuiltinFormat::ChatMl { default_system: None },
        "chatml-qwen1" => BuiltinFormat::ChatMl {
            default_system: Some(format.default_system.clone().expect("Qwen's default system message")),
        },
        "baichuan" => BuiltinFormat::Baichuan {
            user_token: format.user_token.clone().expect("Baichuan's user token"),
            assistant_token: format.assistant_token.clone().expect("Baichuan's assistant token"),
        },
        "chatglm" => BuiltinFormat::ChatGlm,
        "chatglm2" => BuiltinFormat::ChatGlm2,
        "chatglm3" => BuiltinFormat::ChatGlm3,
        "glm4" => BuiltinFormat::Glm4,
        "plain" => BuiltinFormat::Plain,
        other => panic!("the fixture has a format {other} the test does not know"),
    }
}

fn render(format: &BuiltinFormat, spec: &Format, conversation: &Conversation) -> Result<String, String> {
    let template = ChatTemplate::new(&format.template_source(), &spec.bos_token, &spec.eos_token)
        .map_err(|err| format!("does not compile: {err}"))?;
    template
        .render(&RenderRequest {
            messages: &conversation.messages,
            add_generation_prompt: true,
            tools: conversation.tools.as_deref(),
            ..Default::default()
        })
        .map_err(|err| format!("error: {err}"))
}

#[test]
fn builtin_formats_render_what_each_familys_code_builds() {
    let fixture = fixture();
    let names: BTreeSet<&str> = fixture.formats.keys().map(String::as_str).collect();
    let every_format = BTreeSet::from([
        "llama-2",
        "llama-3",
        "chatml",
        "chatml-qwen1",
        "baichuan",
        "chatglm",
        "chatglm2",
        "chatglm3",
        "glm4",
        "plain",
    ]);
    assert_eq!(names, every_format, "the fixture covers every built-in format");

    let mut compared = 0;
    let mut failures = Vec::new();
    for (name, spec) in &fixture.formats {
        let format = builtin(name, spec);
        assert!(name.starts_with(format.name()), "{name} is the {} format", format.name());
        let mut compared_here = 0;
        for (conversation_name, case) in &spec.cases {
            let conversation = &fixture.conversations[conversation_name];
            let ours = render(&format, spec, conversation);
            match (&case.expected, &case.unsupported) {
                (Some(expected), None) => {
                    compared_here += 1;
                    if ours.as_ref() != Ok(expected) {
                        failures.push(format!(
                            "{name}/{conversation_name}:\n  reference: {expected:?}\n  baimo:     {}",
                            match &ours {
                                Ok(text) => format!("{text:?}"),
                                Err(err) => err.clone(),
                            }
                        ));
                    }
                }
                // Nothing to compare with; baimo still has to render it.
                (None, Some(_)) => {
                    if let Err(err) = ours {
                        failures.push(format!("{name}/{conversation_name}: {err}"));
                    }
                }
                _ => panic!("{name}/{conversation_name}: a case is either expected or unsupported"),
            }
        }
        assert!(compared_here > 0, "{name}: nothing compared");
        compared += compared_here;
    }
    eprintln!("{compared} built-in renderings compared with their family's code");
    assert!(failures.is_empty(), "{} differ:\n{}", failures.len(), failures.join("\n"));
}

/// ChatGLM3's tools: what the model wrote after `<|assistant|>`, up to the observation, reads
/// back as the call the conversation holds (the rendering itself is compared above).
#[test]
fn chatglm3_tool_call_round_trip() {
    let fixture = fixture();
    let spec = &fixture.formats["chatglm3"];
    let conversation = &fixture.conversations["chatglm3_tools"];
    let rendered = render(&BuiltinFormat::ChatGlm3, spec, conversation).unwrap();
    let call = &conversation.messages[1].extra["tool_calls"][0]["function"];

    let start = rendered.find("<|assistant|>").unwrap() + "<|assistant|>".len();
    let end = rendered.find("<|observation|>").unwrap();
    let (name, args) = parse_chatglm3_tool_call(&rendered[start..end]).expect("a tool call");
    assert_eq!(name, call["name"]);
    assert_eq!(Value::Object(args), call["arguments"]);
    // Python spellings and single quotes, as ChatGLM3 itself often writes them.
    let (_, args) =
        parse_chatglm3_tool_call("f\n```python\ntool_call(a=True, b=None, c='x', d=[1, 2])\n```").unwrap();
    assert_eq!(Value::Object(args), json!({"a": true, "b": null, "c": "x", "d": [1, 2]}));
    assert!(parse_chatglm3_tool_call("just an answer").is_none());
}

/// Gemma's format against Google's own template (gemma-2-2b-it, from ../shared/reference):
/// the same text for every fixture conversation that template accepts (no system message, user
/// and assistant alternating from the user). With a system message, which that template refuses,
/// the text goes before the first user message, followed by a blank line, as Gemma 3 does.
#[test]
fn gemma_renders_as_google_s_template() {
    let fixture = fixture();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/templates/google-gemma-2-2b-it.jinja");
    let source = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{} ({e}): the tests need ../shared/ beside the repository", path.display())
    });
    let google = ChatTemplate::new(&source, "<bos>", "<eos>").unwrap();
    let ours = ChatTemplate::new(&BuiltinFormat::Gemma.template_source(), "<bos>", "<eos>").unwrap();
    let (mut compared, mut with_system) = (0, 0);
    // Gemma has no tool role: the conversations of users, assistants and a system.
    let plain = |c: &&Conversation| {
        c.messages.iter().all(|m| ["system", "user", "assistant"].contains(&m.role.as_str()))
    };
    for (name, conversation) in fixture.conversations.iter().filter(|(_, c)| plain(c)) {
        let request = RenderRequest {
            messages: &conversation.messages,
            add_generation_prompt: true,
            ..Default::default()
        };
        let text = ours.render(&request).unwrap_or_else(|e| panic!("{name}: {e}"));
        match google.render(&request) {
            Ok(expected) => {
                assert_eq!(text, expected, "{name}");
                compared += 1;
            }
            Err(_) if conversation.messages[0].role == "system" => {
                let system = conversation.messages[0].text().unwrap();
                let first = conversation.messages[1].text().unwrap();
                let start = format!("<bos><start_of_turn>user\n{system}\n\n{}", first.trim());
                assert!(text.starts_with(&start), "{name}: {text:?}");
                with_system += 1;
            }
            Err(err) => panic!("{name}: Google's template refuses it ({err}) and it has no system message"),
        }
    }
    assert!(compared >= 3 && with_system >= 1, "{compared} compared, {with_system} with a system message");
}
