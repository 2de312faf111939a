//! Tests on small vocabularies built in memory. The reference vectors from llama.cpp are checked
//! in `tests/`.

use baimo_formats::gguf::GgufWriter;
use baimo_formats::{ArrayValue, Bytes, Gguf, Value};

use super::*;

fn strings(items: &[&str]) -> Value {
    Value::Array(ArrayValue::String(items.iter().map(|s| s.to_string()).collect()))
}

fn parse(writer: &GgufWriter) -> Gguf {
    Gguf::parse(Bytes::from_vec(writer.to_bytes())).expect("test GGUF parses")
}

/// A SentencePiece vocabulary: `<unk> <s> </s>`, the 256 byte tokens, then a few pieces.
fn spm_writer() -> GgufWriter {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].iter().map(|s| s.to_string()).collect();
    let mut types = vec![2, 3, 3];
    for byte in 0..=255u32 {
        tokens.push(format!("<0x{byte:02X}>"));
        types.push(6);
    }
    let pieces = ["▁", "a", "b", "▁a", "ab", "▁ab", "é", "<user>"];
    for piece in pieces {
        tokens.push(piece.to_string());
        types.push(if piece == "<user>" { 4 } else { 1 });
    }
    let scores: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("llama".into()))
        .add("tokenizer.ggml.tokens", Value::Array(ArrayValue::String(tokens)))
        .add("tokenizer.ggml.scores", Value::Array(ArrayValue::F32(scores)))
        .add("tokenizer.ggml.token_type", Value::Array(ArrayValue::I32(types)));
    w
}

fn spm() -> Tokenizer {
    Tokenizer::from_gguf(&parse(&spm_writer())).expect("test vocabulary loads")
}

fn id(tok: &Tokenizer, text: &str) -> u32 {
    tok.token_id(text).expect("token in test vocabulary")
}

/// A byte-level BPE vocabulary with every byte and a couple of merges.
fn bpe_writer(pre: &str) -> GgufWriter {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| crate::unicode::byte_to_char(b).to_string()).collect();
    tokens.extend(["Ġa", "ab", "Ġab", "<|end|>", "<|im_end|>"].map(String::from));
    let mut types = vec![1; tokens.len()];
    let n = types.len();
    types[n - 2] = 3;
    types[n - 1] = 3;
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("gpt2".into()))
        .add("tokenizer.ggml.pre", Value::String(pre.into()))
        .add("tokenizer.ggml.tokens", Value::Array(ArrayValue::String(tokens)))
        .add("tokenizer.ggml.token_type", Value::Array(ArrayValue::I32(types)))
        .add("tokenizer.ggml.merges", strings(&["Ġ a", "a b", "Ġa b"]))
        .add("tokenizer.ggml.eos_token_id", Value::U32(n as u32 - 1));
    w
}

#[test]
fn spm_merges_by_score_and_falls_back_to_bytes() {
    let tok = spm();
    // "▁ab" is a token; "c" is not, so it is spelled as its byte.
    assert_eq!(tok.encode("ab c", false), vec![id(&tok, "▁ab"), id(&tok, "▁"), id(&tok, "<0x63>")]);
    assert_eq!(tok.decode(&tok.encode("ab c", false), false), "ab c");
    assert_eq!(tok.encode("", false), Vec::<u32>::new());
}

#[test]
fn spm_adds_a_space_after_special_tokens() {
    let tok = spm();
    let user = id(&tok, "<user>");
    // User-defined tokens are matched even without parse_special.
    assert_eq!(tok.encode("a<user>a", false), vec![id(&tok, "▁a"), user, id(&tok, "▁a")]);
    // "</s>" is a control token: literal text unless parse_special.
    assert_eq!(tok.encode("</s>", true), vec![2]);
    assert_ne!(tok.encode("</s>", false), vec![2]);
}

