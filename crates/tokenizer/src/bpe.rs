//! Byte-level BPE as llama.cpp's `llm_tokenizer_bpe` runs it.
//!
//! We merge ourselves rather than through the `tokenizers` crate because llama.cpp's loop has
//! its own edge behaviour that must be matched id for id: `ignore_merges` (a whole word that is
//! in the vocabulary is taken as is), merge ranks keyed by the pair of symbol *strings*, ties
//! broken by position, and for a final symbol missing from the vocabulary a fallback to its
//! single bytes (dropping those that have no token either).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::pretokenize::{SplitRule, split_words};
use crate::unicode::byte_to_char;
use crate::vocab::Vocab;

pub(crate) struct BpeModel {
    /// Merge rank by the merge's text, `"left right"`.
    ranks: HashMap<String, u32>,
    rules: Vec<SplitRule>,
    ignore_merges: bool,
}

/// A run of bytes of the word being merged, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl BpeModel {
    /// `merges` are the `tokenizer.ggml.merges` lines, each `"left right"`, highest priority
    /// first. A later duplicate keeps the first rank.
    pub(crate) fn new(merges: Vec<String>, rules: Vec<SplitRule>, ignore_merges: bool) -> BpeModel {
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.into_iter().enumerate() {
            ranks.entry(merge).or_insert(rank as u32);
        }
        BpeModel { ranks, rules, ignore_merges }
    }

    /// Tokenizes a piece of text that contains no special tokens.
    pub(crate) fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut word = String::new();
        let mut scratch = Scratch::default();
        for range in split_words(text, &self.rules) {
            word.clear();
            word.extend(text[range].bytes().map(byte_to_char));
            self.encode_word(vocab, &word, &mut scratch, out);
        }
    }

    fn encode_word(&self, vocab: &Vocab, word: &str, scratch: &mut Scratch, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges
            && let Some(id) = vocab.id(word)
        {
            out.push(id);
            return;
        }

        let symbols = &mut scratch.symbols;
        symbols.clear();
        for (start, c) in word.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: index.checked_sub(1),
                next: (start + c.len_utf8() < word.len()).then_some(index + 1),
            });
        }

        // Lowest rank first, then leftmost.
        let queue = &mut scratch.queue;
        queue.clear();
        let key = &mut scratch.key;
        for left in 1..symbols.len() {
            self.push_pair(word, symbols, left - 1, left, key, queue);
        }
        while let Some(Reverse((_, left, right, len))) = queue.pop() {
            let (l, r) = (symbols[left], symbols[right]);
            // Skip pairs that an earlier merge has changed.
            if l.len == 0 || r.len == 0 || l.len + r.len != len {
                continue;
            }
            symbols[left].len += r.len;
            symbols[right].len = 0;
            symbols[left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(left);
            }
            if let Some(prev) = symbols[left].prev {
                self.push_pair(word, symbols, prev, left, key, queue);
            }
            if let Some(next) = symbols[left].next {
                self.push_pair(word, symbols, left, next, key, queue);
            }
        }

        for symbol in symbols.iter().filter(|s| s.len > 0) {
            let text = &word[symbol.start..symbol.start + symbol.len];
            match vocab.id(text) {
                Some(id) => out.push(id),
                None => {
                    // Only a one-byte (ASCII) string can be looked up byte by byte.
                    for c in text.chars().filter(char::is_ascii) {
                        let mut utf8 = [0; 4];
                        if let Some(id) = vocab.id(c.encode_utf8(&mut utf8)) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }

    fn push_pair(
        &self,
        word: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        key: &mut String,
        queue: &mut BinaryHeap<Reverse<(u32, usize, usize, usize)>>,
    ) {
        let (l, r) = (symbols[left], symbols[right]);
        key.clear();
        key.push_str(&word[l.start..l.start + l.len]);
        key.push(' ');
        key.push_str(&word[r.start..r.start + r.len]);
        if let Some(&rank) = self.ranks.get(key.as_str()) {
            queue.push(Reverse((rank, left, right, l.len + r.len)));
        }
    }
}

/// Buffers reused from word to word.
#[derive(Default)]
struct Scratch {
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Reverse<(u32, usize, usize, usize)>>,
    key: String,
}
