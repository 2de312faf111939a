//! SentencePiece `tokenizer.model` files (a protobuf `ModelProto`), read without the C++
//! library: the pieces with their scores and types, the trainer's special ids and the
//! normaliser's flags. BPE models are then encoded by [`SpmModel`], as llama.cpp does for the
//! same vocabularies in GGUF.
//!
//! Only the fields a tokenizer needs are decoded; everything else is skipped by wire type.

use std::path::Path;

use crate::spm::SpmModel;
use crate::vocab::{Attr, ModelNames, PieceStyle, SpecialIds, Vocab, VocabFlags};
use crate::{Model, Tokenizer, TokenizerError};

/// Largest model file read (real ones are under 3 MB).
const MAX_MODEL_BYTES: u64 = 64 << 20;

/// The parts of a `ModelProto` baimo uses.
#[derive(Debug, Default)]
pub(crate) struct ModelProto {
    pub pieces: Vec<(String, f32, i64)>,
    /// `TrainerSpec.model_type`: 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: i64,
    pub unk_id: i64,
    pub bos_id: i64,
    pub eos_id: i64,
    pub pad_id: i64,
    pub normalizer_name: String,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
}

/// A protobuf field: its number and its payload.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    Fixed64,
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let &byte = self.data.get(self.at).ok_or("truncated varint")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end =
            self.at.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("field runs past the end")?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.at >= self.data.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflows")?;
                Field::Bytes(self.take(len)?)
            }
            5 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
            other => return Err(format!("wire type {other} is not supported")),
        };
        Ok(Some((key >> 3, field)))
    }
}

