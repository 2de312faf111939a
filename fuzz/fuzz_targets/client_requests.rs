//! What clients send, from any bytes: the OpenAI and Anthropic request readers, the tool-call
//! reader of every family's syntax (the bytes as a model's answer, fed in pieces of the sizes
//! the selector picks) and the GBNF translator. None may panic or allocate by a number it read.
#![no_main]

use baimo_api::ChatRequest;
use baimo_engine::constrain::gbnf_to_lark;
use baimo_engine::tools::{ToolCallParser, ToolSyntax};
use libfuzzer_sys::fuzz_target;

const SYNTAXES: [ToolSyntax; 6] = [
    ToolSyntax::Hermes,
    ToolSyntax::GlmXml,
    ToolSyntax::Llama3Json,
    ToolSyntax::Mistral,
    ToolSyntax::Glm4,
    ToolSyntax::ChatGlm3,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    if let Ok(body) = serde_json::from_slice::<serde_json::Value>(rest) {
        let _ = ChatRequest::from_openai(&body);
        let _ = ChatRequest::from_anthropic(&body);
    }
    let text = String::from_utf8_lossy(rest);
    let syntax = SYNTAXES[selector as usize % SYNTAXES.len()];
    let names = vec!["get_weather".to_string(), "search".to_string()];
    let mut parser = ToolCallParser::new(syntax, names, selector & 0x80 != 0, None);
    let mut out = Vec::new();
    let step = 1 + (selector as usize % 5) * 7;
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(step) {
        parser.push(&piece.iter().collect::<String>(), &mut out);
    }
    parser.finish(&mut out);
    let _ = gbnf_to_lark(&text);
});
