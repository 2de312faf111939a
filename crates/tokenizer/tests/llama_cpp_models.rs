//! Token ids of real models, as llama.cpp's `llama_tokenize` gave them. The model files are
//! large and not in the repository: a test whose model is absent says so and passes.

use std::path::{Path, PathBuf};

use baimo_formats::Gguf;
use baimo_tokenizer::Tokenizer;
use baimo_tokenizer::testing::check_against_jsonl;

/// Where a model file is found: `$BAIMO_TEST_MODEL_DIR`, else `/tmp/dl/m`.
fn model_path(file_name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("BAIMO_TEST_MODEL_DIR")
        .map_or_else(|| PathBuf::from("/tmp/dl/m"), PathBuf::from);
    let path = dir.join(file_name);
    path.is_file().then_some(path)
}

fn reference(file_name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/llama.cpp")
        .join(file_name)
}

fn check_model(model_file: &str, tokens_jsonl: &str) {
    let Some(path) = model_path(model_file) else {
        println!("skipped: {model_file} not found");
        return;
    };
    let tokenizer = load(&path);
    let report =
        check_against_jsonl(&tokenizer, &reference(tokens_jsonl)).expect("reference readable");
    println!("{model_file}: {report}");
    assert!(report.total > 0);
    assert!(report.all_passed(), "{model_file}: {report}");
}

fn load(path: &Path) -> Tokenizer {
    let gguf = Gguf::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_model(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct.Q4_1.tokens.jsonl",
    );
}

#[test]
fn qwen25_coder_matches_llama_cpp() {
    check_model(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen2.5-coder-0.5b-instruct.tokens.jsonl",
    );
}

#[test]
fn model_special_tokens_as_llama_cpp_reports_them() {
    if let Some(path) = model_path("SmolLM2-135M-Instruct.Q4_1.gguf") {
        let tokenizer = load(&path);
        assert_eq!(tokenizer.vocab_size(), 49152);
        assert_eq!(tokenizer.eos_id(), Some(2));
        assert!(!tokenizer.add_bos());
        // <|endoftext|>, <|im_end|> and <reponame> (taken for FIM "repo"), as llama.cpp lists them.
        assert_eq!(tokenizer.eog_ids(), &[0, 2, 4]);
        assert_eq!(tokenizer.token_id("<|im_end|>"), Some(2));
        assert!(tokenizer.is_control(1));
    }
    if let Some(path) = model_path("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") {
        let tokenizer = load(&path);
        assert_eq!(tokenizer.vocab_size(), 151936);
        assert_eq!(tokenizer.eos_id(), Some(151645));
        assert!(!tokenizer.add_bos());
        // A plain "</s>" (made a control token, as llama.cpp does), <|endoftext|>, <|im_end|>,
        // <|fim_pad|>, <|repo_name|>, <|file_sep|>.
        assert_eq!(
            tokenizer.eog_ids(),
            &[128247, 151643, 151645, 151662, 151663, 151664]
        );
        assert!(tokenizer.is_control(128247));
    }
}
