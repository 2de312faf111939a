//! The Hugging Face checkpoint readers on arbitrary bytes: a safetensors header and data, and a
//! `torch.save` zip with its pickle. Neither may panic, hang or allocate by a size it was told.
#![no_main]

use baimo_formats::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::from_vec(data.to_vec());
    if let Ok(tensors) = baimo_formats::hf::parse_safetensors(&bytes) {
        for (_, t) in tensors {
            let _ = t.data.len();
        }
    }
    if let Ok(tensors) = baimo_formats::torch::parse_checkpoint_bytes(&bytes) {
        for (_, t) in tensors {
            let _ = t.data.len();
        }
    }
});
