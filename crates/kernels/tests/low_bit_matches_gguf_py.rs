//! Q2_K, Q3_K, IQ4_NL and IQ4_XS dequantized bit for bit as llama.cpp's Python package
//! (gguf-py 0.17.1) does, on 10,000 random blocks of each: `scripts/make_dequant_hashes.py`
//! draws the blocks from a SplitMix64 stream, dequantizes them with gguf-py and records the
//! SHA-256 of the f32 output; this test draws the same blocks and hashes its own output.

use baimo_kernels::{GgmlType, dequantize};
use sha2::Digest;

/// Byte offsets of each type's f16 fields (made finite in the random blocks), as the generator.
const HALF_FIELDS: [(&str, &[usize]); 4] =
    [("Q2_K", &[80, 82]), ("Q3_K", &[108]), ("IQ4_NL", &[0]), ("IQ4_XS", &[0])];

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The generator's blocks: the type's name (little-endian bytes) seeds the stream.
fn blocks(name: &str, size: usize, halves: &[usize], count: usize) -> Vec<u8> {
    let mut seed = [0u8; 8];
    seed[..name.len()].copy_from_slice(name.as_bytes());
    let mut rng = SplitMix64(u64::from_le_bytes(seed));
    let mut out = Vec::with_capacity(count * size);
    for _ in 0..count {
        let mut block: Vec<u8> = (0..size.div_ceil(8)).flat_map(|_| rng.next().to_le_bytes()).collect();
        block.truncate(size);
        for &at in halves {
            let r = rng.next();
            let half = (r & 0x8000) | ((10 + (r >> 16) % 8) << 10) | ((r >> 32) & 0x3FF);
            block[at..at + 2].copy_from_slice(&(half as u16).to_le_bytes());
        }
        out.extend(block);
    }
    out
}

#[test]
fn low_bit_types_dequantize_bit_for_bit_like_gguf_py() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/dequant_hashes.json")).unwrap();
    let count = fixture["blocks"].as_u64().unwrap() as usize;
    for (name, halves) in HALF_FIELDS {
        let dtype = GgmlType::from_name(name).unwrap();
        assert!(dtype.is_supported(), "{name}");
        let raw = blocks(name, dtype.type_size(), halves, count);
        let mut values = vec![0f32; count * dtype.block_size()];
        dequantize(dtype, &raw, &mut values);
        let first: Vec<f64> =
            fixture["first"][name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let ours: Vec<f64> = values[..first.len()].iter().map(|&v| v as f64).collect();
        assert_eq!(ours, first, "{name}: the first values");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let hash: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hash, fixture["sha256"][name].as_str().unwrap(), "{name}: {count} blocks");
    }
}
