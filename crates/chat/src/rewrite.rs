//! Source rewrites for the Jinja that real chat templates use but minijinja does not parse.
//!
//! Only what real templates need, each rewrite keeping the rendered output identical:
//!
//! * `{% generation %}...{% endgeneration %}` — a tag of transformers' own (its
//!   `AssistantTracker` extension marks assistant tokens for training masks). Outside training
//!   it renders its body unchanged, so it becomes `{% if true %}...{% endif %}`: another block
//!   tag, which keeps the tag's whitespace control (`-`, `+`) and the
//!   `trim_blocks`/`lstrip_blocks` behaviour exactly as they were.
//!
//! Python slicing with steps (`[::-1]`) and negative `range` steps need no rewrite: minijinja
//! supports both.

/// Returns `source` with the constructs above replaced.
pub(crate) fn rewrite_for_minijinja(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match rewrite_block_tag(tag) {
            Some((replacement, consumed)) => {
                out.push_str(&replacement);
                rest = &tag[consumed..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `tag` (which starts with `{%`) is a `generation` or `endgeneration` tag, returns its
/// replacement and the length of the original tag.
fn rewrite_block_tag(tag: &str) -> Option<(String, usize)> {
    let body = tag.get(2..)?;
    let inner = &body[..body.find("%}")?];
    let tag_len = 2 + inner.len() + 2;
    let (left_control, inner) = split_whitespace_control_prefix(inner);
    let (inner, right_control) = split_whitespace_control_suffix(inner);
    let replacement_word = match inner.trim() {
        "generation" => "if true",
        "endgeneration" => "endif",
        _ => return None,
    };
    Some((format!("{{%{left_control} {replacement_word} {right_control}%}}"), tag_len))
}

fn split_whitespace_control_prefix(inner: &str) -> (&str, &str) {
    match inner.chars().next() {
        Some(control @ ('-' | '+')) => inner.split_at(control.len_utf8()),
        _ => ("", inner),
    }
}

fn split_whitespace_control_suffix(inner: &str) -> (&str, &str) {
    match inner.chars().last() {
        Some(control @ ('-' | '+')) => inner.split_at(inner.len() - control.len_utf8()),
        _ => (inner, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite_for_minijinja;

    #[test]
    fn generation_tags_become_if_blocks_with_the_same_whitespace_control() {
        assert_eq!(
            rewrite_for_minijinja("a{%- generation -%}b{% endgeneration %}c"),
            "a{%- if true -%}b{% endif %}c"
        );
        assert_eq!(
            rewrite_for_minijinja("{%generation+%}x{%+ endgeneration%}"),
            "{% if true +%}x{%+ endif %}"
        );
    }

    #[test]
    fn other_tags_and_text_are_untouched() {
        for source in [
            "{% if generation %}{{ '{%' }}{% endif %}{% set endgeneration_x = 1 %}{%",
            "{%}",
            "{%%}",
            "{%-}",
            "{%- %}",
        ] {
            assert_eq!(rewrite_for_minijinja(source), source);
        }
    }
}
