//! Block layouts of the ggml quantized types and the scalar reference for everything done with
//! them: dequantization, quantization of activations to 8 bits, and dot products.
//!
//! The scalar functions here are the definition of correct; every SIMD path is tested against
//! them. Layouts and arithmetic follow ggml (ggml-common.h, ggml-quants.c) so that logits agree
//! with llama.cpp's to the last few digits.

use half::{bf16, f16};

pub const QK: usize = 32; // elements per legacy block (Q4_0 .. Q8_0)
pub const QK_K: usize = 256; // elements per K-quant super-block

/// Marker for block types that can be viewed in place from file bytes: `repr(C)`, built only
/// from integers (every bit pattern is valid), no padding.
///
/// # Safety
/// Implementors must satisfy exactly that.
pub unsafe trait Block: Copy + 'static {}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,       // f16 scale
    pub qs: [u8; 16], // 32 nibbles: low nibbles are elements 0..16, high nibbles 16..32
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16, // f16 scale
    pub m: u16, // f16 minimum
    pub qs: [u8; 16],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4], // the fifth bit of each of the 32 elements, little-endian u32
    pub qs: [u8; 16],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: u16,
    pub m: u16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; 32],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: u16,           // f16 super-block scale for the sub-block scales
    pub dmin: u16,        // f16 super-block scale for the sub-block minimums
    pub scales: [u8; 12], // 8 × (6-bit scale, 6-bit min), packed
    pub qs: [u8; 128],    // 256 nibbles, see `dequantize_q4_k`
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qh: [u8; 32], // fifth bits
    pub qs: [u8; 128],
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; 128],    // low 4 bits
    pub qh: [u8; 64],     // high 2 bits
    pub scales: [i8; 16], // one 8-bit scale per 16 elements
    pub d: u16,
}

unsafe impl Block for BlockQ4_0 {}
unsafe impl Block for BlockQ4_1 {}
unsafe impl Block for BlockQ5_0 {}
unsafe impl Block for BlockQ5_1 {}
unsafe impl Block for BlockQ8_0 {}
unsafe impl Block for BlockQ4K {}
unsafe impl Block for BlockQ5K {}
unsafe impl Block for BlockQ6K {}

const _: () = {
    assert!(size_of::<BlockQ4_0>() == 18);
    assert!(size_of::<BlockQ4_1>() == 20);
    assert!(size_of::<BlockQ5_0>() == 22);
    assert!(size_of::<BlockQ5_1>() == 24);
    assert!(size_of::<BlockQ8_0>() == 34);
    assert!(size_of::<BlockQ4K>() == 144);
    assert!(size_of::<BlockQ5K>() == 176);
    assert!(size_of::<BlockQ6K>() == 210);
};

/// Views bytes as blocks. Panics if the length is not a whole number of blocks or the bytes are
/// not aligned for `B`; loaders guarantee both (they copy misaligned tensors).
pub fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    assert_eq!(bytes.len() % size_of::<B>(), 0, "byte length is not a whole number of blocks");
    assert_eq!(bytes.as_ptr() as usize % align_of::<B>(), 0, "block data is misaligned");
    // SAFETY: length and alignment checked above; `Block` types accept any bit pattern.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / size_of::<B>()) }
}

pub fn as_blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    assert_eq!(bytes.len() % size_of::<B>(), 0, "byte length is not a whole number of blocks");
    assert_eq!(bytes.as_ptr() as usize % align_of::<B>(), 0, "block data is misaligned");
    // SAFETY: as in `as_blocks`, and the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast(), bytes.len() / size_of::<B>()) }
}

#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K / Q5_K super-block.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantization (weights → f32)
// ---------------------------------------------------------------------------------------------

