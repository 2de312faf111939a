//! Reading a tokenizer from GGUF metadata (`tokenizer.ggml.*`), with llama.cpp's defaults.

use baimo_formats::{ArrayValue, Gguf, Value};

use crate::bpe::BpeModel;
use crate::pretokenize::{CharSet, SplitRule};
use crate::spm::SpmModel;
use crate::vocab::{Attr, ModelNames, PieceStyle, SpecialIds, Vocab, VocabFlags};
use crate::{Model, Tokenizer, TokenizerError};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";

const SUPPORTED_MODELS: &str = "llama (SentencePiece), gpt2 (byte-level BPE)";

/// What a `tokenizer.ggml.pre` value means for byte-level BPE.
struct PreTokenizer {
    rules: &'static [SplitRule],
    ignore_merges: bool,
    /// Defaults that `tokenizer.ggml.add_bos_token` may override.
    add_bos: bool,
    clean_spaces: bool,
    /// Some families have no BOS token unless the file names one.
    no_default_bos: bool,
}

const GPT2_RULES: &[SplitRule] = &[SplitRule::Gpt2];
const STARCODER_RULES: &[SplitRule] = &[SplitRule::Single(CharSet::Number), SplitRule::Gpt2];
const LLAMA3_RULES: &[SplitRule] = &[SplitRule::Llama3];
const QWEN2_RULES: &[SplitRule] = &[SplitRule::Qwen2];
const QWEN35_RULES: &[SplitRule] = &[SplitRule::Qwen35];
const LAGUNA_RULES: &[SplitRule] = &[SplitRule::NewlineRuns, SplitRule::Qwen2];
const DEFAULT_RULES: &[SplitRule] = &[
    SplitRule::Run(CharSet::PunctuationAndAsciiMath),
    SplitRule::Gpt2,
    SplitRule::Run(CharSet::Number),
    SplitRule::AsciiDigitTriples,
];
const FALCON_RULES: &[SplitRule] = &[
    SplitRule::Run(CharSet::PunctuationAndAsciiMathAndBacktick),
    SplitRule::Gpt2,
    SplitRule::AsciiDigitTriples,
];
const DEEPSEEK_CODER_RULES: &[SplitRule] = &[
    SplitRule::Single(CharSet::CarriageReturnOrNewline),
    SplitRule::OptionalPrefixThenRun(CharSet::Whitespace, CharSet::Letter),
    SplitRule::OptionalPrefixThenRun(CharSet::Whitespace, CharSet::Punctuation),
    SplitRule::Run(CharSet::DeepseekCjk),
    SplitRule::Single(CharSet::Number),
];

/// The `tokenizer.ggml.pre` values we tokenize exactly like llama.cpp, grouped by regex.
const PRE_TOKENIZER_NAMES: &[(&[&str], &[SplitRule])] = &[
    (&["default"], DEFAULT_RULES),
    (
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "jina-v1-en",
            "jina-v2-code",
            "roberta-bpe",
            "mpt",
            "olmo",
            "jais",
            "exaone4",
            "trillion",
            "granite-docling",
        ],
        GPT2_RULES,
    ),
    (
        &["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"],
        STARCODER_RULES,
    ),
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
            "dbrx",
            "smaug-bpe",
            "chatglm-bpe",
            "glm4",
            "glm5",
        ],
        LLAMA3_RULES,
    ),
    (
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
            "hunyuan",
            "solar-open",
            "grok-2",
        ],
        QWEN2_RULES,
    ),
    (&["qwen35"], QWEN35_RULES),
    (&["laguna"], LAGUNA_RULES),
    (&["falcon"], FALCON_RULES),
    (&["deepseek-coder"], DEEPSEEK_CODER_RULES),
];

fn pre_tokenizer(name: &str) -> Option<PreTokenizer> {
    let (_, rules) = PRE_TOKENIZER_NAMES.iter().find(|(names, _)| names.contains(&name))?;
    let llama3_proper = [
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "falcon-h1",
        "pixtral",
        "midm-2.0",
        "lfm2",
        "jina-v5-nano",
    ];
    // Families whose decoding keeps spaces as they are (llama.cpp's clean_spaces = false).
    let keeps_spaces = [
        "deepseek-coder",
        "command-r",
        "qwen2",
        "deepseek-r1-qwen",
        "kormo",
        "f2llmv2",
        "qwen35",
        "smollm",
        "trillion",
        "granite-docling",
        "hunyuan",
        "solar-open",
        "grok-2",
        "laguna",
    ];
    Some(PreTokenizer {
        rules,
        ignore_merges: llama3_proper.contains(&name) || matches!(name, "glm4" | "glm5"),
        add_bos: llama3_proper.contains(&name),
        clean_spaces: !keeps_spaces.contains(&name),
        no_default_bos: matches!(name, "chatglm-bpe" | "glm4" | "glm5"),
    })
}

