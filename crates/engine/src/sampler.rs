//! Choosing the next token from the logits: penalties, then top-k, top-p, min-p and temperature,
//! then a draw (in llama.cpp's order), or plain argmax when the temperature is 0.
//!
//! All buffers are kept between calls, so sampling a token allocates nothing.

/// How to pick tokens. The defaults are llama.cpp's.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy); higher flattens the distribution.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: none).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens by this (1: off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted from the logit of every recently seen token (OpenAI's presence penalty).
    pub presence_penalty: f32,
    /// Subtracted once per occurrence of a recently seen token (OpenAI's frequency penalty).
    pub frequency_penalty: f32,
    /// Seed of the random draw: the same seed and inputs give the same output.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0x5EED,
        }
    }
}

impl SamplingParams {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    fn has_penalties(&self) -> bool {
        self.repeat_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

/// A small, fast PRNG (SplitMix64) so a seed means the same stream on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// (logit, token) pairs still in the running.
    candidates: Vec<(f32, u32)>,
    /// Occurrence counts of recent tokens, for the penalties.
    counts: Vec<(u32, u32)>,
    /// The candidates' logits in a row, and their softmax weights (unnormalised).
    logits: Vec<f32>,
    weights: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler {
            rng: Rng::new(params.seed),
            params,
            candidates: Vec::new(),
            counts: Vec::new(),
            logits: Vec::new(),
            weights: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks a token from `logits`, given the tokens of the sequence so far (`history`, for the
    /// penalties).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        assert!(!logits.is_empty(), "sampling from an empty vocabulary");
        let p = &self.params;
        if !p.has_penalties() && p.temperature <= 0.0 {
            return argmax(logits);
        }
        // Plain temperature sampling (what OpenAI-style requests ask for by default) draws from
        // the logits themselves: no candidate list of the whole vocabulary to build.
        let whole_vocabulary = p.top_k == 0 || p.top_k >= logits.len();
        if !p.has_penalties() && whole_vocabulary && !self.needs_order() {
            let temperature = self.params.temperature;
            let total = weigh(logits, temperature, &mut self.weights);
            return self.draw(total) as u32;
        }
        self.candidates.clear();
        self.candidates.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        if p.has_penalties() {
            self.apply_penalties(history);
        }
        if self.params.temperature <= 0.0 {
            let best = self.candidates.iter().max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
            return best.map_or(0, |c| c.1);
        }
        self.truncate_top_k();
        self.truncate_top_p_min_p();
        let total = self.weigh_candidates(self.params.temperature);
        let i = self.draw(total);
        self.candidates[i].1
    }

    fn apply_penalties(&mut self, history: &[u32]) {
        let p = &self.params;
        let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
        self.counts.clear();
        for &t in recent {
            match self.counts.iter_mut().find(|(tok, _)| *tok == t) {
                Some((_, n)) => *n += 1,
                None => self.counts.push((t, 1)),
            }
        }
        for &(tok, n) in &self.counts {
            let Some(c) = self.candidates.get_mut(tok as usize) else {
                continue;
            };
            if c.0 > 0.0 {
                c.0 /= p.repeat_penalty;
            } else {
                c.0 *= p.repeat_penalty;
            }
            c.0 -= n as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// Keeps the `top_k` best, sorted best first. Sorting the whole vocabulary (150k entries for
    /// Qwen) is skipped when no later cut needs the order.
    fn truncate_top_k(&mut self) {
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.params.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        if self.needs_order() || k > 0 {
            self.candidates.sort_unstable_by(by_logit_desc);
        }
    }

    fn needs_order(&self) -> bool {
        self.params.top_p < 1.0 || self.params.min_p > 0.0
    }

    /// Softmax over the (sorted) candidates, then the top-p and min-p cuts.
    fn truncate_top_p_min_p(&mut self) {
        if !self.needs_order() {
            return;
        }
        let total = self.weigh_candidates(1.0);
        let (top_p, min_p) = (self.params.top_p as f64, self.params.min_p as f64);
        let mut keep = self.candidates.len();
        if top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, &w) in self.weights.iter().enumerate() {
                cumulative += w as f64 / total;
                if cumulative >= top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if min_p > 0.0 {
            // weights[0] is the largest (candidates are sorted); the ratio needs no normalising.
            let threshold = self.weights[0] as f64 * min_p;
            keep = keep.min(self.weights.iter().take_while(|&&w| w as f64 >= threshold).count().max(1));
        }
        self.candidates.truncate(keep.max(1));
    }

    /// Softmax weights of the candidates at `temperature`, into `weights`; returns their sum.
    fn weigh_candidates(&mut self, temperature: f32) -> f64 {
        self.logits.clear();
        self.logits.extend(self.candidates.iter().map(|c| c.0));
        weigh(&self.logits, temperature, &mut self.weights)
    }

    /// The index drawn from `weights` (summing to `total`) with one random number.
    fn draw(&mut self, total: f64) -> usize {
        let target = self.rng.next_f64() * total;
        // Whole blocks are skipped by their sums, then the block that holds the target is walked.
        const BLOCK: usize = 256;
        let mut cumulative = 0.0;
        for (b, block) in self.weights.chunks(BLOCK).enumerate() {
            let block_sum = sum_f64(block);
            if cumulative + block_sum > target {
                for (i, &w) in block.iter().enumerate() {
                    cumulative += w as f64;
                    if target < cumulative {
                        return b * BLOCK + i;
                    }
                }
            } else {
                cumulative += block_sum;
            }
        }
        // Rounding left the target past the end: the last token with any weight.
        self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
    }
}

/// `weights[i] = e^((logits[i] − max) / temperature)`, the unnormalised softmax, with the
/// vectorized exp; returns their sum (in f64, so a 150k vocabulary sums without drift).
fn weigh(logits: &[f32], temperature: f32, weights: &mut Vec<f32>) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    weights.resize(logits.len(), 0.0);
    baimo_kernels::ops::exp_shifted(logits, max, 1.0 / temperature, weights);
    sum_f64(weights)
}

/// Sum in f64 over eight independent lanes (so it vectorizes), then the lanes in order.
fn sum_f64(xs: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&x| x as f64).sum();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x as f64;
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// Index of the largest logit (the first, on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9, -1.0]
    }

