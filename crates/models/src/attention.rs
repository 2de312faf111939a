//! Causal self-attention over the KV cache, shared by the families that use rotary positions
//! (LLaMA, Qwen, Baichuan-7B): rotate queries and keys, append keys and values to the cache,
//! then for each query head `softmax(q·Kᵀ/√d)·V` over the positions it may see.

use baimo_kernels::dot_f16;
use baimo_kernels::flash::{FlashRows, KEY_BLOCK, KvBlock, KvElement, flash_step};
use baimo_kernels::ops::{RopeStyle, mad_f16, rope_apply, scale_f16};
use baimo_threads::{Ctx, SharedMut};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Head geometry; query head `h` reads key/value head `h / (n_heads / n_kv_heads)` (GQA).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Sliding-window attention (Mistral, Gemma's local layers): the query at position `p`
    /// sees the keys at `p − window + 1 ..= p` only. `None`: every earlier key.
    pub window: Option<usize>,
    /// The factor on `q·k`: `1/√head_dim` unless the family says otherwise (Gemma's
    /// `query_pre_attn_scalar^−½`).
    pub scale: Option<f32>,
    /// Gemma 2's soft-capping of the scores: `cap · tanh(s / cap)`.
    pub softcap: Option<f32>,
}

impl Heads {
    /// The factor on `q·k`.
    pub fn score_scale(&self) -> f32 {
        self.scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt())
    }

    /// A score as the softmax takes it (soft-capped where the family caps).
    #[inline]
    pub fn cap(&self, s: f32) -> f32 {
        match self.softcap {
            Some(cap) => cap * (s / cap).tanh(),
            None => s,
        }
    }

    /// The first key position the query at `pos` sees.
    pub fn first_key(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// One layer's part of the sequence's key and value buffers (see `KvCache`); `start` is the
/// index of the layer's first value in `k` and `v`, `head_stride` the distance between two
/// key/value heads (the cache keeps each head's positions together).
pub(crate) enum LayerCache<'a, 'b> {
    F16 { k: &'a SharedMut<'b, f16>, v: &'a SharedMut<'b, f16>, start: usize, head_stride: usize },
    F32 { k: &'a SharedMut<'b, f32>, v: &'a SharedMut<'b, f32>, start: usize, head_stride: usize },
}

impl LayerCache<'_, '_> {
    fn head_stride(&self) -> usize {
        match *self {
            LayerCache::F16 { head_stride, .. } | LayerCache::F32 { head_stride, .. } => head_stride,
        }
    }
}

/// A layer's keys (or values) as the cache lays them out, `[kv_head][position][head_dim]`: one
/// head's positions are one contiguous run, so attention reads them as a stream.
#[derive(Clone, Copy)]
struct HeadRows<'c, T> {
    data: &'c [T],
    head_stride: usize,
    head_dim: usize,
}

impl<'c, T> HeadRows<'c, T> {
    /// Where position `p` of key/value head `kvh` starts.
    #[inline]
    fn at(head_stride: usize, head_dim: usize, kvh: usize, p: usize) -> usize {
        kvh * head_stride + p * head_dim
    }

    #[inline]
    fn row(&self, kvh: usize, p: usize) -> &'c [T] {
        let at = Self::at(self.head_stride, self.head_dim, kvh, p);
        &self.data[at..at + self.head_dim]
    }

    /// Positions `from..to` of key/value head `kvh`: rows one after another.
    #[inline]
    fn run(&self, kvh: usize, from: usize, to: usize) -> &'c [T] {
        let at = |p| Self::at(self.head_stride, self.head_dim, kvh, p);
        &self.data[at(from)..at(to)]
    }
}

/// The key and value runs of a layer (slices from the layer's start).
fn head_rows<'c, T>(
    k: &'c [T],
    v: &'c [T],
    head_stride: usize,
    head_dim: usize,
) -> (HeadRows<'c, T>, HeadRows<'c, T>) {
    (HeadRows { data: k, head_stride, head_dim }, HeadRows { data: v, head_stride, head_dim })
}

/// Writes `src` into `buf[at..at + src.len()]`, rounded to the buffer's type.
///
/// # Safety
/// No other thread touches that range meanwhile.
unsafe fn store<T: KvElement>(buf: &SharedMut<'_, T>, at: usize, src: &[f32]) {
    // SAFETY: as the caller promises.
    T::store(src, unsafe { buf.slice_mut(at..at + src.len()) });
}

/// The largest head this module handles (values are widened to f32 on the stack).
pub(crate) const MAX_HEAD_DIM: usize = 512;

