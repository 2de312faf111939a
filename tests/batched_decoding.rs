//! Continuous batching's model step: several sequences, each at its own position with its own
//! cache, decoded in one pass (one read of the weights for all). Every sequence must get the
//! logits it gets when decoded alone.

mod common;

use baimo_models::{LogitsFor, Model};
use baimo_threads::ThreadPool;

/// Prefills each prompt alone, then decodes `steps` greedy tokens twice: all sequences batched,
/// and each alone. Returns the largest logit difference seen and whether the tokens agreed.
fn batched_vs_alone(model: &Model, prompts: &[Vec<u32>], steps: usize) -> (f32, bool) {
    batched_vs_alone_with(model, prompts, steps, baimo_models::Arithmetic::LlamaCpp)
}

fn batched_vs_alone_with(
    model: &Model,
    prompts: &[Vec<u32>],
    steps: usize,
    arithmetic: baimo_models::Arithmetic,
) -> (f32, bool) {
    let pool = ThreadPool::new(2);
    let vocab = model.info().vocab_size;
    let argmax = |row: &[f32]| {
        row.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32
    };
    let prefill = |p: &Vec<u32>| {
        let mut seq = model.new_sequence(p.len() + steps + 1);
        seq.arithmetic = arithmetic;
        let logits = model.forward(&pool, &mut seq, p, LogitsFor::Last).unwrap().to_vec();
        (seq, argmax(&logits))
    };
    let (mut batched, mut next): (Vec<_>, Vec<_>) = prompts.iter().map(prefill).unzip();
    let (mut alone, mut next_alone): (Vec<_>, Vec<_>) = prompts.iter().map(prefill).unzip();
    let (mut worst, mut same) = (0f32, true);
    for _ in 0..steps {
        let mut refs: Vec<_> = batched.iter_mut().collect();
        let rows = model.decode_batch(&pool, &mut refs, &next).unwrap();
        for (i, seq) in alone.iter_mut().enumerate() {
            let single = model.forward(&pool, seq, &[next_alone[i]], LogitsFor::Last).unwrap().to_vec();
            let row = &rows[i * vocab..(i + 1) * vocab];
            worst = row.iter().zip(&single).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
            next[i] = argmax(row);
            next_alone[i] = argmax(&single);
            same &= next[i] == next_alone[i];
        }
    }
    (worst, same)
}

#[test]
fn a_batch_of_sequences_decodes_as_each_alone_on_smollm2() {
    let gguf = baimo_formats::Gguf::open(&common::model(common::SMOLLM2)).unwrap();
    let model = Model::from_gguf(&gguf).unwrap();
    let prompts = vec![vec![1, 504, 3458, 314], vec![1, 9690, 198], (1..40).collect::<Vec<u32>>()];
    let (worst, same) = batched_vs_alone(&model, &prompts, 8);
    eprintln!("SmolLM2: max |Δlogit| batched vs alone {worst:.2e}");
    assert!(same, "greedy tokens differ");
    assert!(worst <= 1e-3, "{worst}");
    // With the fast kernels too (what a server decoding many sequences wants).
    let (worst, same) = batched_vs_alone_with(&model, &prompts, 8, baimo_models::Arithmetic::Fast);
    eprintln!("SmolLM2 (fast arithmetic): max |Δlogit| batched vs alone {worst:.2e}");
    assert!(same && worst <= 1e-3, "{worst}");
}