fn supported_pre_tokenizers() -> String {
    PRE_TOKENIZER_NAMES.iter().flat_map(|(names, _)| names.iter().copied()).collect::<Vec<_>>().join(", ")
}

pub(crate) fn tokenizer_from_gguf(gguf: &Gguf) -> Result<Tokenizer, TokenizerError> {
    let model_name = gguf.get_str(KEY_MODEL)?;
    let pre_name = optional_str(gguf, KEY_PRE)?;

    enum Kind {
        Spm,
        Bpe(PreTokenizer),
    }
    let kind = match model_name {
        "llama" => Kind::Spm,
        "gpt2" => {
            // llama.cpp falls back to "default" (with a warning) when the key is missing.
            let pre = pre_name.filter(|p| !p.is_empty()).unwrap_or("default");
            let pre_tokenizer = pre_tokenizer(pre).ok_or_else(|| TokenizerError::UnknownPreTokenizer {
                found: pre.to_string(),
                supported: supported_pre_tokenizers(),
            })?;
            Kind::Bpe(pre_tokenizer)
        }
        other => {
            return Err(TokenizerError::UnknownModel {
                found: other.to_string(),
                supported: SUPPORTED_MODELS.to_string(),
            });
        }
    };

    let texts = read_tokens(gguf)?;
    let n_tokens = texts.len();
    let scores = read_scores(gguf, n_tokens)?;
    let attrs = read_attrs(gguf, n_tokens)?;

    // llama.cpp's defaults before the file's keys are read (its BPE default of 11 for BOS and
    // EOS comes from Falcon; an id outside the vocabulary is dropped below).
    let (mut flags, mut special) = match &kind {
        Kind::Spm => (
            VocabFlags { add_bos: true, add_space_prefix: true, clean_spaces: false },
            SpecialIds { bos: Some(1), eos: Some(2), unk: Some(0), ..SpecialIds::default() },
        ),
        Kind::Bpe(pre) => (
            VocabFlags { add_bos: pre.add_bos, add_space_prefix: false, clean_spaces: pre.clean_spaces },
            SpecialIds {
                bos: if pre.no_default_bos { None } else { Some(11) },
                eos: Some(11),
                ..SpecialIds::default()
            },
        ),
    };
    if let Some(v) = optional_bool(gguf, "tokenizer.ggml.add_space_prefix")? {
        flags.add_space_prefix = v;
    }
    read_special_ids(gguf, n_tokens, &mut special)?;
    if let Some(v) = optional_bool(gguf, "tokenizer.ggml.add_bos_token")? {
        flags.add_bos = v;
    }

    let names = ModelNames {
        name: optional_str(gguf, "general.name")?.unwrap_or_default().to_string(),
        pre: pre_name.unwrap_or_default().to_string(),
        architecture: optional_str(gguf, "general.architecture")?.unwrap_or_default().to_string(),
    };
    let style = match kind {
        Kind::Spm => PieceStyle::SentencePiece,
        Kind::Bpe(_) => PieceStyle::ByteLevel,
    };
    let vocab = Vocab::new(texts, scores, attrs, special, flags, style, &names);

    let model = match kind {
        Kind::Spm => Model::Spm(SpmModel::new(&vocab)),
        Kind::Bpe(pre) => {
            let merges = read_merges(gguf)?;
            Model::Bpe(BpeModel::new(merges, pre.rules.to_vec(), pre.ignore_merges))
        }
    };
    Ok(Tokenizer {
        vocab,
        model,
        collapse_whitespace: false,
        prefix_once: false,
        cut_at_control: false,
        glm_rewrite: false,
    })
}

fn read_tokens(gguf: &Gguf) -> Result<Vec<String>, TokenizerError> {
    let tokens = gguf.get_str_array(KEY_TOKENS)?;
    if tokens.is_empty() {
        return Err(TokenizerError::EmptyVocab);
    }
    // Ids are i32 in llama.cpp and u32 here.
    if tokens.len() > i32::MAX as usize {
        return Err(TokenizerError::VocabTooLarge(tokens.len()));
    }
    Ok(tokens
        .iter()
        .enumerate()
        .map(|(id, text)| {
            // llama.cpp renames empty tokens so that every text maps to one id.
            if text.is_empty() { format!("[EMPTY_{id}]") } else { text.clone() }
        })
        .collect())
}

fn check_length(key: &'static str, found: usize, expected: usize) -> Result<(), TokenizerError> {
    if found == expected { Ok(()) } else { Err(TokenizerError::LengthMismatch { key, found, expected }) }
}

