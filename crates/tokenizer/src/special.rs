//! Cutting special tokens out of the text before the model sees it, as llama.cpp's
//! `tokenizer_st_partition` does: special tokens are taken longest first, each one found
//! everywhere in the text that is still plain before the next is looked for.

use std::ops::Range;

use crate::vocab::{Attr, Vocab};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A byte range of the input holding no special token.
    Text(Range<usize>),
    Token(u32),
}

/// Control and unknown tokens are matched only with `parse_special`; user-defined tokens
/// always are.
pub(crate) fn partition(vocab: &Vocab, text: &str, parse_special: bool) -> Vec<Fragment> {
    if text.is_empty() {
        return Vec::new();
    }
    let mut fragments = vec![Fragment::Text(0..text.len())];
    for &id in &vocab.special_by_length {
        let attr = vocab.attr(id);
        if !parse_special && attr.any(Attr::CONTROL | Attr::UNKNOWN) {
            continue;
        }
        let Some(needle) = vocab.texts.get(id as usize).filter(|t| !t.is_empty()) else {
            continue;
        };
        // Most special tokens occur nowhere; don't rebuild the list for them.
        let occurs = fragments
            .iter()
            .any(|f| matches!(f, Fragment::Text(r) if text[r.clone()].contains(needle.as_str())));
        if !occurs {
            continue;
        }
        let mut next = Vec::with_capacity(fragments.len() + 2);
        for fragment in fragments {
            match fragment {
                Fragment::Text(range) => split_at_token(text, range, needle, id, attr, &mut next),
                token => next.push(token),
            }
        }
        fragments = next;
    }
    fragments
}

fn split_at_token(
    text: &str,
    range: Range<usize>,
    needle: &str,
    id: u32,
    attr: Attr,
    out: &mut Vec<Fragment>,
) {
    let end = range.end;
    let mut pos = range.start;
    while let Some(found) = text[pos..end].find(needle) {
        let match_start = pos + found;
        let mut left_end = match_start;
        if attr.any(Attr::LSTRIP) {
            while left_end > pos && is_c_space(text.as_bytes()[left_end - 1]) {
                left_end -= 1;
            }
        }
        if left_end > pos {
            out.push(Fragment::Text(pos..left_end));
        }
        out.push(Fragment::Token(id));
        pos = match_start + needle.len();
        if attr.any(Attr::RSTRIP) {
            while pos < end && is_c_space(text.as_bytes()[pos]) {
                pos += 1;
            }
        }
    }
    if pos < end {
        out.push(Fragment::Text(pos..end));
    }
}

/// C's `isspace` in the "C" locale, which llama.cpp uses for stripping.
fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}
