//! SentencePiece BPE as llama.cpp's `llm_tokenizer_spm` runs it: start from single characters,
//! repeatedly merge the adjacent pair whose concatenation is the vocabulary token with the
//! highest score (leftmost on ties), and spell any leftover symbol that is not a token as
//! `<0xNN>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::vocab::Vocab;

pub(crate) struct SpmModel {
    /// The token for each byte: `<0xNN>`, or else the one-byte string itself.
    byte_tokens: Box<[Option<u32>; 256]>,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Bigram) -> Ordering {
        // Highest score first; on equal scores the leftmost pair. Scores compare as llama.cpp
        // compares floats, so a NaN ties with everything rather than panicking.
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Bigram) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Bigram) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl SpmModel {
    pub(crate) fn new(vocab: &Vocab) -> SpmModel {
        let mut byte_tokens = Box::new([None; 256]);
        for (byte, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = vocab.id(&format!("<0x{byte:02X}>")).or_else(|| {
                let byte = u8::try_from(byte).ok()?;
                byte.is_ascii().then(|| vocab.id(&char::from(byte).to_string())).flatten()
            });
        }
        SpmModel { byte_tokens }
    }

    /// Tokenizes text whose spaces are already escaped as `▁`.
    pub(crate) fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: index.checked_sub(1),
                next: (start + c.len_utf8() < text.len()).then_some(index + 1),
            });
        }

        let mut queue = BinaryHeap::new();
        for right in 1..symbols.len() {
            push_bigram(vocab, text, &symbols, right - 1, right, &mut queue);
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != bigram.len {
                continue;
            }
            symbols[bigram.left].len += r.len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(bigram.left);
            }
            if let Some(prev) = symbols[bigram.left].prev {
                push_bigram(vocab, text, &symbols, prev, bigram.left, &mut queue);
            }
            if let Some(next) = symbols[bigram.left].next {
                push_bigram(vocab, text, &symbols, bigram.left, next, &mut queue);
            }
        }

        let mut index = (!symbols.is_empty()).then_some(0);
        while let Some(i) = index {
            let symbol = symbols[i];
            let piece = &text[symbol.start..symbol.start + symbol.len];
            match vocab.id(piece) {
                Some(id) => out.push(id),
                None => {
                    for byte in piece.bytes() {
                        // llama.cpp throws when a byte has no token at all; the unknown token
                        // is the closest thing that does not fail.
                        if let Some(id) = self.byte_tokens[byte as usize].or(vocab.special.unk) {
                            out.push(id);
                        }
                    }
                }
            }
            index = symbol.next;
        }
    }
}

fn push_bigram(
    vocab: &Vocab,
    text: &str,
    symbols: &[Symbol],
    left: usize,
    right: usize,
    queue: &mut BinaryHeap<Bigram>,
) {
    let (l, r) = (symbols[left], symbols[right]);
    // Adjacent symbols cover a contiguous stretch of the text.
    let Some(pair) = text.get(l.start..r.start + r.len) else {
        return;
    };
    if let Some(id) = vocab.id(pair) {
        let score = vocab.scores.get(id as usize).copied().unwrap_or(0.0);
        queue.push(Bigram { score, left, right, len: pair.len() });
    }
}
