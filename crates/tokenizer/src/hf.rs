//! Tokenizers from a Hugging Face model folder: `tokenizer.json` (run by the `tokenizers`
//! crate, so ids are those of the reference implementation) with the special tokens and flags
//! of `tokenizer_config.json`.

use std::path::Path;

use crate::vocab::{Attr, ModelNames, PieceStyle, SpecialIds, Vocab, VocabFlags};
use crate::{Model, Tokenizer, TokenizerError};

/// The two encoders of one `tokenizer.json`: with special tokens recognised in the text, and
/// with them read as plain text.
pub(crate) struct HfModel {
    with_special: tokenizers::Tokenizer,
    plain: tokenizers::Tokenizer,
}

impl HfModel {
    pub(crate) fn encode(&self, text: &str, parse_special: bool, out: &mut Vec<u32>) {
        let tok = if parse_special { &self.with_special } else { &self.plain };
        // Encoding only fails on input the pre-tokenizer cannot split (never for valid UTF-8
        // with the supported models); such text gives no ids rather than a panic.
        if let Ok(encoding) = tok.encode(text, false) {
            out.extend_from_slice(encoding.get_ids());
        }
    }
}

/// Largest tokenizer.json read (the biggest real ones are ~20 MB).
const MAX_TOKENIZER_JSON: u64 = 256 << 20;

fn bad(path: &Path, message: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::File { path: path.to_path_buf(), message: message.to_string() }
}

/// A special token named in tokenizer_config.json: a string or `{"content": ...}`.
fn token_content(v: Option<&serde_json::Value>) -> Option<&str> {
    match v? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// Whether the JSON (a decoder or pre-tokenizer, possibly a Sequence) contains `kind`.
fn has_component(v: &serde_json::Value, kind: &str) -> bool {
    if v.get("type").and_then(|t| t.as_str()) == Some(kind) {
        return true;
    }
    ["decoders", "pretokenizers"]
        .iter()
        .filter_map(|k| v.get(k)?.as_array())
        .flatten()
        .any(|c| has_component(c, kind))
}

pub(crate) fn tokenizer_from_folder(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let path = dir.join("tokenizer.json");
    let io = |e: std::io::Error| bad(&path, e);
    if std::fs::metadata(&path).map_err(io)?.len() > MAX_TOKENIZER_JSON {
        return Err(bad(&path, "file too large"));
    }
    let bytes = std::fs::read(&path).map_err(io)?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(&path, e))?;
    let with_special: tokenizers::Tokenizer =
        tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| bad(&path, e))?;
    let mut plain = with_special.clone();
    plain.set_encode_special_tokens(true);

    let config_path = dir.join("tokenizer_config.json");
    let config: serde_json::Value = if config_path.is_file() {
        let text = std::fs::read(&config_path).map_err(|e| bad(&config_path, e))?;
        serde_json::from_slice(&text).map_err(|e| bad(&config_path, e))?
    } else {
        serde_json::Value::Null
    };

    // The vocabulary by id, added tokens included; ids nothing names stay empty.
    let vocab_map = with_special.get_vocab(true);
    let n = vocab_map.values().map(|&id| id as usize + 1).max().unwrap_or(0);
    if n == 0 {
        return Err(TokenizerError::EmptyVocab);
    }
    if n > u32::MAX as usize / 2 || n > vocab_map.len().saturating_mul(2) + 1024 {
        return Err(bad(&path, format!("token ids reach {n} for {} tokens", vocab_map.len())));
    }
    let mut texts = vec![String::new(); n];
    let mut attrs = vec![Attr::UNUSED; n];
    for (text, &id) in &vocab_map {
        texts[id as usize] = text.clone();
        attrs[id as usize] = Attr::NORMAL;
    }
    let byte_level = json.get("decoder").is_some_and(|d| has_component(d, "ByteLevel"))
        || json.get("pre_tokenizer").is_some_and(|p| has_component(p, "ByteLevel"));
    let style = if byte_level { PieceStyle::ByteLevel } else { PieceStyle::SentencePiece };
    if style == PieceStyle::SentencePiece {
        for (text, attr) in texts.iter().zip(attrs.iter_mut()) {
            if text.len() == 6 && text.starts_with("<0x") && text.ends_with('>') {
                *attr = Attr::BYTE;
            }
        }
    }
    for added in with_special.get_added_tokens_decoder().values() {
        if let Some(&id) = vocab_map.get(&added.content) {
            attrs[id as usize] = if added.special { Attr::CONTROL } else { Attr::USER_DEFINED };
        }
    }
    let id_of = |key: &str| token_content(config.get(key)).and_then(|t| vocab_map.get(t).copied());
    let special = SpecialIds {
        bos: id_of("bos_token"),
        eos: id_of("eos_token"),
        unk: id_of("unk_token"),
        pad: id_of("pad_token"),
        ..SpecialIds::default()
    };
    let flags = VocabFlags {
        add_bos: config.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false)
            && special.bos.is_some(),
        // SentencePiece-style decoders drop the space the normaliser put in front.
        add_space_prefix: style == PieceStyle::SentencePiece,
        clean_spaces: config.get("clean_up_tokenization_spaces").and_then(|v| v.as_bool()).unwrap_or(false),
    };
    let scores = vec![0.0; n];
    let vocab = Vocab::new(texts, scores, attrs, special, flags, style, &ModelNames::default());
    Ok(Tokenizer {
        vocab,
        model: Model::Hf(Box::new(HfModel { with_special, plain })),
        collapse_whitespace: false,
        prefix_once: false,
        cut_at_control: false,
        glm_rewrite: false,
    })
}

/// A boolean of `tokenizer_config.json`, if the folder has the file and the key.
pub(crate) fn config_flag(dir: &Path, key: &str) -> Result<Option<bool>, TokenizerError> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read(&path).map_err(|e| bad(&path, e))?;
    let json: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(&path, e))?;
    Ok(json.get(key).and_then(|v| v.as_bool()))
}

/// The folder's `config.json` (`null` when it has none).
pub(crate) fn folder_config(dir: &Path) -> Result<serde_json::Value, TokenizerError> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(serde_json::Value::Null);
    }
    let text = std::fs::read(&path).map_err(|e| bad(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| bad(&path, e))
}
