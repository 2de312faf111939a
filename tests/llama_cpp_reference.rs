//! The engine against llama.cpp on the same GGUF files (`../shared/reference/llama.cpp`):
//! for every prompt, the top-1 token at the last prompt position, the top-20 logits there, and
//! the first 16 greedy tokens. The thresholds are the engine-core issue's: same top-1 for every
//! prompt, logits within 0.5, 16 greedy tokens identical for at least 7 of 8 prompts, for the
//! default arithmetic (`Arithmetic::LlamaCpp`), whose results on the reference's own instruction
//! set must moreover be identical. `Arithmetic::Fast` rounds differently, which these small
//! models amplify to a few tenths of a logit: it must keep every top-1 token, stay within 1.0,
//! and part ways with llama.cpp's greedy tokens only at near ties.

mod common;

use std::sync::Arc;

use baimo_engine::LoadedModel;
use baimo_engine::sampler::argmax;
use baimo_models::{Arithmetic, LogitsFor};
use baimo_threads::ThreadPool;

struct PromptResult {
    prompt: String,
    top1_ok: bool,
    max_logit_diff: f32,
    /// Greedy tokens identical to llama.cpp's before the first difference (capped at the
    /// reference's length).
    same_prefix: usize,
    reference_len: usize,
    /// At the first differing step: the gap between llama.cpp's token and ours in our logits.
    gap_at_divergence: Option<f32>,
}

fn check(model_name: &str, reference: &str, arithmetic: Arithmetic) -> Vec<PromptResult> {
    let model = Arc::new(LoadedModel::load(&common::model(model_name)).expect("model loads"));
    let pool = ThreadPool::with_available_parallelism();
    let mut results = Vec::new();
    for case in common::reference_lines(reference) {
        let prompt_ids = common::ids(&case["prompt_ids"]);
        let greedy = common::ids(&case["greedy_ids"]);
        let mut seq = model.model.new_sequence(4096);
        seq.arithmetic = arithmetic;
        let logits =
            model.model.forward(&pool, &mut seq, &prompt_ids, LogitsFor::Last).expect("forward").to_vec();
        let top20 = case["top20_last_prompt_logits"].as_array().expect("top20");
        let max_logit_diff = top20
            .iter()
            .map(|pair| (logits[pair[0].as_u64().unwrap() as usize] - pair[1].as_f64().unwrap() as f32).abs())
            .fold(0f32, f32::max);
        let top1_ok = argmax(&logits) == top20[0][0].as_u64().unwrap() as u32;

        // Greedy decoding, stopping where llama.cpp stopped (its list ends at an end token).
        let (mut same_prefix, mut gap_at_divergence) = (0, None);
        let mut logits = logits;
        for &want in &greedy {
            let got = argmax(&logits);
            if got != want {
                gap_at_divergence = Some(logits[got as usize] - logits[want as usize]);
                break;
            }
            same_prefix += 1;
            logits = model.model.forward(&pool, &mut seq, &[got], LogitsFor::Last).expect("forward").to_vec();
        }
        results.push(PromptResult {
            prompt: case["prompt"].as_str().unwrap_or("").chars().take(40).collect(),
            top1_ok,
            max_logit_diff,
            same_prefix,
            reference_len: greedy.len(),
            gap_at_divergence,
        });
    }
    results
}

fn report(model_name: &str, results: &[PromptResult], arithmetic: Arithmetic) {
    for r in results {
        println!(
            "{model_name} {arithmetic:?} {:<42} top1 {} max|Δlogit| {:.4} greedy {}/{}{}",
            format!("{:?}", r.prompt),
            if r.top1_ok { "ok" } else { "DIFFERS" },
            r.max_logit_diff,
            r.same_prefix,
            r.reference_len,
            r.gap_at_divergence.map_or(String::new(), |g| format!(" (diverges, logit gap {g:.4})")),
        );
    }
}

fn assert_acceptance(model_name: &str, results: &[PromptResult], arithmetic: Arithmetic) {
    report(model_name, results, arithmetic);
    assert_eq!(results.len(), 8, "eight reference prompts");
    assert!(results.iter().all(|r| r.top1_ok), "{model_name}: a top-1 token differs from llama.cpp's");
    let worst = results.iter().map(|r| r.max_logit_diff).fold(0f32, f32::max);
    println!("{model_name}: largest top-20 logit difference {worst:.4}");
    // Off CI's instruction set (AVX2, NEON) the sums run in another order; CI's CPU checks
    // exactness below.
    assert!(worst <= 0.5, "{model_name}: logits differ from llama.cpp's by {worst}");
    let agreeing = results.iter().filter(|r| r.same_prefix >= 16.min(r.reference_len)).count();
    println!("{model_name}: {agreeing}/8 prompts with the first 16 greedy tokens identical");
    assert!(agreeing >= 7, "{model_name}: only {agreeing}/8 prompts agree for 16 greedy tokens");

    // On the reference's own instruction set baimo follows llama.cpp's arithmetic exactly, so
    // anything short of identical (to the 5 decimals the reference prints) is a regression.
    if arithmetic == Arithmetic::LlamaCpp && baimo_kernels::Isa::best() == baimo_kernels::Isa::Avx512Vnni {
        assert!(worst < 1e-4, "{model_name}: logits are no longer identical to llama.cpp's ({worst})");
        for r in results {
            assert_eq!(
                r.same_prefix, r.reference_len,
                "{model_name} {:?}: greedy tokens part ways",
                r.prompt
            );
        }
    }
}

fn assert_close(model_name: &str, results: &[PromptResult]) {
    report(model_name, results, Arithmetic::Fast);
    assert_eq!(results.len(), 8, "eight reference prompts");
    assert!(results.iter().all(|r| r.top1_ok), "{model_name}: a top-1 token differs from llama.cpp's");
    let worst = results.iter().map(|r| r.max_logit_diff).fold(0f32, f32::max);
    // Measured on CI's CPU (AVX-512 VNNI): at most 0.4604 (SmolLM2), 0.2740 (Qwen2.5); bound with
    // a 30% margin.
    assert!(worst <= 0.6, "{model_name}: logits differ from llama.cpp's by {worst}");
    for r in results {
        if let Some(gap) = r.gap_at_divergence {
            assert!(gap < 0.25, "{model_name} {:?}: greedy tokens part ways with a gap of {gap}", r.prompt);
        }
    }
}

#[test]
fn smollm2_logits_and_greedy_tokens_match_llama_cpp() {
    let reference = "SmolLM2-135M-Instruct.Q4_1.greedy.jsonl";
    assert_acceptance(
        common::SMOLLM2,
        &check(common::SMOLLM2, reference, Arithmetic::LlamaCpp),
        Arithmetic::LlamaCpp,
    );
    assert_close(common::SMOLLM2, &check(common::SMOLLM2, reference, Arithmetic::Fast));
}

#[test]
fn qwen25_logits_and_greedy_tokens_match_llama_cpp() {
    let reference = "qwen2.5-coder-0.5b-instruct.greedy.jsonl";
    assert_acceptance(
        common::QWEN25,
        &check(common::QWEN25, reference, Arithmetic::LlamaCpp),
        Arithmetic::LlamaCpp,
    );
    assert_close(common::QWEN25, &check(common::QWEN25, reference, Arithmetic::Fast));
}
