//! Per-sequence state: the KV cache (f16 or f32, grown as the sequence grows) and the scratch
//! buffers a forward pass works in, allocated once per sequence so that no token allocates.

use baimo_kernels::{Q8Buf, Q8Kind};
use baimo_threads::SharedMut;
use half::f16;

use crate::attention::LayerCache;

/// What the KV cache stores keys and values in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPrecision {
    /// Half precision, as llama.cpp keeps them (models from GGUF, f16/bf16 and quantized weights).
    F16,
    /// Full precision, for f32 weights (as transformers keeps them in the model's dtype).
    F32,
}

pub(crate) enum KvData {
    F16 { k: Vec<f16>, v: Vec<f16> },
    F32 { k: Vec<f32>, v: Vec<f32> },
}

/// Keys and values of every layer for the positions seen so far. One buffer each for keys and
/// values, laid out `[layer][kv_head][position][head_dim]` with room for `capacity` positions
/// per head: attention reads one head's positions as a single contiguous run (the hardware
/// prefetcher keeps up; interleaved heads made every position a strided miss). The capacity
/// doubles when the sequence outgrows it, so memory stays within twice what the sequence needs
/// and a token allocates nothing.
pub struct KvCache {
    pub(crate) data: KvData,
    n_layers: usize,
    pub(crate) kv_dim: usize,
    n_kv_heads: usize,
    capacity: usize,
    len: usize,
    max_len: usize,
}

/// The cache's buffers shared among a forward pass's threads.
pub(crate) enum SharedKv<'b> {
    F16(SharedMut<'b, f16>, SharedMut<'b, f16>, usize),
    F32(SharedMut<'b, f32>, SharedMut<'b, f32>, usize),
}

impl SharedKv<'_> {
    /// The part of the layer that starts at `start` (each layer takes `layer_start(1)` values).
    pub(crate) fn layer(&self, start: usize) -> LayerCache<'_, '_> {
        match self {
            SharedKv::F16(k, v, head_stride) => LayerCache::F16 { k, v, start, head_stride: *head_stride },
            SharedKv::F32(k, v, head_stride) => LayerCache::F32 { k, v, start, head_stride: *head_stride },
        }
    }
}

/// `buf` with every run (one head of one layer: `old` values, the first `filled` in use) moved
/// to a run of `new` values.
fn grown<T: Copy + Default>(buf: &[T], n_runs: usize, old: usize, new: usize, filled: usize) -> Vec<T> {
    let mut out = vec![T::default(); n_runs * new];
    for run in 0..n_runs {
        out[run * new..run * new + filled].copy_from_slice(&buf[run * old..run * old + filled]);
    }
    out
}

