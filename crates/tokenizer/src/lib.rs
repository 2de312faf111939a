//! Tokenizers built from model files, giving the same token ids as llama.cpp.
//!
//! [`Tokenizer::from_gguf`] reads `tokenizer.ggml.*` metadata. Two kinds of model are
//! supported: SentencePiece BPE (`llama`) and byte-level BPE (`gpt2`, with the pre-tokenizer
//! named by `tokenizer.ggml.pre`). The vocabulary and special-token handling are shared, so
//! loaders for `tokenizer.json` or a SentencePiece `tokenizer.model` can fill in the same
//! [`Tokenizer`] with another backend.
//!
//! [`StreamDecoder`] turns generated ids into text without ever splitting a UTF-8 character.

mod bpe;
mod decode;
mod gguf;
mod hf;
mod pretokenize;
mod sentencepiece;
mod special;
mod spm;
pub mod testing;
mod tiktoken;
mod unicode;
mod vocab;

use std::borrow::Cow;

use baimo_formats::{FormatError, Gguf};

pub use decode::StreamDecoder;
pub use tiktoken::RankFlavor;

use bpe::BpeModel;
use special::Fragment;
use spm::SpmModel;
use vocab::{Attr, Vocab};

/// Why a tokenizer could not be built. Each message is one line naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A key is missing or has the wrong type, as the GGUF reader reports it.
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("unknown tokenizer.ggml.model {found:?}; supported: {supported}")]
    UnknownModel { found: String, supported: String },
    #[error("unknown tokenizer.ggml.pre {found:?}; supported: {supported}")]
    UnknownPreTokenizer { found: String, supported: String },
    #[error("tokenizer.ggml.tokens is empty")]
    EmptyVocab,
    #[error("tokenizer.ggml.tokens has {0} tokens, more than token ids can address")]
    VocabTooLarge(usize),
    #[error("{key} has {found} entries but tokenizer.ggml.tokens has {expected}")]
    LengthMismatch { key: &'static str, found: usize, expected: usize },
    #[error("metadata key {key:?} is {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: String },
    #[error("tokenizer.ggml.merges entry {index} ({merge:?}) is not two tokens separated by a space")]
    BadMerge { index: usize, merge: String },
    #[error("{path}: {message}")]
    File { path: std::path::PathBuf, message: String },
}

/// How text becomes ids once special tokens are cut out.
enum Model {
    Spm(SpmModel),
    Bpe(BpeModel),
    /// A `tokenizer.json`, run by the `tokenizers` crate.
    Hf(Box<hf::HfModel>),
    /// Ranks from a tiktoken file (Qwen v1).
    Tiktoken(tiktoken::TiktokenModel),
}

/// A tokenizer: vocabulary, special tokens and the model that splits plain text.
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    /// SentencePiece's `remove_extra_whitespaces`: trim the text and make runs of spaces one.
    collapse_whitespace: bool,
    /// SentencePiece's own rule for its dummy prefix: one `▁` in front of the whole text (the
    /// library's), not again after every special token (llama.cpp's, for GGUF files).
    prefix_once: bool,
    /// ChatGLM's rule: with special tokens parsed, the text is cut at its control tokens and each
    /// piece encoded on its own (each with the dummy prefix).
    cut_at_control: bool,
    /// ChatGLM-6B's rewriting of line breaks, tabs and space runs before encoding.
    glm_rewrite: bool,
}

