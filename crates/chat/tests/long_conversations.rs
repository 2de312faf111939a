//! The fuel budget must never stop a real template on a real (if long) conversation.

mod common;

use baimo_chat::{ChatError, ChatMessage, ChatTemplate, RenderRequest};
use serde_json::json;

#[test]
fn every_template_renders_a_long_conversation_with_tools_within_its_limits() {
    let tools: Vec<serde_json::Value> = (0..20)
        .map(|i| {
            json!({"type": "function", "function": {
                "name": format!("tool_{i}"),
                "description": "Does something useful. ".repeat(10),
                "parameters": {"type": "object", "properties": {
                    "a": {"type": "string", "description": "first"},
                    "b": {"type": "integer", "description": "second"}
                }, "required": ["a"]}
            }})
        })
        .collect();
    let mut messages = vec![ChatMessage::system("You are helpful. ".repeat(50))];
    for turn in 0..1000 {
        messages.push(ChatMessage::user(format!("Question {turn}: 为什么? ").repeat(10)));
        messages.push(ChatMessage::assistant(format!("Answer {turn}. 因为。 ").repeat(30)));
    }
    messages.push(ChatMessage::user("And finally?"));

    for template in common::load_templates() {
        let Ok(compiled) = ChatTemplate::new(&template.source, "<s>", "</s>") else {
            continue;
        };
        let result = compiled.render(&RenderRequest {
            messages: &messages,
            add_generation_prompt: true,
            tools: Some(&tools),
            now: Some(common::fixed_now()),
            ..Default::default()
        });
        assert!(!matches!(result, Err(ChatError::LimitExceeded(_))), "{}: {result:?}", template.name);
    }
}
