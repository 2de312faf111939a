//! Splitting text into words before byte-level BPE, exactly as llama.cpp does it.
//!
//! llama.cpp does not run the pre-tokenizer regexes from `tokenizer.json` through a regex
//! engine. For the common ones (GPT-2, Llama 3, Qwen 2) it has hand-written scanners whose
//! behaviour differs from a real regex in small ways (which characters count as white space,
//! how `\s+(?!\S)` ends at a segment edge, ...), and the rest go through C++ `std::regex` on a
//! text where every non-ASCII codepoint has been collapsed to one byte standing for its
//! category. A regex crate would give different words on some inputs, and so different token
//! ids, so each rule llama.cpp uses is implemented here as a scanner with llama.cpp's semantics.
//!
//! Rules run in sequence: each cuts every segment left by the previous one into smaller
//! segments; no rule ever joins across a cut.

use std::ops::Range;

use crate::unicode::{CharClass, char_class};

/// One step of a pre-tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SplitRule {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// Llama 3's rule with single digits: `\p{N}` instead of `\p{N}{1,3}`.
    Qwen2,
    /// Qwen 2's rule where letter runs also take combining marks (`[\p{L}\p{M}]+`).
    Qwen35,
    /// `[^\n]+|[\n]+`
    NewlineRuns,
    /// Every character of the set on its own (`\p{N}`, `[\r\n]`).
    Single(CharSet),
    /// Longest runs of the set (`\p{N}+`, `[\p{P}\$\+<=>\^~\|]+`).
    Run(CharSet),
    /// An optional character of the first set, then a run of the second (`\s?\p{L}+`).
    OptionalPrefixThenRun(CharSet, CharSet),
    /// `[0-9][0-9][0-9]`
    AsciiDigitTriples,
}

/// A character class of one of llama.cpp's `std::regex` rules. llama.cpp runs those on a text
/// where non-ASCII white space has become `\v`, so white space never matches another class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CharSet {
    /// `\p{N}`
    Number,
    /// `\p{L}`
    Letter,
    /// `\p{P}`
    Punctuation,
    /// `\s`
    Whitespace,
    /// `[\r\n]`
    CarriageReturnOrNewline,
    /// `[\p{P}\$\+<=>\^~\|]`, the default BPE pre-tokenizer's first rule.
    PunctuationAndAsciiMath,
    /// `[\p{P}\$\+<=>\^~\|`]`, Falcon's first rule.
    PunctuationAndAsciiMathAndBacktick,
    /// `[一-龥ࠀ-一가-퟿]`, DeepSeek Coder's CJK rule.
    DeepseekCjk,
}

