//! Snapshots of the built-in prompt formats (for model folders without a chat template), for a
//! conversation with a system message and two turns, one without a system message, and one
//! that ends with the assistant's answer.

use baimo_chat::{BuiltinFormat, ChatMessage, ChatTemplate, RenderRequest, parse_chatglm3_tool_call};
use serde_json::json;

fn conversations() -> Vec<(&'static str, Vec<ChatMessage>)> {
    vec![
        (
            "system_and_two_turns",
            vec![
                ChatMessage::system("You are terse. 请简短回答。"),
                ChatMessage::user("  What is 2+2? "),
                ChatMessage::assistant("4"),
                ChatMessage::user("和 3+3 呢？🙂"),
            ],
        ),
        ("no_system", vec![ChatMessage::user("Hello!")]),
        ("ends_with_answer", vec![ChatMessage::user("Hi"), ChatMessage::assistant("Hello.")]),
    ]
}

fn formats() -> Vec<(BuiltinFormat, &'static str, &'static str)> {
    vec![
        (BuiltinFormat::Llama2, "<s>", "</s>"),
        (BuiltinFormat::Llama3, "<|begin_of_text|>", "<|end_of_text|>"),
        (BuiltinFormat::ChatMl { default_system: None }, "", "<|im_end|>"),
        (
            BuiltinFormat::ChatMl { default_system: Some("You are a helpful assistant.".into()) },
            "",
            "<|endoftext|>",
        ),
        (
            BuiltinFormat::Baichuan {
                user_token: "<reserved_106>".into(),
                assistant_token: "<reserved_107>".into(),
            },
            "<s>",
            "</s>",
        ),
        (BuiltinFormat::ChatGlm, "<sop>", "<eop>"),
        (BuiltinFormat::ChatGlm2, "", "</s>"),
        (BuiltinFormat::ChatGlm3, "", "</s>"),
        (BuiltinFormat::Glm4, "", "<|endoftext|>"),
        (BuiltinFormat::Plain, "", "<|endoftext|>"),
    ]
}

#[test]
fn builtin_formats_render_as_snapshotted() {
    for (format, bos, eos) in formats() {
        let template = ChatTemplate::new(&format.template_source(), bos, eos).unwrap();
        let mut snapshot = String::new();
        for (name, messages) in conversations() {
            let rendered = template
                .render(&RenderRequest {
                    messages: &messages,
                    add_generation_prompt: true,
                    ..Default::default()
                })
                .unwrap();
            snapshot.push_str(&format!("===== {name} =====\n{rendered}\n===== end {name} =====\n"));
        }
        let name = match &format {
            BuiltinFormat::ChatMl { default_system: Some(_) } => "chatml-qwen1".to_string(),
            other => other.name().to_string(),
        };
        insta::assert_snapshot!(format!("builtin-{name}"), snapshot);
    }
}

#[test]
fn llama2_matches_meta_reference_text() {
    // Meta's generation.py for [system, user, assistant, user]: the system folded into the
    // first user message, each finished exchange closed by EOS.
    let template = ChatTemplate::new(&BuiltinFormat::Llama2.template_source(), "<s>", "</s>").unwrap();
    let messages = [
        ChatMessage::system("SYS"),
        ChatMessage::user("U1"),
        ChatMessage::assistant("A1"),
        ChatMessage::user("U2"),
    ];
    let got = template
        .render(&RenderRequest { messages: &messages, add_generation_prompt: true, ..Default::default() })
        .unwrap();
    assert_eq!(got, "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]");
}

/// ChatGLM3's tools: the tool list in the system message, a call as the model writes it, the
/// result as an observation; the call text read back gives the same name and arguments.
#[test]
fn chatglm3_tool_call_round_trip() {
    let template = ChatTemplate::new(&BuiltinFormat::ChatGlm3.template_source(), "", "</s>").unwrap();
    let tools = [json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "天气查询",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
        }
    })];
    let arguments = json!({"city": "北京", "days": 2, "metric": true, "note": "a, \"quoted\" b"});
    let call: ChatMessage = serde_json::from_value(json!({
        "role": "assistant",
        "content": null,
        "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]
    }))
    .unwrap();
    let messages = [
        ChatMessage::user("北京后天天气怎么样？"),
        call,
        serde_json::from_value(
            json!({"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\": 21}"}),
        )
        .unwrap(),
    ];
    let rendered = template
        .render(&RenderRequest {
            messages: &messages,
            add_generation_prompt: true,
            tools: Some(&tools),
            ..Default::default()
        })
        .unwrap();
    insta::assert_snapshot!("builtin-chatglm3-tools", rendered);

    // What the model wrote after <|assistant|>, up to the observation, parses back to the call.
    let start = rendered.find("<|assistant|>").unwrap() + "<|assistant|>".len();
    let end = rendered.find("<|observation|>").unwrap();
    let (name, args) = parse_chatglm3_tool_call(&rendered[start..end]).expect("a tool call");
    assert_eq!(name, "get_weather");
    assert_eq!(serde_json::Value::Object(args), arguments);
    // Python spellings and single quotes, as ChatGLM3 itself often writes them.
    let (_, args) =
        parse_chatglm3_tool_call("f\n```python\ntool_call(a=True, b=None, c='x', d=[1, 2])\n```").unwrap();
    assert_eq!(serde_json::Value::Object(args), json!({"a": true, "b": null, "c": "x", "d": [1, 2]}));
    assert!(parse_chatglm3_tool_call("just an answer").is_none());
}
