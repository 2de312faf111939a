//! Comparison with cases written by llama.cpp itself, for vocabularies and texts beyond the
//! checked-in references. Run with
//! `BAIMO_TOKENIZER_DIFF="vocab.gguf=cases.jsonl;other.gguf=more.jsonl" cargo test -p baimo-tokenizer --test differential -- --ignored --nocapture`.
//!
//! Each JSON line has `text`, `parse_special`, `ids` (from `llama_tokenize(add_special = false)`)
//! and `decoded` / `decoded_special` (from `llama_detokenize(remove_special = false)` of those ids
//! with `unparse_special` false / true). An optional `cases.jsonl.pieces` has one line per token:
//! `id piece_hex special_piece_hex is_eog is_control`.

use std::path::Path;

use baimo_formats::Gguf;
use baimo_tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    text: String,
    parse_special: bool,
    ids: Vec<u32>,
    decoded: String,
    decoded_special: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn compare(vocab: &Path, cases: &Path) -> usize {
    let gguf = Gguf::open(vocab).expect("vocabulary opens");
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("tokenizer loads");
    let mut failures = 0;
    let mut total = 0;
    let content = std::fs::read_to_string(cases).expect("cases readable");
    for line in content.lines() {
        let case: Case = serde_json::from_str(line).expect("case parses");
        total += 1;
        let ids = tokenizer.encode(&case.text, case.parse_special);
        if ids != case.ids {
            failures += 1;
            println!(
                "ENCODE {:?} ps={}\n  llama.cpp {:?}\n  baimo     {:?}",
                case.text, case.parse_special, case.ids, ids
            );
        }
        for (special, expected) in [(false, &case.decoded), (true, &case.decoded_special)] {
            let decoded = tokenizer.decode(&case.ids, special);
            if &decoded != expected {
                failures += 1;
                println!(
                    "DECODE special={special} {:?}\n  llama.cpp {expected:?}\n  baimo     {decoded:?}",
                    case.ids
                );
            }
        }
    }
    let mut pieces_path = cases.as_os_str().to_owned();
    pieces_path.push(".pieces");
    if let Ok(pieces) = std::fs::read_to_string(&pieces_path) {
        for line in pieces.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [id, piece, special_piece, eog, control] = fields[..] else {
                panic!("bad pieces line {line:?}")
            };
            let id: u32 = id.parse().expect("id");
            total += 1;
            let ours = (
                hex(&tokenizer.token_bytes(id, false)),
                hex(&tokenizer.token_bytes(id, true)),
                tokenizer.is_eog(id),
                tokenizer.is_control(id),
            );
            let theirs = (piece.to_string(), special_piece.to_string(), eog == "1", control == "1");
            if ours != theirs {
                failures += 1;
                println!("TOKEN {id} {:?}: llama.cpp {theirs:?}, baimo {ours:?}", tokenizer.token_text(id));
            }
        }
    }
    println!("{}: {}/{} agree", cases.display(), total - failures, total);
    failures
}

#[test]
#[ignore = "needs cases written by llama.cpp; see the module docs"]
fn agrees_with_llama_cpp() {
    let spec = std::env::var("BAIMO_TOKENIZER_DIFF")
        .expect("set BAIMO_TOKENIZER_DIFF to the cases llama.cpp wrote (see the module docs)");
    let mut failures = 0;
    for pair in spec.split(';').filter(|p| !p.is_empty()) {
        let (vocab, cases) = pair.split_once('=').expect("vocab=cases");
        failures += compare(Path::new(vocab), Path::new(cases));
    }
    assert_eq!(failures, 0);
}