fn fields(data: &[u8], mut each: impl FnMut(u64, Field<'_>) -> Result<(), String>) -> Result<(), String> {
    let mut r = Reader { data, at: 0 };
    while let Some((number, field)) = r.next()? {
        each(number, field)?;
    }
    Ok(())
}

/// An int32 sent as a varint: negative values arrive as 64-bit two's complement.
fn int32(v: u64) -> i64 {
    v as i64 as i32 as i64
}

pub(crate) fn parse_model(data: &[u8]) -> Result<ModelProto, String> {
    let mut m = ModelProto {
        model_type: 1,
        unk_id: 0,
        bos_id: 1,
        eos_id: 2,
        pad_id: -1,
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
        ..ModelProto::default()
    };
    fields(data, |number, field| {
        match (number, field) {
            (1, Field::Bytes(piece)) => {
                let (mut text, mut score, mut kind) = (String::new(), 0f32, 1i64);
                fields(piece, |n, f| {
                    match (n, f) {
                        (1, Field::Bytes(b)) => {
                            text = String::from_utf8(b.to_vec()).map_err(|_| "piece is not UTF-8")?
                        }
                        (2, Field::Fixed32(bits)) => score = f32::from_bits(bits),
                        (3, Field::Varint(v)) => kind = int32(v),
                        _ => {}
                    }
                    Ok(())
                })?;
                m.pieces.push((text, score, kind));
            }
            (2, Field::Bytes(trainer)) => fields(trainer, |n, f| {
                if let Field::Varint(v) = f {
                    match n {
                        3 => m.model_type = int32(v),
                        40 => m.unk_id = int32(v),
                        41 => m.bos_id = int32(v),
                        42 => m.eos_id = int32(v),
                        43 => m.pad_id = int32(v),
                        _ => {}
                    }
                }
                Ok(())
            })?,
            (3, Field::Bytes(normalizer)) => fields(normalizer, |n, f| {
                match (n, f) {
                    (1, Field::Bytes(b)) => m.normalizer_name = String::from_utf8_lossy(b).into_owned(),
                    (3, Field::Varint(v)) => m.add_dummy_prefix = v != 0,
                    (4, Field::Varint(v)) => m.remove_extra_whitespaces = v != 0,
                    _ => {}
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(m)
}

/// The text SentencePiece's normaliser makes of `text` when it only trims whitespace: leading
/// and trailing spaces dropped and runs of spaces made one.
pub(crate) fn collapse_spaces(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

pub(crate) fn tokenizer_from_model_file(
    path: &Path,
    add_bos: Option<bool>,
    appended: &[&str],
) -> Result<Tokenizer, TokenizerError> {
    let bad = |message: String| TokenizerError::File { path: path.to_path_buf(), message };
    let len = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?.len();
    if len > MAX_MODEL_BYTES {
        return Err(bad(format!("{len} bytes is too large for a SentencePiece model")));
    }
    let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    tokenizer_from_model_bytes(&data, add_bos, appended).map_err(|e| match e {
        TokenizerError::File { message, .. } => bad(message),
        other => other,
    })
}

/// The same from the file's bytes (errors name no path). `appended`: special tokens that follow
/// the model's pieces (ChatGLM2/3 keep theirs outside the SentencePiece model).
pub(crate) fn tokenizer_from_model_bytes(
    data: &[u8],
    add_bos: Option<bool>,
    appended: &[&str],
) -> Result<Tokenizer, TokenizerError> {
    let bad = |message: String| TokenizerError::File { path: "tokenizer.model".into(), message };
    let proto = parse_model(data).map_err(|e| bad(format!("not a SentencePiece model: {e}")))?;
    if proto.model_type != 2 {
        return Err(bad(format!(
            "SentencePiece model type {} (only BPE, type 2, is supported so far)",
            proto.model_type
        )));
    }
    if !matches!(proto.normalizer_name.as_str(), "identity" | "") {
        return Err(bad(format!(
            "SentencePiece normalizer {:?} is not supported (identity only)",
            proto.normalizer_name
        )));
    }
    if proto.pieces.is_empty() {
        return Err(TokenizerError::EmptyVocab);
    }
    if proto.pieces.len() > u32::MAX as usize / 2 {
        return Err(TokenizerError::VocabTooLarge(proto.pieces.len()));
    }
    let n = proto.pieces.len();
    let id = |v: i64| u32::try_from(v).ok().filter(|&i| (i as usize) < n);
    let appended_id = |t: &str| appended.iter().position(|a| *a == t).map(|i| (n + i) as u32);
    let special = SpecialIds {
        unk: id(proto.unk_id),
        bos: id(proto.bos_id),
        eos: id(proto.eos_id),
        pad: id(proto.pad_id),
        // ChatGLM3 stops at the next user turn and at a tool result's turn.
        eot: appended_id("<|user|>"),
        eom: appended_id("<|observation|>"),
        ..SpecialIds::default()
    };
    let flags = VocabFlags {
        add_bos: add_bos.unwrap_or(true) && special.bos.is_some(),
        add_space_prefix: proto.add_dummy_prefix,
        clean_spaces: false,
    };
    let (mut texts, mut scores, mut attrs) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for (text, score, kind) in proto.pieces {
        texts.push(text);
        scores.push(score);
        attrs.push(Attr::from_token_type(kind));
    }
    for token in appended {
        texts.push(token.to_string());
        scores.push(0.0);
        attrs.push(Attr::CONTROL);
    }
    let user_defined: Vec<usize> =
        attrs.iter().enumerate().filter(|(_, a)| **a == Attr::USER_DEFINED).map(|(i, _)| i).collect();
    let mut vocab =
        Vocab::new(texts, scores, attrs, special, flags, PieceStyle::SentencePiece, &ModelNames::default());
    // The library matches user-defined symbols in any text; llama.cpp's end-of-generation rule
    // may have made some of them control tokens (e.g. `<|im_end|>`), which plain text would
    // then spell out. They stay end-of-generation tokens either way.
    for id in user_defined {
        vocab.attrs[id] = Attr::USER_DEFINED;
    }
    let model = SpmModel::new(&vocab);
    Ok(Tokenizer {
        vocab,
        model: Model::Spm(model),
        collapse_whitespace: proto.remove_extra_whitespaces,
        // The library puts its dummy prefix once in front of the text; ChatGLM's tokenizer cuts
        // the text at its special tokens and encodes each piece on its own, each with a prefix.
        prefix_once: true,
        cut_at_control: !appended.is_empty(),
        glm_rewrite: false,
    })
}

/// ChatGLM-6B's `ice_text.model`: a SentencePiece model whose pieces include `<n>`, `<|tab|>`,
/// `<|blank_N|>` and GLM's `[MASK]`, `[gMASK]`, `<sop>`, `<eop>`; the text is rewritten
/// ([`glm_preprocess`]) before encoding, and the rewritten tokens decode to what they stand for.
/// Prompts get no BOS (the chat format appends `[gMASK]<sop>`).
pub(crate) fn glm_v1_tokenizer(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let mut tok = tokenizer_from_model_file(path, Some(false), &[])?;
    tok.glm_rewrite = true;
    tok.vocab.override_pieces(glm_token_text);
    // <sop> starts the answer span and <eop> ends it.
    if let Some(eop) = tok.vocab.id("<eop>") {
        tok.vocab.special.eos = Some(eop);
        tok.vocab.eog.push(eop);
        tok.vocab.eog.sort_unstable();
        tok.vocab.eog.dedup();
    }
    tok.vocab.special.bos = tok.vocab.id("<sop>");
    Ok(tok)
}

/// ChatGLM-6B's text rewriting before SentencePiece (`tokenization_chatglm.py`,
/// `_preprocess`): line breaks become `<n>`, tabs `<|tab|>`, and runs of 2 to 80 spaces
/// `<|blank_N|>` (longest first, so a run of 100 is `<|blank_80|>` and `<|blank_20|>`).
pub(crate) fn glm_preprocess(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => out.push_str("<n>"),
            '\t' => out.push_str("<|tab|>"),
            ' ' => {
                let mut run = 1;
                while chars.peek() == Some(&' ') {
                    chars.next();
                    run += 1;
                }
                while run > 0 {
                    let n = run.min(80);
                    if n == 1 {
                        out.push(' ');
                    } else {
                        out.push_str(&format!("<|blank_{n}|>"));
                    }
                    run -= n;
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The text a rewritten token stands for (the inverse of [`glm_preprocess`]).
pub(crate) fn glm_token_text(token: &str) -> Option<Vec<u8>> {
    match token {
        "<n>" => Some(b"\n".to_vec()),
        "<|tab|>" => Some(b"\t".to_vec()),
        _ => {
            let n: usize = token.strip_prefix("<|blank_")?.strip_suffix("|>")?.parse().ok()?;
            (2..=80).contains(&n).then(|| vec![b' '; n])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_protobufs_are_errors_not_panics() {
        for bad in [
            &b"\x0a"[..],
            b"\x0a\xff\xff\xff\xff\x0f",
            b"\x0b",
            b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",
        ] {
            assert!(parse_model(bad).is_err(), "{bad:?}");
        }
        // A piece with its text, score and type.
        let piece = [b"\x0a\x01a".as_slice(), b"\x15\x00\x00\x80\xbf", b"\x18\x01"].concat();
        let model = [vec![0x0a, piece.len() as u8], piece].concat();
        let m = parse_model(&model).unwrap();
        assert_eq!(m.pieces, vec![("a".to_string(), -1.0, 1)]);
    }

    #[test]
    fn glm_rewrites_line_breaks_tabs_and_space_runs() {
        assert_eq!(glm_preprocess("a\nb\tc  d e"), "a<n>b<|tab|>c<|blank_2|>d e");
        let hundred = " ".repeat(100);
        assert_eq!(glm_preprocess(&hundred), "<|blank_80|><|blank_20|>");
        assert_eq!(glm_preprocess(&" ".repeat(81)), "<|blank_80|> ");
        assert_eq!(glm_token_text("<|blank_3|>"), Some(b"   ".to_vec()));
        assert_eq!(glm_token_text("<|blank_81|>"), None);
    }

    #[test]
    fn extra_whitespace_is_collapsed() {
        assert_eq!(collapse_spaces("  a   b c  "), "a b c");
        assert_eq!(collapse_spaces(""), "");
    }
}
