//! The forward driver, written once for every family.
//!
//! A family says how one batch of rows goes through its layers ([`Pass::run`]). Everything
//! around that is here: the checks (tokens inside the vocabulary, room left in every cache), the
//! size of the logits, a prompt read in batches of the scratch's size, and a decoding step of
//! continuous batching with one row per sequence.
//!
//! A batch's rows are either a run of one sequence's next positions (a prompt, or a single
//! sequence's step) or the next position of each of several sequences (a step of continuous
//! batching). [`LayerRows`] writes their keys and values and runs their attention for either,
//! so a family's layer loop is the same for both, and a row gets the same logits in a batch of
//! sequences as alone.

use std::ops::Range;

use baimo_kernels::ops::RopeStyle;
use baimo_threads::{Ctx, SharedMut, ThreadPool};

use crate::attention::{
    Accumulate, Heads, LayerCache, RowCache, attend, attend_alibi, attend_alibi_rows, attend_rows,
    rope_and_cache, rope_and_cache_rows,
};
use crate::state::{KvCache, SharedKv};
use crate::{Arithmetic, InfillTokens, LogitsFor, ModelError, ModelInfo, Scratch, Sequence};

/// What a family's forward pass provides to the driver.
pub(crate) trait Pass {
    /// The buffers of one sequence's forward passes (a step of continuous batching works in its
    /// first sequence's).
    type Scratch: 'static;
    /// What a row needs from its sequence besides its position: Qwen v1's RoPE base (fixed by
    /// its prompt), GLM's 2-D layout.
    type Row: Copy;

    fn vocab_size(&self) -> usize;

    fn info(&self) -> ModelInfo;

    /// A new sequence's cache (at most `max_len` positions) and buffers (`batch` rows).
    fn new_state(&self, max_len: usize, batch: usize) -> (KvCache, Scratch);

    /// Whether the cached state of a prompt's first tokens stays valid when other tokens follow.
    fn causal_prefix(&self) -> bool {
        true
    }

    /// Whether a prompt read in several calls (see `Model::reads_prompt_in_pieces`) gets the
    /// state one call gives it.
    fn reads_prompt_in_pieces(&self) -> bool {
        true
    }

    /// GLM's blank-infilling tokens, for the models that have them.
    fn infill_tokens(&self) -> Option<InfillTokens> {
        None
    }

    /// Positions a sequence can hold by the model's own bound (GPT-2's position table, GLM's
    /// `max_sequence_length`); the cache's capacity bounds it too.
    fn max_positions(&self) -> usize {
        usize::MAX
    }

    /// This family's buffers in a sequence's scratch (`None`: another family's sequence).
    fn scratch(s: &mut Scratch) -> Option<&mut Self::Scratch>;

    /// Rows one pass of the layer loop takes at most.
    fn batch_size(s: &Self::Scratch) -> usize;

    fn logits(s: &mut Self::Scratch) -> &mut Vec<f32>;

    /// Before `tokens` are read, in one call, at the positions from `len`: the facts their rows
    /// share. The scratch may change (GLM notes its layout and grows to hold its context).
    fn begin(&self, s: &mut Self::Scratch, len: usize, tokens: &[u32]) -> Self::Row;

    /// The facts of a sequence's row in a decoding step that puts `token` at position `len`.
    fn step_row(&self, s: &Self::Scratch, len: usize, token: u32) -> Self::Row;

    /// After a decoding step: what the sequence keeps of its row's facts.
    fn end_step(_s: &mut Self::Scratch, _row: Self::Row) {}

