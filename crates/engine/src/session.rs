//! One conversation with a model: its KV cache, and generation from it. A new prompt that
//! starts like the previous one (the next turn of a chat) reuses the cached positions of the
//! shared prefix instead of reading it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baimo_models::{Arithmetic, LogitsFor, Sequence};
use baimo_threads::ThreadPool;

use crate::sampler::SamplingParams;
use crate::stream::TokenStream;
use crate::{EngineError, LoadedModel};

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub sampling: SamplingParams,
    /// Record each generated token's log-probability and this many most likely alternatives
    /// (`None`: record nothing).
    pub logprobs: Option<usize>,
    /// At most this many new tokens.
    pub max_tokens: usize,
    /// Stop before any of these strings; it is not part of the output.
    pub stop: Vec<String>,
    /// Stop at the model's end-of-generation tokens (`<|im_end|>`, EOS, ...).
    pub stop_at_eog: bool,
    /// Added to these tokens' logits before sampling (-100 bans a token, 100 forces it).
    pub logit_bias: Vec<(u32, f32)>,
    /// Control tokens whose text is part of the answer (tool-call markers such as
    /// `<tool_call>`, which some vocabularies mark as control tokens); others are not shown.
    pub shown_tokens: Vec<u32>,
    /// A grammar the answer must match (sampling is constrained to it).
    pub grammar: Option<crate::constrain::GrammarRequest>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            sampling: SamplingParams::default(),
            logprobs: None,
            max_tokens: 512,
            stop: Vec::new(),
            stop_at_eog: true,
            logit_bias: Vec::new(),
            shown_tokens: Vec::new(),
            grammar: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// The caller cancelled.
    Cancelled,
}

impl FinishReason {
    /// The name OpenAI's API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    /// One entry per generated token when asked for (`GenerateOptions::logprobs`).
    pub logprobs: Vec<crate::stream::TokenLogprob>,
    pub finish_reason: FinishReason,
    /// The stop string that ended the answer, if one did.
    pub stop_sequence: Option<String>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose cached state was reused.
    pub cached_tokens: usize,
    /// Reading the (uncached part of the) prompt.
    pub prompt_time: Duration,
    /// Producing the new tokens after the first.
    pub generation_time: Duration,
    /// From the call to the first token's text.
    pub time_to_first_token: Duration,
}

impl Generation {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        (self.prompt_tokens - self.cached_tokens) as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.generation_time.as_secs_f64().max(1e-9)
    }
}

pub struct Session {
    model: Arc<LoadedModel>,
    pool: Arc<ThreadPool>,
    seq: Sequence,
    /// The tokens whose keys and values are in the cache.
    tokens: Vec<u32>,
}

impl Session {
    /// A session that holds at most `max_len` positions (capped at the model's context length).
    pub fn new(model: Arc<LoadedModel>, pool: Arc<ThreadPool>, max_len: usize) -> Session {
        let max_len = max_len.min(model.info.context_length).max(1);
        let seq = model.model.new_sequence(max_len);
        Session { model, pool, seq, tokens: Vec::new() }
    }

    /// The rounding order of this session's computation (see [`Arithmetic`]).
    pub fn set_arithmetic(&mut self, arithmetic: Arithmetic) {
        self.seq.arithmetic = arithmetic;
    }

    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    pub fn max_len(&self) -> usize {
        self.seq.kv.max_len()
    }

    /// Positions currently cached.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Forgets everything (the next prompt is read from the start).
    pub fn clear(&mut self) {
        self.seq.kv.clear();
        self.tokens.clear();
    }

    /// Continues from `prompt` (the full token sequence, not just the new part), streaming the
    /// new text to `on_text` piece by piece. `cancel` stops generation between tokens.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
        cancel: Option<&AtomicBool>,
    ) -> Result<Generation, EngineError> {
        let started = Instant::now();
        let max_len = self.max_len();
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() >= max_len {
            return Err(EngineError::PromptTooLong { prompt: prompt.len(), max: max_len });
        }
        // Reuse the cached prefix; at least one token must be read to get logits. A model whose
        // context attends both ways (GLM) must read a new prompt whole.
        let mut reused = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        reused = reused.min(prompt.len() - 1);
        if !self.model.model.causal_prefix() {
            reused = 0;
        }
        self.seq.kv.truncate(reused);
        self.tokens.truncate(reused);

        let (model, pool) = (&self.model.model, &*self.pool);
        let tokenizer = &self.model.tokenizer;
        let mut stream = TokenStream::new(options);
        let mut logits = model.forward(pool, &mut self.seq, &prompt[reused..], LogitsFor::Last)?;
        self.tokens.extend_from_slice(&prompt[reused..]);
        let prompt_time = started.elapsed();
        let generation_started = Instant::now();
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                stream.cancel();
                break;
            }
            let room = self.tokens.len() + 1 < max_len;
            let Some(token) = stream.next(tokenizer, logits, &self.tokens, room, on_text) else { break };
            logits = model.forward(pool, &mut self.seq, &[token], LogitsFor::Last)?;
            self.tokens.push(token);
        }
        let end = stream.finish(on_text);
        // The stream's clock started before the prompt was read.
        let time_to_first_token = end.time_to_first_token;
        let (text, generated, finish) = (end.text.clone(), end.tokens.clone(), end.finish_reason);
        Ok(Generation {
            text,
            tokens: generated,
            logprobs: end.logprobs,
            stop_sequence: end.stop_sequence.clone(),
            finish_reason: finish,
            prompt_tokens: prompt.len(),
            cached_tokens: reused,
            prompt_time,
            generation_time: generation_started.elapsed(),
            time_to_first_token,
        })
    }
}
