//! Turning one sequence's logits into tokens and text, step by step: sampling, end tokens, stop
//! strings, the token limit and UTF-8-safe streaming. Separate from the forward passes, so one
//! loop can drive a single session and another a batch of sequences decoded together.

use std::time::{Duration, Instant};

use baimo_tokenizer::{StreamDecoder, Tokenizer};

use crate::constrain::Constraint;
use crate::sampler::Sampler;
use crate::session::{FinishReason, GenerateOptions};
use crate::stop::{StopCheck, StopStrings};

/// A generated token's log-probability under the model (log-softmax of the logits, before any
/// sampling transform), with the most likely alternatives at that step.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Log-softmax of `logits` at `token`, and the `k` most likely tokens with theirs.
fn logprobs_of(logits: &[f32], token: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let lp = |l: f32| (l as f64 - log_z) as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < k || l > top[top.len() - 1].1 {
                let at = top.partition_point(|&(_, v)| v >= l);
                top.insert(at, (i as u32, l));
                top.truncate(k);
            }
        }
    }
    TokenLogprob {
        token,
        logprob: logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: top.into_iter().map(|(t, l)| (t, lp(l))).collect(),
    }
}

pub struct TokenStream {
    options: GenerateOptions,
    logprobs: Vec<TokenLogprob>,
    /// Entries not yet taken by [`TokenStream::take_logprobs`].
    logprobs_taken: usize,
    sampler: Sampler,
    stops: StopStrings,
    decoder: StreamDecoder,
    /// Text held back because it may be the start of a stop string.
    pending: String,
    text: String,
    generated: Vec<u32>,
    finish: Option<FinishReason>,
    /// The stop string that ended the stream.
    stop_sequence: Option<String>,
    /// The logits with `options.logit_bias` added and the grammar's mask applied (kept between
    /// steps).
    biased: Vec<f32>,
    /// The grammar state of this answer, when it must match one.
    constraint: Option<Constraint>,
    started: Instant,
    first_token: Option<Duration>,
}

/// What a finished stream produced.
pub struct StreamEnd {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: FinishReason,
    /// The stop string that ended the stream, if one did.
    pub stop_sequence: Option<String>,
    /// From the stream's start to its first token.
    pub time_to_first_token: Duration,
}

