//! Tokenizer files from model folders on arbitrary bytes: a SentencePiece `tokenizer.model`
//! (protobuf) and a tiktoken rank file. Loading may fail but never panic; a tokenizer that
//! loads encodes and decodes a few texts without panicking.
#![no_main]

use baimo_tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn exercise(tok: &Tokenizer) {
    for text in ["Hello, 世界! 🙂", "  a  b\\n\\tc", "<|im_start|>x<|im_end|>", ""] {
        for special in [false, true] {
            let ids = tok.encode(text, special);
            let _ = tok.decode(&ids, special);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(tok) = Tokenizer::from_sentencepiece_bytes(data) {
        exercise(&tok);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(tok) = Tokenizer::from_qwen_tiktoken_text(text)
    {
        exercise(&tok);
    }
});
