//! The steps of a forward pass as every thread of the pool runs them (SPMD, like ggml): each
//! helper takes its share of the work from a shared counter and ends at a barrier, so the next
//! step may read what this one wrote.
//!
//! Soundness rests on one discipline, kept inside this module: within a step, every output
//! element is written by exactly one thread (the one that claimed its row or item), and nothing
//! reads a buffer during a step that writes it. All threads call the same helpers in the same
//! order with the same arguments (they all run the same layer loop).

use std::ops::Range;

use baimo_kernels::ops::{geglu, swiglu};
use baimo_kernels::packed::GROUP;
use baimo_kernels::quants::quantize_q8;
use baimo_kernels::{ActivationFormat, Q8Buf, Q8Kind, Q8Row, Q8RowMut};
use baimo_threads::{Ctx, SharedMut};

use crate::state::Activations;
use crate::weights::Weight;

/// Rows of a matrix product handed out per claim in a batch (each row serves many tokens).
const BATCH_ROWS_PER_CHUNK: usize = 16;

pub(crate) struct SharedQ8<'a> {
    kind: Q8Kind,
    n: usize,
    qs: SharedMut<'a, i8>,
    d: SharedMut<'a, f32>,
    s: SharedMut<'a, f32>,
    bsums: SharedMut<'a, i16>,
}

impl<'a> SharedQ8<'a> {
    fn new(buf: &'a mut Q8Buf) -> SharedQ8<'a> {
        SharedQ8 {
            kind: buf.kind,
            n: buf.n,
            qs: SharedMut::new(&mut buf.qs),
            d: SharedMut::new(&mut buf.d),
            s: SharedMut::new(&mut buf.s),
            bsums: SharedMut::new(&mut buf.bsums),
        }
    }

    fn ranges(&self, r: usize) -> [Range<usize>; 4] {
        let (n, bs) = (self.n, self.kind.block_size());
        [
            r * n..(r + 1) * n,
            r * n / bs..(r + 1) * n / bs,
            r * n / 32..(r + 1) * n / 32,
            r * n / 16..(r + 1) * n / 16,
        ]
    }

    /// # Safety
    /// Row `r` must be written by this thread alone during the current step.
    unsafe fn row_mut(&self, r: usize) -> Q8RowMut<'_> {
        let [qs, d, s, bsums] = self.ranges(r);
        // SAFETY: forwarded to the caller.
        unsafe {
            Q8RowMut {
                qs: self.qs.slice_mut(qs),
                d: self.d.slice_mut(d),
                s: self.s.slice_mut(s),
                bsums: self.bsums.slice_mut(bsums),
            }
        }
    }

    /// # Safety
    /// No thread may write the buffer during the current step.
    unsafe fn row(&self, r: usize) -> Q8Row<'_> {
        let [qs, d, s, bsums] = self.ranges(r);
        // SAFETY: forwarded to the caller.
        unsafe {
            Q8Row {
                qs: &self.qs.get()[qs],
                d: &self.d.get()[d],
                s: &self.s.get()[s],
                bsums: &self.bsums.get()[bsums],
            }
        }
    }
}

/// An [`Activations`] buffer shared by the threads of a job.
pub(crate) struct SharedActs<'a> {
    n: usize,
    /// Products with these activations follow llama.cpp's rounding order (see `Arithmetic`).
    exact: bool,
    f32: SharedMut<'a, f32>,
    q32: Option<SharedQ8<'a>>,
    q256: Option<SharedQ8<'a>>,
}

impl<'a> SharedActs<'a> {
    pub(crate) fn new(acts: &'a mut Activations, exact: bool) -> SharedActs<'a> {
        SharedActs {
            n: acts.n,
            exact,
            f32: SharedMut::new(&mut acts.f32),
            q32: acts.q32.as_mut().map(SharedQ8::new),
            q256: acts.q256.as_mut().map(SharedQ8::new),
        }
    }

    /// Row `t` in f32. Only between steps that write this buffer.
    pub(crate) fn row(&self, t: usize) -> &[f32] {
        // SAFETY: writes happen only in `fill_rows`, which ends at a barrier; callers read in
        // later steps.
        unsafe { &self.f32.get()[t * self.n..(t + 1) * self.n] }
    }

    /// The f32 rows, for a step that writes them directly (then call [`requantize`]).
    pub(crate) fn f32_shared(&self) -> &SharedMut<'a, f32> {
        &self.f32
    }

