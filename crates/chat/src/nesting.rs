//! A bound on how deeply a template nests, checked on the source before minijinja parses it.
//!
//! minijinja's parser and renderer recurse once per level of nesting (brackets, chained filters,
//! block tags). Templates come from model files, so a hostile one could nest thousands of levels
//! and overflow the stack, which aborts the process. Real chat templates nest a few levels; the
//! limit below is far above any of them and far below what a 1 MiB stack survives.

/// Most levels of nesting accepted, counted separately for brackets inside one tag, filters
/// chained in one tag, and block tags inside each other.
pub(crate) const MAX_NESTING: usize = 64;

/// Describes the first place where `source` nests deeper than [`MAX_NESTING`], if any.
pub(crate) fn too_deep(source: &str) -> Option<String> {
    let mut blocks = 0usize;
    let mut rest = source;
    while let Some(open) = rest.find('{') {
        rest = &rest[open..];
        let close = match rest.as_bytes().get(1) {
            Some(b'{') => "}}",
            Some(b'%') => "%}",
            Some(b'#') => {
                // A comment: skip to its end.
                rest = rest.find("#}").map_or("", |end| &rest[end + 2..]);
                continue;
            }
            _ => {
                rest = &rest[1..];
                continue;
            }
        };
        let body = &rest[2..];
        let (inside, after) = match scan_tag(body, close) {
            Ok(scan) => scan,
            Err(message) => return Some(message),
        };
        if close == "%}" {
            match block_keyword(inside) {
                Some(word) if word.starts_with("end") => blocks = blocks.saturating_sub(1),
                Some(
                    "if" | "for" | "macro" | "call" | "filter" | "with" | "raw" | "autoescape" | "block",
                ) => {
                    blocks += 1;
                }
                Some("set") if !inside.contains('=') => blocks += 1, // `{% set x %}...{% endset %}`
                _ => {}
            }
            if blocks > MAX_NESTING {
                return Some(format!("block tags nested more than {MAX_NESTING} deep"));
            }
        }
        rest = after;
    }
    None
}

/// Scans one tag body up to `close` (outside string literals), checking its bracket depth and
/// filter chain; returns the body and what follows the tag.
fn scan_tag<'a>(body: &'a str, close: &str) -> Result<(&'a str, &'a str), String> {
    let bytes = body.as_bytes();
    let (mut depth, mut pipes, mut quote) = (0usize, 0usize, None::<u8>);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'\'' | b'"' => quote = Some(b),
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(format!("brackets nested more than {MAX_NESTING} deep"));
                    }
                }
                b')' | b']' | b'}' if depth > 0 => depth -= 1,
                b'|' => {
                    pipes += 1;
                    if pipes > MAX_NESTING {
                        return Err(format!("more than {MAX_NESTING} filters in one expression"));
                    }
                }
                _ if body[i..].starts_with(close) => return Ok((&body[..i], &body[i + close.len()..])),
                _ => {}
            },
        }
        i += 1;
    }
    // An unterminated tag: minijinja reports the syntax error.
    Ok((body, ""))
}

/// The first word of a block tag, past whitespace control.
fn block_keyword(inside: &str) -> Option<&str> {
    inside.trim_start_matches(['-', '+']).split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_shapes_pass_and_deep_ones_do_not() {
        assert_eq!(too_deep("{% for m in messages %}{{ (m['content'] | trim) ~ '{' }}{% endfor %}"), None);
        assert_eq!(too_deep("{{ '((((((' }}{# {{{{{{{ #}"), None);
        assert!(too_deep(&format!("{{{{ {}1{} }}}}", "(".repeat(100), ")".repeat(100))).is_some());
        assert!(too_deep(&format!("{{{{ 'x'{} }}}}", "|trim".repeat(100))).is_some());
        assert!(too_deep(&"{% if true %}".repeat(100)).is_some());
        assert_eq!(too_deep(&"{% if true %}x{% endif %}".repeat(1000)), None);
    }
}
