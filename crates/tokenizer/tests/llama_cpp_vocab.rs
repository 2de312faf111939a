//! llama.cpp's own tokenizer tests: the vocabulary-only GGUF files with their `.inp` / `.out`
//! vectors, read from the shared reference folder beside the repository.

use std::path::PathBuf;

use baimo_formats::Gguf;
use baimo_tokenizer::Tokenizer;
use baimo_tokenizer::testing::{check_vocab_cases, read_vocab_cases};

fn vocab_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/vocab")
        .join(format!("ggml-vocab-{name}.gguf"))
}

fn load(name: &str) -> Tokenizer {
    let path = vocab_path(name);
    let gguf = Gguf::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(name: &str) {
    let tokenizer = load(name);
    let report = check_vocab_cases(&tokenizer, &vocab_path(name)).expect("reference vectors readable");
    println!("{name}: {report}");
    assert!(report.total > 0);
    assert!(report.all_passed(), "{name}: {report}");
}

#[test]
fn llama_spm_matches_llama_cpp() {
    check("llama-spm");
}

#[test]
fn llama_bpe_matches_llama_cpp() {
    check("llama-bpe");
}

#[test]
fn gpt2_matches_llama_cpp() {
    check("gpt-2");
}

#[test]
fn qwen2_matches_llama_cpp() {
    check("qwen2");
}

fn round_trips(tokenizer: &Tokenizer, text: &str) -> bool {
    tokenizer.decode(&tokenizer.encode(text, false), false) == text
}

/// Whether llama.cpp gives `text` back unchanged from its own ids. It does for every text here
/// except where a vocabulary asks for the clean-up of spaces (GPT-2 and Llama 3 do): decoding
/// then drops the space before `?!.,`, around a lone `'` and before `'s`, `'m`, `'re`, `'ve`.
fn llama_cpp_round_trips(name: &str, text: &str) -> bool {
    let cleans_up_spaces = matches!(name, "llama-bpe" | "gpt-2");
    !(cleans_up_spaces && [" ?", " !", " .", " ,", " '"].iter().any(|p| text.contains(p)))
}

fn corpus() -> Vec<String> {
    let path = vocab_path("llama-spm");
    let with_suffix = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let cases = read_vocab_cases(&with_suffix(".inp"), &with_suffix(".out")).expect("corpus readable");
    cases.into_iter().map(|(text, _)| text).collect()
}

fn pub_texts() -> Vec<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/llama.cpp/pub_texts.txt");
    let content = std::fs::read_to_string(&path).expect("pub_texts.txt readable");
    content.split("\n----\n").map(|t| t.strip_suffix('\n').unwrap_or(t).to_string()).collect()
}

#[test]
fn decode_inverts_encode_on_the_corpus_and_pub_texts() {
    let texts: Vec<String> = corpus().into_iter().chain(pub_texts()).collect();
    assert!(texts.len() > 50);
    for name in ["llama-spm", "llama-bpe", "gpt-2", "qwen2", "baichuan"] {
        let tokenizer = load(name);
        let mut checked = 0;
        for text in &texts {
            if llama_cpp_round_trips(name, text) {
                let ids = tokenizer.encode(text, false);
                assert_eq!(&tokenizer.decode(&ids, false), text, "{name}: ids {ids:?}");
                checked += 1;
            }
        }
        println!("{name}: {checked}/{} texts round-trip", texts.len());
        // Only two corpus texts hit the clean-up.
        assert!(checked + 2 >= texts.len(), "{name}: {checked}/{}", texts.len());
    }
}

#[test]
fn baichuan_loads_and_round_trips() {
    let tokenizer = load("baichuan");
    assert_eq!(tokenizer.vocab_size(), 64000);
    assert_eq!(tokenizer.bos_id(), Some(1));
    assert_eq!(tokenizer.eos_id(), Some(2));
    assert!(tokenizer.add_bos());
    for text in
        ["Hello world", "大语言模型的发展历程", "tabs\tand\nnewlines", "🤖🚀 ÀÉÎÕÜ", "  two leading spaces"]
    {
        assert!(round_trips(&tokenizer, text), "{text:?}");
    }
}
