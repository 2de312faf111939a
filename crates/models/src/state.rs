//! Per-sequence state: the KV cache (f16, grown as the sequence grows) and the scratch buffers a
//! forward pass works in, allocated once per sequence so that no token allocates.

use baimo_kernels::{Q8Buf, Q8Kind};
use half::f16;

/// Keys and values of every layer for the positions seen so far, in f16 (as llama.cpp keeps
/// them). Layout per layer: `[position][kv_head · head_dim]`, so appending a position is a push.
pub struct KvCache {
    pub(crate) k: Vec<Vec<f16>>,
    pub(crate) v: Vec<Vec<f16>>,
    pub(crate) kv_dim: usize,
    len: usize,
    max_len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize, max_len: usize) -> KvCache {
        KvCache { k: vec![Vec::new(); n_layers], v: vec![Vec::new(); n_layers], kv_dim, len: 0, max_len }
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
    /// kept and the rest recomputed).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            layer.truncate(self.len * self.kv_dim);
        }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Makes room for `n` more positions (the new ones read as zero until written).
    pub(crate) fn grow(&mut self, n: usize) {
        let new_len = self.len + n;
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            if layer.capacity() < new_len * self.kv_dim {
                // Grow by at least half again so a long generation reallocates rarely.
                let target = (new_len * self.kv_dim).max(layer.capacity() * 3 / 2);
                layer.reserve_exact(target - layer.len());
            }
            layer.resize(new_len * self.kv_dim, f16::ZERO);
        }
        self.len = new_len;
    }

    /// Memory held, in bytes.
    pub fn n_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|l| l.capacity() * 2).sum()
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
