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
    probs: Vec<f64>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler {
            rng: Rng::new(params.seed),
            params,
            candidates: Vec::new(),
            counts: Vec::new(),
            probs: Vec::new(),
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
        self.draw()
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
        self.softmax(1.0);
        let (top_p, min_p) = (self.params.top_p as f64, self.params.min_p as f64);
        let mut keep = self.candidates.len();
        if top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, &p) in self.probs.iter().enumerate() {
                cumulative += p;
                if cumulative >= top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if min_p > 0.0 {
            let threshold = self.probs[0] * min_p; // probs[0] is the largest: candidates are sorted
            keep = keep.min(self.probs.iter().take_while(|&&p| p >= threshold).count().max(1));
        }
        self.candidates.truncate(keep.max(1));
    }

    fn softmax(&mut self, temperature: f32) {
        let max = self.candidates.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.0));
        self.probs.clear();
        self.probs.extend(self.candidates.iter().map(|c| (((c.0 - max) / temperature) as f64).exp()));
        let sum: f64 = self.probs.iter().sum();
        self.probs.iter_mut().for_each(|p| *p /= sum);
    }

    fn draw(&mut self) -> u32 {
        self.softmax(self.params.temperature);
        let r = self.rng.next_f64();
        let mut cumulative = 0.0;
        for (i, &p) in self.probs.iter().enumerate() {
            cumulative += p;
            if r < cumulative {
                return self.candidates[i].1;
            }
        }
        self.candidates.last().map_or(0, |c| c.1)
    }
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