#[test]
fn spm_defaults() {
    let tok = spm();
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(tok.add_bos());
    assert!(tok.is_eog(2));
    assert!(!tok.is_eog(1));
    assert!(tok.is_control(1));
    assert_eq!(tok.token_bytes(1, false).as_ref(), b"");
    assert_eq!(tok.token_bytes(1, true).as_ref(), b"<s>");
    assert_eq!(tok.token_bytes(id(&tok, "<0x0A>"), false).as_ref(), b"\n");
    assert_eq!(tok.token_bytes(id(&tok, "▁ab"), false).as_ref(), b" ab");
    assert_eq!(tok.token_bytes(u32::MAX, true).as_ref(), b"");
    assert_eq!(tok.token_text(u32::MAX), None);
    assert_eq!(tok.decode(&[u32::MAX, 7], false), "\u{4}");
}

#[test]
fn bpe_merges_by_rank() {
    let tok = Tokenizer::from_gguf(&parse(&bpe_writer("gpt-2"))).expect("loads");
    assert_eq!(tok.encode(" ab", false), vec![id(&tok, "Ġab")]);
    assert_eq!(tok.encode("ab a", false), vec![id(&tok, "ab"), id(&tok, "Ġa")]);
    assert_eq!(tok.decode(&tok.encode("ab a", false), false), "ab a");
    assert_eq!(tok.encode("<|end|>", true), vec![id(&tok, "<|end|>")]);
    assert!(tok.is_eog(id(&tok, "<|end|>")));
    assert!(tok.is_eog(id(&tok, "<|im_end|>")));
    assert_eq!(tok.eos_id(), Some(id(&tok, "<|im_end|>")));
    assert!(!tok.add_bos());
}

#[test]
fn stream_decoder_holds_split_characters() {
    let tok = spm();
    let bytes = |s: &str| s.bytes().map(|b| id(&tok, &format!("<0x{b:02X}>"))).collect::<Vec<_>>();

    // "é" as two byte tokens: nothing until the second arrives.
    let mut decoder = StreamDecoder::new();
    let e = bytes("é");
    assert_eq!(decoder.push(&tok, e[0]), "");
    assert_eq!(decoder.push(&tok, e[1]), "é");
    assert_eq!(decoder.finish(), "");

    // An emoji over four byte tokens, after a plain token.
    let mut decoder = StreamDecoder::new();
    assert_eq!(decoder.push(&tok, id(&tok, "▁a")), " a");
    let robot = bytes("🤖");
    assert_eq!(robot.len(), 4);
    for &b in &robot[..3] {
        assert_eq!(decoder.push(&tok, b), "");
    }
    assert_eq!(decoder.push(&tok, robot[3]), "🤖");
}

#[test]
fn stream_decoder_replaces_invalid_bytes() {
    let tok = spm();
    let byte = |b: u8| id(&tok, &format!("<0x{b:02X}>"));
    let mut decoder = StreamDecoder::new();
    // A lone continuation byte can never become valid.
    assert_eq!(decoder.push(&tok, byte(0x80)), "\u{fffd}");
    // A lead byte followed by a non-continuation: the lead is invalid, "a" comes through.
    assert_eq!(decoder.push(&tok, byte(0xe2)), "");
    assert_eq!(decoder.push(&tok, byte(b'a')), "\u{fffd}a");
    // An unfinished character at the end.
    assert_eq!(decoder.push(&tok, byte(0xf0)), "");
    assert_eq!(decoder.finish(), "\u{fffd}");
    assert_eq!(decoder.finish(), "");
}

#[test]
fn stream_decoder_special_tokens() {
    let tok = spm();
    let mut hidden = StreamDecoder::new();
    assert_eq!(hidden.push(&tok, 2), "");
    let mut shown = StreamDecoder::new().with_special(true);
    assert_eq!(shown.push(&tok, 2), "</s>");
}