    /// The batch through the layers; the logits of its rows from `batch.first_out` go to rows
    /// `batch.logit_rows` of the scratch's logits.
    fn run(&self, pool: &ThreadPool, s: &mut Self::Scratch, batch: &Batch<'_, Self::Row>);
}

/// One pass of the layer loop: its tokens, where their rows sit, and which logits it gives.
pub(crate) struct Batch<'b, R> {
    pub tokens: &'b [u32],
    pub rows: Rows<'b>,
    facts: Facts<R>,
    /// The first row whose logits are wanted (all the rows after it are wanted too).
    pub first_out: usize,
    /// Where those logits go in the scratch's logits (rows of `vocab_size`).
    pub logit_rows: Range<usize>,
    /// Matrix products in llama.cpp's order (see `Arithmetic::LlamaCpp`).
    pub exact: bool,
    /// How attention sums (llama.cpp decides by the rows of the whole call).
    pub accumulate: Accumulate,
}

enum Facts<R> {
    /// A run of one sequence: every row shares its facts.
    One(R),
    /// One row per sequence.
    Each(Vec<R>),
}

impl<R: Copy> Batch<'_, R> {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The facts of row `t`'s sequence.
    pub fn row(&self, t: usize) -> R {
        match &self.facts {
            Facts::One(r) => *r,
            Facts::Each(rows) => rows[t],
        }
    }

    /// The position of row `t`'s token in its sequence.
    pub fn position(&self, t: usize) -> usize {
        self.rows.position(t)
    }

    /// The capacity of row `t`'s sequence (Phi-3's LongRoPE chooses its factors by it).
    pub fn max_len(&self, t: usize) -> usize {
        match &self.rows {
            Rows::Run { max_len, .. } => *max_len,
            Rows::Step(r) => r.max_lens[t],
        }
    }

    /// Rows with logits.
    pub fn n_out(&self) -> usize {
        self.len() - self.first_out
    }

    /// The scratch's logits rows for this batch (take them from the scratch's whole logits).
    pub fn logits<'l>(&self, all: &'l mut [f32], vocab: usize) -> SharedMut<'l, f32> {
        SharedMut::new(&mut all[self.logit_rows.start * vocab..self.logit_rows.end * vocab])
    }
}

/// Where a batch's rows keep their keys and values.
pub(crate) enum Rows<'b> {
    /// `n` consecutive positions of one sequence, from `pos0`.
    Run { kv: SharedKv<'b>, layer_stride: usize, pos0: usize, n: usize, max_len: usize },
    /// One position in each of several sequences.
    Step(RowCaches<'b>),
}

impl Rows<'_> {
    pub fn position(&self, t: usize) -> usize {
        match self {
            Rows::Run { pos0, .. } => pos0 + t,
            Rows::Step(r) => r.positions[t],
        }
    }

    /// The rows' part of layer `l`.
    pub fn layer(&self, l: usize) -> LayerRows<'_, '_> {
        match self {
            Rows::Run { kv, layer_stride, pos0, n, .. } => {
                LayerRows::Run { cache: kv.layer(l * layer_stride), pos0: *pos0, n: *n }
            }
            Rows::Step(r) => LayerRows::Step(r.layer(l)),
        }
    }
}

/// A batch's rows in one layer's part of their caches.
pub(crate) enum LayerRows<'a, 'b> {
    Run { cache: LayerCache<'a, 'b>, pos0: usize, n: usize },
    Step(Vec<RowCache<'a, 'b>>),
}

impl LayerRows<'_, '_> {
    /// Rotates the rows' query and key heads by `cos_sin` (a row of angles per row; empty: no
    /// rotation) and writes their keys and values at their positions.
    pub fn rope_and_cache(
        &self,
        ctx: &Ctx<'_>,
        heads: Heads,
        qkv: &SharedMut<'_, f32>,
        cos_sin: &[f32],
        style: RopeStyle,
    ) {
        match self {
            LayerRows::Run { cache, pos0, n } => {
                rope_and_cache(ctx, heads, qkv, *n, *pos0, cos_sin, style, cache)
            }
            LayerRows::Step(rows) => rope_and_cache_rows(ctx, heads, qkv, rows, cos_sin, style),
        }
    }

