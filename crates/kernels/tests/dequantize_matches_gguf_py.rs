//! baimo's dequantizers against llama.cpp's own Python package (gguf-py) on random blocks of
//! every supported type. The fixture is made by `scripts/make_dequant_fixture.py`.

use baimo_kernels::{GgmlType, dequantize};

#[test]
fn every_type_dequantizes_like_gguf_py() {
    let text = include_str!("fixtures/dequant.json");
    let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    let mut seen = Vec::new();
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let dtype = GgmlType::from_name(name).unwrap();
        let hex = case["hex"].as_str().unwrap();
        let raw: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let want: Vec<f32> =
            case["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let mut got = vec![0f32; want.len()];
        dequantize(dtype, &raw, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "{name}[{i}]: {g} vs gguf-py {w}");
        }
        seen.push(dtype);
    }
    for dtype in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        assert!(seen.contains(&dtype), "fixture lacks {dtype}");
    }
}
