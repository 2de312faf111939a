//! Templates come from model files, so they are untrusted: every failure must be a
//! `ChatError`, never a panic, a hang or a stack overflow.

use baimo_chat::{ChatError, ChatMessage, ChatTemplate, RenderRequest};

fn render(source: &str) -> Result<String, ChatError> {
    let template = ChatTemplate::new(source, "<s>", "</s>")?;
    let messages = [ChatMessage::user("hi")];
    template.render(&RenderRequest { messages: &messages, add_generation_prompt: true, ..Default::default() })
}

/// Runs `work` on a thread with a small stack (smaller than the 2 MiB of async runtimes'
/// workers), so that unbounded recursion would crash the test instead of passing by luck.
fn on_small_stack<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(work)
        .expect("spawn test thread")
        .join()
        .expect("no panic")
}

#[test]
fn syntax_errors_are_errors() {
    for source in [
        "{% for m in messages %}never closed",
        "{{ unclosed",
        "{% if %}{% endif %}",
        "{% endfor %}",
        "{{ 'a' + }}",
        "{% generation %}no end",
        "{%",
    ] {
        match ChatTemplate::new(source, "<s>", "</s>") {
            Err(ChatError::Syntax(message)) => {
                assert!(!message.is_empty() && !message.contains('\n'), "{message:?}");
            }
            other => panic!("{source:?}: expected a syntax error, got {other:?}"),
        }
    }
}

#[test]
fn raise_exception_carries_the_templates_message() {
    let result = render(
        "{% if messages[0].role != 'system' %}{{ raise_exception('Conversation must start with a system message!') }}{% endif %}",
    );
    match result {
        Err(ChatError::Raised(message)) => {
            assert_eq!(message, "Conversation must start with a system message!")
        }
        other => panic!("expected Raised, got {other:?}"),
    }
    let err = render("{{ raise_exception('Roles must alternate') }}").unwrap_err();
    assert_eq!(err.to_string(), "chat template rejected the conversation: Roles must alternate");
}

#[test]
fn raise_exception_inside_macros_and_loops_is_still_recognised() {
    let source = "{% macro check(m) %}{% if m.role == 'user' %}{{ raise_exception('no users: ' ~ m.content) }}{% endif %}{% endmacro %}\
                  {% for m in messages %}{{ check(m) }}{% endfor %}";
    match render(source) {
        Err(ChatError::Raised(message)) => assert_eq!(message, "no users: hi"),
        other => panic!("expected Raised, got {other:?}"),
    }
}

#[test]
fn runtime_errors_are_render_errors() {
    for source in [
        "{{ messages[0].content.no_such_method() }}",
        "{{ 'a' + 1 }}",
        "{{ undefined_thing.attribute }}",
        "{{ messages | no_such_filter }}",
        "{{ 1 / 0 }}",
        "{{ messages[0] | tojson(bogus=1) }}",
        "{{ undefined_thing | tojson }}",
    ] {
        match render(source) {
            Err(ChatError::Render(message)) => assert!(!message.contains('\n'), "{message:?}"),
            other => panic!("{source:?}: expected a render error, got {other:?}"),
        }
    }
}

#[test]
fn endless_loops_run_out_of_fuel_quickly() {
    for source in [
        "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}",
        "{% set ns = namespace(s='xx') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ messages | tojson }}{% endfor %}{% endfor %}",
    ] {
        match render(source) {
            Err(ChatError::LimitExceeded(_)) => {}
            other => panic!("{source:?}: expected LimitExceeded, got {other:?}"),
        }
    }
}

#[test]
fn runaway_recursion_is_stopped_before_the_stack_overflows() {
    on_small_stack(|| {
        for source in [
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "{% macro a(n) %}{{ b(n) }}{% endmacro %}{% macro b(n) %}{{ a(n) }}{% endmacro %}{{ a(0) }}",
            "{% for m in messages recursive %}{{ loop([m]) }}{% endfor %}",
        ] {
            match render(source) {
                Err(ChatError::LimitExceeded(_) | ChatError::Render(_)) => {}
                other => panic!("{source:?}: expected an error, got {other:?}"),
            }
        }
    });
}

