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
