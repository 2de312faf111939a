//! GLM's blank infilling (Du et al. 2022): the model fills each `[MASK]` span of a text, or with
//! `[gMASK]` (or no mask at all) writes on at the end. Each span is one generation: the text's
//! tokens, then `[gMASK] <sop>` as ChatGLM-6B's tokenizer appends them, then tokens by argmax
//! until `<eop>`. With several `[MASK]`s the spans are filled left to right, each seeing the
//! ones before it filled in.

use baimo_models::LogitsFor;
use baimo_threads::ThreadPool;

use crate::sampler::argmax;
use crate::{EngineError, LoadedModel};

const MASK_TEXT: &str = "[MASK]";
const GMASK_TEXT: &str = "[gMASK]";

/// One filled span.
#[derive(Clone, Debug, PartialEq)]
pub struct InfillSpan {
    pub tokens: Vec<u32>,
    pub text: String,
    /// Whether the model ended the span (`<eop>`) rather than running into the token limit.
    pub ended: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Infill {
    /// The text with every span filled in.
    pub text: String,
    pub spans: Vec<InfillSpan>,
}

/// Fills one span: `context` (token ids, with a `[MASK]` or not), then `[gMASK] <sop>`, then
/// greedy tokens until `<eop>` or `max_tokens`.
pub fn infill_span(
    model: &LoadedModel,
    pool: &ThreadPool,
    context: &[u32],
    max_tokens: usize,
) -> Result<InfillSpan, EngineError> {
    let special = model.model.infill_tokens().ok_or_else(|| {
        EngineError::InvalidArgument(format!("{} has no blank infilling (a GLM model does)", model.name))
    })?;
    let mut prompt = context.to_vec();
    prompt.extend([special.gmask, special.sop]);
    let limit = model.info.context_length;
    if prompt.len() >= limit {
        return Err(EngineError::PromptTooLong { prompt: prompt.len(), max: limit });
    }
    let mut seq = model.model.new_sequence((prompt.len() + max_tokens).min(limit));
    let mut logits = model.model.forward(pool, &mut seq, &prompt, LogitsFor::Last)?.to_vec();
    let (mut tokens, mut ended) = (Vec::new(), false);
    while tokens.len() < max_tokens && seq.len() < limit {
        let next = argmax(&logits);
        if next == special.eop {
            ended = true;
            break;
        }
        tokens.push(next);
        if tokens.len() == max_tokens || seq.len() + 1 > limit {
            break;
        }
        logits = model.model.forward(pool, &mut seq, &[next], LogitsFor::Last)?.to_vec();
    }
    let text = model.tokenizer.decode(&tokens, false);
    Ok(InfillSpan { tokens, text, ended })
}

/// Fills every `[MASK]` of `text` in turn; only a text without one gets a `[gMASK]`
/// generation, written where the `[gMASK]` stands or at the end.
pub fn infill(
    model: &LoadedModel,
    pool: &ThreadPool,
    text: &str,
    max_tokens: usize,
) -> Result<Infill, EngineError> {
    let special = model.model.infill_tokens().ok_or_else(|| {
        EngineError::InvalidArgument(format!("{} has no blank infilling (a GLM model does)", model.name))
    })?;
    // Only the masks of the given text are filled (a span that spells "[MASK]" is left as is).
    let masks = text.matches(MASK_TEXT).count();
    let mut text = text.to_string();
    let mut spans = Vec::new();
    loop {
        let ids = model.tokenizer.encode(&text, true);
        let span = infill_span(model, pool, &ids, max_tokens)?;
        if spans.len() < masks
            && ids.contains(&special.mask)
            && let Some(at) = text.find(MASK_TEXT)
        {
            text.replace_range(at..at + MASK_TEXT.len(), &span.text);
            spans.push(span);
            if spans.len() == masks {
                return Ok(Infill { text, spans });
            }
            continue;
        }
        match text.find(GMASK_TEXT) {
            Some(at) => text.replace_range(at..at + GMASK_TEXT.len(), &span.text),
            None => text.push_str(&span.text),
        }
        spans.push(span);
        return Ok(Infill { text, spans });
    }
}