    /// Causal attention of every row over its sequence's keys up to its position.
    pub fn attend(
        &self,
        ctx: &Ctx<'_>,
        heads: Heads,
        qkv: &SharedMut<'_, f32>,
        accumulate: Accumulate,
        out: &SharedMut<'_, f32>,
    ) {
        match self {
            LayerRows::Run { cache, pos0, n } => attend(ctx, heads, qkv, *n, *pos0, cache, accumulate, out),
            LayerRows::Step(rows) => attend_rows(ctx, heads, qkv, rows, accumulate, out),
        }
    }

    /// [`Self::attend`] with ALiBi's linear biases instead of rotations.
    pub fn attend_alibi(
        &self,
        ctx: &Ctx<'_>,
        heads: Heads,
        qkv: &SharedMut<'_, f32>,
        slopes: &[f32],
        out: &SharedMut<'_, f32>,
    ) {
        match self {
            LayerRows::Run { cache, pos0, n } => attend_alibi(ctx, heads, qkv, *n, *pos0, cache, slopes, out),
            LayerRows::Step(rows) => attend_alibi_rows(ctx, heads, qkv, rows, slopes, out),
        }
    }
}

/// The caches of a batch of sequences for one decoding step, each grown by the position its row
/// writes.
pub(crate) struct RowCaches<'b> {
    shared: Vec<SharedKv<'b>>,
    strides: Vec<usize>,
    positions: Vec<usize>,
    max_lens: Vec<usize>,
}

impl<'b> RowCaches<'b> {
    fn grow(caches: &'b mut [&mut KvCache]) -> RowCaches<'b> {
        let positions = caches
            .iter_mut()
            .map(|kv| {
                kv.grow(1);
                kv.len() - 1
            })
            .collect();
        let strides = caches.iter().map(|kv| kv.layer_start(1)).collect();
        let max_lens = caches.iter().map(|kv| kv.max_len()).collect();
        let shared = caches.iter_mut().map(|kv| kv.shared()).collect();
        RowCaches { shared, strides, positions, max_lens }
    }

    /// Each row's part of layer `l` of its cache.
    fn layer(&self, l: usize) -> Vec<RowCache<'_, '_>> {
        self.shared
            .iter()
            .zip(&self.strides)
            .zip(&self.positions)
            .map(|((kv, &stride), &pos)| RowCache { cache: kv.layer(l * stride), pos })
            .collect()
    }
}

fn check_tokens(tokens: &[u32], vocab_size: usize) -> Result<(), ModelError> {
    match tokens.iter().find(|&&t| t as usize >= vocab_size) {
        Some(&bad) => Err(ModelError::TokenOutOfRange { token: bad, vocab_size }),
        None => Ok(()),
    }
}

fn other_family() -> ModelError {
    // A sequence is made by its model's `new_sequence`.
    ModelError::Unsupported("a sequence of another model family".into())
}

/// State for a new sequence of at most `max_len` positions.
pub(crate) fn new_sequence<P: Pass>(pass: &P, max_len: usize, batch: usize) -> Sequence {
    let (kv, scratch) = pass.new_state(max_len, batch);
    Sequence { kv, arithmetic: Arithmetic::default(), scratch }
}

/// Runs `tokens` at the next positions of `seq` and returns the logits asked for: one row of
/// `vocab_size` for the last token, or one per token.
pub(crate) fn forward<'s, P: Pass>(
    pass: &P,
    pool: &ThreadPool,
    seq: &'s mut Sequence,
    tokens: &[u32],
    want: LogitsFor,
) -> Result<&'s [f32], ModelError> {
    let (kv, arithmetic) = (&mut seq.kv, seq.arithmetic);
    let s = P::scratch(&mut seq.scratch).ok_or_else(other_family)?;
    let vocab = pass.vocab_size();
    check_tokens(tokens, vocab)?;
    let max = kv.max_len().min(pass.max_positions());
    if kv.len() + tokens.len() > max {
        return Err(ModelError::ContextFull { needed: kv.len() + tokens.len(), max });
    }
    let facts = pass.begin(s, kv.len(), tokens);
    let rows_out = match want {
        LogitsFor::Last => 1,
        LogitsFor::All => tokens.len(),
    };
    P::logits(s).resize(rows_out * vocab, 0.0);
    let exact = arithmetic == Arithmetic::LlamaCpp;
    // llama.cpp decides its attention path by the rows of the whole call (one batch there);
    // fast arithmetic always takes the tiled f32 path.
    let accumulate = if exact { Accumulate::for_batch(tokens.len()) } else { Accumulate::F32 };
    let mut written = 0;
    for chunk in tokens.chunks(P::batch_size(s)) {
        let is_last = written + chunk.len() == tokens.len();
        let logit_rows = match want {
            LogitsFor::All => written..written + chunk.len(),
            LogitsFor::Last if is_last => 0..1,
            LogitsFor::Last => 0..0,
        };
        let (pos0, n) = (kv.len(), chunk.len());
        kv.grow(n);
        let (layer_stride, max_len) = (kv.layer_start(1), kv.max_len());
        let batch = Batch {
            tokens: chunk,
            rows: Rows::Run { kv: kv.shared(), layer_stride, pos0, n, max_len },
            facts: Facts::One(facts),
            first_out: n - logit_rows.len(),
            logit_rows,
            exact,
            accumulate,
        };
        pass.run(pool, s, &batch);
        written += n;
    }
    Ok(P::logits(s))
}