pub fn dequantize_q4_0(blocks: &[BlockQ4_0], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for j in 0..16 {
            y[j] = ((b.qs[j] & 0xF) as i32 - 8) as f32 * d;
            y[j + 16] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(blocks: &[BlockQ4_1], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for j in 0..16 {
            y[j] = (b.qs[j] & 0xF) as f32 * d + m;
            y[j + 16] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// The 5-bit values (0..32) of a Q5 block: low nibbles plus the bit from `qh`.
#[inline]
fn q5_values(qs: &[u8; 16], qh: [u8; 4]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut v = [0u8; 32];
    for j in 0..16 {
        v[j] = (qs[j] & 0xF) | ((((qh >> j) & 1) as u8) << 4);
        v[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    v
}

pub fn dequantize_q5_0(blocks: &[BlockQ5_0], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (y, q) in y.iter_mut().zip(q5_values(&b.qs, b.qh)) {
            *y = (q as i32 - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q5_1(blocks: &[BlockQ5_1], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
        for (y, q) in y.iter_mut().zip(q5_values(&b.qs, b.qh)) {
            *y = q as f32 * d + m;
        }
    }
}

pub fn dequantize_q8_0(blocks: &[BlockQ8_0], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = q as f32 * d;
        }
    }
}

/// The 4-bit values (0..16) of a Q4_K super-block in element order: for each 64-element chunk
/// `c`, bytes `qs[32c..32c+32]` hold elements `64c..64c+32` in their low nibbles and
/// `64c+32..64c+64` in their high nibbles.
#[inline]
fn q4_k_values(qs: &[u8; 128]) -> [u8; QK_K] {
    let mut v = [0u8; QK_K];
    for c in 0..4 {
        for l in 0..32 {
            v[64 * c + l] = qs[32 * c + l] & 0xF;
            v[64 * c + 32 + l] = qs[32 * c + l] >> 4;
        }
    }
    v
}

#[inline]
fn q5_k_values(qs: &[u8; 128], qh: &[u8; 32]) -> [u8; QK_K] {
    let mut v = q4_k_values(qs);
    for c in 0..4 {
        for l in 0..32 {
            v[64 * c + l] |= ((qh[l] >> (2 * c)) & 1) << 4;
            v[64 * c + 32 + l] |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
        }
    }
    v
}

/// The 6-bit values (0..64) of a Q6_K super-block in element order.
#[inline]
fn q6_k_values(b: &BlockQ6K) -> [u8; QK_K] {
    let mut v = [0u8; QK_K];
    for half in 0..2 {
        let (ql, qh) = (&b.ql[64 * half..], &b.qh[32 * half..]);
        let v = &mut v[128 * half..];
        for l in 0..32 {
            v[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
            v[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            v[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            v[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    v
}

/// The 6-bit values (0..64) of a Q6_K super-block in element order, into `out`.
pub fn q6_k_values_into(b: &BlockQ6K, out: &mut [u8; QK_K]) {
    *out = q6_k_values(b);
}

pub fn dequantize_q4_k(blocks: &[BlockQ4K], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        let q = q4_k_values(&b.qs);
        for s in 0..8 {
            let (sc, m) = scale_min_k4(s, &b.scales);
            let (scale, min) = (d * sc as f32, dmin * m as f32);
            for l in 32 * s..32 * s + 32 {
                y[l] = scale * q[l] as f32 - min;
            }
        }
    }
}

pub fn dequantize_q5_k(blocks: &[BlockQ5K], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        let q = q5_k_values(&b.qs, &b.qh);
        for s in 0..8 {
            let (sc, m) = scale_min_k4(s, &b.scales);
            let (scale, min) = (d * sc as f32, dmin * m as f32);
            for l in 32 * s..32 * s + 32 {
                y[l] = scale * q[l] as f32 - min;
            }
        }
    }
}

pub fn dequantize_q6_k(blocks: &[BlockQ6K], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let q = q6_k_values(b);
        for (l, y) in y.iter_mut().enumerate() {
            *y = d * b.scales[l / 16] as f32 * (q[l] as i32 - 32) as f32;
        }
    }
}

pub fn dequantize_f16(x: &[u8], y: &mut [f32]) {
    for (c, y) in x.chunks_exact(2).zip(y) {
        *y = f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

pub fn dequantize_bf16(x: &[u8], y: &mut [f32]) {
    for (c, y) in x.chunks_exact(2).zip(y) {
        *y = bf16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

pub fn dequantize_f32(x: &[u8], y: &mut [f32]) {
    for (c, y) in x.chunks_exact(4).zip(y) {
        *y = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

// ---------------------------------------------------------------------------------------------
// Activations quantized to 8 bits
// ---------------------------------------------------------------------------------------------

/// How activations are quantized for a dot product: ggml's Q8_0/Q8_1 (a scale per 32 values)
/// for the legacy weight types, Q8_K (a scale per 256) for the K-quants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q8Kind {
    Blocks32,
    Blocks256,
}

impl Q8Kind {
    pub fn block_size(self) -> usize {
        match self {
            Q8Kind::Blocks32 => QK,
            Q8Kind::Blocks256 => QK_K,
        }
    }
}

/// One row of quantized activations, stored as separate arrays so SIMD code can load the int8
/// values of consecutive blocks in one go.
#[derive(Clone, Copy, Debug)]
pub struct Q8Row<'a> {
    pub qs: &'a [i8],
    /// One scale per block (32 or 256 values, see [`Q8Kind`]).
    pub d: &'a [f32],
    /// Per 32 values, `d · Σq` (ggml's Q8_1 `s`); filled for [`Q8Kind::Blocks32`] only.
    pub s: &'a [f32],
    /// Per 16 values, `Σq` (ggml's Q8_K `bsums`); filled for [`Q8Kind::Blocks256`] only.
    pub bsums: &'a [i16],
}

pub struct Q8RowMut<'a> {
    pub qs: &'a mut [i8],
    pub d: &'a mut [f32],
    pub s: &'a mut [f32],
    pub bsums: &'a mut [i16],
}

/// Owned storage for `rows` rows of `n` quantized activations.
#[derive(Clone, Debug)]
pub struct Q8Buf {
    pub kind: Q8Kind,
    pub n: usize,
    pub rows: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub bsums: Vec<i16>,
}

impl Q8Buf {
    pub fn new(kind: Q8Kind, n: usize, rows: usize) -> Q8Buf {
        assert_eq!(n % kind.block_size(), 0, "row length must be a whole number of blocks");
        let total = n * rows;
        Q8Buf {
            kind,
            n,
            rows,
            qs: vec![0; total],
            d: vec![0.0; total / kind.block_size()],
            s: vec![0.0; total / QK],
            bsums: vec![0; total / 16],
        }
    }

    pub fn row(&self, r: usize) -> Q8Row<'_> {
        let (n, bs) = (self.n, self.kind.block_size());
        Q8Row {
            qs: &self.qs[r * n..(r + 1) * n],
            d: &self.d[r * n / bs..(r + 1) * n / bs],
            s: &self.s[r * n / QK..(r + 1) * n / QK],
            bsums: &self.bsums[r * n / 16..(r + 1) * n / 16],
        }
    }

    pub fn row_mut(&mut self, r: usize) -> Q8RowMut<'_> {
        let (n, bs) = (self.n, self.kind.block_size());
        Q8RowMut {
            qs: &mut self.qs[r * n..(r + 1) * n],
            d: &mut self.d[r * n / bs..(r + 1) * n / bs],
            s: &mut self.s[r * n / QK..(r + 1) * n / QK],
            bsums: &mut self.bsums[r * n / 16..(r + 1) * n / 16],
        }
    }

    /// Quantizes row `r` from `x`.
    pub fn quantize_row(&mut self, r: usize, x: &[f32]) {
        let kind = self.kind;
        quantize_q8(kind, x, self.row_mut(r));
    }
}

/// Quantizes `x` to 8 bits the way ggml does for the given kind: with AVX-512 intrinsics where
/// the CPU has them (the compiler's vectorization of the portable body took 1.8 ns a value for
/// Q8_0 blocks, a tenth of a prompt's time), else the portable body compiled for the best
/// instruction set. Every build gives the bits of the scalar reference [`quantize_q8_scalar`]
/// (all its steps are exact or elementwise).
pub fn quantize_q8(kind: Q8Kind, x: &[f32], out: Q8RowMut<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(kind: Q8Kind, x: &[f32], out: Q8RowMut<'_>) {
            quantize_q8_lanes(kind, x, out)
        }
        match crate::Isa::best() {
            // SAFETY: `best` checked these features.
            crate::Isa::Avx512Vnni => return unsafe { crate::simd::x86::quantize_q8_avx512(kind, x, out) },
            // SAFETY: as above.
            crate::Isa::Avx2 => return unsafe { avx2(kind, x, out) },
            _ => {}
        }
    }
    quantize_q8_lanes(kind, x, out)
}

/// The scalar reference of [`quantize_q8`].
pub fn quantize_q8_scalar(kind: Q8Kind, x: &[f32], out: Q8RowMut<'_>) {
    match kind {
        Q8Kind::Blocks32 => quantize_q8_32(x, out),
        Q8Kind::Blocks256 => quantize_q8_256(x, out),
    }
}

/// The largest magnitude of `xs` (a multiple of 16 long), NaNs ignored as `f32::max` does.
#[inline(always)]
fn amax_lanes(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    for chunk in xs.chunks_exact(16) {
        for k in 0..16 {
            lanes[k] = lanes[k].max(chunk[k].abs());
        }
    }
    lanes.iter().fold(0f32, |m, &v| m.max(v))
}

#[inline(always)]
fn quantize_q8_lanes(kind: Q8Kind, x: &[f32], out: Q8RowMut<'_>) {
    match kind {
        Q8Kind::Blocks32 => {
            debug_assert_eq!(x.len() % QK, 0);
            for (b, xb) in x.chunks_exact(QK).enumerate() {
                let amax = amax_lanes(xb);
                let d = amax / 127.0;
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                let qs: &mut [i8; QK] = (&mut out.qs[b * QK..(b + 1) * QK]).try_into().unwrap();
                let xb: &[f32; QK] = xb.try_into().unwrap();
                for k in 0..QK {
                    qs[k] = nearest_int(xb[k] * id) as i8;
                }
                let sum16 = |h: &[i8]| h.iter().map(|&q| q as i16).sum::<i16>();
                let (lo, hi) = (sum16(&qs[..16]), sum16(&qs[16..]));
                out.d[b] = f16_to_f32(f32_to_f16(d));
                out.s[b] = f16_to_f32(f32_to_f16(d * (lo as i32 + hi as i32) as f32));
                out.bsums[2 * b] = lo;
                out.bsums[2 * b + 1] = hi;
            }
        }
        Q8Kind::Blocks256 => {
            debug_assert_eq!(x.len() % QK_K, 0);
            for (b, xb) in x.chunks_exact(QK_K).enumerate() {
                let amax = amax_lanes(xb);
                let qs = &mut out.qs[b * QK_K..(b + 1) * QK_K];
                // The first value of that magnitude, with its sign (as the reference's scan).
                let max = if amax == 0.0 {
                    0.0
                } else {
                    xb.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
                };
                if amax == 0.0 || max == 0.0 {
                    out.d[b] = 0.0;
                    qs.fill(0);
                    out.bsums[16 * b..16 * b + 16].fill(0);
                    continue;
                }
                let iscale = -127.0 / max;
                for (qs, xs) in qs.chunks_exact_mut(QK).zip(xb.chunks_exact(QK)) {
                    let qs: &mut [i8; QK] = qs.try_into().unwrap();
                    let xs: &[f32; QK] = xs.try_into().unwrap();
                    for k in 0..QK {
                        qs[k] = nearest_int(iscale * xs[k]).min(127) as i8;
                    }
                }
                for j in 0..16 {
                    out.bsums[16 * b + j] = qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
                }
                out.d[b] = 1.0 / iscale;
            }
        }
    }
}

/// Round half to even for |x| < 2²²: adding 1.5·2²³ leaves the rounded integer in the low
/// mantissa bits (ggml's `nearest_int`). Same result as `f32::round_ties_even`, without the
/// library call that baseline x86-64 code makes for it.
#[inline(always)]
fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's `quantize_row_q8_0`/`_q8_1` as the x86 build computes them: `d = amax/127` stored as
/// f16, `q = round_half_even(x · 127/amax)`, and `s = d · Σq` stored as f16.
fn quantize_q8_32(x: &[f32], out: Q8RowMut<'_>) {
    debug_assert_eq!(x.len() % QK, 0);
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let qs = &mut out.qs[b * QK..(b + 1) * QK];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(xb) {
            *q = nearest_int(v * id) as i8;
            sum += *q as i32;
        }
        out.d[b] = f16_to_f32(f32_to_f16(d));
        out.s[b] = f16_to_f32(f32_to_f16(d * sum as f32));
        out.bsums[2 * b] = qs[..16].iter().map(|&q| q as i16).sum();
        out.bsums[2 * b + 1] = qs[16..].iter().map(|&q| q as i16).sum();
    }
}

/// ggml's `quantize_row_q8_K_ref`: the scale comes from the value of largest magnitude, with its
/// sign, so that value maps to -127; `d = 1/iscale` stays f32.
fn quantize_q8_256(x: &[f32], out: Q8RowMut<'_>) {
    debug_assert_eq!(x.len() % QK_K, 0);
    for (b, xb) in x.chunks_exact(QK_K).enumerate() {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let qs = &mut out.qs[b * QK_K..(b + 1) * QK_K];
        if amax == 0.0 {
            out.d[b] = 0.0;
            qs.fill(0);
            out.bsums[16 * b..16 * b + 16].fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for j in 0..16 {
            out.bsums[16 * b + j] = qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
        }
        out.d[b] = 1.0 / iscale;
    }
}

// ---------------------------------------------------------------------------------------------
// Dot products: one weight row · one row of quantized activations (scalar reference)
// ---------------------------------------------------------------------------------------------

#[inline]
fn dot_i8(a: &[u8], x: &[i8]) -> i32 {
    a.iter().zip(x).map(|(&a, &x)| a as i32 * x as i32).sum()
}

pub fn vec_dot_q4_0(w: &[BlockQ4_0], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.iter().enumerate() {
        let xq = &x.qs[i * QK..(i + 1) * QK];
        let mut isum = 0i32;
        for j in 0..16 {
            isum += ((b.qs[j] & 0xF) as i32 - 8) * xq[j] as i32;
            isum += ((b.qs[j] >> 4) as i32 - 8) * xq[j + 16] as i32;
        }
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32;
    }
    sum
}

pub fn vec_dot_q4_1(w: &[BlockQ4_1], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.iter().enumerate() {
        let xq = &x.qs[i * QK..(i + 1) * QK];
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (b.qs[j] & 0xF) as i32 * xq[j] as i32;
            isum += (b.qs[j] >> 4) as i32 * xq[j + 16] as i32;
        }
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32 + f16_to_f32(b.m) * x.s[i];
    }
    sum
}

pub fn vec_dot_q5_0(w: &[BlockQ5_0], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.iter().enumerate() {
        let v = q5_values(&b.qs, b.qh);
        let xq = &x.qs[i * QK..(i + 1) * QK];
        let isum: i32 = v.iter().zip(xq).map(|(&q, &x)| (q as i32 - 16) * x as i32).sum();
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32;
    }
    sum
}

pub fn vec_dot_q5_1(w: &[BlockQ5_1], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.iter().enumerate() {
        let v = q5_values(&b.qs, b.qh);
        let isum = dot_i8(&v, &x.qs[i * QK..(i + 1) * QK]);
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32 + f16_to_f32(b.m) * x.s[i];
    }
    sum
}

pub fn vec_dot_q8_0(w: &[BlockQ8_0], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.iter().enumerate() {
        let xq = &x.qs[i * QK..(i + 1) * QK];
        let isum: i32 = b.qs.iter().zip(xq).map(|(&a, &x)| a as i32 * x as i32).sum();
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32;
    }
    sum
}

/// Shared by Q4_K and Q5_K: `Σ_s d·sc_s·Σ(q·x) − dmin·m_s·Σx` over the 8 sub-blocks, with the
/// minimum term taken from the activation block sums.
fn vec_dot_k4(q: &[u8; QK_K], d: u16, dmin: u16, scales: &[u8; 12], x: Q8Row<'_>, i: usize) -> f32 {
    let xq = &x.qs[i * QK_K..(i + 1) * QK_K];
    let bsums = &x.bsums[i * 16..(i + 1) * 16];
    let (mut isum, mut isum_mins) = (0i32, 0i32);
    for s in 0..8 {
        let (sc, m) = scale_min_k4(s, scales);
        isum += sc as i32 * dot_i8(&q[32 * s..32 * s + 32], &xq[32 * s..32 * s + 32]);
        isum_mins += m as i32 * (bsums[2 * s] as i32 + bsums[2 * s + 1] as i32);
    }
    x.d[i] * (f16_to_f32(d) * isum as f32 - f16_to_f32(dmin) * isum_mins as f32)
}

pub fn vec_dot_q4_k(w: &[BlockQ4K], x: Q8Row<'_>) -> f32 {
    w.iter().enumerate().map(|(i, b)| vec_dot_k4(&q4_k_values(&b.qs), b.d, b.dmin, &b.scales, x, i)).sum()
}

pub fn vec_dot_q5_k(w: &[BlockQ5K], x: Q8Row<'_>) -> f32 {
    w.iter()
        .enumerate()
        .map(|(i, b)| vec_dot_k4(&q5_k_values(&b.qs, &b.qh), b.d, b.dmin, &b.scales, x, i))
        .sum()
}

pub fn vec_dot_q6_k(w: &[BlockQ6K], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.iter().enumerate() {
        let q = q6_k_values(b);
        let xq = &x.qs[i * QK_K..(i + 1) * QK_K];
        let mut isum = 0i32;
        for s in 0..16 {
            let dot: i32 = (16 * s..16 * s + 16).map(|l| (q[l] as i32 - 32) * xq[l] as i32).sum();
            isum += b.scales[s] as i32 * dot;
        }
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32;
    }
    sum
}

/// Float weights take float activations: f32 accumulation of weight · x.
pub fn vec_dot_f32(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(4).zip(x).map(|(c, &x)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * x).sum()
}

pub fn vec_dot_f16(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(2).zip(x).map(|(c, &x)| f16::from_le_bytes([c[0], c[1]]).to_f32() * x).sum()
}

pub fn vec_dot_bf16(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(2).zip(x).map(|(c, &x)| bf16::from_le_bytes([c[0], c[1]]).to_f32() * x).sum()
}

// ---------------------------------------------------------------------------------------------
// Quantization of weights (legacy types), used to build test data and for load-time quantization
// ---------------------------------------------------------------------------------------------

/// ggml's `quantize_row_q8_0_ref`.
pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (xb, b) in x.chunks_exact(QK).zip(out) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
    }
}

/// The signed value of largest magnitude in a block.
fn signed_max(xb: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// ggml's `quantize_row_q4_0_ref`.
pub fn quantize_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    for (xb, b) in x.chunks_exact(QK).zip(out) {
        let d = signed_max(xb) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        for j in 0..16 {
            let q0 = ((xb[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((xb[j + 16] * id + 8.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// ggml's `make_qkx2_quants`: codes `0..=nmax` and a scale and minimum for `x` (the minimum
/// returned negated, as ggml's `the_min`) that minimize the weighted squared error, searched
/// over `nstep + 1` candidate scales around the plain min/max one.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    l_aux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (weights[0], weights[0] * x[0]);
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l_aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut error = 0f32;
            for i in 0..n {
                let diff = this_scale * l_aux[i] as f32 + this_min - x[i];
                error += weights[i] * (diff * diff);
            }
            if error < best_error {
                l_out[..n].copy_from_slice(&l_aux[..n]);
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `quantize_row_q4_K_ref` (what llama-quantize runs without an importance matrix): per
/// sub-block of 32 a searched scale and minimum ([`make_qkx2_quants`], weights `rms + |x|`),
/// the eight of each kind coded in 6 bits against the super-block's largest, then the values
/// coded again against the scales as the dequantizer will see them.
pub fn quantize_q4_k(x: &[f32], out: &mut [BlockQ4K]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out) {
        let mut l = [0u8; QK_K];
        let mut l_aux = [0u8; 32];
        let mut weights = [0f32; 32];
        let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..8 {
            let sub = &xb[32 * j..32 * j + 32];
            let sum_x2: f32 = sub.iter().fold(0.0, |acc, v| acc + v * v);
            let av_x = (sum_x2 / 32.0).sqrt();
            for (w, v) in weights.iter_mut().zip(sub) {
                *w = av_x + v.abs();
            }
            let (scale, min) =
                make_qkx2_quants(sub, &weights, 15, &mut l[32 * j..32 * j + 32], &mut l_aux, -1.0, 0.1, 20);
            scales[j] = scale;
            mins[j] = min;
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        b.scales = [0; 12];
        for j in 0..8 {
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                b.scales[j] = ls;
                b.scales[j + 4] = lm;
            } else {
                b.scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                b.scales[j - 4] |= (ls >> 4) << 6;
                b.scales[j] |= (lm >> 4) << 6;
            }
        }
        b.d = f32_to_f16(max_scale / 63.0);
        b.dmin = f32_to_f16(max_min / 63.0);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &b.scales);
            let d = f16_to_f32(b.d) * sc as f32;
            if d == 0.0 {
                continue;
            }
            let dm = f16_to_f32(b.dmin) * m as f32;
            for i in 32 * j..32 * j + 32 {
                l[i] = nearest_int((xb[i] + dm) / d).clamp(0, 15) as u8;
            }
        }
        for c in 0..4 {
            for i in 0..32 {
                b.qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

/// ggml's `quantize_row_q4_1_ref`.
pub fn quantize_q4_1(x: &[f32], out: &mut [BlockQ4_1]) {
    for (xb, b) in x.chunks_exact(QK).zip(out) {
        let min = xb.iter().copied().fold(f32::MAX, f32::min);
        let max = xb.iter().copied().fold(f32::MIN, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        for j in 0..16 {
            let q0 = (((xb[j] - min) * id + 0.5) as u8).min(15);
            let q1 = (((xb[j + 16] - min) * id + 0.5) as u8).min(15);
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// ggml's `quantize_row_q5_0_ref`.
pub fn quantize_q5_0(x: &[f32], out: &mut [BlockQ5_0]) {
    for (xb, b) in x.chunks_exact(QK).zip(out) {
        let d = signed_max(xb) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        let mut qh = 0u32;
        for j in 0..16 {
            let q0 = ((xb[j] * id + 16.5) as i8).min(31) as u8;
            let q1 = ((xb[j + 16] * id + 16.5) as i8).min(31) as u8;
            b.qs[j] = (q0 & 0xF) | ((q1 & 0xF) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// ggml's `quantize_row_q5_1_ref`.
pub fn quantize_q5_1(x: &[f32], out: &mut [BlockQ5_1]) {
    for (xb, b) in x.chunks_exact(QK).zip(out) {
        let min = xb.iter().copied().fold(f32::MAX, f32::min);
        let max = xb.iter().copied().fold(f32::MIN, f32::max);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        let mut qh = 0u32;
        for j in 0..16 {
            let q0 = (((xb[j] - min) * id + 0.5) as u8).min(31);
            let q1 = (((xb[j + 16] - min) * id + 0.5) as u8).min(31);
            b.qs[j] = (q0 & 0xF) | ((q1 & 0xF) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b.qh = qh.to_le_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect()
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for x in [-127.5f32, -2.5, -0.5, -0.4999, 0.0, 0.5, 1.5, 2.5, 126.49, 127.0, 3.7, -3.7] {
            assert_eq!(nearest_int(x), x.round_ties_even() as i32, "{x}");
        }
    }

    #[test]
    fn q8_0_round_trip_is_within_half_a_step() {
        let x = ramp(64);
        let mut b = [BlockQ8_0 { d: 0, qs: [0; 32] }; 2];
        quantize_q8_0(&x, &mut b);
        let mut y = vec![0f32; 64];
        dequantize_q8_0(&b, &mut y);
        for (blk, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let step = f16_to_f32(b[blk].d);
            for (a, c) in xs.iter().zip(ys) {
                assert!((a - c).abs() <= step * 0.5 + 1e-3, "{a} vs {c}");
            }
        }
    }

    #[test]
    fn legacy_quantizers_round_trip_within_their_step() {
        let x = ramp(128);
        let mut y = vec![0f32; 128];

        let mut b40 = vec![BlockQ4_0 { d: 0, qs: [0; 16] }; 4];
        quantize_q4_0(&x, &mut b40);
        dequantize_q4_0(&b40, &mut y);
        let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 3.0 / 8.0, "q4_0 max error {err}");

        let mut b41 = vec![BlockQ4_1 { d: 0, m: 0, qs: [0; 16] }; 4];
        quantize_q4_1(&x, &mut b41);
        dequantize_q4_1(&b41, &mut y);
        let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 6.0 / 15.0, "q4_1 max error {err}");

        let mut b50 = vec![BlockQ5_0 { d: 0, qh: [0; 4], qs: [0; 16] }; 4];
        quantize_q5_0(&x, &mut b50);
        dequantize_q5_0(&b50, &mut y);
        let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 3.0 / 16.0, "q5_0 max error {err}");

        let mut b51 = vec![BlockQ5_1 { d: 0, m: 0, qh: [0; 4], qs: [0; 16] }; 4];
        quantize_q5_1(&x, &mut b51);
        dequantize_q5_1(&b51, &mut y);
        let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 6.0 / 31.0, "q5_1 max error {err}");
    }

    #[test]
    fn q8_activation_dot_matches_float_dot() {
        let x = ramp(512);
        let w: Vec<f32> = (0..512).map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0).collect();
        let mut wq = vec![BlockQ8_0 { d: 0, qs: [0; 32] }; 16];
        quantize_q8_0(&w, &mut wq);
        let mut wd = vec![0f32; 512];
        dequantize_q8_0(&wq, &mut wd);
        let exact: f32 = wd.iter().zip(&x).map(|(a, b)| a * b).sum();

        let mut xq = Q8Buf::new(Q8Kind::Blocks32, 512, 1);
        xq.quantize_row(0, &x);
        let got = vec_dot_q8_0(&wq, xq.row(0));
        // Quantizing x to 8 bits costs at most half a step (amax/254) per value.
        let magnitude: f32 = wd.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        assert!((got - exact).abs() < magnitude / 254.0, "{got} vs {exact}");
    }

    #[test]
    fn q8_k_maps_the_largest_value_to_minus_127() {
        let mut x = ramp(256);
        x[7] = -9.0;
        let mut xq = Q8Buf::new(Q8Kind::Blocks256, 256, 1);
        xq.quantize_row(0, &x);
        assert_eq!(xq.qs[7], -127); // iscale = -127/max: the extreme value always maps to -127
        let sum: i32 = xq.qs[..16].iter().map(|&q| q as i32).sum();
        assert_eq!(xq.bsums[0] as i32, sum);
        assert!((xq.d[0] - 9.0 / 127.0).abs() < 1e-7);
    }
}
