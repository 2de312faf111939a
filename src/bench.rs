//! `baimo bench [MODEL]`: prompt processing (ppN) and generation (tgN) speed, as llama-bench
//! measures them: ppN reads N tokens in one pass from an empty cache; tgN generates N tokens
//! one at a time from an empty cache. Each test runs once to warm up, then `-r` times.

use std::time::Instant;

use anyhow::Result;
use baimo_engine::LoadedModel;
use baimo_models::{Arithmetic, LogitsFor};
use baimo_threads::ThreadPool;

use crate::common::{self, ModelOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A GGUF path, a Hugging Face model folder, a known model name (default smollm2-135m), or a
    /// hub address: `owner/name`, `owner/name:QUANT`, `hf.co/owner/name[:QUANT]`, `owner/name/file.gguf`.
    model_spec: Option<String>,
    /// Prompt lengths to test (comma-separated; 0 skips).
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "512")]
    n_prompt: Vec<usize>,
    /// Generation lengths to test (comma-separated; 0 skips).
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "128")]
    n_gen: Vec<usize>,
    /// Measured repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    /// Also measure generation with this many sequences decoded together (continuous
    /// batching's step; comma-separated; reported as aggregate tokens/s, `tgN@P`).
    #[arg(long, value_delimiter = ',')]
    parallel: Vec<usize>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelOptions,
}

struct Measurement {
    test: String,
    tokens_per_second: Vec<f64>,
}

pub fn main(args: Args) -> Result<()> {
    let model = common::load_model(args.model_spec.as_deref(), &args.model)?;
    let pool = common::thread_pool(&args.model);
    let arithmetic = args.model.arithmetic();
    let mut results = Vec::new();
    for &n in args.n_prompt.iter().filter(|&&n| n > 0) {
        results.push(measure(&args, &format!("pp{n}"), || prompt_speed(&model, &pool, n, arithmetic))?);
    }
    for &n in args.n_gen.iter().filter(|&&n| n > 0) {
        results.push(measure(&args, &format!("tg{n}"), || generation_speed(&model, &pool, n, arithmetic))?);
        for &p in args.parallel.iter().filter(|&&p| p > 0) {
            results.push(measure(&args, &format!("tg{n}@{p}"), || {
                parallel_generation_speed(&model, &pool, n, p, arithmetic)
            })?);
        }
    }
    let size = format!(
        "{:.1} MiB",
        std::fs::metadata(&model.path).map_or(0, |m| m.len()) as f64 / (1u64 << 20) as f64
    );
    if !args.json {
        println!("| model | size | arch | threads | kernels | test | t/s | weights read |");
        println!("| --- | ---: | --- | ---: | --- | ---: | ---: | ---: |");
    }
    // A generation step reads the weights once (a mixture of experts only its routed experts'):
    // bytes per step × steps per second is the weight traffic, to set against the memory
    // bandwidth. A batched step (`tgN@P`) serves P tokens with one read.
    let active = model.info.active_weight_bytes as f64;
    for r in &results {
        let (mean, std) = mean_std(&r.tokens_per_second);
        let steps_per_second = match r.test.split_once('@') {
            _ if !r.test.starts_with("tg") => None,
            Some((_, p)) => p.parse::<f64>().ok().map(|p| mean / p),
            None => Some(mean),
        };
        let traffic = steps_per_second.map(|s| s * active / 1e9);
        if args.json {
            let line = serde_json::json!({
                "model": model.name, "path": model.path, "test": r.test, "threads": pool.n_threads(),
                "tokens_per_second": r.tokens_per_second, "mean": mean, "std": std,
                "weight_bytes": model.info.weight_bytes, "active_weight_bytes": model.info.active_weight_bytes,
                "weight_gb_per_second": traffic,
            });
            println!("{line}");
        } else {
            println!(
                "| {} | {size} | {} | {} | {} | {} | {mean:.2} ± {std:.2} | {} |",
                model.name,
                model.info.architecture,
                pool.n_threads(),
                baimo_kernels::Isa::best().name(),
                r.test,
                traffic.map_or("".to_string(), |gb| format!("{:.0} MB/token, {gb:.1} GB/s", active / 1e6)),
            );
        }
    }
    Ok(())
}

fn measure(args: &Args, test: &str, mut run: impl FnMut() -> Result<f64>) -> Result<Measurement> {
    run()?; // warm-up: page the weights in, fill caches
    let mut tokens_per_second = Vec::new();
    for _ in 0..args.repetitions.max(1) {
        tokens_per_second.push(run()?);
    }
    if !args.model.quiet {
        let (mean, _) = mean_std(&tokens_per_second);
        eprintln!("{test}: {mean:.2} tok/s");
    }
    Ok(Measurement { test: test.to_string(), tokens_per_second })
}

/// Deterministic token ids spread over the vocabulary.
fn bench_tokens(model: &LoadedModel, n: usize) -> Vec<u32> {
    let vocab = model.info.vocab_size as u64;
    let mut rng = baimo_engine::sampler::Rng::new(1234);
    (0..n).map(|_| (rng.next_u64() % vocab) as u32).collect()
}

fn prompt_speed(model: &LoadedModel, pool: &ThreadPool, n: usize, arithmetic: Arithmetic) -> Result<f64> {
    let tokens = bench_tokens(model, n);
    let mut seq = model.model.new_sequence(n + 1);
    seq.arithmetic = arithmetic;
    let started = Instant::now();
    model.model.forward(pool, &mut seq, &tokens, LogitsFor::Last)?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn generation_speed(model: &LoadedModel, pool: &ThreadPool, n: usize, arithmetic: Arithmetic) -> Result<f64> {
    let tokens = bench_tokens(model, n);
    let mut seq = model.model.new_sequence(n + 1);
    seq.arithmetic = arithmetic;
    let started = Instant::now();
    for &t in &tokens {
        model.model.forward(pool, &mut seq, &[t], LogitsFor::Last)?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// `parallel` sequences of `n` tokens each, decoded together one step at a time (each starts
/// from its own one-token prompt); aggregate tokens/s.
fn parallel_generation_speed(
    model: &LoadedModel,
    pool: &ThreadPool,
    n: usize,
    parallel: usize,
    arithmetic: Arithmetic,
) -> Result<f64> {
    let tokens = bench_tokens(model, n + parallel);
    let mut seqs: Vec<_> = (0..parallel)
        .map(|i| {
            let mut seq = model.model.new_sequence(n + 2);
            seq.arithmetic = arithmetic;
            model.model.forward(pool, &mut seq, &tokens[i..i + 1], LogitsFor::Last)?;
            Ok::<_, baimo_models::ModelError>(seq)
        })
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    for step in 0..n {
        let batch: Vec<u32> = (0..parallel).map(|i| tokens[(step + i) % tokens.len()]).collect();
        let mut refs: Vec<_> = seqs.iter_mut().collect();
        model.model.decode_batch(pool, &mut refs, &batch)?;
    }
    Ok((n * parallel) as f64 / started.elapsed().as_secs_f64())
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}