fn load_error(writer: &GgufWriter) -> String {
    match Tokenizer::from_gguf(&parse(writer)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_metadata_gives_errors() {
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.tokens", strings(&["a"]));
    assert!(load_error(&w).contains("tokenizer.ggml.model"), "{}", load_error(&w));

    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("bert".into())).add("tokenizer.ggml.tokens", strings(&["a"]));
    let e = load_error(&w);
    assert!(e.contains("\"bert\"") && e.contains("gpt2"), "{e}");

    let e = load_error(&bpe_writer("no-such-pre"));
    assert!(e.contains("no-such-pre") && e.contains("qwen2") && e.contains("smollm"), "{e}");

    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("llama".into())).add("tokenizer.ggml.tokens", strings(&[]));
    assert!(load_error(&w).contains("empty"));

    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("llama".into()))
        .add("tokenizer.ggml.tokens", strings(&["a", "b"]))
        .add("tokenizer.ggml.scores", Value::Array(ArrayValue::F32(vec![0.0])));
    let e = load_error(&w);
    assert!(e.contains("tokenizer.ggml.scores") && e.contains('1') && e.contains('2'), "{e}");

    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("llama".into()))
        .add("tokenizer.ggml.tokens", strings(&["a", "b"]))
        .add("tokenizer.ggml.token_type", Value::Array(ArrayValue::I32(vec![1, 1, 1])));
    assert!(load_error(&w).contains("token_type"));

    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("llama".into()))
        .add("tokenizer.ggml.tokens", strings(&["a", "b"]))
        .add("tokenizer.ggml.scores", Value::String("x".into()));
    assert!(load_error(&w).contains("tokenizer.ggml.scores"));

    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("gpt2".into()))
        .add("tokenizer.ggml.tokens", strings(&["a", "b", "ab"]))
        .add("tokenizer.ggml.merges", strings(&["a b", "ab"]));
    let e = load_error(&w);
    assert!(e.contains("merges entry 1") && e.contains("\"ab\""), "{e}");

    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("gpt2".into())).add("tokenizer.ggml.tokens", strings(&["a"]));
    assert!(load_error(&w).contains("tokenizer.ggml.merges"));
}

#[test]
fn special_ids_out_of_range_are_ignored() {
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("llama".into()))
        .add("tokenizer.ggml.tokens", strings(&["a", "b"]))
        .add("tokenizer.ggml.bos_token_id", Value::U32(99))
        .add("tokenizer.ggml.eos_token_id", Value::U32(u32::MAX));
    let tok = Tokenizer::from_gguf(&parse(&w)).expect("loads");
    // The defaults (1 and 2) apply where they exist in the vocabulary.
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), None);
    // No "▁" token and no byte tokens: llama.cpp would throw here; we fall back to <unk> (0).
    assert_eq!(tok.encode("ab", true), vec![0, 0, 0, 0, 1]);
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<StreamDecoder>();
}

#[test]
fn odd_vocabularies_do_not_panic() {
    let texts = ["", " ", "a b\n\tc", "🤖 <s> </s> ab'S 123 ½ \u{0}\u{85}\u{3000}x", "<|im_end|><<|im_end|>"];

    // Byte-level BPE that lacks most bytes, with odd token types and merges of unknown tokens.
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("gpt2".into()))
        .add("tokenizer.ggml.pre", Value::String("qwen2".into()))
        .add("tokenizer.ggml.tokens", strings(&["a", "", "<|im_end|>", "Ġ"]))
        .add("tokenizer.ggml.token_type", Value::Array(ArrayValue::I32(vec![99, -5, 3, 6])))
        .add("tokenizer.ggml.merges", strings(&["x y", "Ġ a", "a a", "q  r"]));
    let tok = Tokenizer::from_gguf(&parse(&w)).expect("loads");
    assert_eq!(tok.token_text(1), Some("[EMPTY_1]"));
    for text in texts {
        for parse_special in [false, true] {
            let ids = tok.encode(text, parse_special);
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            let _ = tok.decode(&ids, true);
        }
    }

    // SentencePiece with NaN and infinite scores and no byte tokens.
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", Value::String("llama".into()))
        .add("tokenizer.ggml.tokens", strings(&["▁", "a", "▁a", "aa", "</s>"]))
        .add(
            "tokenizer.ggml.scores",
            Value::Array(ArrayValue::F32(vec![f32::NAN, 0.0, f32::INFINITY, f32::NAN, 1.0])),
        )
        .add("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    let tok = Tokenizer::from_gguf(&parse(&w)).expect("loads");
    for text in texts {
        for parse_special in [false, true] {
            let ids = tok.encode(text, parse_special);
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            let _ = tok.decode(&ids, false);
        }
    }
}
