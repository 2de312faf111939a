//! `baimo perplexity` against llama-perplexity's figures on the GPL-3 text, 512-token chunks
//! (`../shared/reference/README.md`): within 1%.

mod common;

const GPL3: &str = "/usr/share/common-licenses/GPL-3";

fn perplexity_of(model: &str) -> f64 {
    let path = common::model(model);
    let out = common::baimo()
        .args(["perplexity", path.to_str().unwrap(), GPL3, "--ctx", "512", "--quiet"])
        .output()
        .expect("baimo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "baimo perplexity failed: {}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().expect("output");
    let value =
        last.strip_prefix("PPL = ").unwrap_or_else(|| panic!("last line is {last:?}, not PPL = <value>"));
    value.trim().parse().expect("a number")
}

/// Measured: 0.07% (SmolLM2), 0.31% (Qwen2.5, where llama.cpp sums some products in another
/// order); the bound is 0.5%, as the quantization issue asks of new types too.
fn assert_within_half_a_percent(model: &str, got: f64, reference: f64) {
    let rel = (got - reference).abs() / reference;
    println!("{model}: PPL {got:.4}, llama.cpp {reference:.4}, difference {:.3}%", rel * 100.0);
    assert!(rel <= 0.005, "{model}: PPL {got} is more than 0.5% from llama.cpp's {reference}");
}

#[test]
fn smollm2_perplexity_matches_llama_cpp() {
    assert_within_half_a_percent(common::SMOLLM2, perplexity_of(common::SMOLLM2), 18.3914);
}

#[test]
fn qwen25_perplexity_matches_llama_cpp() {
    assert_within_half_a_percent(common::QWEN25, perplexity_of(common::QWEN25), 5.3184);
}

/// `baimo quantize` leaves files that keep the model: from the real SmolLM2 (Q4_1), an F16 copy
/// holds nearly the same values (perplexity within 0.25%, measured −0.04%: f16 rounds the Q4_1
/// values), a Q8_0 copy within 1% (measured −0.39% on this short text, −0.18% over all of GPL-3
/// in scripts/quantize_check.py), and a Q4_K file made from the F16 one within 10% (its 4 bits quantize the
/// 4-bit values a second time: measured +7.4%; the file is byte for byte the one llama-quantize
/// writes, scripts/quantize_check.py). The text: the first three 512-token chunks of GPL-3.
#[test]
fn quantized_copies_keep_the_perplexity() {
    let source = common::model(common::SMOLLM2);
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("gpl-start.txt");
    std::fs::write(&text, &std::fs::read(GPL3).unwrap()[..8000]).unwrap();
    let ppl = |model: &std::path::Path| -> f64 {
        let out = common::baimo()
            .args(["perplexity", model.to_str().unwrap(), text.to_str().unwrap(), "--ctx", "512", "--quiet"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout.lines().last().unwrap().strip_prefix("PPL = ").unwrap().trim().parse().unwrap()
    };
    let quantize = |from: &std::path::Path, to: &str, dtype: &str| {
        let out_path = dir.path().join(to);
        let out = common::baimo()
            .args(["quantize", from.to_str().unwrap(), out_path.to_str().unwrap(), dtype, "-q"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out_path
    };
    let f16 = quantize(&source, "f16.gguf", "F16");
    let q8 = quantize(&source, "q8_0.gguf", "q8_0");
    let q4k = quantize(&f16, "q4_k.gguf", "Q4_K");
    let base = ppl(&source);
    for (path, bound) in [(&f16, 0.0025), (&q8, 0.01), (&q4k, 0.10)] {
        let got = ppl(path);
        let rel = (got - base).abs() / base;
        println!("{}: PPL {got:.4}, source {base:.4}, {:+.3}%", path.display(), (got - base) / base * 100.0);
        assert!(rel <= bound, "{}: PPL {got} vs the source's {base}", path.display());
    }
    // The rest of the file is the source's: tokenizer, template, and the type it says it is.
    let show = |p: &std::path::Path| -> serde_json::Value {
        let out = common::baimo().args(["show", p.to_str().unwrap(), "--json"]).output().unwrap();
        serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap()
    };
    let (before, after) = (show(&source), show(&q8));
    assert_eq!(after["quantization"], "Q8_0");
    for key in ["chat_template", "vocab_size", "context_length", "bos_token", "eos_token", "parameters"] {
        assert_eq!(before[key], after[key], "{key}");
    }
    // Refusals: an unknown type, the input as output.
    let bad = common::baimo().args(["quantize", q8.to_str().unwrap(), "x.gguf", "Q3_K"]).output().unwrap();
    assert!(
        !bad.status.success()
            && String::from_utf8_lossy(&bad.stderr).contains("baimo quantize writes F32, F16")
    );
    let same = common::baimo()
        .args(["quantize", q8.to_str().unwrap(), q8.to_str().unwrap(), "Q8_0"])
        .output()
        .unwrap();
    assert!(!same.status.success() && String::from_utf8_lossy(&same.stderr).contains("is the input"));
}
