//! Codepoint classes as llama.cpp's pre-tokenizers see them, and GPT-2's byte-to-character map.
//!
//! llama.cpp classifies every codepoint by its Unicode general category (letter, number, mark,
//! punctuation, symbol, separator, control, or unassigned) plus the White_Space property. We
//! build the same table from the Unicode data in `regex-syntax` (so we carry no table of our
//! own), once, on first use.
//!
//! llama.cpp's table (release b11312) is from Unicode 15.1, so characters assigned later count
//! as unassigned here too; otherwise text using them would split into different words.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// The largest codepoint plus one.
const CODEPOINT_LIMIT: usize = 0x11_0000;

/// The Unicode version of llama.cpp's codepoint table.
const LLAMA_CPP_UNICODE_AGE: &str = r"\p{age=15.1}";

/// What llama.cpp knows about one codepoint: its general category and whether it is white space.
/// The default value describes "no codepoint", the position just past the end of a segment,
/// which belongs to no category at all.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct CharClass(u8);

const CATEGORY_MASK: u8 = 0x0f;
const WHITESPACE_BIT: u8 = 0x10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Category {
    /// Unassigned (Cn).
    Undefined = 1,
    Number = 2,
    Letter = 3,
    Separator = 4,
    Mark = 5,
    Punctuation = 6,
    Symbol = 7,
    /// Cc, Cf, Co and Cs.
    Control = 8,
}

impl CharClass {
    fn new(category: Category, whitespace: bool) -> CharClass {
        CharClass(category as u8 | if whitespace { WHITESPACE_BIT } else { 0 })
    }

    /// False only for "no codepoint" (past the end of the segment).
    pub(crate) fn exists(self) -> bool {
        self.0 != 0
    }

    fn is(self, category: Category) -> bool {
        self.0 & CATEGORY_MASK == category as u8
    }

    pub(crate) fn is_letter(self) -> bool {
        self.is(Category::Letter)
    }

    pub(crate) fn is_number(self) -> bool {
        self.is(Category::Number)
    }

    pub(crate) fn is_mark(self) -> bool {
        self.is(Category::Mark)
    }

    pub(crate) fn is_punctuation(self) -> bool {
        self.is(Category::Punctuation)
    }

    pub(crate) fn is_whitespace(self) -> bool {
        self.0 & WHITESPACE_BIT != 0
    }

    #[cfg(test)]
    pub(crate) fn category(self) -> Option<Category> {
        use Category::*;
        [Undefined, Number, Letter, Separator, Mark, Punctuation, Symbol, Control]
            .into_iter()
            .find(|&c| self.is(c))
    }
}

/// The class of `c`.
pub(crate) fn char_class(c: char) -> CharClass {
    let table = class_table();
    table.get(c as usize).copied().unwrap_or_default()
}

fn class_table() -> &'static [CharClass] {
    static TABLE: OnceLock<Vec<CharClass>> = OnceLock::new();
    TABLE.get_or_init(build_class_table)
}

fn build_class_table() -> Vec<CharClass> {
    let mut categories = vec![Category::Undefined; CODEPOINT_LIMIT];
    let sources = [
        (r"\p{Cc}", Category::Control),
        (r"\p{Cf}", Category::Control),
        (r"\p{Co}", Category::Control),
        (r"\p{Z}", Category::Separator),
        (r"\p{M}", Category::Mark),
        (r"\p{N}", Category::Number),
        (r"\p{L}", Category::Letter),
        (r"\p{P}", Category::Punctuation),
        (r"\p{S}", Category::Symbol),
    ];
    for (pattern, category) in sources {
        for (start, end) in unicode_class_ranges(pattern) {
            if let Some(slots) = categories.get_mut(start as usize..=end as usize) {
                slots.fill(category);
            }
        }
    }
    let mut known = vec![false; CODEPOINT_LIMIT];
    for (start, end) in unicode_class_ranges(LLAMA_CPP_UNICODE_AGE) {
        if let Some(slots) = known.get_mut(start as usize..=end as usize) {
            slots.fill(true);
        }
    }
    categories
        .into_iter()
        .zip(known)
        .enumerate()
        .map(|(cp, (category, known))| {
            let category = if known { category } else { Category::Undefined };
            let whitespace = char::from_u32(cp as u32).is_some_and(char::is_whitespace);
            CharClass::new(category, whitespace)
        })
        .collect()
}

/// The codepoint ranges of a `\p{..}` class, from regex-syntax's Unicode tables.
fn unicode_class_ranges(pattern: &str) -> Vec<(char, char)> {
    // The patterns are fixed above; should one fail to parse, its codepoints simply stay
    // "unassigned" rather than bringing the process down.
    let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => {
            class.ranges().iter().map(|r| (r.start(), r.end())).collect()
        }
        _ => Vec::new(),
    }
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map to
/// themselves, the other 68 to U+0100.. in byte order.
pub(crate) fn byte_to_char(byte: u8) -> char {
    byte_maps().0[byte as usize]
}

/// The inverse of [`byte_to_char`].
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    byte_maps().1.get(c as usize).copied().flatten()
}

type ByteMaps = ([char; 256], Vec<Option<u8>>);

fn byte_maps() -> &'static ByteMaps {
    static MAPS: OnceLock<ByteMaps> = OnceLock::new();
    MAPS.get_or_init(|| {
        let printable = |b: u8| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
        let mut forward = ['\0'; 256];
        let mut next_extra = 0x100u32;
        for byte in 0..=255u8 {
            forward[byte as usize] = if printable(byte) {
                char::from(byte)
            } else {
                let c = char::from_u32(next_extra).unwrap_or(char::REPLACEMENT_CHARACTER);
                next_extra += 1;
                c
            };
        }
        let mut backward = vec![None; next_extra as usize];
        for (byte, &c) in forward.iter().enumerate() {
            if let Some(slot) = backward.get_mut(c as usize) {
                *slot = Some(byte as u8);
            }
        }
        (forward, backward)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_of_familiar_characters() {
        assert_eq!(char_class('a').category(), Some(Category::Letter));
        assert_eq!(char_class('语').category(), Some(Category::Letter));
        assert_eq!(char_class('7').category(), Some(Category::Number));
        assert_eq!(char_class('½').category(), Some(Category::Number));
        assert_eq!(char_class('!').category(), Some(Category::Punctuation));
        assert_eq!(char_class('$').category(), Some(Category::Symbol));
        assert_eq!(char_class('🚀').category(), Some(Category::Symbol));
        assert_eq!(char_class('\u{301}').category(), Some(Category::Mark));
        assert_eq!(char_class('\u{200d}').category(), Some(Category::Control));
        assert_eq!(char_class('\u{378}').category(), Some(Category::Undefined));
        // Assigned in Unicode 16, after llama.cpp's table.
        assert_eq!(char_class('\u{1c89}').category(), Some(Category::Undefined));
        assert!(char_class(' ').is_whitespace());
        assert!(char_class('\u{a0}').is_whitespace());
        assert!(char_class('\u{85}').is_whitespace());
        assert!(!char_class('\u{200b}').is_whitespace());
        assert!(!CharClass::default().exists());
    }

    #[test]
    fn byte_map_is_a_bijection() {
        for byte in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(byte)), Some(byte));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(char_to_byte('€'), None);
    }
}