impl TokenStream {
    /// A stream whose clock starts now (time to first token counts from here).
    pub fn new(options: &GenerateOptions) -> TokenStream {
        TokenStream {
            sampler: Sampler::new(options.sampling.clone()),
            stops: StopStrings::new(options.stop.iter().cloned()),
            options: options.clone(),
            logprobs: Vec::new(),
            logprobs_taken: 0,
            decoder: StreamDecoder::new(),
            pending: String::new(),
            text: String::new(),
            generated: Vec::new(),
            finish: None,
            stop_sequence: None,
            biased: Vec::new(),
            // A grammar that does not compile was refused when the request was prepared.
            constraint: options.grammar.as_ref().and_then(|g| g.constraint().ok()),
            started: Instant::now(),
            first_token: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// Ends the stream early (the caller cancelled).
    pub fn cancel(&mut self) {
        self.finish.get_or_insert(FinishReason::Cancelled);
    }

    /// Picks the next token from `logits` (with `history`, the sequence so far, for the
    /// penalties) and streams its text to `on_text`. Returns the token the model must read next,
    /// or `None` when the stream ended (end token, stop string, token limit, or no `room` for
    /// another position).
    pub fn next(
        &mut self,
        tokenizer: &Tokenizer,
        logits: &[f32],
        history: &[u32],
        room: bool,
        on_text: &mut dyn FnMut(&str),
    ) -> Option<u32> {
        if self.finish.is_some() {
            return None;
        }
        if self.generated.len() >= self.options.max_tokens {
            self.finish = Some(FinishReason::Length);
            return None;
        }
        if self.constraint.as_ref().is_some_and(Constraint::is_done) {
            // The grammar is complete: the answer is too.
            self.finish = Some(FinishReason::Stop);
            return None;
        }
        let logits = if self.options.logit_bias.is_empty() && self.constraint.is_none() {
            logits
        } else {
            self.biased.clear();
            self.biased.extend_from_slice(logits);
            for &(token, bias) in &self.options.logit_bias {
                if let Some(l) = self.biased.get_mut(token as usize) {
                    // OpenAI: -100 bans the token, +100 makes it the only choice.
                    *l = if bias <= -100.0 {
                        f32::NEG_INFINITY
                    } else if bias >= 100.0 {
                        f32::MAX / 2.0
                    } else {
                        *l + bias
                    };
                }
            }
            if let Some(c) = &mut self.constraint
                && !c.mask(&mut self.biased)
            {
                // Nothing may follow (the grammar failed): end rather than write outside it.
                self.finish = Some(FinishReason::Stop);
                return None;
            }
            &self.biased[..]
        };
        let token = self.sampler.sample(logits, history);
        if self.options.stop_at_eog && tokenizer.is_eog(token) {
            self.finish = Some(FinishReason::Stop);
            return None;
        }
        if let Some(c) = &mut self.constraint
            && !c.accept(token)
        {
            self.finish = Some(FinishReason::Stop);
            return None;
        }
        self.generated.push(token);
        if let Some(k) = self.options.logprobs {
            self.logprobs.push(logprobs_of(logits, token, k.min(20)));
        }
        self.first_token.get_or_insert_with(|| self.started.elapsed());
        if self.options.shown_tokens.contains(&token) {
            // A marker the caller reads (a tool call's tag): its text, after what is held.
            self.pending.push_str(&self.decoder.finish());
            self.pending.push_str(tokenizer.token_text(token).unwrap_or(""));
        } else {
            self.pending.push_str(&self.decoder.push(tokenizer, token));
        }
        match self.stops.check(&self.pending) {
            StopCheck::Stop(at) => {
                self.stop_sequence = self.stops.found_at(&self.pending, at).map(String::from);
                emit(&self.pending[..at], &mut self.text, on_text);
                self.pending.clear();
                self.finish = Some(FinishReason::Stop);
                return None;
            }
            StopCheck::Emit(n) => {
                emit(&self.pending[..n], &mut self.text, on_text);
                self.pending.drain(..n);
            }
        }
        if self.generated.len() >= self.options.max_tokens || !room {
            self.finish = Some(FinishReason::Length);
            return None;
        }
        Some(token)
    }

    /// The log-probability entries recorded since the last call (for streaming them).
    pub fn take_logprobs(&mut self) -> &[TokenLogprob] {
        let from = self.logprobs_taken;
        self.logprobs_taken = self.logprobs.len();
        &self.logprobs[from..]
    }

    /// Flushes what was held back (unless a stop string ended the stream) and returns the
    /// result.
    pub fn finish(mut self, on_text: &mut dyn FnMut(&str)) -> StreamEnd {
        let finish_reason = self.finish.unwrap_or(FinishReason::Length);
        if finish_reason != FinishReason::Stop {
            let rest = self.decoder.finish();
            self.pending.push_str(&rest);
            let pending = std::mem::take(&mut self.pending);
            emit(&pending, &mut self.text, on_text);
        }
        StreamEnd {
            text: self.text,
            tokens: self.generated,
            logprobs: self.logprobs,
            finish_reason,
            stop_sequence: self.stop_sequence,
            time_to_first_token: self.first_token.unwrap_or_default(),
        }
    }
}

fn emit(piece: &str, text: &mut String, on_text: &mut dyn FnMut(&str)) {
    if !piece.is_empty() {
        on_text(piece);
        text.push_str(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::logprobs_of;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_top_alternatives() {
        let logits = [1.0f32, 3.0, 2.0, 0.5];
        let lp = logprobs_of(&logits, 2, 2);
        let z: f32 = logits.iter().map(|l| l.exp()).sum::<f32>().ln();
        assert!((lp.logprob - (2.0 - z)).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        assert!((lp.top[0].1 - (3.0 - z)).abs() < 1e-6);
    }
}
