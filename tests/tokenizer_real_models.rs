//! Token ids of the real models, as llama.cpp's `llama_tokenize` gave them
//! (`../shared/reference/llama.cpp/*.tokens.jsonl`), and their special tokens as llama.cpp
//! lists them.

mod common;

use std::path::Path;

use baimo_formats::Gguf;
use baimo_tokenizer::Tokenizer;
use baimo_tokenizer::testing::check_against_jsonl;

fn load(path: &Path) -> Tokenizer {
    let gguf = Gguf::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_model(model: &str, tokens_jsonl: &str) {
    let tokenizer = load(&common::model(model));
    let report =
        check_against_jsonl(&tokenizer, &common::reference(tokens_jsonl)).expect("reference readable");
    println!("{model}: {report}");
    assert!(report.total > 0);
    assert!(report.all_passed(), "{model}: {report}");
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_model(common::SMOLLM2, "SmolLM2-135M-Instruct.Q4_1.tokens.jsonl");
}

#[test]
fn qwen25_coder_matches_llama_cpp() {
    check_model(common::QWEN25, "qwen2.5-coder-0.5b-instruct.tokens.jsonl");
}

#[test]
fn model_special_tokens_as_llama_cpp_reports_them() {
    {
        let path = common::model(common::SMOLLM2);
        let tokenizer = load(&path);
        assert_eq!(tokenizer.vocab_size(), 49152);
        assert_eq!(tokenizer.eos_id(), Some(2));
        assert!(!tokenizer.add_bos());
        // <|endoftext|>, <|im_end|> and <reponame> (taken for FIM "repo"), as llama.cpp lists them.
        assert_eq!(tokenizer.eog_ids(), &[0, 2, 4]);
        assert_eq!(tokenizer.token_id("<|im_end|>"), Some(2));
        assert!(tokenizer.is_control(1));
    }
    {
        let path = common::model(common::QWEN25);
        let tokenizer = load(&path);
        assert_eq!(tokenizer.vocab_size(), 151936);
        assert_eq!(tokenizer.eos_id(), Some(151645));
        assert!(!tokenizer.add_bos());
        // A plain "</s>" (made a control token, as llama.cpp does), <|endoftext|>, <|im_end|>,
        // <|fim_pad|>, <|repo_name|>, <|file_sep|>.
        assert_eq!(tokenizer.eog_ids(), &[128247, 151643, 151645, 151662, 151663, 151664]);
        assert!(tokenizer.is_control(128247));
    }
}
