//! What hosted providers send back, from any bytes: each provider's whole-answer parser, error
//! classifier and stream translator (over the SSE decoder, the bytes split where the input says),
//! and the client-side request reader. None may panic or allocate by a number it read.
#![no_main]

use baimo_gateway::ProviderKind;
use baimo_gateway::providers::protocol;
use baimo_gateway::sse::SseDecoder;
use baimo_gateway::types::ChatRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let kinds = ProviderKind::ALL;
    let proto = protocol(kinds[selector as usize % kinds.len()]);
    let _ = proto.parse_response(rest);
    let status = 400 + (selector as u16 % 200);
    let _ = proto.classify(status, &reqwest::header::HeaderMap::new(), rest);
    // The stream, fed in pieces of the sizes the selector picks.
    let mut decoder = SseDecoder::new();
    let mut translator = proto.stream();
    let step = 1 + (selector as usize % 7) * 13;
    let mut events = Vec::new();
    let mut out = Vec::new();
    'feed: for piece in rest.chunks(step) {
        if decoder.feed(piece, &mut events).is_err() {
            break;
        }
        for e in events.drain(..) {
            match translator.on_event(&e, &mut out) {
                Ok(false) => {}
                Ok(true) | Err(_) => break 'feed,
            }
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) {
        let _ = ChatRequest::from_openai(&v);
    }
});
