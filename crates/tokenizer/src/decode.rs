//! Turning token ids back into text: llama.cpp's space clean-up, and streaming UTF-8 output.

use crate::Tokenizer;

/// llama.cpp's `clean_up_tokenization_spaces` passes, done in place exactly as llama.cpp does
/// them (including how one pass's edits are seen by its later steps):
/// 1. drop the space before `?`, `!`, `.`, `,`;
/// 2. turn `" ' "` into `"'"`;
/// 3. drop the space before `'s`, `'m`, `'re`, `'ve`.
pub(crate) fn clean_up_spaces(text: &mut Vec<u8>) {
    if text.is_empty() {
        return;
    }

    let len = text.len();
    let mut kept = 1;
    for i in 1..len {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            kept -= 1;
        }
        text[kept] = x;
        kept += 1;
    }
    text.truncate(kept);

    let len = text.len();
    let mut kept = 1;
    let mut i = 1;
    while i < len {
        let x = text[i];
        if x == b'\'' && i + 1 < len && text[i - 1] == b' ' && text[i + 1] == b' ' {
            kept -= 1;
            i += 1;
            // llama.cpp blanks the space after the apostrophe; the next step sees the blank.
            text[i] = 0;
        }
        text[kept] = x;
        kept += 1;
        i += 1;
    }
    text.truncate(kept);

    let len = text.len();
    let mut kept = 1;
    for i in 1..len {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < len {
            let x1 = text[i + 1];
            let drop_space = match x1 {
                b't' | b'd' => false,
                b's' | b'm' => true,
                _ => i + 2 < len && matches!((x1, text[i + 2]), (b'r', b'e') | (b'v', b'e')),
            };
            if drop_space {
                kept -= 1;
            }
        }
        text[kept] = x;
        kept += 1;
    }
    text.truncate(kept);
}

/// Streams text token by token and never yields half a UTF-8 character: bytes of an incomplete
/// character are held until the next token completes it; invalid sequences become U+FFFD.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    special: bool,
}

impl StreamDecoder {
    /// A decoder that hides control tokens, as a chat shows its output.
    pub fn new() -> Self {
        StreamDecoder::default()
    }

    /// Whether control tokens are written out as their text (`<|im_end|>`) instead of hidden.
    pub fn with_special(mut self, special: bool) -> Self {
        self.special = special;
        self
    }

    /// Adds one token and returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(&tok.token_bytes(id, self.special));
        self.take_complete()
    }

    /// Returns what is still held; an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    // `valid_up_to` marks the end of valid UTF-8.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match error.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = after.get(bad..).unwrap_or_default();
                        }
                        // The bytes at the end may still become a character.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let held = rest.len();
        let consumed = self.pending.len() - held;
        self.pending.drain(..consumed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cleaned(text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        clean_up_spaces(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn clean_up_matches_llama_cpp() {
        assert_eq!(cleaned("Hello , world !"), "Hello, world!");
        assert_eq!(cleaned("a ' b"), "a'b");
        assert_eq!(cleaned("it 's I 'm we 're they 've I 'll don 't"), "it's I'm we're they've I 'll don 't");
        assert_eq!(cleaned(" ."), ".");
        assert_eq!(cleaned(""), "");
        assert_eq!(cleaned("x  ,"), "x ,");
    }
}
