//! Per-sequence state: the KV cache (f16, grown as the sequence grows) and the scratch buffers a
//! forward pass works in, allocated once per sequence so that no token allocates.

use baimo_kernels::{Q8Buf, Q8Kind};
use half::f16;

/// Keys and values of every layer for the positions seen so far, in f16 (as llama.cpp keeps
/// them). One buffer each for keys and values, laid out `[layer][position][kv_head · head_dim]`
/// with room for `capacity` positions per layer; the capacity doubles when the sequence
/// outgrows it, so memory stays within twice what the sequence needs and a token allocates
/// nothing.
pub struct KvCache {
    pub(crate) k: Vec<f16>,
    pub(crate) v: Vec<f16>,
    n_layers: usize,
    pub(crate) kv_dim: usize,
    capacity: usize,
    len: usize,
    max_len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize, max_len: usize) -> KvCache {
        KvCache { k: Vec::new(), v: Vec::new(), n_layers, kv_dim, capacity: 0, len: 0, max_len }
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

    /// Where layer `layer` starts in `k` and `v`.
    pub(crate) fn layer_start(&self, layer: usize) -> usize {
        layer * self.capacity * self.kv_dim
    }

    /// Makes room for `n` more positions (the new ones hold stale values until written).
    pub(crate) fn grow(&mut self, n: usize) {
        let needed = self.len + n;
        if needed > self.capacity {
            let capacity = needed.max(self.capacity * 2).max(16).min(self.max_len.max(needed));
            let (old, new) = (self.capacity * self.kv_dim, capacity * self.kv_dim);
            let filled = self.len * self.kv_dim;
            for buf in [&mut self.k, &mut self.v] {
                let mut grown = vec![f16::ZERO; self.n_layers * new];
                for layer in 0..self.n_layers {
                    grown[layer * new..layer * new + filled]
                        .copy_from_slice(&buf[layer * old..layer * old + filled]);
                }
                *buf = grown;
            }
            self.capacity = capacity;
        }
        self.len = needed;
    }

    /// Memory held, in bytes.
    pub fn n_bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 2
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
    fn growing_keeps_every_layer_s_positions() {
        let mut kv = KvCache::new(3, 2, 1000);
        kv.grow(5);
        for layer in 0..3 {
            let start = kv.layer_start(layer);
            for i in 0..10 {
                kv.k[start + i] = f16::from_f32((layer * 100 + i) as f32);
            }
        }
        kv.grow(40); // past the first capacity of 16
        assert_eq!(kv.len(), 45);
        for layer in 0..3 {
            let start = kv.layer_start(layer);
            for i in 0..10 {
                assert_eq!(kv.k[start + i].to_f32(), (layer * 100 + i) as f32);
            }
        }
        kv.truncate(3);
        assert_eq!(kv.len(), 3);
        assert!(kv.n_bytes() >= 2 * 3 * 45 * 2 * 2);
    }
}
