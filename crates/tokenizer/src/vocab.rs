//! The vocabulary: token strings, scores, attributes, special ids and the flags that steer
//! tokenization, independent of which file they were read from.

use std::collections::HashMap;

/// Token attributes, llama.cpp's `llama_token_attr` bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct Attr(u16);

impl Attr {
    pub(crate) const UNDEFINED: Attr = Attr(0);
    pub(crate) const UNKNOWN: Attr = Attr(1 << 0);
    pub(crate) const UNUSED: Attr = Attr(1 << 1);
    pub(crate) const NORMAL: Attr = Attr(1 << 2);
    pub(crate) const CONTROL: Attr = Attr(1 << 3);
    pub(crate) const USER_DEFINED: Attr = Attr(1 << 4);
    pub(crate) const BYTE: Attr = Attr(1 << 5);
    pub(crate) const LSTRIP: Attr = Attr(1 << 7);
    pub(crate) const RSTRIP: Attr = Attr(1 << 8);

    /// From a GGUF `tokenizer.ggml.token_type` value.
    pub(crate) fn from_token_type(token_type: i64) -> Attr {
        match token_type {
            1 => Attr::NORMAL,
            2 => Attr::UNKNOWN,
            3 => Attr::CONTROL,
            4 => Attr::USER_DEFINED,
            5 => Attr::UNUSED,
            6 => Attr::BYTE,
            _ => Attr::UNDEFINED,
        }
    }

    pub(crate) fn any(self, other: Attr) -> bool {
        self.0 & other.0 != 0
    }

    pub(crate) fn with(self, other: Attr) -> Attr {
        Attr(self.0 | other.0)
    }

    pub(crate) fn without(self, other: Attr) -> Attr {
        Attr(self.0 & !other.0)
    }
}

impl std::ops::BitOr for Attr {
    type Output = Attr;
    fn bitor(self, other: Attr) -> Attr {
        self.with(other)
    }
}

/// Special token ids, `None` where the vocabulary has none.
#[derive(Clone, Debug, Default)]
pub(crate) struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

pub(crate) struct Vocab {
    pub texts: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<Attr>,
    /// Text to id. If two tokens share a text, the later id wins, as in llama.cpp's map.
    pub ids: HashMap<String, u32>,
    pub special: SpecialIds,
    /// End-of-generation ids, ascending.
    pub eog: Vec<u32>,
    /// Control, user-defined and unknown tokens, longest text first: the order in which the
    /// text is searched for them.
    pub special_by_length: Vec<u32>,
    pub add_bos: bool,
    pub add_space_prefix: bool,
    /// llama.cpp's `clean_spaces` (`clean_up_tokenization_spaces`), applied when decoding.
    pub clean_spaces: bool,
    pieces: Pieces,
}

/// Every token's output bytes as llama.cpp's `token_to_piece(special = true)` gives them, in one
/// buffer.
#[derive(Debug, Default)]
struct Pieces {
    bytes: Vec<u8>,
    /// `bytes[ends[i - 1]..ends[i]]` is token `i`'s piece.
    ends: Vec<usize>,
}

/// How a token's piece is made from its text.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PieceStyle {
    /// SentencePiece: `▁` stands for a space, byte tokens are `<0xNN>`.
    SentencePiece,
    /// Byte-level BPE: every character stands for one byte through GPT-2's byte map.
    ByteLevel,
}

/// Token texts that end generation, from llama.cpp's list.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Names that pick per-token attributes, as llama.cpp reads them from `general.name`,
/// `tokenizer.ggml.pre` and `general.architecture`.
#[derive(Clone, Debug, Default)]
pub(crate) struct ModelNames {
    pub name: String,
    pub pre: String,
    pub architecture: String,
}