/// Rotates the query and key heads of `n_tokens` rows of `qkv` (layout per row: `q | k | v`) in
/// place, and writes keys and values into the cache rows `pos0 .. pos0 + n_tokens`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_and_cache(
    ctx: &Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    n_tokens: usize,
    pos0: usize,
    cos_sin: &[f32],
    rope_style: RopeStyle,
    cache: &LayerCache<'_, '_>,
) {
    let (hd, q_dim, kv_dim) = (heads.head_dim, heads.q_dim(), heads.kv_dim());
    let stride = q_dim + 2 * kv_dim;
    let rope_dims = cos_sin.len() / n_tokens.max(1);
    let per_token = heads.n_heads + heads.n_kv_heads;
    ctx.for_each_chunk(n_tokens * per_token, 8, |items| {
        for item in items {
            let (t, h) = (item / per_token, item % per_token);
            let cs = &cos_sin[t * rope_dims..(t + 1) * rope_dims];
            let row = t * stride;
            if h < heads.n_heads {
                // SAFETY: query head h of token t belongs to this item alone.
                let q = unsafe { qkv.slice_mut(row + h * hd..row + (h + 1) * hd) };
                rope_apply(q, cs, rope_style);
            } else {
                let kvh = h - heads.n_heads;
                let k_at = row + q_dim + kvh * hd;
                let v_at = row + q_dim + kv_dim + kvh * hd;
                // SAFETY: key/value head kvh of token t, and its cache slots at position
                // pos0 + t, belong to this item alone.
                unsafe {
                    let k = qkv.slice_mut(k_at..k_at + hd);
                    rope_apply(k, cs, rope_style);
                    let v = qkv.slice_mut(v_at..v_at + hd);
                    let slot = HeadRows::<f16>::at(cache.head_stride(), hd, kvh, pos0 + t);
                    match cache {
                        LayerCache::F16 { k: keys, v: values, start, .. } => {
                            store(keys, start + slot, k);
                            store(values, start + slot, v);
                        }
                        LayerCache::F32 { k: keys, v: values, start, .. } => {
                            store(keys, start + slot, k);
                            store(values, start + slot, v);
                        }
                    }
                }
            }
        }
    });
}

/// How softmax·V is accumulated. ggml's CPU flash attention (llama.cpp's default) keeps the
/// running sum in f16 and rounds q to f16 when a batch has fewer than 64 query rows (every
/// decoding step), and works in f32 for larger batches. Logits only track llama.cpp's to a few
/// hundredths when these roundings are the same, so baimo mirrors the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Accumulate {
    F16,
    F32,
}

impl Accumulate {
    /// ggml's `GGML_FA_TILE_Q`: batches with at least this many query rows take the f32 path.
    const WIDE_BATCH: usize = 64;

    pub(crate) fn for_batch(n_query_rows: usize) -> Accumulate {
        if n_query_rows >= Self::WIDE_BATCH { Accumulate::F32 } else { Accumulate::F16 }
    }
}

/// `out[t, h] = softmax(q[t, h]·K[0..=pos0+t]ᵀ · scale) · V[0..=pos0+t]` for every token and
/// query head. Batches of 64 or more query rows take the tiled path (blocks of tokens against
/// blocks of keys, in f32); smaller ones ggml's own order (see [`Accumulate`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    ctx: &Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    n_tokens: usize,
    pos0: usize,
    cache: &LayerCache<'_, '_>,
    accumulate: Accumulate,
    out: &SharedMut<'_, f32>,
) {
    // SAFETY: the cache is not written during this step (rope_and_cache ended at a barrier).
    match (cache, accumulate) {
        (&LayerCache::F16 { k, v, start, head_stride }, Accumulate::F16) => unsafe {
            let (keys, values) = head_rows(&k.get()[start..], &v.get()[start..], head_stride, heads.head_dim);
            attend_like_ggml(ctx, heads, qkv, n_tokens, pos0, keys, values, out)
        },
        (&LayerCache::F16 { .. }, Accumulate::F32) | (&LayerCache::F32 { .. }, _) => {
            // A full-precision cache has no llama.cpp order to follow: always the f32 path.
            attend_prefix_lm(ctx, heads, qkv, n_tokens, pos0, cache, 0, out)
        }
    }
}

