//! Snapshots of the built-in prompt formats (for model folders without a chat template), for a
//! conversation with a system message and two turns, one without a system message, and one
//! that ends with the assistant's answer.

use baimo_chat::{BuiltinFormat, ChatMessage, ChatTemplate, RenderRequest};

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