impl KvCache {
    /// A cache for `n_layers` layers of `n_kv_heads` heads of `kv_dim / n_kv_heads` values.
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        kv_dim: usize,
        max_len: usize,
        precision: KvPrecision,
    ) -> KvCache {
        assert!(n_kv_heads > 0 && kv_dim.is_multiple_of(n_kv_heads), "kv_dim splits into heads");
        let data = match precision {
            KvPrecision::F16 => KvData::F16 { k: Vec::new(), v: Vec::new() },
            KvPrecision::F32 => KvData::F32 { k: Vec::new(), v: Vec::new() },
        };
        KvCache { data, n_layers, kv_dim, n_kv_heads, capacity: 0, len: 0, max_len }
    }

    pub fn precision(&self) -> KvPrecision {
        match self.data {
            KvData::F16 { .. } => KvPrecision::F16,
            KvData::F32 { .. } => KvPrecision::F32,
        }
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The longest sequence this cache will hold.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forgets every position after the first `len` (a new conversation, or a shared prefix
    /// kept and the rest recomputed). The memory is kept for reuse.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Where layer `layer` starts in the buffers.
    pub(crate) fn layer_start(&self, layer: usize) -> usize {
        layer * self.capacity * self.kv_dim
    }

    /// Distance between two heads of a layer: `capacity` positions of one head.
    fn head_stride(&self) -> usize {
        self.capacity * (self.kv_dim / self.n_kv_heads)
    }

    pub(crate) fn shared(&mut self) -> SharedKv<'_> {
        let head_stride = self.head_stride();
        match &mut self.data {
            KvData::F16 { k, v } => SharedKv::F16(SharedMut::new(k), SharedMut::new(v), head_stride),
            KvData::F32 { k, v } => SharedKv::F32(SharedMut::new(k), SharedMut::new(v), head_stride),
        }
    }

    /// Makes room for `n` more positions (the new ones hold stale values until written).
    pub(crate) fn grow(&mut self, n: usize) {
        let needed = self.len + n;
        if needed > self.capacity {
            let capacity = needed.max(self.capacity * 2).max(16).min(self.max_len.max(needed));
            let head_dim = self.kv_dim / self.n_kv_heads;
            let (old, new) = (self.capacity * head_dim, capacity * head_dim);
            let (layers, filled) = (self.n_layers * self.n_kv_heads, self.len * head_dim);
            match &mut self.data {
                KvData::F16 { k, v } => {
                    *k = grown(k, layers, old, new, filled);
                    *v = grown(v, layers, old, new, filled);
                }
                KvData::F32 { k, v } => {
                    *k = grown(k, layers, old, new, filled);
                    *v = grown(v, layers, old, new, filled);
                }
            }
            self.capacity = capacity;
        }
        self.len = needed;
    }

    /// Memory held, in bytes.
    pub fn n_bytes(&self) -> usize {
        match &self.data {
            KvData::F16 { k, v } => (k.len() + v.len()) * 2,
            KvData::F32 { k, v } => (k.len() + v.len()) * 4,
        }
    }
}

/// One input of a matrix product: the f32 rows, and the same rows quantized to 8 bits for the
/// weight types that take quantized activations (each kind filled only if a consumer needs it).
pub struct Activations {
    pub n: usize,
    pub f32: Vec<f32>,
    pub q32: Option<Q8Buf>,
    pub q256: Option<Q8Buf>,
}

impl Activations {
    pub fn new(n: usize, rows: usize, need_q32: bool, need_q256: bool) -> Activations {
        Activations {
            n,
            f32: vec![0.0; n * rows],
            q32: need_q32.then(|| Q8Buf::new(Q8Kind::Blocks32, n, rows)),
            q256: need_q256.then(|| Q8Buf::new(Q8Kind::Blocks256, n, rows)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_keeps_every_head_s_positions() {
        // 3 layers, 2 heads of 2 values.
        let mut kv = KvCache::new(3, 2, 4, 1000, KvPrecision::F16);
        kv.grow(5);
        let value =
            |layer: usize, head: usize, pos: usize, c: usize| (layer * 100 + head * 20 + pos * 2 + c) as f32;
        let index = |kv: &KvCache, layer: usize, head: usize, pos: usize, c: usize| {
            kv.layer_start(layer) + head * kv.head_stride() + pos * 2 + c
        };
        let all = || {
            (0..3).flat_map(|l| {
                (0..2).flat_map(move |h| (0..5).flat_map(move |p| (0..2).map(move |c| (l, h, p, c))))
            })
        };
        for (l, h, p, c) in all() {
            let i = index(&kv, l, h, p, c);
            let KvData::F16 { k, .. } = &mut kv.data else { unreachable!() };
            k[i] = f16::from_f32(value(l, h, p, c));
        }
        kv.grow(40); // past the first capacity of 16
        assert_eq!(kv.len(), 45);
        assert!(kv.head_stride() >= 45 * 2);
        for (l, h, p, c) in all() {
            let KvData::F16 { k, .. } = &kv.data else { unreachable!() };
            assert_eq!(k[index(&kv, l, h, p, c)].to_f32(), value(l, h, p, c), "layer {l} head {h} pos {p}");
        }
        kv.truncate(3);
        assert_eq!(kv.len(), 3);
        assert!(kv.n_bytes() >= 2 * 3 * 45 * 4 * 2);
    }
}