impl Vocab {
    /// Builds the vocabulary and derives everything llama.cpp derives at load time: the
    /// auto-detected special tokens and the attributes they force, the end-of-generation set,
    /// the special-token search order and the decoded pieces.
    pub(crate) fn new(
        texts: Vec<String>,
        scores: Vec<f32>,
        attrs: Vec<Attr>,
        mut special: SpecialIds,
        flags: VocabFlags,
        style: PieceStyle,
        names: &ModelNames,
    ) -> Vocab {
        let mut ids = HashMap::with_capacity(texts.len());
        for (id, text) in texts.iter().enumerate() {
            ids.insert(text.clone(), id as u32);
        }
        let mut attrs = attrs;

        // Auto-detect special tokens by their text. llama.cpp walks a hash map, so with several
        // candidates its pick is arbitrary; we take them in id order.
        let mut ordered: Vec<(&str, u32)> = ids.iter().map(|(t, &id)| (t.as_str(), id)).collect();
        ordered.sort_unstable_by_key(|&(_, id)| id);
        let detections: [(&mut Option<u32>, &[&str]); 8] = [
            (&mut special.eot, EOT_TEXTS),
            (&mut special.eom, EOM_TEXTS),
            (&mut special.fim_pre, FIM_PRE_TEXTS),
            (&mut special.fim_suf, FIM_SUF_TEXTS),
            (&mut special.fim_mid, FIM_MID_TEXTS),
            (&mut special.fim_pad, FIM_PAD_TEXTS),
            (&mut special.fim_rep, FIM_REP_TEXTS),
            (&mut special.fim_sep, FIM_SEP_TEXTS),
        ];
        for (slot, candidates) in detections {
            if slot.is_none()
                && let Some(&(_, id)) = ordered.iter().find(|(text, _)| candidates.contains(text))
            {
                *slot = Some(id);
                attrs[id as usize] = attrs[id as usize].with(Attr::CONTROL);
            }
        }

        // Control tokens named "unused" are placeholders.
        for (text, attr) in texts.iter().zip(attrs.iter_mut()) {
            if attr.any(Attr::CONTROL) && text.contains("unused") {
                *attr = attr.with(Attr::UNUSED);
            }
        }

        let mut eog: Vec<u32> =
            [special.fim_pad, special.fim_rep, special.fim_sep].into_iter().flatten().collect();
        for &(text, id) in &ordered {
            if EOG_TEXTS.contains(&text) {
                eog.push(id);
                attrs[id as usize] = attrs[id as usize].with(Attr::CONTROL);
            }
        }
        // gpt-oss: these must always be rendered.
        for &(text, id) in &ordered {
            if matches!(text, "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>") {
                attrs[id as usize] = Attr::USER_DEFINED;
            }
        }
        eog.extend([special.eos, special.eot, special.eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();

        let eog_text = |id: u32| texts[id as usize].as_str();
        let has = |eog: &[u32], wanted: &[&str]| eog.iter().any(|&id| wanted.contains(&eog_text(id)));
        // o200k_harmony and solar-open: "<|end|>" ends a message, not the generation.
        let end_id = eog.iter().copied().find(|&id| eog_text(id) == "<|end|>");
        let calls = ["<|call|>", "<|calls|>"];
        if let Some(end_id) = end_id
            && ((has(&eog, &["<|return|>"]) && has(&eog, &calls))
                || (has(&eog, &calls) && has(&eog, &["<|flush|>"])))
        {
            eog.retain(|&id| id != end_id);
            attrs[end_id as usize] = Attr::USER_DEFINED;
        }
        // gemma4 and plamo have a normal "</s>".
        let s_id = eog.iter().copied().find(|&id| eog_text(id) == "</s>");
        if let Some(s_id) = s_id
            && has(&eog, &["<|tool_response>", "<|plamo:eos|>"])
        {
            eog.retain(|&id| id != s_id);
            attrs[s_id as usize] = Attr::NORMAL;
        }

        let mut special_by_length: Vec<u32> = (0..texts.len() as u32)
            .filter(|&id| attrs[id as usize].any(Attr::CONTROL | Attr::USER_DEFINED | Attr::UNKNOWN))
            .collect();
        // llama.cpp's sort is not stable; equal lengths keep id order here.
        special_by_length.sort_by_key(|&id| std::cmp::Reverse(texts[id as usize].len()));

        let pieces = Pieces::build(&texts, &attrs, style);
        set_stripping_attributes(&mut attrs, &ids, &special_by_length, names);

        Vocab {
            texts,
            scores,
            attrs,
            ids,
            special,
            eog,
            special_by_length,
            add_bos: flags.add_bos,
            add_space_prefix: flags.add_space_prefix,
            clean_spaces: flags.clean_spaces,
            pieces,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }

    pub(crate) fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub(crate) fn attr(&self, id: u32) -> Attr {
        self.attrs.get(id as usize).copied().unwrap_or_default()
    }

    /// Gives some tokens other output bytes than their text (ChatGLM-6B's `<n>` is a line
    /// break): the pieces are rebuilt with `replace(id)` where it returns bytes.
    pub(crate) fn override_pieces(&mut self, replace: impl Fn(&str) -> Option<Vec<u8>>) {
        let mut pieces = Pieces { bytes: Vec::new(), ends: Vec::with_capacity(self.texts.len()) };
        for (id, text) in self.texts.iter().enumerate() {
            match replace(text) {
                Some(bytes) => pieces.bytes.extend_from_slice(&bytes),
                None => pieces.bytes.extend_from_slice(self.piece(id as u32)),
            }
            pieces.ends.push(pieces.bytes.len());
        }
        self.pieces = pieces;
    }

    /// The piece with `special = true`; empty for an id out of range.
    pub(crate) fn piece(&self, id: u32) -> &[u8] {
        let id = id as usize;
        let Some(&end) = self.pieces.ends.get(id) else {
            return &[];
        };
        let start = if id == 0 { 0 } else { self.pieces.ends[id - 1] };
        &self.pieces.bytes[start..end]
    }
}

/// Flags read from the file or defaulted per tokenizer type.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VocabFlags {
    pub add_bos: bool,
    pub add_space_prefix: bool,
    pub clean_spaces: bool,
}

impl Pieces {
    fn build(texts: &[String], attrs: &[Attr], style: PieceStyle) -> Pieces {
        let mut pieces = Pieces { bytes: Vec::new(), ends: Vec::with_capacity(texts.len()) };
        for (text, &attr) in texts.iter().zip(attrs) {
            append_piece(&mut pieces.bytes, text, attr, style);
            pieces.ends.push(pieces.bytes.len());
        }
        pieces
    }
}

/// llama.cpp's `token_to_piece` with `special = true`.
fn append_piece(out: &mut Vec<u8>, text: &str, attr: Attr, style: PieceStyle) {
    if attr.any(Attr::UNKNOWN | Attr::CONTROL | Attr::USER_DEFINED) {
        out.extend_from_slice(text.as_bytes());
    } else if attr.any(Attr::NORMAL) {
        match style {
            PieceStyle::SentencePiece => out.extend_from_slice(text.replace('▁', " ").as_bytes()),
            PieceStyle::ByteLevel => {
                for c in text.chars() {
                    match crate::unicode::char_to_byte(c) {
                        Some(byte) => out.push(byte),
                        None => {
                            // llama.cpp writes this marker (with the whole token text) for a
                            // character outside the byte map.
                            out.extend_from_slice(b"[UNK_BYTE_0x");
                            let mut utf8 = [0; 4];
                            for byte in c.encode_utf8(&mut utf8).bytes() {
                                out.extend_from_slice(format!("{byte:02x}").as_bytes());
                            }
                            out.extend_from_slice(text.as_bytes());
                            out.push(b']');
                        }
                    }
                }
            }
        }
    } else if attr.any(Attr::BYTE) {
        out.push(byte_token_value(text));
    }
    // Unused and undefined tokens have no piece.
}

/// The byte a `<0xNN>` token stands for. Like llama.cpp's `strtol` on the two characters after
/// `<0x`, reading stops at the first non-hex digit.
pub(crate) fn byte_token_value(text: &str) -> u8 {
    let digits = text.as_bytes().get(3..5).unwrap_or(&[]);
    let mut value = 0u8;
    for &d in digits {
        match (d as char).to_digit(16) {
            Some(v) => value = value.wrapping_mul(16).wrapping_add(v as u8),
            None => break,
        }
    }
    value
}

/// llama.cpp sets left/right stripping of spaces around some special tokens by model name.
fn set_stripping_attributes(
    attrs: &mut [Attr],
    ids: &HashMap<String, u32>,
    special_by_length: &[u32],
    names: &ModelNames,
) {
    let set = |attrs: &mut [Attr], text: &str, attr: Attr, on: bool| {
        if let Some(&id) = ids.get(text) {
            let current = attrs[id as usize];
            attrs[id as usize] = if on { current.with(attr) } else { current.without(attr) };
        }
    };
    let name = names.name.to_ascii_lowercase();
    let contains_any = |haystack: &str, needles: &[&str]| needles.iter().any(|n| haystack.contains(n));
    if contains_any(&names.pre, &["jina-v2-de", "jina-v2-es", "jina-v2-code"])
        || contains_any(&names.architecture, &["nomic-bert-moe", "jina-bert-v3"])
    {
        set(attrs, "<mask>", Attr::LSTRIP, true);
    } else if contains_any(&name, &["phi-3", "phi3"]) {
        for &id in special_by_length {
            attrs[id as usize] = attrs[id as usize].with(Attr::RSTRIP);
        }
        set(attrs, "</s>", Attr::RSTRIP, true);
        for text in ["<unk>", "<s>", "<|endoftext|>"] {
            set(attrs, text, Attr::RSTRIP, false);
        }
    } else if contains_any(&name, &["modern-bert"]) {
        set(attrs, "[MASK]", Attr::LSTRIP, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_token_values() {
        assert_eq!(byte_token_value("<0x0A>"), 0x0a);
        assert_eq!(byte_token_value("<0xFF>"), 0xff);
        assert_eq!(byte_token_value("<0xG1>"), 0);
        assert_eq!(byte_token_value("<0"), 0);
    }
}