#[test]
fn a_batch_of_sequences_decodes_as_each_alone_on_hf_fixtures() {
    // The 30-token prompt passes Mistral's window (16) and Qwen v1's seq_length (16), and its
    // steps LLaMA-dynamic's trained length (32). The mixtures route each row on its own,
    // Baichuan-13B's rows take ALiBi at their own positions, Qwen v1 keeps each sequence's NTK
    // base and scales each row's query for its own position.
    for name in [
        "qwen2",
        "qwen3",
        "llama3",
        "mistral",
        "mixtral",
        "qwen3-moe",
        "qwen2-moe",
        "phi3",
        "gemma2",
        "gemma3",
        "gpt2",
        "baichuan-13b",
        "baichuan2-13b",
        "qwen1",
        "llama-dynamic",
    ] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(name);
        let prompts = vec![vec![5, 6, 7], vec![100, 200, 30, 40, 50, 60, 70], vec![9], (40..70).collect()];
        // f32 weights (f32 cache, tiled attention), and quantized at load time (f16 cache,
        // attention in ggml's order: the sliding window and Gemma's soft-cap in that path too).
        for quantize in [None, Some(baimo_kernels::GgmlType::Q8_0)] {
            let folder = baimo_formats::HfFolder::open(&dir).unwrap();
            let model = Model::from_hf(&folder, quantize).unwrap();
            let (worst, same) = batched_vs_alone(&model, &prompts, 6);
            eprintln!("{name} {quantize:?}: max |Δlogit| batched vs alone {worst:.2e}");
            assert!(same && worst <= 1e-4, "{name} {quantize:?}: {worst}");
        }
    }
}

/// ChatGLM-6B's decoding steps keep each sequence's 2-D positions: contexts with `[gMASK]` or
/// `[MASK]` then `<sop>` (the span's block ids count from there), and one without (causal).
#[test]
fn a_batch_of_chatglm_6b_sequences_decodes_as_each_alone() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/chatglm-6b");
    // [MASK] 315, [gMASK] 316, <sop> 318 in the fixture's vocabulary.
    let prompts = vec![vec![5, 6, 7, 316, 318], vec![100, 315, 30, 40, 50, 316, 318], vec![9, 10, 11]];
    for quantize in [None, Some(baimo_kernels::GgmlType::Q8_0)] {
        let model = Model::from_hf(&baimo_formats::HfFolder::open(&dir).unwrap(), quantize).unwrap();
        let (worst, same) = batched_vs_alone(&model, &prompts, 6);
        eprintln!("chatglm-6b {quantize:?}: max |Δlogit| batched vs alone {worst:.2e}");
        assert!(same && worst <= 1e-4, "{quantize:?}: {worst}");
    }
}

/// The server reads a long prompt in pieces between decoding steps (256 tokens, the last piece at
/// least a batch of 64): the pieces must leave the cache and logits one call leaves, bit for bit,
/// in both arithmetics — including a remainder that would be shorter than a batch on its own.
#[test]
fn a_prompt_read_in_pieces_gives_the_logits_of_one_call() {
    let gguf = baimo_formats::Gguf::open(&common::model(common::SMOLLM2)).unwrap();
    let model = Model::from_gguf(&gguf).unwrap();
    assert!(model.reads_prompt_in_pieces());
    let pool = ThreadPool::new(2);
    let prompt: Vec<u32> = (0..1100u32).map(|i| 200 + (i * 7919) % 40000).collect();
    for arithmetic in [baimo_models::Arithmetic::LlamaCpp, baimo_models::Arithmetic::Fast] {
        // 1100 tokens in one call, and in pieces that are multiples of the batch but the last, which
        // is at least a batch long (the server reads 4 × 256 + 76; the others are such splits
        // too). Then a next token on each, as a decoding step would read it.
        let read = |pieces: &[usize]| {
            let mut seq = model.new_sequence(prompt.len() + 2);
            seq.arithmetic = arithmetic;
            let mut at = 0;
            let mut logits = Vec::new();
            for &n in pieces {
                logits =
                    model.forward(&pool, &mut seq, &prompt[at..at + n], LogitsFor::Last).unwrap().to_vec();
                at += n;
            }
            let next = model.forward(&pool, &mut seq, &[42], LogitsFor::Last).unwrap().to_vec();
            (logits, next)
        };
        let whole = read(&[1100]);
        for pieces in [&[256, 256, 256, 256, 76][..], &[512, 512, 76], &[1024, 76], &[64, 960, 76]] {
            let (logits, next) = read(pieces);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&logits), bits(&whole.0), "{arithmetic:?}, pieces {pieces:?}: prompt logits");
            assert_eq!(bits(&next), bits(&whole.1), "{arithmetic:?}, pieces {pieces:?}: next token's logits");
        }
    }
}
