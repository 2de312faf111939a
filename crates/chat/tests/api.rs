//! The public API: messages as OpenAI-style JSON, the variables a template sees, threads.

use std::time::{Duration, UNIX_EPOCH};

use baimo_chat::{ChatError, ChatMessage, ChatTemplate, RenderRequest};
use serde_json::json;

fn render_with(source: &str, request: &RenderRequest) -> Result<String, ChatError> {
    ChatTemplate::new(source, "<s>", "</s>")?.render(request)
}

#[test]
fn messages_accept_openai_json_and_keep_every_field_in_order() {
    let wire = r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"z\":1,\"a\":2}"}}],"name":"bot","reasoning_content":"hmm"}"#;
    let message: ChatMessage = serde_json::from_str(wire).unwrap();
    assert_eq!(message.role, "assistant");
    assert!(message.content.is_null());
    let keys: Vec<&str> = message.extra.keys().map(String::as_str).collect();
    assert_eq!(keys, ["tool_calls", "name", "reasoning_content"]);
    assert_eq!(serde_json::to_string(&message).unwrap(), wire);

    let without_content: ChatMessage = serde_json::from_str(r#"{"role":"user"}"#).unwrap();
    assert!(without_content.content.is_null());

    let parts: ChatMessage =
        serde_json::from_str(r#"{"role":"user","content":[{"type":"text","text":"hi"}]}"#).unwrap();
    assert!(parts.content.is_array());
    assert_eq!(parts.text(), None);
    assert_eq!(ChatMessage::user("hi").text(), Some("hi"));
}

#[test]
fn constructors_set_role_and_text() {
    assert_eq!(ChatMessage::system("a").role, "system");
    assert_eq!(ChatMessage::user("b").role, "user");
    let assistant = ChatMessage::assistant("c").with_field("name", json!("bot"));
    assert_eq!(assistant.role, "assistant");
    assert_eq!(assistant.extra["name"], "bot");
}

#[test]
fn templates_see_the_variables_transformers_passes() {
    let source = "{{ bos_token }}|{{ eos_token }}|{{ tools is defined }}|{{ tools is none }}|\
                  {{ documents is none }}|{{ add_generation_prompt }}|{{ messages | length }}|\
                  {{ enable_thinking is defined }}";
    let messages = [ChatMessage::user("hi")];
    let rendered = render_with(source, &RenderRequest { messages: &messages, ..Default::default() }).unwrap();
    assert_eq!(rendered, "<s>|</s>|True|True|True|False|1|False");
}

#[test]
fn extra_context_adds_variables_and_may_override_special_tokens_only() {
    let extra = json!({
        "enable_thinking": false,
        "bos_token": "<bos>",
        "messages": "ignored",
        "add_generation_prompt": "ignored",
    });
    let rendered = render_with(
        "{{ bos_token }} {{ enable_thinking }} {{ messages | length }} {{ add_generation_prompt }}",
        &RenderRequest {
            messages: &[],
            add_generation_prompt: true,
            extra_context: extra.as_object(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(rendered, "<bos> False 0 True");
}

#[test]
fn tools_keep_their_key_order_and_are_not_html_escaped() {
    let tools = [
        json!({"type": "function", "function": {"name": "f", "description": "a < b & \"c\"", "parameters": {"z": 1, "a": 2}}}),
    ];
    let rendered = render_with(
        "{% for tool in tools %}{{ tool | tojson }}{% endfor %}",
        &RenderRequest { messages: &[], tools: Some(&tools), ..Default::default() },
    )
    .unwrap();
    assert_eq!(
        rendered,
        r#"{"type": "function", "function": {"name": "f", "description": "a < b & \"c\"", "parameters": {"z": 1, "a": 2}}}"#
    );
}

#[test]
fn whitespace_follows_transformers_settings() {
    // trim_blocks and lstrip_blocks on; a single trailing newline is dropped.
    let source =
        "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
    let messages = [ChatMessage::user("a"), ChatMessage::user("b")];
    let rendered = render_with(source, &RenderRequest { messages: &messages, ..Default::default() }).unwrap();
    assert_eq!(rendered, "a\nb\n");
}

#[test]
fn strftime_now_uses_the_pinned_moment_or_the_clock() {
    let source = "{{ strftime_now('%d %b %Y') }}";
    let pinned = render_with(
        source,
        &RenderRequest { now: Some(UNIX_EPOCH + Duration::from_secs(1_721_952_000)), ..Default::default() },
    )
    .unwrap();
    assert_eq!(pinned, "26 Jul 2024");

    let year: i32 =
        render_with("{{ strftime_now('%Y') }}", &RenderRequest::default()).unwrap().parse().unwrap();
    assert!(year >= 2025, "{year}");
}

#[test]
fn source_is_the_template_as_given() {
    let source = "{% generation %}x{% endgeneration %}";
    let template = ChatTemplate::new(source, "", "").unwrap();
    assert_eq!(template.source(), source);
    assert_eq!(template.render(&RenderRequest::default()).unwrap(), "x");
}

#[test]
fn one_template_renders_from_many_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
    assert_send_sync::<ChatError>();

    let template = std::sync::Arc::new(
        ChatTemplate::new(
            "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}{{ strftime_now('%Y') }}",
            "",
            "",
        )
        .unwrap(),
    );
    let handles: Vec<_> = (0..4)
        .map(|thread| {
            let template = template.clone();
            std::thread::spawn(move || {
                let year = 2000 + thread;
                let now = UNIX_EPOCH + Duration::from_secs(((year - 1970) * 365 + 200) * 86_400);
                for i in 0..200 {
                    let messages = [ChatMessage::user(format!("{thread}-{i}"))];
                    let rendered = template
                        .render(&RenderRequest { messages: &messages, now: Some(now), ..Default::default() })
                        .unwrap();
                    assert_eq!(rendered, format!("[user:{thread}-{i}]{year}"));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}
