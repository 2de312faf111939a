//! Every tokenizer kind a model folder can bring, against its reference implementation on a
//! mixed corpus (Chinese, English, code, emoji, odd whitespace, special-token spellings):
//! SentencePiece `tokenizer.model` (the sentencepiece library), tiktoken ranks in
//! `qwen.tiktoken` format (tiktoken with Qwen v1's pattern and specials) and `tokenizer.json`
//! (the tokenizers library). Fixtures and ids: `scripts/make_tokenizer_fixtures.py`.

use std::path::{Path, PathBuf};

use baimo_tokenizer::Tokenizer;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers")
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir().join("expected.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()
}

/// Compares both encodings (special tokens as text, and recognised) for every corpus text, and
/// that decoding gives the text back where the tokenizer keeps it intact.
fn check(name: &str, tok: &Tokenizer, round_trip: bool) {
    check_corpus("corpus", name, tok, round_trip)
}

fn check_corpus(corpus_key: &str, name: &str, tok: &Tokenizer, round_trip: bool) {
    let e = expected();
    let corpus = e[corpus_key].as_array().unwrap();
    let mut mismatches = Vec::new();
    for (mode, parse_special) in [("plain", false), ("special", true)] {
        for (i, text) in corpus.iter().enumerate() {
            let text = text.as_str().unwrap();
            let want = ids(&e[name][mode][i]);
            let got = tok.encode(text, parse_special);
            if got != want {
                mismatches.push(format!("{mode} {text:?}: got {got:?}, want {want:?}"));
            }
            if round_trip && !parse_special {
                assert_eq!(tok.decode(&got, true), text, "{name}: decoding {got:?}");
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{name}: {} of {} differ:\n{}",
        mismatches.len(),
        2 * corpus.len(),
        mismatches.join("\n")
    );
}

#[test]
fn sentencepiece_bpe_model_matches_sentencepiece() {
    let tok = Tokenizer::from_sentencepiece(&dir().join("spm-bpe.model")).unwrap();
    check("spm-bpe.model", &tok, true);
}

#[test]
fn sentencepiece_whitespace_collapsing_matches_sentencepiece() {
    let tok = Tokenizer::from_sentencepiece(&dir().join("spm-bpe-collapse.model")).unwrap();
    check("spm-bpe-collapse.model", &tok, false);
}

#[test]
fn tiktoken_ranks_match_tiktoken() {
    let tok = Tokenizer::from_qwen_tiktoken(&dir().join("tiny.tiktoken")).unwrap();
    check("tiny.tiktoken", &tok, true);
}

#[test]
fn tokenizer_json_matches_tokenizers() {
    let tok = Tokenizer::from_hf_folder(&dir()).unwrap();
    check("tokenizer.json", &tok, true);
}

/// ChatGLM2/3: their SentencePiece model plus the special tokens appended after it, the text cut
/// at special tokens and each piece encoded on its own (tokenization_chatglm.py).
#[test]
fn chatglm_sentencepiece_with_appended_specials_matches_its_tokenizer() {
    let tok = Tokenizer::from_sentencepiece_with_specials(
        &dir().join("chatglm-spm.model"),
        baimo_tokenizer::CHATGLM3_SPECIALS,
    )
    .unwrap();
    check_corpus("glm_corpus", "chatglm-spm.model", &tok, false);
    // The role tokens end generation, as ChatGLM3's chat() stops at them.
    let user = tok.token_id("<|user|>").unwrap();
    assert!(tok.is_eog(user) && tok.is_eog(tok.token_id("<|observation|>").unwrap()));
}

/// GLM-4's tiktoken `tokenizer.model`: Llama 3's split and GLM-4's special tokens.
#[test]
fn glm4_tiktoken_matches_tiktoken() {
    let text = std::fs::read_to_string(dir().join("tiny.tiktoken")).unwrap();
    let tok = Tokenizer::from_tiktoken_text(&text, baimo_tokenizer::RankFlavor::Glm4).unwrap();
    check_corpus("glm_corpus", "tiny.tiktoken (GLM-4)", &tok, false);
}

/// ChatGLM-6B's `ice_text.model`, found in a folder: line breaks, tabs and space runs rewritten
/// to `<n>`, `<|tab|>`, `<|blank_N|>` before SentencePiece (tokenization_chatglm.py), and decoded
/// back to what they stand for.
#[test]
fn chatglm_6b_ice_text_matches_its_tokenizer_and_decodes_back() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::copy(dir().join("ice_text.model"), folder.path().join("ice_text.model")).unwrap();
    let tok = Tokenizer::from_hf_folder(folder.path()).unwrap();
    check_corpus("glm_corpus", "ice_text.model", &tok, true);
    assert!(!tok.add_bos());
    let eop = tok.token_id("<eop>").unwrap();
    assert!(tok.is_eog(eop));
}

#[test]
fn broken_tokenizer_files_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let model = std::fs::read(dir().join("spm-bpe.model")).unwrap();
    for bad in [&model[..model.len() / 2], b"\x0a\xff", b""] {
        assert!(Tokenizer::from_sentencepiece(&write("t.model", bad)).is_err());
    }
    for bad in ["not base64!! 0\n", "YQ== x\n", "YQ== 0\nYQ== 1\n", "YQ== 99999999\n", ""] {
        let err = Tokenizer::from_qwen_tiktoken(&write("q.tiktoken", bad.as_bytes()));
        assert!(err.is_err(), "{bad:?} accepted");
    }
    write("tokenizer.json", b"{\"model\": ");
    assert!(Tokenizer::from_hf_folder(tmp.path()).is_err());
}

/// Baichuan's real vocabulary (llama.cpp's vocab-only GGUF of it, in `../shared/reference/vocab`):
/// chatglm.cpp's test vector for Baichuan-13B, `"你是谁" → [9875, 21797]` (no BOS, as its chat
/// format encodes).
#[test]
fn baichuan_vocabulary_gives_the_known_ids() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/vocab/ggml-vocab-baichuan.gguf");
    let gguf = baimo_formats::Gguf::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(tok.encode("你是谁", false), [9875, 21797]);
    // Baichuan's role tokens are ids 195 and 196, as the chat format uses them.
    assert_eq!(tok.token_text(195), Some("<reserved_102>"));
    assert_eq!(tok.token_text(196), Some("<reserved_103>"));
}