impl std::fmt::Debug for Tokenizer {
    // The vocabulary is far too long to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let model = match self.model {
            Model::Spm(_) => "SentencePiece BPE",
            Model::Bpe(_) => "byte-level BPE",
            Model::Hf(_) => "tokenizer.json",
            Model::Tiktoken(_) => "tiktoken",
        };
        f.debug_struct("Tokenizer")
            .field("model", &model)
            .field("vocab_size", &self.vocab.len())
            .field("bos", &self.vocab.special.bos)
            .field("eos", &self.vocab.special.eos)
            .field("eog", &self.vocab.eog)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &Gguf) -> Result<Tokenizer, TokenizerError> {
        gguf::tokenizer_from_gguf(gguf)
    }

    /// Builds the tokenizer of a Hugging Face model folder: `tokenizer.json` when there is one
    /// (with `tokenizer_config.json`), else the family's own files: a SentencePiece
    /// `tokenizer.model` (LLaMA, Baichuan; ChatGLM2/3 with their special tokens after it), GLM-4's
    /// tiktoken `tokenizer.model`, or Qwen v1's `qwen.tiktoken`.
    pub fn from_hf_folder(dir: &std::path::Path) -> Result<Tokenizer, TokenizerError> {
        if dir.join("tokenizer.json").is_file() {
            return hf::tokenizer_from_folder(dir);
        }
        let model_file = dir.join("tokenizer.model");
        if model_file.is_file() {
            let config = hf::folder_config(dir)?;
            let model_type = config.get("model_type").and_then(|v| v.as_str()).unwrap_or_default();
            if matches!(model_type, "chatglm" | "glm") {
                return glm_tokenizer(&model_file, &config);
            }
            let add_bos = hf::config_flag(dir, "add_bos_token")?;
            return sentencepiece::tokenizer_from_model_file(&model_file, add_bos, &[]);
        }
        if dir.join("ice_text.model").is_file() {
            return sentencepiece::glm_v1_tokenizer(&dir.join("ice_text.model"));
        }
        if dir.join("qwen.tiktoken").is_file() {
            return tiktoken::tokenizer_from_qwen_tiktoken(&dir.join("qwen.tiktoken"));
        }
        Err(TokenizerError::File {
            path: dir.to_path_buf(),
            message: "no tokenizer.json, tokenizer.model or qwen.tiktoken".into(),
        })
    }

    /// A tiktoken rank file's text with a family's split and special tokens.
    pub fn from_tiktoken_text(text: &str, flavor: RankFlavor) -> Result<Tokenizer, TokenizerError> {
        tiktoken::tokenizer_from_tiktoken_text(text, flavor)
    }

    /// A SentencePiece model with special tokens appended after its pieces (ChatGLM2/3).
    pub fn from_sentencepiece_with_specials(
        path: &std::path::Path,
        appended: &[&str],
    ) -> Result<Tokenizer, TokenizerError> {
        sentencepiece::tokenizer_from_model_file(path, Some(false), appended)
    }

    /// Qwen v1's `qwen.tiktoken` rank file on its own, with Qwen's special tokens.
    pub fn from_qwen_tiktoken(path: &std::path::Path) -> Result<Tokenizer, TokenizerError> {
        tiktoken::tokenizer_from_qwen_tiktoken(path)
    }

    /// A SentencePiece model from its bytes (what [`Tokenizer::from_sentencepiece`] reads).
    pub fn from_sentencepiece_bytes(data: &[u8]) -> Result<Tokenizer, TokenizerError> {
        sentencepiece::tokenizer_from_model_bytes(data, None, &[])
    }

    /// A tiktoken rank file from its text (what [`Tokenizer::from_qwen_tiktoken`] reads).
    pub fn from_qwen_tiktoken_text(text: &str) -> Result<Tokenizer, TokenizerError> {
        tiktoken::tokenizer_from_tiktoken_text(text, RankFlavor::Qwen)
    }

    /// A SentencePiece `tokenizer.model` on its own (BOS added to prompts, as the model asks).
    pub fn from_sentencepiece(path: &std::path::Path) -> Result<Tokenizer, TokenizerError> {
        sentencepiece::tokenizer_from_model_file(path, None, &[])
    }

    /// Like `llama_tokenize(add_special = false, parse_special)`: never adds BOS or EOS. With
    /// `parse_special`, control tokens written in the text (`<|im_start|>`) become their ids;
    /// user-defined tokens are always recognised.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        if self.glm_rewrite {
            return self.encode_rewritten(&sentencepiece::glm_preprocess(text), parse_special);
        }
        self.encode_rewritten(text, parse_special)
    }

    /// [`Tokenizer::encode`] after any family-specific rewriting of the text.
    fn encode_rewritten(&self, text: &str, parse_special: bool) -> Vec<u32> {
        if self.cut_at_control && parse_special {
            return self.encode_cut_at_control(text);
        }
        let mut out = Vec::new();
        let normalized;
        let text = if self.collapse_whitespace || (self.prefix_once && self.vocab.add_space_prefix) {
            let mut t = if self.collapse_whitespace {
                sentencepiece::collapse_spaces(text)
            } else {
                text.to_string()
            };
            if self.prefix_once && self.vocab.add_space_prefix && !t.is_empty() {
                t.insert(0, ' ');
            }
            normalized = t;
            normalized.as_str()
        } else {
            text
        };
        if let Model::Hf(hf) = &self.model {
            hf.encode(text, parse_special, &mut out);
            return out;
        }
        let fragments = special::partition(&self.vocab, text, parse_special);
        match &self.model {
            Model::Spm(spm) => {
                // SentencePiece adds a space in front of the text, and again after every
                // special token, as llama.cpp does.
                let mut after_special = true;
                let mut escaped = String::new();
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(range) => {
                            escaped.clear();
                            if self.vocab.add_space_prefix && after_special && !self.prefix_once {
                                escaped.push('▁');
                            }
                            for c in text[range].chars() {
                                escaped.push(if c == ' ' { '▁' } else { c });
                            }
                            spm.encode(&self.vocab, &escaped, &mut out);
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                    }
                }
            }
            Model::Bpe(bpe) => {
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(range) => bpe.encode(&self.vocab, &text[range], &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Model::Tiktoken(tk) => {
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(range) => tk.encode(&text[range], &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            // Encoded whole above.
            Model::Hf(_) => {}
        }
        out
    }

    /// Encodes the pieces between control tokens separately (see `cut_at_control`): the
    /// earliest control token is cut first, the longest where several start at the same place.
    fn encode_cut_at_control(&self, text: &str) -> Vec<u32> {
        let controls: Vec<(u32, &str)> = self
            .vocab
            .special_by_length
            .iter()
            .filter(|&&id| {
                self.vocab.attr(id).any(Attr::CONTROL) && !self.vocab.attr(id).any(Attr::USER_DEFINED)
            })
            .map(|&id| (id, self.vocab.texts[id as usize].as_str()))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        let mut out = Vec::new();
        let mut rest = text;
        loop {
            // special_by_length is longest first, so the first hit at a position is the longest.
            let next = controls
                .iter()
                .filter_map(|&(id, t)| rest.find(t).map(|at| (at, std::cmp::Reverse(t.len()), id)))
                .min();
            match next {
                Some((at, std::cmp::Reverse(len), id)) => {
                    out.extend(self.encode_rewritten(&rest[..at], false));
                    out.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    out.extend(self.encode_rewritten(rest, false));
                    return out;
                }
            }
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.vocab.special.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.vocab.special.eos
    }

    /// Whether a prompt should start with BOS: `tokenizer.ggml.add_bos_token`, else llama.cpp's
    /// default for the tokenizer type.
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }

    /// Whether `id` ends generation: EOS, EOT, EOM and the well-known end tokens, as llama.cpp
    /// collects them.
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.eog.binary_search(&id).is_ok()
    }

    /// The end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.vocab.eog
    }

    /// The token's string as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }

    /// The id of the token whose vocabulary string is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.id(text)
    }

    /// The text of a control (or unknown) token found in `text`, if any: what
    /// `encode(text, true)` would read as that token instead of as text.
    pub fn control_text_in(&self, text: &str) -> Option<&str> {
        self.vocab
            .special_by_length
            .iter()
            .filter(|&&id| self.vocab.attr(id).any(Attr::CONTROL | Attr::UNKNOWN))
            .filter_map(|&id| self.vocab.texts.get(id as usize))
            .find(|t| !t.is_empty() && text.contains(t.as_str()))
            .map(String::as_str)
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.attr(id).any(Attr::CONTROL)
    }

    /// The bytes this token contributes to output text, as llama.cpp's `token_to_piece`:
    /// byte-level BPE characters mapped back to bytes, SentencePiece `▁` as a space and
    /// `<0xNN>` as that byte. Control and unknown tokens give nothing unless `special`.
    /// An id outside the vocabulary gives nothing.
    pub fn token_bytes(&self, id: u32, special: bool) -> Cow<'_, [u8]> {
        if !special && self.vocab.attr(id).any(Attr::CONTROL | Attr::UNKNOWN) {
            return Cow::Borrowed(&[]);
        }
        Cow::Borrowed(self.vocab.piece(id))
    }

    /// The text of `ids`, as llama.cpp's `llama_detokenize(remove_special = false,
    /// unparse_special = special)`: the space SentencePiece put in front is removed, and for
    /// tokenizers that ask for it spaces before punctuation are cleaned up. Invalid UTF-8
    /// becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::new();
        let mut strip_leading_space = self.vocab.add_space_prefix;
        for &id in ids {
            let piece = self.token_bytes(id, special);
            let piece = match piece.split_first() {
                Some((b' ', rest)) if strip_leading_space => rest,
                _ => &piece[..],
            };
            bytes.extend_from_slice(piece);
            strip_leading_space = false;
        }
        if self.vocab.clean_spaces {
            decode::clean_up_spaces(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests;

/// ChatGLM2's special tokens, after its SentencePiece pieces (`tokenization_chatglm.py`).
pub const CHATGLM2_SPECIALS: &[&str] = &["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"];
/// ChatGLM3's: ChatGLM2's and the role tokens.
pub const CHATGLM3_SPECIALS: &[&str] = &[
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
];

/// The tokenizer of a GLM folder's `tokenizer.model`: GLM-4's is a tiktoken rank file (text),
/// ChatGLM2/3's a SentencePiece model with the special tokens after it. ChatGLM3 is told from
/// ChatGLM2 by its name (`_name_or_path`, as llama.cpp's converter does) or by a `<|user|>` entry
/// in `tokenizer_config.json`.
fn glm_tokenizer(
    model_file: &std::path::Path,
    config: &serde_json::Value,
) -> Result<Tokenizer, TokenizerError> {
    let bad = |message: String| TokenizerError::File { path: model_file.to_path_buf(), message };
    let bytes = std::fs::read(model_file).map_err(|e| bad(e.to_string()))?;
    if let Ok(text) = std::str::from_utf8(&bytes)
        && text.lines().next().is_some_and(|l| l.split(' ').count() == 2)
    {
        return tiktoken::tokenizer_from_tiktoken_text(text, RankFlavor::Glm4).map_err(|e| match e {
            TokenizerError::File { message, .. } => bad(message),
            other => other,
        });
    }
    let dir = model_file.parent().unwrap_or(std::path::Path::new("."));
    let name = config.get("_name_or_path").and_then(|v| v.as_str()).unwrap_or_default().to_lowercase();
    let tokenizer_config = std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap_or_default();
    let v3 = name.contains("chatglm3") || tokenizer_config.contains("<|user|>");
    let specials = if v3 { CHATGLM3_SPECIALS } else { CHATGLM2_SPECIALS };
    sentencepiece::tokenizer_from_model_bytes(&bytes, Some(false), specials).map_err(|e| match e {
        TokenizerError::File { message, .. } => bad(message),
        other => other,
    })
}
