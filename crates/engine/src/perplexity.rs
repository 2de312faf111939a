//! Perplexity exactly as llama.cpp's `llama-perplexity` computes it, so figures compare:
//! tokenize the whole text once (BOS only if the model adds one), cut it into
//! `floor(n_tokens / ctx)` chunks, run each from an empty cache, and score only the second
//! half of each chunk: for positions `p = ctx/2 .. ctx-2`, the negative log-likelihood of token
//! `p+1`. PPL = exp(mean NLL); the ± is the standard error of the mean NLL, times PPL.

use baimo_models::{Arithmetic, LogitsFor};
use baimo_threads::ThreadPool;

use crate::{EngineError, LoadedModel};

#[derive(Clone, Debug)]
pub struct Perplexity {
    pub ppl: f64,
    /// Standard error of the estimate (llama.cpp's "±").
    pub error: f64,
    pub n_chunks: usize,
    /// Tokens scored in all.
    pub n_scored: usize,
    pub n_tokens: usize,
}

/// Progress after each chunk: (chunks done, chunks in all, PPL so far).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, f64);

pub fn perplexity(
    model: &LoadedModel,
    pool: &ThreadPool,
    text: &str,
    ctx: usize,
    arithmetic: Arithmetic,
    progress: Progress<'_>,
) -> Result<Perplexity, EngineError> {
    if ctx < 4 || ctx > model.info.context_length {
        return Err(EngineError::InvalidArgument(format!(
            "context size {ctx} (must be between 4 and the model's {})",
            model.info.context_length
        )));
    }
    let tokenizer = &model.tokenizer;
    let bos = tokenizer.bos_id().filter(|_| tokenizer.add_bos());
    let mut tokens = Vec::new();
    tokens.extend(bos);
    tokens.extend(tokenizer.encode(text, false));
    let n_chunks = tokens.len() / ctx;
    if n_chunks == 0 {
        return Err(EngineError::InvalidArgument(format!(
            "the text has {} tokens, fewer than one context of {ctx}",
            tokens.len()
        )));
    }

    let vocab = model.info.vocab_size;
    let first = ctx / 2;
    // Logits are asked for in pieces of this many positions, to bound their memory.
    const PIECE: usize = 64;
    let mut seq = model.model.new_sequence(ctx);
    seq.arithmetic = arithmetic;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    for chunk in 0..n_chunks {
        let mut window = tokens[chunk * ctx..(chunk + 1) * ctx].to_vec();
        // As llama.cpp: each chunk starts with BOS when the model uses one.
        if let Some(b) = bos {
            window[0] = b;
        }
        seq.kv.clear();
        // The unscored first half: only its cache is needed.
        model.model.forward(pool, &mut seq, &window[..first], LogitsFor::Last)?;
        let mut pos = first;
        while pos < ctx {
            let end = (pos + PIECE).min(ctx);
            let logits = model.model.forward(pool, &mut seq, &window[pos..end], LogitsFor::All)?;
            for p in pos..end.min(ctx - 1) {
                let row = &logits[(p - pos) * vocab..(p - pos + 1) * vocab];
                let v = -log_softmax(row, window[p + 1] as usize);
                nll += v;
                nll2 += v * v;
                count += 1;
            }
            pos = end;
        }
        progress(chunk + 1, n_chunks, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let variance = nll2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let error = if variance > 0.0 && count > 1 { (variance / (count - 1) as f64).sqrt() * ppl } else { 0.0 };
    Ok(Perplexity { ppl, error, n_chunks, n_scored: count, n_tokens: tokens.len() })
}

/// `log softmax(logits)[token]`, with the sum of exponentials in f64 as llama.cpp.
fn log_softmax(logits: &[f32], token: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    (logits[token] - max) as f64 - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::log_softmax;

    #[test]
    fn log_softmax_matches_the_definition() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, &l) in logits.iter().enumerate() {
            assert!((log_softmax(&logits, i) - (l as f64 - z.ln())).abs() < 1e-6);
        }
    }
}