/// Attention where every query also sees all keys before `prefix` (GLM's prefix LM: the context
/// up to `<sop>` attends both ways; from there on it is causal). `prefix` 0 is plain causal
/// attention. Always the tiled f32 path.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_prefix_lm(
    ctx: &Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    n_tokens: usize,
    pos0: usize,
    cache: &LayerCache<'_, '_>,
    prefix: usize,
    out: &SharedMut<'_, f32>,
) {
    // Keys past the batch are not written yet: the prefix cannot reach beyond it.
    let prefix = prefix.min(pos0 + n_tokens);
    // SAFETY: the cache is not written during this step (rope_and_cache ended at a barrier).
    match *cache {
        LayerCache::F16 { k, v, start, head_stride } => unsafe {
            let (keys, values) = head_rows(&k.get()[start..], &v.get()[start..], head_stride, heads.head_dim);
            attend_tiled(ctx, heads, qkv, n_tokens, pos0, keys, values, prefix, out)
        },
        LayerCache::F32 { k, v, start, head_stride } => unsafe {
            let (keys, values) = head_rows(&k.get()[start..], &v.get()[start..], head_stride, heads.head_dim);
            attend_tiled(ctx, heads, qkv, n_tokens, pos0, keys, values, prefix, out)
        },
    }
}

thread_local! {
    /// This thread's block of widened keys and values (32 KiB for heads of 64), kept between
    /// calls: allocating and zeroing one per claim of work showed in profiles of batched decoding.
    static KV_BLOCK: std::cell::Cell<Option<KvBlock>> = const { std::cell::Cell::new(None) };
}

/// This thread's key/value block for heads of `head_dim` (a new one the first time).
fn take_kv_block(head_dim: usize) -> KvBlock {
    KV_BLOCK.take().filter(|b| b.head_dim() == head_dim).unwrap_or_else(|| KvBlock::new(head_dim))
}

/// Keeps `block` for this thread's next [`take_kv_block`].
fn put_kv_block(block: KvBlock) {
    KV_BLOCK.set(Some(block));
}

/// Tokens per block of query rows in the tiled path (times the query heads of a key head).
const TOKEN_BLOCK: usize = 16;

/// Flash attention: work items are (token block, key/value head), each holding the rows of its
/// tokens' query heads that share the key head, so a block of keys widened to f32 serves them
/// all. Item order puts the token blocks that see the most keys first.
#[allow(clippy::too_many_arguments)]
fn attend_tiled<T: KvElement>(
    ctx: &Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    n_tokens: usize,
    pos0: usize,
    keys: HeadRows<'_, T>,
    values: HeadRows<'_, T>,
    prefix: usize,
    out: &SharedMut<'_, f32>,
) {
    let (hd, q_dim, kv_dim) = (heads.head_dim, heads.q_dim(), heads.kv_dim());
    let stride = q_dim + 2 * kv_dim;
    let group = heads.n_heads / heads.n_kv_heads;
    let scale = heads.score_scale();
    // SAFETY: qkv is not written during this step (rope_and_cache ended at a barrier).
    let qkv = unsafe { qkv.get() };
    let n_blocks = n_tokens.div_ceil(TOKEN_BLOCK);
    let n_items = n_blocks * heads.n_kv_heads;
    ctx.for_each_chunk(n_items, 1, |items| {
        let rows_max = TOKEN_BLOCK * group;
        let (mut q, mut acc) = (vec![0f32; rows_max * hd], vec![0f32; rows_max * hd]);
        let (mut max, mut sum) = (vec![0f32; rows_max], vec![0f32; rows_max]);
        let (mut first, mut visible) = (vec![0; rows_max], vec![0; rows_max]);
        let mut block = take_kv_block(hd);
        for item in items {
            let item = n_items - 1 - item;
            let (tb, kvh) = (item / heads.n_kv_heads, item % heads.n_kv_heads);
            let tokens = tb * TOKEN_BLOCK..((tb + 1) * TOKEN_BLOCK).min(n_tokens);
            let m = tokens.len() * group;
            // Row r: token tokens.start + r / group, query head kvh·group + r % group.
            for r in 0..m {
                let (t, h) = (tokens.start + r / group, kvh * group + r % group);
                let src = &qkv[t * stride + h * hd..t * stride + (h + 1) * hd];
                q[r * hd..(r + 1) * hd].iter_mut().zip(src).for_each(|(d, &s)| *d = s * scale);
            }
            acc[..m * hd].fill(0.0);
            max[..m].fill(f32::NEG_INFINITY);
            sum[..m].fill(0.0);
            // The last token sees positions up to n_keys (and every token the prefix); under a
            // sliding window the first token sees none before `from`.
            let n_keys = (pos0 + tokens.end).max(prefix);
            let from = heads.first_key(pos0 + tokens.start);
            for p0 in (from..n_keys).step_by(KEY_BLOCK) {
                let nk = (n_keys - p0).min(KEY_BLOCK);
                block.load(nk, keys.run(kvh, p0, n_keys), values.run(kvh, p0, n_keys));
                for r in 0..m {
                    let pos = pos0 + tokens.start + r / group;
                    visible[r] = (pos + 1).max(prefix).saturating_sub(p0).min(nk);
                    first[r] = heads.first_key(pos).saturating_sub(p0).min(nk);
                }
                let mut rows = FlashRows {
                    q: &q[..m * hd],
                    first: &first[..m],
                    visible: &visible[..m],
                    softcap: heads.softcap,
                    out: &mut acc[..m * hd],
                    max: &mut max[..m],
                    sum: &mut sum[..m],
                };
                flash_step(&mut rows, &block);
            }
            for r in 0..m {
                let (t, h) = (tokens.start + r / group, kvh * group + r % group);
                // SAFETY: head h of token t's output belongs to this item alone.
                let o = unsafe { out.slice_mut(t * q_dim + h * hd..t * q_dim + (h + 1) * hd) };
                let inv = if sum[r] == 0.0 { 0.0 } else { 1.0 / sum[r] };
                o.iter_mut().zip(&acc[r * hd..(r + 1) * hd]).for_each(|(o, &a)| *o = a * inv);
            }
        }
        put_kv_block(block);
    });
}

