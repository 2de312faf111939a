//! tiktoken-style BPE from a rank file (Qwen v1's `qwen.tiktoken`, GLM-4's `tokenizer.model`:
//! one `base64(bytes) rank` per line). Encoding is tiktoken's own: within each pre-tokenized word, repeatedly merge the
//! adjacent pair whose concatenation has the lowest rank (leftmost on ties) until no pair is a
//! token; the ids are the ranks. The family's special tokens follow the ranks.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;

use crate::pretokenize::{SplitRule, split_words};
use crate::unicode::byte_to_char;
use crate::vocab::{Attr, ModelNames, PieceStyle, SpecialIds, Vocab, VocabFlags};
use crate::{Model, Tokenizer, TokenizerError};

pub(crate) struct TiktokenModel {
    ranks: HashMap<Vec<u8>, u32>,
    rules: Vec<SplitRule>,
}

impl TiktokenModel {
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        for range in split_words(text, &self.rules) {
            self.encode_word(text[range].as_bytes(), out);
        }
    }

    fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        if let Some(&id) = self.ranks.get(word) {
            out.push(id);
            return;
        }
        // Part boundaries: part i is word[bounds[i]..bounds[i + 1]].
        let mut bounds: Vec<usize> = (0..=word.len()).collect();
        loop {
            let best = (0..bounds.len().saturating_sub(2))
                .filter_map(|i| self.ranks.get(&word[bounds[i]..bounds[i + 2]]).map(|&r| (r, i)))
                .min();
            match best {
                Some((_, i)) => {
                    bounds.remove(i + 1);
                }
                None => break,
            }
        }
        for pair in bounds.windows(2) {
            // Every single byte has a rank in a complete file; a byte without one has no id.
            if let Some(&id) = self.ranks.get(&word[pair[0]..pair[1]]) {
                out.push(id);
            }
        }
    }
}

/// Which family's tiktoken file: it fixes the pre-tokenizer and the special tokens that follow
/// the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankFlavor {
    /// Qwen v1 `qwen.tiktoken`: Qwen's split (single digits), `<|endoftext|>`, `<|im_start|>`,
    /// `<|im_end|>`, `<|extra_0..204|>` (`tokenization_qwen.py`).
    Qwen,
    /// GLM-4 `tokenizer.model`: Llama 3's split (up to three digits), then `<|endoftext|>`,
    /// `[MASK]`, `[gMASK]`, `[sMASK]`, `<sop>`, `<eop>`, the role tokens and the image/video
    /// markers (`tokenization_chatglm.py` of GLM-4-9B).
    Glm4,
}

impl RankFlavor {
    fn specials(self) -> Vec<String> {
        match self {
            RankFlavor::Qwen => {
                let mut specials: Vec<String> =
                    ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
                specials.extend((0..205).map(|i| format!("<|extra_{i}|>")));
                specials
            }
            RankFlavor::Glm4 => [
                "<|endoftext|>",
                "[MASK]",
                "[gMASK]",
                "[sMASK]",
                "<sop>",
                "<eop>",
                "<|system|>",
                "<|user|>",
                "<|assistant|>",
                "<|observation|>",
                "<|begin_of_image|>",
                "<|end_of_image|>",
                "<|begin_of_video|>",
                "<|end_of_video|>",
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    fn rules(self) -> Vec<SplitRule> {
        match self {
            RankFlavor::Qwen => vec![SplitRule::Qwen2],
            RankFlavor::Glm4 => vec![SplitRule::Llama3],
        }
    }
}

/// Largest rank file read (Qwen's is 2.5 MB).
const MAX_RANK_FILE: u64 = 64 << 20;

pub(crate) fn tokenizer_from_qwen_tiktoken(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let bad = |message: String| TokenizerError::File { path: path.to_path_buf(), message };
    let len = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?.len();
    if len > MAX_RANK_FILE {
        return Err(bad(format!("{len} bytes is too large for a rank file")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    tokenizer_from_tiktoken_text(&text, RankFlavor::Qwen).map_err(|e| match e {
        TokenizerError::File { message, .. } => bad(message),
        other => other,
    })
}

/// A rank file's text with the given family's split and special tokens (errors name no path).
pub(crate) fn tokenizer_from_tiktoken_text(
    text: &str,
    flavor: RankFlavor,
) -> Result<Tokenizer, TokenizerError> {
    let bad = |message: String| TokenizerError::File { path: "rank file".into(), message };
    let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
    let mut ranks = HashMap::new();
    for (line_no, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |m: &str| bad(format!("line {}: {m}", line_no + 1));
        let (token, rank) = line.split_once(' ').ok_or_else(|| at("expected `base64 rank`"))?;
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(token).map_err(|e| at(&e.to_string()))?;
        let rank: u32 = rank.trim().parse().map_err(|_| at("rank is not a number"))?;
        let index = rank as usize;
        // Ranks are dense in real files; allow small gaps, never a rank far past the line count.
        if index > 2 * (line_no + 1) + 256 {
            return Err(at("rank far beyond the number of lines"));
        }
        if index >= by_rank.len() {
            by_rank.resize(index + 1, None);
        }
        if by_rank[index].is_some() || ranks.insert(bytes.clone(), rank).is_some() {
            return Err(at("rank or token appears twice"));
        }
        by_rank[index] = Some(bytes);
    }
    if by_rank.is_empty() {
        return Err(TokenizerError::EmptyVocab);
    }
    let specials = flavor.specials();
    let n = by_rank.len() + specials.len();
    let mut texts = Vec::with_capacity(n);
    let mut attrs = Vec::with_capacity(n);
    for (i, bytes) in by_rank.iter().enumerate() {
        match bytes {
            Some(b) => {
                texts.push(b.iter().copied().map(byte_to_char).collect());
                attrs.push(Attr::NORMAL);
            }
            None => {
                texts.push(format!("<|unused_rank_{i}|>"));
                attrs.push(Attr::UNUSED);
            }
        }
    }
    for s in &specials {
        texts.push(s.clone());
        attrs.push(Attr::CONTROL);
    }
    let eod = by_rank.len() as u32;
    let special_id = |t: &str| specials.iter().position(|s| s == t).map(|i| eod + i as u32);
    // Neither family has a BOS; <|endoftext|> ends documents. Qwen's chat turns end with
    // <|im_end|> (an end token by its name); GLM-4 stops at <|user|> and <|observation|>.
    let special = SpecialIds {
        eos: Some(eod),
        pad: Some(eod),
        eot: special_id("<|user|>"),
        eom: special_id("<|observation|>"),
        ..SpecialIds::default()
    };
    let flags = VocabFlags { add_bos: false, add_space_prefix: false, clean_spaces: false };
    let vocab =
        Vocab::new(texts, vec![0.0; n], attrs, special, flags, PieceStyle::ByteLevel, &ModelNames::default());
    let model = TiktokenModel { ranks, rules: flavor.rules() };
    Ok(Tokenizer {
        vocab,
        model: Model::Tiktoken(model),
        collapse_whitespace: false,
        prefix_once: false,
        cut_at_control: false,
        glm_rewrite: false,
    })
}