    /// Views of the rows of tokens `t0 .. t0 + n_tokens`, taken once per step instead of once
    /// per weight row.
    fn token_rows(&self, t0: usize, n_tokens: usize) -> TokenRows<'_> {
        assert!(n_tokens <= MAX_TOKENS, "batch larger than the activation buffers");
        let empty = Q8Row { qs: &[], d: &[], s: &[], bsums: &[] };
        let mut rows = TokenRows {
            n_tokens,
            exact: self.exact,
            f32: [&[]; MAX_TOKENS],
            q32: [empty; MAX_TOKENS],
            q256: [empty; MAX_TOKENS],
        };
        for t in 0..n_tokens {
            rows.f32[t] = self.row(t0 + t);
            // SAFETY: as in `row`: the quantized rows were written in an earlier step.
            unsafe {
                if let Some(q) = &self.q32 {
                    rows.q32[t] = q.row(t0 + t);
                }
                if let Some(q) = &self.q256 {
                    rows.q256[t] = q.row(t0 + t);
                }
            }
        }
        rows
    }
}

/// The most tokens one step handles (the model's batch).
const MAX_TOKENS: usize = crate::DEFAULT_BATCH;

struct TokenRows<'a> {
    n_tokens: usize,
    exact: bool,
    f32: [&'a [f32]; MAX_TOKENS],
    q32: [Q8Row<'a>; MAX_TOKENS],
    q256: [Q8Row<'a>; MAX_TOKENS],
}

impl TokenRows<'_> {
    /// The dot product of weight row `w_row` with token `t`'s activations.
    #[inline]
    fn dot(&self, weight: &Weight, w_row: &[u8], t: usize) -> f32 {
        let n = self.n_tokens;
        match weight.dot.activation_format() {
            ActivationFormat::F32 => weight.dot.dot_f32(w_row, self.f32[t]),
            ActivationFormat::Q8(Q8Kind::Blocks32) => weight.dot.dot_q8_in_batch(w_row, self.q32[t], t, n),
            ActivationFormat::Q8(Q8Kind::Blocks256) => weight.dot.dot_q8_in_batch(w_row, self.q256[t], t, n),
        }
    }
}

/// Which activation formats the weights fed by one input need.
pub(crate) fn needs(weights: &[&Weight]) -> (bool, bool) {
    let kinds: Vec<_> = weights.iter().map(|w| w.dot.activation_format()).collect();
    (
        kinds.contains(&ActivationFormat::Q8(Q8Kind::Blocks32)),
        kinds.contains(&ActivationFormat::Q8(Q8Kind::Blocks256)),
    )
}

/// Computes rows `0..n_tokens` of `x` with `fill(t, row)`, then quantizes each row to the
/// formats its consumers need.
pub(crate) fn fill_rows(
    ctx: &Ctx<'_>,
    x: &SharedActs<'_>,
    n_tokens: usize,
    fill: impl Fn(usize, &mut [f32]),
) {
    ctx.for_each_chunk(n_tokens, 1, |tokens| {
        for t in tokens {
            // SAFETY: token row t was claimed by this thread alone.
            let row = unsafe { x.f32.slice_mut(t * x.n..(t + 1) * x.n) };
            fill(t, row);
            for q in [&x.q32, &x.q256].into_iter().flatten() {
                // SAFETY: as above.
                quantize_q8(q.kind, row, unsafe { q.row_mut(t) });
            }
        }
    });
}

/// Quantizes rows `0..n_tokens` of `x` after a step wrote their f32 values directly.
pub(crate) fn requantize(ctx: &Ctx<'_>, x: &SharedActs<'_>, n_tokens: usize) {
    if x.q32.is_none() && x.q256.is_none() {
        return;
    }
    ctx.for_each_chunk(n_tokens, 1, |tokens| {
        for t in tokens {
            // SAFETY: token row t was claimed by this thread alone; the f32 rows are not
            // written in this step.
            let row = unsafe { &x.f32.get()[t * x.n..(t + 1) * x.n] };
            for q in [&x.q32, &x.q256].into_iter().flatten() {
                quantize_q8(q.kind, row, unsafe { q.row_mut(t) });
            }
        }
    });
}

/// How a matrix product's result meets the output buffer.
#[derive(Clone, Copy)]
pub(crate) enum Store<'b> {
    /// `out = W·x (+ bias)`
    Write { bias: Option<&'b [f32]> },
    /// `out += W·x (+ bias)`: the residual connection, fused into the product.
    Add { bias: Option<&'b [f32]> },
}

/// Rows of a weight are handed out in units of a packed group, so a unit is either one call of
/// the tiled kernel (for the whole batch) or sixteen rows of single-row dot products.
const UNIT: usize = GROUP;

/// Where the tiled kernel leaves one unit's results: `[token][row of the unit]`. Made once per
/// claimed chunk of units, not per unit (clearing the whole buffer would cost as much as a
/// decoding step's work on a small unit).
type UnitOut = [[f32; GROUP]; MAX_TOKENS];

/// `out[t][r − first] = (W·x_t)[r]` for the rows `r` of unit `u` of `weight` (returned) and
/// every token `t`.
#[inline]
fn unit_dots(weight: &Weight, u: usize, x: &TokenRows<'_>, out: &mut UnitOut) -> Range<usize> {
    let rows = u * UNIT..((u + 1) * UNIT).min(weight.rows);
    let n = x.n_tokens;
    match &weight.tiles {
        Some((packed, tile)) => {
            let xs = match tile.activation_kind() {
                Q8Kind::Blocks32 => &x.q32[..n],
                Q8Kind::Blocks256 => &x.q256[..n],
            };
            tile.run(packed, u, xs, out, x.exact);
        }
        None => {
            for r in rows.clone() {
                let w_row = weight.row(r);
                for (t, o) in out[..n].iter_mut().enumerate() {
                    o[r - rows.start] = x.dot(weight, w_row, t);
                }
            }
        }
    }
    rows
}

/// Hands out the units of a matrix product. Few tokens (decoding, alone or a batch of
/// sequences) stream the weights with little arithmetic per byte: long runs of contiguous rows
/// first, so the hardware prefetcher stays ahead and claims are rare, then shorter ones so the
/// threads finish together. Prompts (many tokens per unit) take fixed small chunks.
fn for_each_unit_chunk(ctx: &Ctx<'_>, n_tokens: usize, total_units: usize, f: impl FnMut(Range<usize>)) {
    if n_tokens <= STREAMING_TOKENS {
        ctx.for_each_guided(total_units, 1, f)
    } else {
        ctx.for_each_chunk(total_units, BATCH_ROWS_PER_CHUNK / UNIT, f)
    }
}

/// Up to this many tokens a matrix product is paced by reading the weights (see
/// [`for_each_unit_chunk`]).
const STREAMING_TOKENS: usize = 16;

/// `out[t·stride + r] = (W·x_t)[r]` for the rows of `parts` stacked in order (e.g. Q, K and V
/// sharing one input) and every token `t < n_tokens`.
pub(crate) fn matmul(
    ctx: &Ctx<'_>,
    parts: &[&Weight],
    x: &SharedActs<'_>,
    n_tokens: usize,
    out: &SharedMut<'_, f32>,
    stride: usize,
    store: Store<'_>,
) {
    let total: usize = parts.iter().map(|w| w.rows).sum();
    debug_assert!(parts.iter().all(|w| w.cols == x.n));
    debug_assert!(total <= stride && (n_tokens - 1) * stride + total <= out.len());
    // Longer batches than the tile buffers hold (GLM reads its whole context in one pass) go
    // in blocks of tokens.
    for t0 in (0..n_tokens).step_by(MAX_TOKENS) {
        let n = (n_tokens - t0).min(MAX_TOKENS);
        matmul_block(ctx, parts, x, t0, n, out, stride, store);
    }
}

#[allow(clippy::too_many_arguments)]
fn matmul_block(
    ctx: &Ctx<'_>,
    parts: &[&Weight],
    x: &SharedActs<'_>,
    t0: usize,
    n_tokens: usize,
    out: &SharedMut<'_, f32>,
    stride: usize,
    store: Store<'_>,
) {
    let x = x.token_rows(t0, n_tokens);
    let total_units: usize = parts.iter().map(|w| w.rows.div_ceil(UNIT)).sum();
    for_each_unit_chunk(ctx, n_tokens, total_units, |units| {
        let mut out_buf: UnitOut = [[0.0; GROUP]; MAX_TOKENS];
        for u in units {
            // Find the part the unit belongs to, and where the part's rows start in `out`.
            let (mut part, mut first_unit, mut first_row) = (0, 0, 0);
            while u >= first_unit + parts[part].rows.div_ceil(UNIT) {
                first_unit += parts[part].rows.div_ceil(UNIT);
                first_row += parts[part].rows;
                part += 1;
            }
            let rows = unit_dots(parts[part], u - first_unit, &x, &mut out_buf);
            let first = first_row + rows.start;
            for (t, values) in out_buf[..n_tokens].iter().enumerate() {
                let at = (t0 + t) * stride + first;
                // SAFETY: these rows of every token are written only by the thread that claimed
                // their unit.
                let dst = unsafe { out.slice_mut(at..at + rows.len()) };
                let values = &values[..rows.len()];
                match store {
                    Store::Write { bias: None } => dst.copy_from_slice(values),
                    Store::Write { bias: Some(b) } => {
                        for ((d, &v), &b) in dst.iter_mut().zip(values).zip(&b[first..]) {
                            *d = v + b;
                        }
                    }
                    Store::Add { bias: None } => {
                        for (d, &v) in dst.iter_mut().zip(values) {
                            *d += v + 0.0;
                        }
                    }
                    Store::Add { bias: Some(b) } => {
                        for ((d, &v), &b) in dst.iter_mut().zip(values).zip(&b[first..]) {
                            *d += v + b;
                        }
                    }
                }
            }
        }
    });
}

/// The activation of a gated feed-forward's first half.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Glu {
    /// `silu(g) ⊙ u` (SwiGLU: LLaMA, Qwen, Mistral, Phi-3, …).
    Silu,
    /// `gelu(g) ⊙ u` with tanh GELU (GeGLU: Gemma).
    Gelu,
}

/// `out[t·stride + r] = act((W_gate·x_t)[r]) · (W_up·x_t)[r]`: a gated feed-forward's first
/// half, both products of a row done together so the activation needs no extra pass.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_glu(
    ctx: &Ctx<'_>,
    gate: &Weight,
    up: &Weight,
    x: &SharedActs<'_>,
    n_tokens: usize,
    out: &SharedMut<'_, f32>,
    stride: usize,
    glu: Glu,
) {
    debug_assert!(gate.rows == up.rows && gate.cols == x.n && up.cols == x.n);
    let x = x.token_rows(0, n_tokens);
    let total_units = gate.rows.div_ceil(UNIT);
    for_each_unit_chunk(ctx, n_tokens, total_units, |units| {
        let mut g: UnitOut = [[0.0; GROUP]; MAX_TOKENS];
        let mut v: UnitOut = [[0.0; GROUP]; MAX_TOKENS];
        for u in units {
            let rows = unit_dots(gate, u, &x, &mut g);
            unit_dots(up, u, &x, &mut v);
            let width = rows.len();
            for (t, (g, v)) in g[..n_tokens].iter().zip(&v[..n_tokens]).enumerate() {
                // SAFETY: rows `rows` of every token are written only by the thread that claimed them.
                let out = unsafe { out.slice_mut(t * stride + rows.start..t * stride + rows.end) };
                match glu {
                    Glu::Silu => swiglu(&g[..width], &v[..width], out),
                    Glu::Gelu => geglu(&g[..width], &v[..width], out),
                }
            }
        }
    });
}