/// ggml's CPU flash attention for small batches, one query row at a time over every position
/// it sees, the running sum in f16 (see [`Accumulate::F16`]).
#[allow(clippy::too_many_arguments)]
fn attend_like_ggml(
    ctx: &Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    n_tokens: usize,
    pos0: usize,
    keys: HeadRows<'_, f16>,
    values: HeadRows<'_, f16>,
    out: &SharedMut<'_, f32>,
) {
    let (hd, q_dim, kv_dim) = (heads.head_dim, heads.q_dim(), heads.kv_dim());
    let stride = q_dim + 2 * kv_dim;
    let group = heads.n_heads / heads.n_kv_heads;
    let scale = heads.score_scale();
    // SAFETY: qkv is not written during this step (rope_and_cache ended at a barrier).
    let qkv = unsafe { qkv.get() };
    let mut q16_row = [f16::ZERO; MAX_HEAD_DIM];
    let mut acc16 = [f16::ZERO; MAX_HEAD_DIM];
    ctx.for_each_chunk(n_tokens * heads.n_heads, 1, |items| {
        for item in items {
            let (t, h) = (item / heads.n_heads, item % heads.n_heads);
            let kvh = h / group;
            let q = &qkv[t * stride + h * hd..t * stride + (h + 1) * hd];
            let q16 = &mut q16_row[..hd];
            q16.convert_from_f32_slice(q);
            // SAFETY: head h of token t's output belongs to this item alone.
            let o = unsafe { out.slice_mut(t * q_dim + h * hd..t * q_dim + (h + 1) * hd) };
            let acc16 = &mut acc16[..hd];
            acc16.fill(f16::ZERO);
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
            for p in heads.first_key(pos0 + t)..=pos0 + t {
                let k = keys.row(kvh, p);
                let s = heads.cap(dot_f16(k, q16) * scale);
                // Rescale what was summed so far when the maximum grows.
                let (mut rescale, mut weight) = (1f32, 1f32);
                if s > max {
                    rescale = (max - s).exp();
                    max = s;
                } else {
                    weight = (s - max).exp();
                }
                let v = values.row(kvh, p);
                if rescale != 1.0 {
                    scale_f16(acc16, rescale);
                }
                mad_f16(acc16, v, weight);
                sum = sum.mul_add(rescale, weight);
            }
            acc16.convert_to_f32_slice(o);
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            o.iter_mut().for_each(|x| *x *= inv);
        }
    });
}

/// ALiBi slopes for `n` heads (Press et al. 2022, as Baichuan-13B's `_get_interleave`): for a
/// power of two, `2^(−8k/n)` for `k = 1..n`; otherwise those of the largest power of two `c`
/// below `n`, then the odd steps of `2c`'s sequence, `2^(−8(2j+1)/(2c))`, for the rest.
pub(crate) fn alibi_slopes(n: usize) -> Vec<f32> {
    let c = if n == 0 { 0 } else { 1usize << n.ilog2() };
    let mut slopes: Vec<f32> = (1..=c).map(|k| 2f64.powf(-8.0 * k as f64 / c as f64) as f32).collect();
    slopes.extend((0..n - c).map(|j| 2f64.powf(-8.0 * (2 * j + 1) as f64 / (2 * c) as f64) as f32));
    slopes
}