fn read_scores(gguf: &Gguf, n_tokens: usize) -> Result<Vec<f32>, TokenizerError> {
    let Some(value) = gguf.get(KEY_SCORES) else {
        return Ok(vec![0.0; n_tokens]);
    };
    let scores: Vec<f32> = match value {
        Value::Array(ArrayValue::F32(v)) => v.clone(),
        Value::Array(ArrayValue::I32(v)) => v.iter().map(|&s| s as f32).collect(),
        other => return Err(wrong_type(KEY_SCORES, "an array of f32 or i32", other)),
    };
    check_length(KEY_SCORES, scores.len(), n_tokens)?;
    Ok(scores)
}

fn read_attrs(gguf: &Gguf, n_tokens: usize) -> Result<Vec<Attr>, TokenizerError> {
    let Some(value) = gguf.get(KEY_TOKEN_TYPE) else {
        return Ok(vec![Attr::NORMAL; n_tokens]);
    };
    let types = match value {
        Value::Array(array) => array.to_i64_vec(),
        _ => None,
    }
    .ok_or_else(|| wrong_type(KEY_TOKEN_TYPE, "an array of integers", value))?;
    check_length(KEY_TOKEN_TYPE, types.len(), n_tokens)?;
    Ok(types.into_iter().map(Attr::from_token_type).collect())
}

fn read_merges(gguf: &Gguf) -> Result<Vec<String>, TokenizerError> {
    let merges = gguf.get_str_array(KEY_MERGES)?;
    for (index, merge) in merges.iter().enumerate() {
        // llama.cpp splits at the first space after the first byte.
        if merge.as_bytes().get(1..).is_none_or(|rest| !rest.contains(&b' ')) {
            return Err(TokenizerError::BadMerge { index, merge: merge.clone() });
        }
    }
    Ok(merges.to_vec())
}

fn read_special_ids(gguf: &Gguf, n_tokens: usize, special: &mut SpecialIds) -> Result<(), TokenizerError> {
    type Field = fn(&mut SpecialIds) -> &mut Option<u32>;
    let slots: [(&str, Field); 17] = [
        ("tokenizer.ggml.bos_token_id", |s| &mut s.bos),
        ("tokenizer.ggml.eos_token_id", |s| &mut s.eos),
        ("tokenizer.ggml.eot_token_id", |s| &mut s.eot),
        ("tokenizer.ggml.eom_token_id", |s| &mut s.eom),
        ("tokenizer.ggml.unknown_token_id", |s| &mut s.unk),
        ("tokenizer.ggml.seperator_token_id", |s| &mut s.sep),
        ("tokenizer.ggml.padding_token_id", |s| &mut s.pad),
        ("tokenizer.ggml.mask_token_id", |s| &mut s.mask),
        ("tokenizer.ggml.fim_pre_token_id", |s| &mut s.fim_pre),
        ("tokenizer.ggml.fim_suf_token_id", |s| &mut s.fim_suf),
        ("tokenizer.ggml.fim_mid_token_id", |s| &mut s.fim_mid),
        ("tokenizer.ggml.fim_pad_token_id", |s| &mut s.fim_pad),
        ("tokenizer.ggml.fim_rep_token_id", |s| &mut s.fim_rep),
        ("tokenizer.ggml.fim_sep_token_id", |s| &mut s.fim_sep),
        // Older names of the first three FIM keys.
        ("tokenizer.ggml.prefix_token_id", |s| &mut s.fim_pre),
        ("tokenizer.ggml.suffix_token_id", |s| &mut s.fim_suf),
        ("tokenizer.ggml.middle_token_id", |s| &mut s.fim_mid),
    ];
    for (key, field) in slots {
        let slot = field(special);
        // A default outside the vocabulary means there is no such token.
        if slot.is_some_and(|id| id as usize >= n_tokens) {
            *slot = None;
        }
        let Some(value) = gguf.get(key) else { continue };
        let Some(id) = value.as_u64() else {
            return Err(wrong_type(key, "a token id", value));
        };
        // llama.cpp ignores an id outside the vocabulary and keeps the default.
        if id < n_tokens as u64 {
            *slot = Some(id as u32);
        }
    }
    Ok(())
}

fn optional_str<'a>(gguf: &'a Gguf, key: &str) -> Result<Option<&'a str>, TokenizerError> {
    match gguf.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(key, "a string", other)),
    }
}

fn optional_bool(gguf: &Gguf, key: &str) -> Result<Option<bool>, TokenizerError> {
    match gguf.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong_type(key, "a bool", other)),
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> TokenizerError {
    let found = match found {
        Value::Array(_) => "an array of another type".to_string(),
        Value::String(_) => "a string".to_string(),
        other => format!("{other:?}"),
    };
    TokenizerError::WrongType { key: key.to_string(), expected, found }
}