    #[test]
    fn greedy_takes_the_largest_logit_first_on_ties() {
        assert_eq!(Sampler::new(SamplingParams::greedy()).sample(&logits(), &[]), 1);
        assert_eq!(argmax(&[1.0, 5.0, 5.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature() {
        let params =
            SamplingParams { temperature: 5.0, top_k: 1, top_p: 1.0, min_p: 0.0, ..Default::default() };
        let mut s = Sampler::new(params);
        for _ in 0..50 {
            assert_eq!(s.sample(&logits(), &[]), 1);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let params = SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..Default::default()
        };
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..40).map(|_| s.sample(&logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(&params), run(&params));
        let other = SamplingParams { seed: 43, ..params.clone() };
        assert_ne!(run(&params), run(&other));
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities ~ [0.05, 0.41, 0.15, 0.03, 0.37, 0.005] at temperature 1.
        let params =
            SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.7, min_p: 0.0, ..Default::default() };
        let mut s = Sampler::new(params);
        for _ in 0..200 {
            assert!(matches!(s.sample(&logits(), &[]), 1 | 4));
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let params =
            SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.5, ..Default::default() };
        let mut s = Sampler::new(params);
        for _ in 0..200 {
            assert!(matches!(s.sample(&logits(), &[]), 1 | 4));
        }
    }

    /// Drawn frequencies follow the softmax at the temperature, on the whole-vocabulary path
    /// and on the candidate path (top-k equal to the vocabulary keeps every token).
    #[test]
    fn draws_follow_the_softmax() {
        let temperature = 0.7f64;
        let l = logits();
        let exps: Vec<f64> = l.iter().map(|&x| (x as f64 / temperature).exp()).collect();
        let total: f64 = exps.iter().sum();
        for top_k in [0, l.len() - 1] {
            let params = SamplingParams {
                temperature: 0.7,
                top_k,
                top_p: 1.0,
                min_p: 0.0,
                seed: 7,
                ..Default::default()
            };
            let mut s = Sampler::new(params);
            let n = 40_000;
            let mut counts = vec![0usize; l.len()];
            for _ in 0..n {
                counts[s.sample(&l, &[]) as usize] += 1;
            }
            for (i, &c) in counts.iter().enumerate() {
                let mut want = exps[i] / total;
                if top_k == l.len() - 1 && i == 5 {
                    want = 0.0; // the least likely token is cut
                } else if top_k == l.len() - 1 {
                    want = exps[i] / (total - exps[5]);
                }
                let got = c as f64 / n as f64;
                // Four standard deviations of a binomial proportion.
                let sd = (want * (1.0 - want) / n as f64).sqrt();
                assert!((got - want).abs() <= 4.0 * sd + 1e-9, "top_k {top_k}, token {i}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn repeat_penalty_can_change_the_greedy_choice() {
        let params = SamplingParams { temperature: 0.0, repeat_penalty: 2.0, ..Default::default() };
        // Token 1 (3.0) was just seen: 3.0 / 2 = 1.5 < 2.9.
        assert_eq!(Sampler::new(params).sample(&logits(), &[1]), 4);
    }

    #[test]
    fn presence_and_frequency_penalties_subtract() {
        let params = SamplingParams {
            temperature: 0.0,
            presence_penalty: 0.05,
            frequency_penalty: 0.04,
            ..Default::default()
        };
        // Token 1: 3.0 - 0.05 - 2·0.04 = 2.87 < 2.9.
        assert_eq!(Sampler::new(params).sample(&logits(), &[1, 1]), 4);
    }

    proptest! {
        #[test]
        fn sampled_tokens_are_always_in_range(
            logits in prop::collection::vec(-30.0f32..30.0, 1..300),
            temperature in 0.0f32..3.0,
            top_k in 0usize..50,
            top_p in 0.05f32..1.0,
            min_p in 0.0f32..0.9,
            seed: u64,
            history in prop::collection::vec(0u32..400, 0..40),
        ) {
            let params = SamplingParams { temperature, top_k, top_p, min_p, seed, repeat_penalty: 1.3, presence_penalty: 0.2, ..Default::default() };
            let mut s = Sampler::new(params);
            for _ in 0..3 {
                let t = s.sample(&logits, &history);
                prop_assert!((t as usize) < logits.len());
            }
        }
    }
}