/// One decoding step for several sequences at once (continuous batching): `tokens[i]` goes to
/// the next position of `seqs[i]`. The matrix products read each weight once for all the rows;
/// positions, caches and attention stay each sequence's own, so every row gets the logits its
/// sequence would get alone. Returns one row of logits per sequence.
pub(crate) fn decode<P: Pass>(
    pass: &P,
    pool: &ThreadPool,
    seqs: &mut [&mut Sequence],
    tokens: &[u32],
) -> Result<Vec<f32>, ModelError> {
    let (n, vocab) = (tokens.len(), pass.vocab_size());
    if n != seqs.len() {
        return Err(ModelError::Shape(format!("{n} tokens for {} sequences", seqs.len())));
    }
    check_tokens(tokens, vocab)?;
    let mut facts = Vec::with_capacity(n);
    for (seq, &token) in seqs.iter_mut().zip(tokens) {
        let max = seq.kv.max_len().min(pass.max_positions());
        if seq.kv.len() + 1 > max {
            return Err(ModelError::ContextFull { needed: seq.kv.len() + 1, max });
        }
        let s = P::scratch(&mut seq.scratch).ok_or_else(other_family)?;
        facts.push(pass.step_row(s, seq.kv.len(), token));
    }
    let Some((first, rest)) = seqs.split_first_mut() else { return Ok(Vec::new()) };
    let exact = first.arithmetic == Arithmetic::LlamaCpp;
    let s = P::scratch(&mut first.scratch).ok_or_else(other_family)?;
    if n > P::batch_size(s) {
        return Err(ModelError::Shape(format!("{n} sequences in a batch of {}", P::batch_size(s))));
    }
    P::logits(s).resize(n * vocab, 0.0);
    let mut caches: Vec<&mut KvCache> =
        std::iter::once(&mut first.kv).chain(rest.iter_mut().map(|s| &mut s.kv)).collect();
    let batch = Batch {
        tokens,
        rows: Rows::Step(RowCaches::grow(&mut caches)),
        facts: Facts::Each(facts.clone()),
        first_out: 0,
        logit_rows: 0..n,
        exact,
        // As a single sequence's decoding step takes it (see `forward`).
        accumulate: if exact { Accumulate::for_batch(1) } else { Accumulate::F32 },
    };
    pass.run(pool, s, &batch);
    let out = P::logits(s)[..n * vocab].to_vec();
    drop(batch);
    for (seq, row) in seqs.iter_mut().zip(facts) {
        if let Some(s) = P::scratch(&mut seq.scratch) {
            P::end_step(s, row);
        }
    }
    Ok(out)
}
