//! Tool use through real chat templates (../shared/reference/templates) and the built-in GLM
//! formats: the tools reach the prompt, a call the assistant made is written the way the
//! template writes it, and that text — what the model learnt to produce — is read back as the
//! same call, fed in pieces of every size; a tool's result reaches the prompt.

use baimo_api::{ChatRequest, Message, Role, StreamEvent, Tool, ToolCall};
use baimo_chat::{BuiltinFormat, ChatTemplate};
use baimo_engine::chat::render_request;
use baimo_engine::tools::{ToolCallParser, ToolSyntax, collect_calls};
use serde_json::{Value, json};

fn template(file: &str) -> String {
    let path = format!("{}/../../../shared/reference/templates/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (the templates are in ../shared/reference/templates)"))
}

fn request(messages: Vec<Message>) -> ChatRequest {
    let mut req = ChatRequest::new("m", messages);
    req.tools = vec![Tool {
        name: "get_weather".into(),
        description: Some("Get the current weather in a city".into()),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    }];
    req
}

/// What ends an assistant turn in these templates (not part of what the parser reads).
const TURN_ENDS: [&str; 7] =
    ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "</s>", "<|user|>", "<|observation|>", "<|endoftext|>"];

fn check(name: &str, source: &str, syntax: ToolSyntax) {
    assert_eq!(ToolSyntax::of_template(source), Some(syntax), "{name}");
    let t = ChatTemplate::new(source, "<s>", "</s>").unwrap_or_else(|e| panic!("{name}: {e}"));
    let user = Message::text(Role::User, "What is the weather in Paris?");
    let (asked, _) =
        render_request(&t, &request(vec![user.clone()]), true).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        asked.contains("get_weather") && asked.contains("Get the current weather"),
        "{name}: tools missing:\n{asked}"
    );

    let call = ToolCall {
        id: "abcdefghi".into(),
        name: "get_weather".into(),
        arguments: r#"{"city": "Paris"}"#.into(),
    };
    let mut assistant = Message::text(Role::Assistant, "");
    assistant.content = None;
    assistant.tool_calls = vec![call];
    let (called, _) = render_request(&t, &request(vec![user.clone(), assistant.clone()]), false).unwrap();
    let turn = called
        .strip_prefix(asked.as_str())
        .unwrap_or_else(|| panic!("{name}: the call does not extend the prompt:\n{asked}\n---\n{called}"));
    let mut turn = turn.trim_end().to_string();
    while let Some(end) = TURN_ENDS.iter().find(|e| turn.ends_with(*e)) {
        turn.truncate(turn.len() - end.len());
        turn = turn.trim_end().to_string();
    }
    for split in [1, 2, 5, 17, 1000] {
        let mut parser = ToolCallParser::new(syntax, vec!["get_weather".into()], false, None);
        let mut out = Vec::new();
        let chars: Vec<char> = turn.chars().collect();
        for piece in chars.chunks(split) {
            parser.push(&piece.iter().collect::<String>(), &mut out);
        }
        assert!(parser.finish(&mut out), "{name} split {split}: no call read from {turn:?}");
        let calls = collect_calls(&out);
        assert_eq!(calls.len(), 1, "{name}: {calls:?}");
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].arguments).unwrap(),
            json!({"city": "Paris"}),
            "{name}"
        );
        // Around the call only whitespace, or the empty reasoning block thinking models (Qwen3)
        // write before it.
        let prose: String = out
            .iter()
            .filter_map(|e| if let StreamEvent::Text(t) = e { Some(t.as_str()) } else { None })
            .collect();
        assert!(
            prose.replace("<think>", "").replace("</think>", "").trim().is_empty(),
            "{name}: prose {prose:?}"
        );
    }

    let mut result = Message::text(Role::Tool, "sunny, 18 degrees");
    result.tool_call_id = Some("abcdefghi".into());
    let (answered, _) = render_request(&t, &request(vec![user, assistant, result]), true)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(answered.contains("sunny, 18 degrees"), "{name}: the result is missing:\n{answered}");
}

#[test]
fn real_templates_write_calls_the_parser_reads_back() {
    for (file, syntax) in [
        ("Qwen-Qwen2.5-7B-Instruct.jinja", ToolSyntax::Hermes),
        ("Qwen-Qwen3-0.6B.jinja", ToolSyntax::Hermes),
        ("Qwen3-Coder.jinja", ToolSyntax::Hermes),
        ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", ToolSyntax::Hermes),
        ("meta-llama-Llama-3.1-8B-Instruct.jinja", ToolSyntax::Llama3Json),
        ("meta-llama-Llama-3.3-70B-Instruct.jinja", ToolSyntax::Llama3Json),
        ("mistralai-Mistral-Nemo-Instruct-2407.jinja", ToolSyntax::Mistral),
        ("GLM-4.6.jinja", ToolSyntax::GlmXml),
    ] {
        check(file, &template(file), syntax);
    }
}

#[test]
fn builtin_glm_formats_write_calls_the_parser_reads_back() {
    check("glm4 (built in)", &BuiltinFormat::Glm4.template_source(), ToolSyntax::Glm4);
    check("chatglm3 (built in)", &BuiltinFormat::ChatGlm3.template_source(), ToolSyntax::ChatGlm3);
}

#[test]
fn a_template_without_tools_gets_them_described_in_the_hermes_syntax() {
    let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    assert_eq!(ToolSyntax::of_template(source), None);
    let t = ChatTemplate::new(source, "", "").unwrap();
    let (text, _) = render_request(&t, &request(vec![Message::text(Role::User, "weather?")]), true).unwrap();
    assert!(
        text.starts_with("<|im_start|>system\n# Tools") && text.contains("\"name\":\"get_weather\""),
        "{text}"
    );
    assert!(text.contains("<tool_call>"), "{text}");
}