#[test]
fn deeply_nested_sources_fail_to_parse_without_overflowing() {
    on_small_stack(|| {
        let depth = 5000;
        let parens = format!("{{{{ {}1{} }}}}", "(".repeat(depth), ")".repeat(depth));
        let lists = format!("{{{{ {}1{} }}}}", "[".repeat(depth), "]".repeat(depth));
        let ifs = format!("{}x{}", "{% if true %}".repeat(depth), "{% endif %}".repeat(depth));
        let filters = format!("{{{{ 'x'{} }}}}", "|trim".repeat(depth));
        // Deep nesting is refused.
        for source in [parens, lists, ifs] {
            assert!(render(&source).is_err(), "{}...", &source[..40]);
        }
        // A long chain is flat: it may render (to the text) or be refused, but not otherwise.
        match render(&filters) {
            Ok(text) => assert_eq!(text, "x"),
            Err(e) => assert!(matches!(e, ChatError::Syntax(_) | ChatError::LimitExceeded(_)), "{e:?}"),
        }
    });
}

#[test]
fn deep_values_are_refused_by_tojson_not_overflowing() {
    on_small_stack(|| {
        let mut value = serde_json::json!("leaf");
        for _ in 0..100 {
            value = serde_json::json!([value]);
        }
        let template = ChatTemplate::new("{{ tools | tojson }}|{{ tools | string }}", "", "").unwrap();
        let tools = [value];
        let rendered =
            template.render(&RenderRequest { messages: &[], tools: Some(&tools), ..Default::default() });
        assert!(rendered.is_ok(), "{rendered:?}");
    });
}

#[test]
fn arbitrary_fragment_soup_never_panics() {
    // A tiny deterministic fuzzer: templates glued from fragments of real templates.
    const FRAGMENTS: &[&str] = &[
        "{% for m in messages %}",
        "{% endfor %}",
        "{% if ",
        "{% endif %}",
        "{% else %}",
        "{{ ",
        " }}",
        "m.content",
        "messages[0]",
        "[::-1]",
        "|tojson(indent=2)",
        "|length",
        " + ",
        " ~ ",
        "'text'",
        "none",
        "tools",
        ".strip()",
        ".split(',')",
        "raise_exception('x')",
        "{% set x = ",
        " %}",
        "{%- ",
        " -%}",
        "loop.index0",
        "{# c #}",
        "{% generation %}",
        "{% endgeneration %}",
        "range(3, -1, -1)",
        "namespace(a=1)",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "%}",
        "{%",
        "\n",
        " ",
        "strftime_now('%Y')",
        "|indent(4, first=true)",
        "is string",
        "is mapping",
        " and ",
        " or ",
        "not ",
        "1e400",
        "-9223372036854775808",
        "9999999999999999999999999",
        "|int",
        "|float",
        "'\\u00e9'",
        "\"\\x\"",
        "{% macro f() %}",
        "{% endmacro %}",
        "{{ f() }}",
        "{% break %}",
        "{% raw %}",
        "{% endraw %}",
        "|join",
        ".items()",
        ".get('x')",
        "* 100000",
        "// 0",
        "% 0",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let messages = [ChatMessage::system("s"), ChatMessage::user("a,b"), ChatMessage::assistant("c")];
    let tools = [serde_json::json!({"type": "function", "function": {"name": "f"}})];
    for _ in 0..3000 {
        let length = 1 + next() % 24;
        let source: String =
            (0..length).map(|_| FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize]).collect();
        if let Ok(template) = ChatTemplate::new(&source, "<s>", "</s>") {
            let _ = template.render(&RenderRequest {
                messages: &messages,
                add_generation_prompt: true,
                tools: Some(&tools),
                ..Default::default()
            });
        }
    }
}