impl CharSet {
    fn contains(self, c: char, class: CharClass) -> bool {
        match self {
            CharSet::Number => class.is_number(),
            CharSet::Letter => class.is_letter(),
            CharSet::Punctuation => class.is_punctuation(),
            CharSet::Whitespace => class.is_whitespace(),
            CharSet::CarriageReturnOrNewline => c == '\r' || c == '\n',
            CharSet::PunctuationAndAsciiMath => {
                class.is_punctuation() || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
            }
            CharSet::PunctuationAndAsciiMathAndBacktick => {
                class.is_punctuation() || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|' | '`')
            }
            CharSet::DeepseekCjk => {
                // `一-龥` and `ࠀ-一` join into U+0800..=U+9FA5. llama.cpp matches this class
                // against a text where non-ASCII white space was replaced by `\v`, so the
                // spaces inside the range (U+2000.., U+3000) don't match.
                matches!(c, '\u{0800}'..='\u{9fa5}' | '\u{ac00}'..='\u{d7ff}') && !class.is_whitespace()
            }
        }
    }
}

/// Splits `text` by `rules` and returns the words as byte ranges of `text`, in order, covering
/// all of it.
pub(crate) fn split_words(text: &str, rules: &[SplitRule]) -> Vec<Range<usize>> {
    let chars: Vec<char> = text.chars().collect();
    let classes: Vec<CharClass> = chars.iter().map(|&c| char_class(c)).collect();
    let text = Codepoints { chars: &chars, classes: &classes };

    // Segment lengths in codepoints; the whole text is one segment to begin with.
    let mut lengths = vec![chars.len()];
    for &rule in rules {
        let mut next = Vec::with_capacity(lengths.len());
        let mut start = 0;
        for &len in &lengths {
            let end = start + len;
            let mut cutter = Cutter { prev_end: start, lengths: &mut next };
            match rule {
                SplitRule::Gpt2 => split_gpt2(text, start..end, &mut cutter),
                SplitRule::Llama3 => split_llama3_like(text, start..end, 3, false, &mut cutter),
                SplitRule::Qwen2 => split_llama3_like(text, start..end, 1, false, &mut cutter),
                SplitRule::Qwen35 => split_llama3_like(text, start..end, 1, true, &mut cutter),
                SplitRule::NewlineRuns => split_newline_runs(text, start..end, &mut cutter),
                SplitRule::Single(set) => split_by_matches(start..end, &mut cutter, |p| {
                    set.contains(chars[p], classes[p]).then_some(p + 1)
                }),
                SplitRule::Run(set) => split_by_matches(start..end, &mut cutter, |p| {
                    let run = run_end(text, p, end, set);
                    (run > p).then_some(run)
                }),
                SplitRule::OptionalPrefixThenRun(prefix, set) => {
                    split_by_matches(start..end, &mut cutter, |p| {
                        // `x?y+` tries the greedy `x` first and gives it back if `y+` then fails.
                        if prefix.contains(chars[p], classes[p]) && p + 1 < end {
                            let run = run_end(text, p + 1, end, set);
                            if run > p + 1 {
                                return Some(run);
                            }
                        }
                        let run = run_end(text, p, end, set);
                        (run > p).then_some(run)
                    })
                }
                SplitRule::AsciiDigitTriples => split_by_matches(start..end, &mut cutter, |p| {
                    let triple = p + 3 <= end && chars[p..p + 3].iter().all(char::is_ascii_digit);
                    triple.then_some(p + 3)
                }),
            }
            start = end;
        }
        lengths = next;
    }

    let mut byte_offsets = Vec::with_capacity(chars.len() + 1);
    let mut offset = 0;
    for c in &chars {
        byte_offsets.push(offset);
        offset += c.len_utf8();
    }
    byte_offsets.push(offset);

    let mut words = Vec::with_capacity(lengths.len());
    let mut start = 0;
    for len in lengths {
        words.push(byte_offsets[start]..byte_offsets[start + len]);
        start += len;
    }
    words
}

#[derive(Clone, Copy)]
struct Codepoints<'a> {
    chars: &'a [char],
    classes: &'a [CharClass],
}

/// Records the cuts inside one segment as segment lengths.
struct Cutter<'a> {
    prev_end: usize,
    lengths: &'a mut Vec<usize>,
}

impl Cutter<'_> {
    /// Ends a word at `end` (a no-op if it would be empty).
    fn cut(&mut self, end: usize) {
        if end > self.prev_end {
            self.lengths.push(end - self.prev_end);
        }
        self.prev_end = end;
    }
}

fn run_end(text: Codepoints, mut pos: usize, end: usize, set: CharSet) -> usize {
    while pos < end && set.contains(text.chars[pos], text.classes[pos]) {
        pos += 1;
    }
    pos
}

/// `std::regex_iterator` over one segment: the matches and the gaps between them each become a
/// word. `match_at(p)` gives the end of a match starting at `p`, if one does.
fn split_by_matches(
    segment: Range<usize>,
    cutter: &mut Cutter,
    mut match_at: impl FnMut(usize) -> Option<usize>,
) {
    let mut pos = segment.start;
    while pos < segment.end {
        match match_at(pos) {
            Some(match_end) => {
                cutter.cut(pos);
                cutter.cut(match_end);
                pos = match_end;
            }
            None => pos += 1,
        }
    }
    cutter.cut(segment.end);
}

fn split_newline_runs(text: Codepoints, segment: Range<usize>, cutter: &mut Cutter) {
    let mut pos = segment.start;
    while pos < segment.end {
        let newline = text.chars[pos] == '\n';
        while pos < segment.end && (text.chars[pos] == '\n') == newline {
            pos += 1;
        }
        cutter.cut(pos);
    }
}

/// Looks at codepoints of one segment; positions outside it read as "nothing".
struct Segment<'a> {
    text: Codepoints<'a>,
    range: Range<usize>,
}

impl Segment<'_> {
    fn char_at(&self, pos: usize) -> Option<char> {
        self.range.contains(&pos).then(|| self.text.chars[pos])
    }

    fn class_at(&self, pos: usize) -> CharClass {
        if self.range.contains(&pos) { self.text.classes[pos] } else { CharClass::default() }
    }
}

/// llama.cpp's scanner for the GPT-2 regex.
fn split_gpt2(text: Codepoints, range: Range<usize>, cutter: &mut Cutter) {
    let end = range.end;
    let seg = Segment { text, range: range.clone() };
    let mut pos = range.start;
    while pos < end {
        let c = text.chars[pos];
        let class = text.classes[pos];

        // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive here)
        if c == '\'' && pos + 1 < end {
            let next = text.chars[pos + 1];
            if matches!(next, 's' | 't' | 'm' | 'd') {
                pos += 2;
                cutter.cut(pos);
                continue;
            }
            if pos + 2 < end {
                let after = text.chars[pos + 2];
                if matches!((next, after), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += 3;
                    cutter.cut(pos);
                    continue;
                }
            }
        }

        // An optional leading space, then a run of letters, of digits, or of other symbols.
        let mut look = if c == ' ' { seg.class_at(pos + 1) } else { class };
        let runs: [fn(CharClass) -> bool; 3] = [CharClass::is_letter, CharClass::is_number, |k| {
            !(k.is_whitespace() || k.is_letter() || k.is_number()) && k.exists()
        }];
        if let Some(in_run) = runs.into_iter().find(|in_run| in_run(look)) {
            if c == ' ' {
                pos += 1;
            }
            while in_run(look) {
                pos += 1;
                look = seg.class_at(pos);
            }
            cutter.cut(pos);
            continue;
        }

        pos = split_whitespace(&seg, pos, false, cutter);
    }
}

/// llama.cpp's scanner for the Llama 3 regex and its Qwen variants.
fn split_llama3_like(
    text: Codepoints,
    range: Range<usize>,
    max_digits: usize,
    marks_join_letters: bool,
    cutter: &mut Cutter,
) {
    let end = range.end;
    let seg = Segment { text, range: range.clone() };
    let wordish = |k: CharClass| k.is_letter() || (marks_join_letters && k.is_mark());
    let symbolish = |k: CharClass| !(k.is_whitespace() || wordish(k) || k.is_number());
    let mut pos = range.start;
    while pos < end {
        let c = text.chars[pos];
        let class = text.classes[pos];

        // (?i:'s|'t|'re|'ve|'m|'ll|'d). llama.cpp lowercases with the Unicode table, but no
        // non-ASCII codepoint lowercases to one of these ASCII letters.
        if c == '\'' && pos + 1 < end {
            let next = text.chars[pos + 1].to_ascii_lowercase();
            if matches!(next, 's' | 't' | 'm' | 'd') {
                pos += 2;
                cutter.cut(pos);
                continue;
            }
            if pos + 2 < end {
                let after = text.chars[pos + 2].to_ascii_lowercase();
                if matches!((next, after), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += 3;
                    cutter.cut(pos);
                    continue;
                }
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(c == '\r' || c == '\n' || class.is_number())
            && (wordish(class) || wordish(seg.class_at(pos + 1)))
        {
            pos += 1;
            while wordish(seg.class_at(pos)) {
                pos += 1;
            }
            cutter.cut(pos);
            continue;
        }

        // \p{N}{1,max_digits}
        if class.is_number() {
            let mut group_start = pos;
            while seg.class_at(pos).is_number() {
                pos += 1;
                if pos - group_start >= max_digits {
                    cutter.cut(pos);
                    group_start = pos;
                }
            }
            cutter.cut(pos);
            continue;
        }

        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'. llama.cpp tests the current codepoint for existence, not
        // the looked-at one, so a lone trailing space ends up here; it makes the same word.
        let mut look = if c == ' ' { seg.class_at(pos + 1) } else { class };
        if symbolish(look) && class.exists() {
            if c == ' ' {
                pos += 1;
            }
            while symbolish(look) && look.exists() {
                pos += 1;
                look = seg.class_at(pos);
            }
            while matches!(seg.char_at(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            cutter.cut(pos);
            continue;
        }

        pos = split_whitespace(&seg, pos, true, cutter);
    }
}

/// The white-space alternatives shared by the scanners: `\s*[\r\n]+` (if `newline_runs`),
/// `\s+(?!\S)`, `\s+`, and otherwise a single codepoint. Returns the new position.
fn split_whitespace(seg: &Segment, pos: usize, newline_runs: bool, cutter: &mut Cutter) -> usize {
    let mut count = 0;
    let mut after_last_newline = None;
    while seg.class_at(pos + count).is_whitespace() {
        if matches!(seg.char_at(pos + count), Some('\r' | '\n')) {
            after_last_newline = Some(pos + count + 1);
        }
        count += 1;
    }
    let new_pos = match after_last_newline {
        Some(newline_end) if newline_runs => newline_end,
        // Leave the last space to start the next word, unless the segment ends here.
        _ if count > 1 && seg.char_at(pos + count).is_some() => pos + count - 1,
        _ if count > 0 => pos + count,
        _ => pos + 1,
    };
    cutter.cut(new_pos);
    new_pos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words<'a>(text: &'a str, rules: &[SplitRule]) -> Vec<&'a str> {
        split_words(text, rules).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn gpt2_splits_like_the_regex() {
        assert_eq!(
            words("Hello, y'all! It's  3 o'clock\n\n  ok", &[SplitRule::Gpt2]),
            ["Hello", ",", " y", "'", "all", "!", " It", "'s", " ", " 3", " o", "'", "clock", "\n\n ", " ok"]
        );
        assert_eq!(words("a   ", &[SplitRule::Gpt2]), ["a", "   "]);
    }

    #[test]
    fn llama3_groups_digits_by_three_and_keeps_newlines_together() {
        assert_eq!(
            words("1234567 I'M\r\n\n  x!!\n", &[SplitRule::Llama3]),
            ["123", "456", "7", " I", "'M", "\r\n\n", " ", " x", "!!\n"]
        );
    }

    #[test]
    fn qwen2_isolates_digits() {
        assert_eq!(words("ab 12", &[SplitRule::Qwen2]), ["ab", " ", "1", "2"]);
    }

    #[test]
    fn regex_rules_keep_gaps_as_words() {
        assert_eq!(words("a1b22", &[SplitRule::Single(CharSet::Number)]), ["a", "1", "b", "2", "2"]);
        assert_eq!(words("a1b22", &[SplitRule::Run(CharSet::Number)]), ["a", "1", "b", "22"]);
        assert_eq!(words("12345", &[SplitRule::AsciiDigitTriples]), ["123", "45"]);
        assert_eq!(
            words("x yz\t", &[SplitRule::OptionalPrefixThenRun(CharSet::Whitespace, CharSet::Letter)]),
            ["x", " yz", "\t"]
        );
    }

    #[test]
    fn rules_do_not_join_across_earlier_cuts() {
        assert_eq!(
            words("a 1 2", &[SplitRule::Single(CharSet::Number), SplitRule::Gpt2]),
            ["a", " ", "1", " ", "2"]
        );
    }

    #[test]
    fn empty_text_has_no_words() {
        assert!(words("", &[SplitRule::Gpt2]).is_empty());
    }
}