/// Attention with ALiBi instead of rotary positions (Baichuan-13B): the score of query position
/// `i` for key position `j` gets `slope_h · (j − i)` added after the `1/√d` scaling (the
/// checkpoints add `slope_h · j`; softmax does not see the difference). One (token, head) pair
/// per item, scores in f32.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_alibi(
    ctx: &Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    n_tokens: usize,
    pos0: usize,
    cache: &LayerCache<'_, '_>,
    slopes: &[f32],
    out: &SharedMut<'_, f32>,
) {
    // SAFETY: the cache is not written during this step (rope_and_cache ended at a barrier).
    match *cache {
        LayerCache::F16 { k, v, start, head_stride } => unsafe {
            let (keys, values) = head_rows(&k.get()[start..], &v.get()[start..], head_stride, heads.head_dim);
            alibi_rows(ctx, heads, qkv, n_tokens, pos0, keys, values, slopes, out)
        },
        LayerCache::F32 { k, v, start, head_stride } => unsafe {
            let (keys, values) = head_rows(&k.get()[start..], &v.get()[start..], head_stride, heads.head_dim);
            alibi_rows(ctx, heads, qkv, n_tokens, pos0, keys, values, slopes, out)
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn alibi_rows<T: KvElement>(
    ctx: &Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    n_tokens: usize,
    pos0: usize,
    keys: HeadRows<'_, T>,
    values: HeadRows<'_, T>,
    slopes: &[f32],
    out: &SharedMut<'_, f32>,
) {
    let (hd, q_dim, kv_dim) = (heads.head_dim, heads.q_dim(), heads.kv_dim());
    let stride = q_dim + 2 * kv_dim;
    let group = heads.n_heads / heads.n_kv_heads;
    // SAFETY: qkv is not written during this step.
    let qkv = unsafe { qkv.get() };
    ctx.for_each_chunk(n_tokens * heads.n_heads, 1, |items| {
        let mut scores = vec![0f32; pos0 + n_tokens];
        for item in items {
            let (t, h) = (item / heads.n_heads, item % heads.n_heads);
            let q = &qkv[t * stride + h * hd..t * stride + (h + 1) * hd];
            // SAFETY: head h of token t's output belongs to this item alone.
            let o = unsafe { out.slice_mut(t * q_dim + h * hd..t * q_dim + (h + 1) * hd) };
            alibi_head(heads, q, &keys, &values, h / group, pos0 + t, slopes[h], &mut scores, o);
        }
    });
}

/// One query head at position `i` over keys `0..=i` of key/value head `kvh`, with ALiBi's bias.
#[allow(clippy::too_many_arguments)]
fn alibi_head<T: KvElement>(
    heads: Heads,
    q: &[f32],
    keys: &HeadRows<'_, T>,
    values: &HeadRows<'_, T>,
    kvh: usize,
    i: usize,
    slope: f32,
    scores: &mut Vec<f32>,
    o: &mut [f32],
) {
    let hd = heads.head_dim;
    let scale = heads.score_scale();
    let (mut k, mut v) = ([0f32; MAX_HEAD_DIM], [0f32; MAX_HEAD_DIM]);
    if scores.len() <= i {
        scores.resize(i + 1, 0.0);
    }
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores[..=i].iter_mut().enumerate() {
        T::widen(keys.row(kvh, j), &mut k[..hd]);
        let dot: f32 = q.iter().zip(&k[..hd]).map(|(a, b)| a * b).sum();
        *s = dot * scale + slope * (j as f32 - i as f32);
        max = max.max(*s);
    }
    let mut sum = 0f32;
    for s in &mut scores[..=i] {
        *s = (*s - max).exp();
        sum += *s;
    }
    o.fill(0.0);
    for (j, &w) in scores[..=i].iter().enumerate() {
        T::widen(values.row(kvh, j), &mut v[..hd]);
        o.iter_mut().zip(&v[..hd]).for_each(|(o, &x)| *o += w * x);
    }
    o.iter_mut().for_each(|x| *x /= sum);
}

/// [`attend_alibi`] for rows of different sequences, each over its own cache up to its position
/// (the same arithmetic as a single sequence's step).
pub(crate) fn attend_alibi_rows(
    ctx: &Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    rows: &[RowCache<'_, '_>],
    slopes: &[f32],
    out: &SharedMut<'_, f32>,
) {
    let (hd, q_dim, kv_dim) = (heads.head_dim, heads.q_dim(), heads.kv_dim());
    let stride = q_dim + 2 * kv_dim;
    let group = heads.n_heads / heads.n_kv_heads;
    // SAFETY: qkv and the caches are not written during this step.
    let qkv = unsafe { qkv.get() };
    ctx.for_each_chunk(rows.len() * heads.n_heads, 1, |items| {
        let mut scores = Vec::new();
        for item in items {
            let (t, h) = (item / heads.n_heads, item % heads.n_heads);
            let q = &qkv[t * stride + h * hd..t * stride + (h + 1) * hd];
            // SAFETY: head h of row t's output belongs to this item alone.
            let o = unsafe { out.slice_mut(t * q_dim + h * hd..t * q_dim + (h + 1) * hd) };
            let (kvh, pos) = (h / group, rows[t].pos);
            // SAFETY: see above.
            match rows[t].cache {
                LayerCache::F16 { k, v, start, head_stride } => unsafe {
                    let (keys, values) = head_rows(&k.get()[start..], &v.get()[start..], head_stride, hd);
                    alibi_head(heads, q, &keys, &values, kvh, pos, slopes[h], &mut scores, o)
                },
                LayerCache::F32 { k, v, start, head_stride } => unsafe {
                    let (keys, values) = head_rows(&k.get()[start..], &v.get()[start..], head_stride, hd);
                    alibi_head(heads, q, &keys, &values, kvh, pos, slopes[h], &mut scores, o)
                },
            }
        }
    });
}

/// One query row of a batch of sequences (continuous batching): the layer's part of its own
/// cache and the position of its token.
pub(crate) struct RowCache<'a, 'b> {
    pub cache: LayerCache<'a, 'b>,
    pub pos: usize,
}

/// [`rope_and_cache`] for rows that each belong to another sequence: row `t`'s query and key
/// heads are rotated by its own angles, its key and value go into its own cache at `pos`.
pub(crate) fn rope_and_cache_rows(
    ctx: &Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    rows: &[RowCache<'_, '_>],
    cos_sin: &[f32],
    rope_style: RopeStyle,
) {
    let (hd, q_dim, kv_dim) = (heads.head_dim, heads.q_dim(), heads.kv_dim());
    let stride = q_dim + 2 * kv_dim;
    let rope_dims = cos_sin.len() / rows.len().max(1);
    let per_token = heads.n_heads + heads.n_kv_heads;
    ctx.for_each_chunk(rows.len() * per_token, 8, |items| {
        for item in items {
            let (t, h) = (item / per_token, item % per_token);
            let cs = &cos_sin[t * rope_dims..(t + 1) * rope_dims];
            let row = t * stride;
            if h < heads.n_heads {
                // SAFETY: query head h of row t belongs to this item alone.
                rope_apply(unsafe { qkv.slice_mut(row + h * hd..row + (h + 1) * hd) }, cs, rope_style);
                continue;
            }
            let kvh = h - heads.n_heads;
            let (k_at, v_at) = (row + q_dim + kvh * hd, row + q_dim + kv_dim + kvh * hd);
            // SAFETY: key/value head kvh of row t and its slot in row t's own cache belong to
            // this item alone.
            unsafe {
                let k = qkv.slice_mut(k_at..k_at + hd);
                rope_apply(k, cs, rope_style);
                let v = qkv.slice_mut(v_at..v_at + hd);
                let slot = HeadRows::<f16>::at(rows[t].cache.head_stride(), hd, kvh, rows[t].pos);
                match &rows[t].cache {
                    LayerCache::F16 { k: keys, v: values, start, .. } => {
                        store(keys, start + slot, k);
                        store(values, start + slot, v);
                    }
                    LayerCache::F32 { k: keys, v: values, start, .. } => {
                        store(keys, start + slot, k);
                        store(values, start + slot, v);
                    }
                }
            }
        }
    });
}

/// Attention for rows of different sequences, each over its own cache up to its position: as
/// ggml computes a single query row (f16 running sums) for f16 caches, in f32 otherwise — so a
/// sequence decoded in a batch gets the logits it would get alone.
pub(crate) fn attend_rows(
    ctx: &Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    rows: &[RowCache<'_, '_>],
    accumulate: Accumulate,
    out: &SharedMut<'_, f32>,
) {
    // A full-precision cache takes the tiled path alone too (see `attend`).
    if accumulate == Accumulate::F32 || rows.iter().any(|r| matches!(r.cache, LayerCache::F32 { .. })) {
        return attend_rows_tiled(ctx, heads, qkv, rows, out);
    }
    let (hd, q_dim, kv_dim) = (heads.head_dim, heads.q_dim(), heads.kv_dim());
    let stride = q_dim + 2 * kv_dim;
    let group = heads.n_heads / heads.n_kv_heads;
    let scale = heads.score_scale();
    // SAFETY: qkv and the caches are not written during this step.
    let qkv = unsafe { qkv.get() };
    ctx.for_each_chunk(rows.len() * heads.n_heads, 1, |items| {
        let mut q16_row = [f16::ZERO; MAX_HEAD_DIM];
        let mut acc16 = [f16::ZERO; MAX_HEAD_DIM];
        let (mut k32, mut acc32) = ([0f32; MAX_HEAD_DIM], [0f32; MAX_HEAD_DIM]);
        for item in items {
            let (t, h) = (item / heads.n_heads, item % heads.n_heads);
            let (kvh, last) = (h / group, rows[t].pos);
            let from = heads.first_key(last);
            let q = &qkv[t * stride + h * hd..t * stride + (h + 1) * hd];
            let hs = rows[t].cache.head_stride();
            let at = |p: usize| {
                let at = HeadRows::<f16>::at(hs, hd, kvh, p);
                at..at + hd
            };
            // SAFETY: head h of row t's output belongs to this item alone.
            let o = unsafe { out.slice_mut(t * q_dim + h * hd..t * q_dim + (h + 1) * hd) };
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
            match rows[t].cache {
                LayerCache::F16 { k, v, start, .. } => {
                    // SAFETY: see above.
                    let (keys, values) = unsafe { (&k.get()[start..], &v.get()[start..]) };
                    let q16 = &mut q16_row[..hd];
                    q16.convert_from_f32_slice(q);
                    let acc = &mut acc16[..hd];
                    acc.fill(f16::ZERO);
                    for p in from..=last {
                        let s = heads.cap(dot_f16(&keys[at(p)], q16) * scale);
                        let (mut rescale, mut weight) = (1f32, 1f32);
                        if s > max {
                            rescale = (max - s).exp();
                            max = s;
                        } else {
                            weight = (s - max).exp();
                        }
                        if rescale != 1.0 {
                            scale_f16(acc, rescale);
                        }
                        mad_f16(acc, &values[at(p)], weight);
                        sum = sum.mul_add(rescale, weight);
                    }
                    acc.convert_to_f32_slice(o);
                }
                LayerCache::F32 { k, v, start, .. } => {
                    // SAFETY: see above.
                    let (keys, values) = unsafe { (&k.get()[start..], &v.get()[start..]) };
                    let acc = &mut acc32[..hd];
                    acc.fill(0.0);
                    for p in from..=last {
                        let kp = &mut k32[..hd];
                        kp.copy_from_slice(&keys[at(p)]);
                        let s = heads.cap(q.iter().zip(kp.iter()).map(|(a, b)| a * b).sum::<f32>() * scale);
                        let (mut rescale, mut weight) = (1f32, 1f32);
                        if s > max {
                            rescale = (max - s).exp();
                            max = s;
                        } else {
                            weight = (s - max).exp();
                        }
                        acc.iter_mut()
                            .zip(&values[at(p)])
                            .for_each(|(a, &x)| *a = a.mul_add(rescale, weight * x));
                        sum = sum.mul_add(rescale, weight);
                    }
                    o.copy_from_slice(acc);
                }
            }
            let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            o.iter_mut().for_each(|x| *x *= inv);
        }
    });
}

/// One head's key and value runs in a sequence's cache, as it keeps them.
enum KvRuns<'c> {
    F16(&'c [f16], &'c [f16]),
    F32(&'c [f32], &'c [f32]),
}

/// [`attend_rows`] on the f32 path: per (row, key/value head), the row's query heads of that
/// group against blocks of 64 keys of its own cache ([`flash_step`], as `attend_tiled` does for
/// a single token), so a row gets what the tiled path gives its sequence alone.
fn attend_rows_tiled(
    ctx: &Ctx<'_>,
    heads: Heads,
    qkv: &SharedMut<'_, f32>,
    rows: &[RowCache<'_, '_>],
    out: &SharedMut<'_, f32>,
) {
    let (hd, q_dim, kv_dim) = (heads.head_dim, heads.q_dim(), heads.kv_dim());
    let stride = q_dim + 2 * kv_dim;
    let group = heads.n_heads / heads.n_kv_heads;
    let scale = heads.score_scale();
    // SAFETY: qkv and the caches are not written during this step.
    let qkv = unsafe { qkv.get() };
    let n_items = rows.len() * heads.n_kv_heads;
    // Guided hand-out: few claims, so the per-claim buffers are set up a few times per layer,
    // not once per (row, head).
    ctx.for_each_guided(n_items, 1, |items| {
        let (mut q, mut acc) = (vec![0f32; group * hd], vec![0f32; group * hd]);
        let (mut max, mut sum) = (vec![0f32; group], vec![0f32; group]);
        let (first, mut visible) = (vec![0usize; group], vec![0usize; group]);
        let mut block = take_kv_block(hd);
        let runs = |item: usize| {
            let (t, kvh) = (item / heads.n_kv_heads, item % heads.n_kv_heads);
            let n_keys = rows[t].pos + 1;
            // SAFETY: see above.
            match rows[t].cache {
                LayerCache::F16 { k, v, start, head_stride } => unsafe {
                    let (keys, values) = head_rows(&k.get()[start..], &v.get()[start..], head_stride, hd);
                    KvRuns::F16(keys.run(kvh, 0, n_keys), values.run(kvh, 0, n_keys))
                },
                LayerCache::F32 { k, v, start, head_stride } => unsafe {
                    let (keys, values) = head_rows(&k.get()[start..], &v.get()[start..], head_stride, hd);
                    KvRuns::F32(keys.run(kvh, 0, n_keys), values.run(kvh, 0, n_keys))
                },
            }
        };
        let end = items.end;
        for item in items {
            let (t, kvh) = (item / heads.n_kv_heads, item % heads.n_kv_heads);
            // The next item's keys and values start elsewhere in memory: ask for them now.
            if item + 1 < end {
                match runs(item + 1) {
                    KvRuns::F16(k, v) => block.prefetch(k, v),
                    KvRuns::F32(k, v) => block.prefetch(k, v),
                }
            }
            for r in 0..group {
                let h = kvh * group + r;
                let src = &qkv[t * stride + h * hd..t * stride + (h + 1) * hd];
                q[r * hd..(r + 1) * hd].iter_mut().zip(src).for_each(|(d, &s)| *d = s * scale);
            }
            acc.fill(0.0);
            max.fill(f32::NEG_INFINITY);
            sum.fill(0.0);
            let n_keys = rows[t].pos + 1;
            // Every query head of the row sees the same keys: blocks start at the first.
            for p0 in (heads.first_key(rows[t].pos)..n_keys).step_by(KEY_BLOCK) {
                let nk = (n_keys - p0).min(KEY_BLOCK);
                let from = p0 * hd;
                match runs(item) {
                    KvRuns::F16(k, v) => block.load(nk, &k[from..], &v[from..]),
                    KvRuns::F32(k, v) => block.load(nk, &k[from..], &v[from..]),
                }
                visible.fill(nk);
                let mut flash = FlashRows {
                    q: &q,
                    first: &first,
                    visible: &visible,
                    softcap: heads.softcap,
                    out: &mut acc,
                    max: &mut max,
                    sum: &mut sum,
                };
                flash_step(&mut flash, &block);
            }
            for r in 0..group {
                let h = kvh * group + r;
                // SAFETY: head h of row t's output belongs to this item alone.
                let o = unsafe { out.slice_mut(t * q_dim + h * hd..t * q_dim + (h + 1) * hd) };
                let inv = if sum[r] == 0.0 { 0.0 } else { 1.0 / sum[r] };
                o.iter_mut().zip(&acc[r * hd..(r + 1) * hd]).for_each(|(o, &a)| *o = a * inv);
            }
        }
        put_kv_block(block);
    });
}

#[cfg(test)]
mod tests {
    use super::alibi_slopes;

    #[test]
    fn alibi_slopes_follow_baichuan() {
        // Eight heads: 2^-1 … 2^-8.
        let s = alibi_slopes(8);
        assert_eq!(s, (1..=8).map(|k| 2f32.powi(-k)).collect::<Vec<_>>());
        // Baichuan-13B's 40 heads: 2^(-k/4) for k = 1..32, then 2^(-(2j+1)/8) (notes §1.4).
        let s = alibi_slopes(40);
        assert!((s[0] - 0.8409).abs() < 1e-4 && (s[39] - 0.2726).abs() < 1e-4, "{} {}", s[0], s[39]);
        assert!((s[32] - 2f32.powf(-1.0 / 8.0)).abs() < 1e-6);
    }
}
