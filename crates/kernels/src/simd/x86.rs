//! x86-64 dot products. Each kernel body is written once over [`DotU8I8`], the one step that
//! differs between the two instruction sets we target:
//! - AVX2: `vpmaddubsw` (u8×i8 → i16 pairs) then `vpmaddwd` (i16 pairs → i32);
//! - AVX-512 VNNI: `vpdpbusd` (u8×i8 quadruples → i32) in one instruction.
//!
//! All weight values are made unsigned (Q4_0's `q−8` becomes `q` with `8·Σx` subtracted from the
//! activation block sums afterwards) so both paths multiply u8 weights by i8 activations. Q8_0's
//! signed weights use the sign trick: `|w| · (x·sign(w)) = w·x`.
//!
//! The bodies are `#[inline(always)]` and only ever inlined into the `#[target_feature]`
//! wrappers at the bottom, which the dispatcher hands out after checking the CPU.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::lowbit::{BlockIq4Nl, BlockIq4Xs, BlockQ2K, BlockQ3K, IQ4_LEVELS, iq4_xs_scale, q3_k_scales};
use crate::quants::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, Q8Row, QK, QK_K,
    as_blocks, scale_min_k4,
};

/// Integer dot product of 32 unsigned bytes with 32 signed bytes, accumulated into eight i32
/// lanes (lane k covers bytes 4k..4k+4), each 16-byte half scaled by its own factor.
trait DotU8I8 {
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i;
    unsafe fn dot_scaled(u: __m256i, s: __m256i, scale_lo: i16, scale_hi: i16) -> __m256i;
}

struct Avx2;
struct Vnni;

impl DotU8I8 for Avx2 {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
    #[inline(always)]
    unsafe fn dot_scaled(u: __m256i, s: __m256i, scale_lo: i16, scale_hi: i16) -> __m256i {
        let scales = _mm256_set_m128i(_mm_set1_epi16(scale_hi), _mm_set1_epi16(scale_lo));
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scales)
    }
}

impl DotU8I8 for Vnni {
    #[inline(always)]
    unsafe fn dot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }
    #[inline(always)]
    unsafe fn dot_scaled(u: __m256i, s: __m256i, scale_lo: i16, scale_hi: i16) -> __m256i {
        let scales = _mm256_set_m128i(_mm_set1_epi32(scale_hi as i32), _mm_set1_epi32(scale_lo as i32));
        _mm256_mullo_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s), scales)
    }
}

#[inline(always)]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    let x = _mm_add_ss(x, _mm_movehdup_ps(x));
    _mm_cvtss_f32(x)
}

#[inline(always)]
unsafe fn f16(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline(always)]
unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

/// 16 packed bytes → 32 values: low nibbles first, then high nibbles.
#[inline(always)]
unsafe fn nibbles_16(p: *const u8) -> __m256i {
    let bytes = _mm_loadu_si128(p.cast());
    let mask = _mm_set1_epi8(0xF);
    let lo = _mm_and_si128(bytes, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// The 32 bits of `qh` as 32 bytes holding 0x10 where the bit is set (Q5's fifth bit).
#[inline(always)]
unsafe fn fifth_bits(qh: [u8; 4]) -> __m256i {
    let bits = _mm256_set1_epi32(i32::from_le_bytes(qh));
    // Byte k of the result takes byte k/8 of qh, then tests bit k%8.
    let spread = _mm256_shuffle_epi8(
        bits,
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
    );
    let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Σ a·b over 32 signed bytes into eight i32 lanes, by the sign trick: |a| · (b·sign(a)).
#[inline(always)]
unsafe fn dot_signed<D: DotU8I8>(a: __m256i, b: __m256i) -> __m256i {
    D::dot(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
}

/// Q4_0 as ggml's `vec_dot_q4_0_q8_0`: signed values `q − 8`, per block
/// `acc = fma(d_w·d_x, f32(lane sums), acc)`, one horizontal sum at the end.
#[inline(always)]
unsafe fn q4_0<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    let blocks = as_blocks::<BlockQ4_0>(w);
    let mut acc = _mm256_setzero_ps();
    for (i, b) in blocks.iter().enumerate() {
        let q = _mm256_sub_epi8(nibbles_16(b.qs.as_ptr()), _mm256_set1_epi8(8));
        let xv = load256(x.qs.as_ptr().add(i * QK).cast());
        let scale = f16(b.d) * x.d[i];
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(dot_signed::<D>(q, xv)), acc);
    }
    hsum_ps(acc)
}

#[inline(always)]
unsafe fn q4_1<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    let blocks = as_blocks::<BlockQ4_1>(w);
    let (mut acc, mut mins) = (_mm256_setzero_ps(), 0f32);
    for (i, b) in blocks.iter().enumerate() {
        let q = nibbles_16(b.qs.as_ptr());
        let xv = load256(x.qs.as_ptr().add(i * QK).cast());
        let scale = f16(b.d) * x.d[i];
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(D::dot(q, xv)), _mm256_set1_ps(scale), acc);
        mins += f16(b.m) * x.s[i];
    }
    hsum_ps(acc) + mins
}

/// Q5_0 as ggml's `vec_dot_q5_0_q8_0`: signed values `q − 16`.
#[inline(always)]
unsafe fn q5_0<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    let blocks = as_blocks::<BlockQ5_0>(w);
    let mut acc = _mm256_setzero_ps();
    for (i, b) in blocks.iter().enumerate() {
        let q = _mm256_or_si256(nibbles_16(b.qs.as_ptr()), fifth_bits(b.qh));
        let q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        let xv = load256(x.qs.as_ptr().add(i * QK).cast());
        let scale = f16(b.d) * x.d[i];
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(dot_signed::<D>(q, xv)), acc);
    }
    hsum_ps(acc)
}

#[inline(always)]
unsafe fn q5_1<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    let blocks = as_blocks::<BlockQ5_1>(w);
    let (mut acc, mut mins) = (_mm256_setzero_ps(), 0f32);
    for (i, b) in blocks.iter().enumerate() {
        let q = _mm256_or_si256(nibbles_16(b.qs.as_ptr()), fifth_bits(b.qh));
        let xv = load256(x.qs.as_ptr().add(i * QK).cast());
        let scale = f16(b.d) * x.d[i];
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(D::dot(q, xv)), _mm256_set1_ps(scale), acc);
        mins += f16(b.m) * x.s[i];
    }
    hsum_ps(acc) + mins
}

#[inline(always)]
unsafe fn q8_0<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    let blocks = as_blocks::<BlockQ8_0>(w);
    let mut acc = _mm256_setzero_ps();
    for (i, b) in blocks.iter().enumerate() {
        let wv = load256(b.qs.as_ptr().cast());
        let xv = load256(x.qs.as_ptr().add(i * QK).cast());
        let dot = D::dot(_mm256_abs_epi8(wv), _mm256_sign_epi8(xv, wv));
        let scale = f16(b.d) * x.d[i];
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(scale), acc);
    }
    hsum_ps(acc)
}

/// Q4_K and Q5_K super-blocks: 4 chunks of 64 values, low nibbles then high nibbles, each
/// 32-value sub-block with its own 6-bit scale; minimums come from the activation sums.
/// Q4_K and Q5_K super-blocks: 4 chunks of 64 values, low nibbles then high nibbles, each
/// 32-value sub-block with its own 6-bit scale; minimums come from the activation sums.
#[inline(always)]
unsafe fn k4_block<D: DotU8I8>(
    qs: &[u8; 128],
    qh: Option<&[u8; 32]>,
    scales: &[u8; 12],
    xq: *const i8,
    isum: &mut __m256i,
) {
    for c in 0..4 {
        k4_chunk::<D>(qs, qh, scales, xq, c, isum);
    }
}

/// Chunk `c` (64 values, sub-blocks 2c and 2c+1) of a Q4_K / Q5_K super-block, scaled and added
/// into `isum`.
#[inline(always)]
unsafe fn k4_chunk<D: DotU8I8>(
    qs: &[u8; 128],
    qh: Option<&[u8; 32]>,
    scales: &[u8; 12],
    xq: *const i8,
    c: usize,
    isum: &mut __m256i,
) {
    let mask = _mm256_set1_epi8(0xF);
    let bytes = load256(qs.as_ptr().add(32 * c));
    let mut lo = _mm256_and_si256(bytes, mask);
    let mut hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
    if let Some(qh) = qh {
        // Bit 2c of qh[l] is the fifth bit of the low value, bit 2c+1 of the high one.
        let qh = load256(qh.as_ptr());
        let one = _mm256_set1_epi8(1);
        let hb_lo = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32)), one);
        let hb_hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32 + 1)), one);
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(hb_lo, 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(hb_hi, 4));
    }
    let (sc_lo, _) = scale_min_k4(2 * c, scales);
    let (sc_hi, _) = scale_min_k4(2 * c + 1, scales);
    let x_lo = load256(xq.add(64 * c).cast());
    let x_hi = load256(xq.add(64 * c + 32).cast());
    *isum = _mm256_add_epi32(*isum, D::dot_scaled(lo, x_lo, sc_lo as i16, sc_lo as i16));
    *isum = _mm256_add_epi32(*isum, D::dot_scaled(hi, x_hi, sc_hi as i16, sc_hi as i16));
}

#[inline(always)]
fn k4_mins(scales: &[u8; 12], x: &Q8Row<'_>, i: usize) -> i32 {
    (0..8)
        .map(|s| {
            let (_, m) = scale_min_k4(s, scales);
            m as i32 * (x.bsums[16 * i + 2 * s] as i32 + x.bsums[16 * i + 2 * s + 1] as i32)
        })
        .sum()
}

/// Horizontal sum of eight i32 lanes (exact).
#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0b01_00_11_10));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0b10_11_00_01));
    _mm_cvtsi128_si32(x)
}

/// Q4_K and Q5_K as ggml's repacked `gemv_q4_K_8x8` computes each output: per super-block the
/// whole integer sum, then `acc = fma(isum, d_w·d_x, acc)` and `acc_min = fma(imin,
/// dmin_w·d_x, acc_min)`; the result is `acc − acc_min`.
#[inline(always)]
unsafe fn k4_row<D: DotU8I8, B>(
    blocks: &[B],
    x: Q8Row<'_>,
    parts: impl Fn(&B) -> (&[u8; 128], Option<&[u8; 32]>, &[u8; 12], u16, u16),
) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (i, b) in blocks.iter().enumerate() {
        let (qs, qh, scales, d, dmin) = parts(b);
        let mut isum = _mm256_setzero_si256();
        k4_block::<D>(qs, qh, scales, x.qs.as_ptr().add(i * QK_K), &mut isum);
        let isum = hsum_epi32(isum);
        let imin = k4_mins(scales, &x, i);
        acc = (isum as f32).mul_add(f16(d) * x.d[i], acc);
        acc_min = (imin as f32).mul_add(f16(dmin) * x.d[i], acc_min);
    }
    acc - acc_min
}

/// Q4_K and Q5_K as ggml's repacked `gemm_q4_K_8x8` computes each output of a group of four
/// tokens: the two chains take one fused multiply-add per 64 values (two sub-blocks) rather than
/// one per super-block.
#[inline(always)]
unsafe fn k4_row_batched<D: DotU8I8, B>(
    blocks: &[B],
    x: Q8Row<'_>,
    parts: impl Fn(&B) -> (&[u8; 128], Option<&[u8; 32]>, &[u8; 12], u16, u16),
) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (i, b) in blocks.iter().enumerate() {
        let (qs, qh, scales, d, dmin) = parts(b);
        let (scale, min_scale) = (f16(d) * x.d[i], f16(dmin) * x.d[i]);
        let xq = x.qs.as_ptr().add(i * QK_K);
        for c in 0..4 {
            let mut isum = _mm256_setzero_si256();
            k4_chunk::<D>(qs, qh, scales, xq, c, &mut isum);
            let (_, m_lo) = scale_min_k4(2 * c, scales);
            let (_, m_hi) = scale_min_k4(2 * c + 1, scales);
            let bs = |k: usize| x.bsums[16 * i + k] as i32;
            let imin =
                m_lo as i32 * (bs(4 * c) + bs(4 * c + 1)) + m_hi as i32 * (bs(4 * c + 2) + bs(4 * c + 3));
            acc = (hsum_epi32(isum) as f32).mul_add(scale, acc);
            acc_min = (imin as f32).mul_add(min_scale, acc_min);
        }
    }
    acc - acc_min
}

#[inline(always)]
unsafe fn q4_k_batched<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    k4_row_batched::<D, BlockQ4K>(as_blocks(w), x, |b| (&b.qs, None, &b.scales, b.d, b.dmin))
}

#[inline(always)]
unsafe fn q5_k_batched<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    k4_row_batched::<D, BlockQ5K>(as_blocks(w), x, |b| (&b.qs, Some(&b.qh), &b.scales, b.d, b.dmin))
}

#[inline(always)]
unsafe fn q4_k<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    k4_row::<D, BlockQ4K>(as_blocks(w), x, |b| (&b.qs, None, &b.scales, b.d, b.dmin))
}

#[inline(always)]
unsafe fn q5_k<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    k4_row::<D, BlockQ5K>(as_blocks(w), x, |b| (&b.qs, Some(&b.qh), &b.scales, b.d, b.dmin))
}

/// Q6_K as ggml's `vec_dot_q6_K_q8_K`: per half of 128 values, four groups of 32 assembled from
/// `ql` nibbles and `qh` bit pairs, each 16 values with an 8-bit signed scale; per super-block
/// `acc = fma(d_x·d_w, f32(lane sums), acc)`, one horizontal sum at the end.
#[inline(always)]
unsafe fn q6_k<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    let blocks = as_blocks::<BlockQ6K>(w);
    let mut acc = _mm256_setzero_ps();
    for (i, b) in blocks.iter().enumerate() {
        let isum = q6_k_block::<D>(b, x, i);
        let d = x.d[i] * f16(b.d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
    }
    hsum_ps(acc)
}

/// The eight i32 lane sums of one Q6_K super-block, −32 offset included, laid out as ggml's.
#[inline(always)]
unsafe fn q6_k_block<D: DotU8I8>(b: &BlockQ6K, x: Q8Row<'_>, i: usize) -> __m256i {
    let mask4 = _mm256_set1_epi8(0xF);
    let mask2 = _mm256_set1_epi8(3);
    let xq = x.qs.as_ptr().add(i * QK_K);
    let mut isum = _mm256_setzero_si256();
    for half in 0..2 {
        let ql0 = load256(b.ql.as_ptr().add(64 * half));
        let ql1 = load256(b.ql.as_ptr().add(64 * half + 32));
        let qh = load256(b.qh.as_ptr().add(32 * half));
        let high = |shift: i32| {
            let s = _mm_cvtsi32_si128(shift);
            _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, s), mask2), 4)
        };
        let groups = [
            _mm256_or_si256(_mm256_and_si256(ql0, mask4), high(0)),
            _mm256_or_si256(_mm256_and_si256(ql1, mask4), high(2)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), mask4), high(4)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), mask4), high(6)),
        ];
        for (g, q) in groups.into_iter().enumerate() {
            let s = 8 * half + 2 * g; // scale index of the first 16 values of this group
            let xv = load256(xq.add(128 * half + 32 * g).cast());
            let dot = D::dot_scaled(q, xv, b.scales[s] as i16, b.scales[s + 1] as i16);
            isum = _mm256_add_epi32(isum, dot);
        }
    }
    // The −32 of every value, taken from the activation sums: lane k gets the part of the
    // 32-value group k (the bsums 2k, 2k+1 with their scales), as ggml distributes it.
    let bsums = _mm256_loadu_si256(x.bsums.as_ptr().add(16 * i).cast());
    let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.scales.as_ptr().cast()));
    _mm256_sub_epi32(isum, _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5))
}

/// Q6_K as ggml's tiled K-quant matmul computes each output for batches of eight or more
/// tokens: the super-block's whole integer sum, then `acc = fma(f32(isum) · d_w, d_x, acc)`.
#[inline(always)]
unsafe fn q6_k_tiled<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    let blocks = as_blocks::<BlockQ6K>(w);
    let mut acc = 0f32;
    for (i, b) in blocks.iter().enumerate() {
        let isum = hsum_epi32(q6_k_block::<D>(b, x, i));
        // GCC contracts ggml's `acc + (isum·d_w)·d_x` (written as vector intrinsics, which it
        // treats as plain arithmetic) into one fused multiply-add.
        acc = (isum as f32 * f16(b.d)).mul_add(x.d[i], acc);
    }
    acc
}

// ---------------------------------------------------------------------------------------------
// Float weights (f32 activations)
// ---------------------------------------------------------------------------------------------

/// Loads 8 weights of each float type as f32.
trait FloatLoad {
    const BYTES: usize;
    unsafe fn load8(p: *const u8) -> __m256;
    fn scalar(c: &[u8]) -> f32;
}
struct F32w;
struct F16w;
struct Bf16w;

impl FloatLoad for F32w {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p.cast())
    }
    fn scalar(c: &[u8]) -> f32 {
        f32::from_le_bytes([c[0], c[1], c[2], c[3]])
    }
}
impl FloatLoad for F16w {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
    fn scalar(c: &[u8]) -> f32 {
        half::f16::from_le_bytes([c[0], c[1]]).to_f32()
    }
}
impl FloatLoad for Bf16w {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
    }
    fn scalar(c: &[u8]) -> f32 {
        half::bf16::from_le_bytes([c[0], c[1]]).to_f32()
    }
}

#[inline(always)]
unsafe fn float_dot<L: FloatLoad>(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let j = i + 8 * k;
            *a = _mm256_fmadd_ps(L::load8(wp.add(j * L::BYTES)), _mm256_loadu_ps(xp.add(j)), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(L::load8(wp.add(i * L::BYTES)), _mm256_loadu_ps(xp.add(i)), acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut total = hsum_ps(sum);
    for j in i..n {
        total += L::scalar(&w[j * L::BYTES..]) * x[j];
    }
    total
}

// ---------------------------------------------------------------------------------------------
// The low-bit types (see `lowbit`): integer sums as the scalar reference forms them, then the
// same float steps per block, so every path gives the scalar reference's bits.
// ---------------------------------------------------------------------------------------------

/// The 32 values of Q2_K / Q3_K's `qs` for the 32 values `128·half + 32·s ..`: bits `2s, 2s+1`
/// of the half's 32 bytes.
#[inline(always)]
unsafe fn low2_32(qs_half: __m256i, s: usize) -> __m256i {
    _mm256_and_si256(_mm256_srl_epi16(qs_half, _mm_cvtsi32_si128(2 * s as i32)), _mm256_set1_epi8(3))
}

#[inline(always)]
unsafe fn q2_k<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    let blocks = as_blocks::<BlockQ2K>(w);
    let mut sum = 0f32;
    for (i, b) in blocks.iter().enumerate() {
        let xq = x.qs.as_ptr().add(i * QK_K);
        let mut isum = _mm256_setzero_si256();
        for half in 0..2 {
            let bytes = load256(b.qs.as_ptr().add(32 * half));
            for s in 0..4 {
                let j = 8 * half + 2 * s;
                let xv = load256(xq.add(128 * half + 32 * s).cast());
                let (lo, hi) = ((b.scales[j] & 0xF) as i16, (b.scales[j + 1] & 0xF) as i16);
                isum = _mm256_add_epi32(isum, D::dot_scaled(low2_32(bytes, s), xv, lo, hi));
            }
        }
        let mins: i32 = (0..16).map(|j| x.bsums[16 * i + j] as i32 * (b.scales[j] >> 4) as i32).sum();
        let (dall, dmin) = (x.d[i] * f16(b.d), x.d[i] * f16(b.dmin));
        sum += dall * hsum_epi32(isum) as f32 - dmin * mins as f32;
    }
    sum
}

/// Q3_K with its values made unsigned: `q + 4·hbit ∈ 0..8` is the value plus 4, so
/// `Σ s·v·x = Σ s·(q + 4·hbit)·x − 4·Σ s·bsum`.
#[inline(always)]
unsafe fn q3_k<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    let blocks = as_blocks::<BlockQ3K>(w);
    let mut sum = 0f32;
    for (i, b) in blocks.iter().enumerate() {
        let xq = x.qs.as_ptr().add(i * QK_K);
        let scales = q3_k_scales(&b.scales);
        let hmask = load256(b.hmask.as_ptr());
        let mut isum = _mm256_setzero_si256();
        for half in 0..2 {
            let bytes = load256(b.qs.as_ptr().add(32 * half));
            for s in 0..4 {
                let g = 4 * half + s;
                let hbit = _mm256_and_si256(
                    _mm256_srl_epi16(hmask, _mm_cvtsi32_si128(g as i32)),
                    _mm256_set1_epi8(1),
                );
                let q = _mm256_or_si256(low2_32(bytes, s), _mm256_slli_epi16(hbit, 2));
                let xv = load256(xq.add(32 * g).cast());
                isum = _mm256_add_epi32(
                    isum,
                    D::dot_scaled(q, xv, scales[2 * g] as i16, scales[2 * g + 1] as i16),
                );
            }
        }
        let offset: i32 = (0..16).map(|j| scales[j] * x.bsums[16 * i + j] as i32).sum();
        sum += f16(b.d) * x.d[i] * (hsum_epi32(isum) - 4 * offset) as f32;
    }
    sum
}

/// 16 bytes of nibble indices → their 32 IQ4 levels (low nibbles first), as signed bytes.
#[inline(always)]
unsafe fn iq4_levels(p: *const u8) -> __m256i {
    let table = _mm_loadu_si128(IQ4_LEVELS.as_ptr().cast());
    let table = _mm256_set_m128i(table, table);
    _mm256_shuffle_epi8(table, nibbles_16(p))
}

#[inline(always)]
unsafe fn iq4_nl<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    let blocks = as_blocks::<BlockIq4Nl>(w);
    let mut sum = 0f32;
    for (i, b) in blocks.iter().enumerate() {
        let xv = load256(x.qs.as_ptr().add(i * QK).cast());
        let dot = hsum_epi32(dot_signed::<D>(iq4_levels(b.qs.as_ptr()), xv));
        // Fused, as the scalar reference and the tiled kernel.
        sum = (f16(b.d) * x.d[i]).mul_add(dot as f32, sum);
    }
    sum
}

#[inline(always)]
unsafe fn iq4_xs<D: DotU8I8>(w: &[u8], x: Q8Row<'_>) -> f32 {
    let blocks = as_blocks::<BlockIq4Xs>(w);
    let mut sum = 0f32;
    for (i, b) in blocks.iter().enumerate() {
        let xq = x.qs.as_ptr().add(i * QK_K);
        let mut isum = _mm256_setzero_si256();
        for g in 0..8 {
            let levels = iq4_levels(b.qs.as_ptr().add(16 * g));
            let xv = load256(xq.add(32 * g).cast());
            let scale = iq4_xs_scale(b, g) as i16;
            let dot =
                D::dot_scaled(_mm256_sign_epi8(levels, levels), _mm256_sign_epi8(xv, levels), scale, scale);
            isum = _mm256_add_epi32(isum, dot);
        }
        // Fused, as the scalar reference and the tiled kernel.
        sum = (f16(b.d) * x.d[i]).mul_add(hsum_epi32(isum) as f32, sum);
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// Entry points, one per (instruction set, type). Callers: `dispatch`, after checking the CPU.
// ---------------------------------------------------------------------------------------------

macro_rules! entry_points {
    ($features:literal, $dot:ty, $($name:ident => $body:ident),* ; $($fname:ident => $load:ty),*) => {
        $(
            #[target_feature(enable = $features)]
            pub unsafe fn $name(w: &[u8], x: Q8Row<'_>) -> f32 {
                super::$body::<$dot>(w, x)
            }
        )*
        $(
            #[target_feature(enable = $features)]
            pub unsafe fn $fname(w: &[u8], x: &[f32]) -> f32 {
                super::float_dot::<$load>(w, x)
            }
        )*
    };
}

pub mod avx2 {
    use super::*;
    entry_points!("avx2,fma,f16c", Avx2,
        q4_0 => q4_0, q4_1 => q4_1, q5_0 => q5_0, q5_1 => q5_1, q8_0 => q8_0,
        q4_k => q4_k, q5_k => q5_k, q6_k => q6_k, q4_k_batched => q4_k_batched, q5_k_batched => q5_k_batched, q6_k_tiled => q6_k_tiled,
        q2_k => q2_k, q3_k => q3_k, iq4_nl => iq4_nl, iq4_xs => iq4_xs;
        f32 => F32w, f16 => F16w, bf16 => Bf16w);
}

pub mod avx512vnni {
    use super::*;
    entry_points!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", Vnni,
        q4_0 => q4_0, q4_1 => q4_1, q5_0 => q5_0, q5_1 => q5_1, q8_0 => q8_0,
        q4_k => q4_k, q5_k => q5_k, q6_k => q6_k, q4_k_batched => q4_k_batched, q5_k_batched => q5_k_batched, q6_k_tiled => q6_k_tiled,
        q2_k => q2_k, q3_k => q3_k, iq4_nl => iq4_nl, iq4_xs => iq4_xs;
        f32 => F32w, f16 => F16w, bf16 => Bf16w);
}

/// q·k for attention with f16 keys and f16-rounded queries, summed in exactly the order of
/// ggml's AVX-512 `ggml_vec_dot_f16` (four 16-lane accumulators over steps of 64, reduced
/// pairwise, then halves), so attention scores are bit-identical to llama.cpp's on AVX-512.
#[target_feature(enable = "avx512f,f16c,fma")]
pub unsafe fn dot_f16_ggml_avx512(k: &[u16], q: &[u16]) -> f32 {
    let n = k.len();
    let np = n - n % 64;
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i < np {
        for (j, a) in acc.iter_mut().enumerate() {
            let kv = _mm512_cvtph_ps(_mm256_loadu_si256(k.as_ptr().add(i + 16 * j).cast()));
            let qv = _mm512_cvtph_ps(_mm256_loadu_si256(q.as_ptr().add(i + 16 * j).cast()));
            *a = _mm512_fmadd_ps(kv, qv, *a);
        }
        i += 64;
    }
    acc[0] = _mm512_add_ps(acc[0], acc[2]);
    acc[1] = _mm512_add_ps(acc[1], acc[3]);
    acc[0] = _mm512_add_ps(acc[0], acc[1]);
    // _mm512_reduce_add_ps as GCC expands it: high half + low half, then 128-bit halves, then
    // lanes (0+2, 1+3), then the two.
    let lo = _mm512_castps512_ps256(acc[0]);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[0]), 1));
    let t3 = _mm256_add_ps(hi, lo);
    let t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
    let t8 = _mm_add_ps(t6, _mm_shuffle_ps(t6, t6, 0b01_00_11_10));
    let mut sum = (_mm_cvtss_f32(t8) + _mm_cvtss_f32(_mm_shuffle_ps(t8, t8, 1))) as f64;
    for j in np..n {
        sum += (half::f16::from_bits(k[j]).to_f32() * half::f16::from_bits(q[j]).to_f32()) as f64;
    }
    sum as f32
}

/// As [`dot_f16_ggml_avx512`], in the order of ggml's AVX2 build (four 8-lane accumulators over
/// steps of 32).
#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn dot_f16_ggml_avx2(k: &[u16], q: &[u16]) -> f32 {
    let n = k.len();
    let np = n - n % 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < np {
        for (j, a) in acc.iter_mut().enumerate() {
            let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i + 8 * j).cast()));
            let qv = _mm256_cvtph_ps(_mm_loadu_si128(q.as_ptr().add(i + 8 * j).cast()));
            *a = _mm256_fmadd_ps(kv, qv, *a);
        }
        i += 32;
    }
    acc[0] = _mm256_add_ps(acc[0], acc[2]);
    acc[1] = _mm256_add_ps(acc[1], acc[3]);
    acc[0] = _mm256_add_ps(acc[0], acc[1]);
    let t0 = _mm_add_ps(_mm256_castps256_ps128(acc[0]), _mm256_extractf128_ps(acc[0], 1));
    let t1 = _mm_hadd_ps(t0, t0);
    let mut sum = _mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64;
    for j in np..n {
        sum += (half::f16::from_bits(k[j]).to_f32() * half::f16::from_bits(q[j]).to_f32()) as f64;
    }
    sum as f32
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: silu(gate) · up with the approximate exp of `ops::exp_approx`, bit-identical to it
// ---------------------------------------------------------------------------------------------

use crate::ops::exp_approx as ea;

/// `e^x` for 16 lanes; AVX-512's `vscalefps` does the final `·2^n` in one rounding.
#[inline(always)]
unsafe fn exp_avx512(x: __m512) -> __m512 {
    let z = _mm512_fmadd_ps(x, _mm512_set1_ps(ea::INV_LN2), _mm512_set1_ps(ea::SHIFT));
    let n = _mm512_sub_ps(z, _mm512_set1_ps(ea::SHIFT));
    let b =
        _mm512_fnmadd_ps(n, _mm512_set1_ps(ea::LN2_LO), _mm512_fnmadd_ps(n, _mm512_set1_ps(ea::LN2_HI), x));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(
            _mm512_fmadd_ps(_mm512_set1_ps(ea::C0), b, _mm512_set1_ps(ea::C1)),
            u,
            _mm512_fmadd_ps(_mm512_set1_ps(ea::C2), b, _mm512_set1_ps(ea::C3)),
        ),
        u,
        _mm512_fmadd_ps(_mm512_set1_ps(ea::C4), b, _mm512_set1_ps(1.0)),
    );
    let res = _mm512_scalef_ps(j, n);
    let far = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
    if far == 0 {
        return res;
    }
    let non_positive = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
    let alt = _mm512_mask_blend_ps(non_positive, _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
    _mm512_mask_blend_ps(far, res, alt)
}

/// `2^e` for integer-valued lanes `e` in the normal exponent range.
#[inline(always)]
unsafe fn pow2_avx2(e: __m256i) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23))
}

#[inline(always)]
unsafe fn exp_avx2(x: __m256) -> __m256 {
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(ea::INV_LN2), _mm256_set1_ps(ea::SHIFT));
    let n = _mm256_sub_ps(z, _mm256_set1_ps(ea::SHIFT));
    let b =
        _mm256_fnmadd_ps(n, _mm256_set1_ps(ea::LN2_LO), _mm256_fnmadd_ps(n, _mm256_set1_ps(ea::LN2_HI), x));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_set1_ps(ea::C0), b, _mm256_set1_ps(ea::C1)),
            u,
            _mm256_fmadd_ps(_mm256_set1_ps(ea::C2), b, _mm256_set1_ps(ea::C3)),
        ),
        u,
        _mm256_fmadd_ps(_mm256_set1_ps(ea::C4), b, _mm256_set1_ps(1.0)),
    );
    // j·2^n as two exact power-of-two steps (see `scale_by_pow2`), |n| clamped to where the
    // result is decided by the special cases below anyway.
    let clamped = _mm256_min_ps(_mm256_max_ps(n, _mm256_set1_ps(-250.0)), _mm256_set1_ps(250.0));
    let ni = _mm256_cvtps_epi32(clamped);
    let half = _mm256_srai_epi32(ni, 1);
    let res = _mm256_mul_ps(_mm256_mul_ps(j, pow2_avx2(half)), pow2_avx2(_mm256_sub_epi32(ni, half)));
    let far = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_andnot_ps(_mm256_set1_ps(-0.0), n), _mm256_set1_ps(192.0));
    if _mm256_movemask_ps(far) == 0 {
        return res;
    }
    let non_positive = _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps());
    let alt = _mm256_blendv_ps(_mm256_set1_ps(f32::INFINITY), _mm256_setzero_ps(), non_positive);
    _mm256_blendv_ps(res, alt, far)
}

#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
pub unsafe fn swiglu_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = out.len();
    let mut i = 0;
    while i + 16 <= n {
        let g = _mm512_loadu_ps(gate.as_ptr().add(i));
        let e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
        let silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0), e));
        _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_mul_ps(silu, _mm512_loadu_ps(up.as_ptr().add(i))));
        i += 16;
    }
    crate::ops::swiglu_scalar(&gate[i..], &up[i..], &mut out[i..]);
}

/// `out[i] = e^((x[i] − shift) · scale)`, bit-identical to `ops::exp_shifted_scalar`.
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
pub unsafe fn exp_shifted_avx512(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    let n = out.len().min(x.len());
    let (s, k) = (_mm512_set1_ps(shift), _mm512_set1_ps(scale));
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x.as_ptr().add(i)), s), k);
        _mm512_storeu_ps(out.as_mut_ptr().add(i), exp_avx512(v));
        i += 16;
    }
    crate::ops::exp_shifted_scalar(&x[i..n], shift, scale, &mut out[i..n]);
}

/// `out[i] = e^((x[i] − shift) · scale)`, bit-identical to `ops::exp_shifted_scalar`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_shifted_avx2(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    let n = out.len().min(x.len());
    let (s, k) = (_mm256_set1_ps(shift), _mm256_set1_ps(scale));
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), s), k);
        _mm256_storeu_ps(out.as_mut_ptr().add(i), exp_avx2(v));
        i += 8;
    }
    crate::ops::exp_shifted_scalar(&x[i..n], shift, scale, &mut out[i..n]);
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn swiglu_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = out.len();
    let mut i = 0;
    while i + 8 <= n {
        let g = _mm256_loadu_ps(gate.as_ptr().add(i));
        let e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
        let silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(up.as_ptr().add(i))));
        i += 8;
    }
    crate::ops::swiglu_scalar(&gate[i..], &up[i..], &mut out[i..]);
}

// ---------------------------------------------------------------------------------------------
// f16 running sums for attention, bit-identical to `ops::mad_f16_scalar` / `ops::scale_f16`
// ---------------------------------------------------------------------------------------------

#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn mad_f16_avx2(acc: &mut [u16], v: &[u16], w: f32) {
    let n = acc.len();
    let wv = _mm256_set1_ps(w);
    let mut i = 0;
    while i + 8 <= n {
        let a = _mm256_cvtph_ps(_mm_loadu_si128(acc.as_ptr().add(i).cast()));
        let x = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i).cast()));
        let r = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_fmadd_ps(x, wv, a));
        _mm_storeu_si128(acc.as_mut_ptr().add(i).cast(), r);
        i += 8;
    }
    for j in i..n {
        let (a, x) = (half::f16::from_bits(acc[j]), half::f16::from_bits(v[j]));
        acc[j] = half::f16::from_f32(x.to_f32().mul_add(w, a.to_f32())).to_bits();
    }
}

#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn axpy_f16_avx2(w: f32, v: &[u16], acc: &mut [f32]) {
    let n = acc.len();
    let wv = _mm256_set1_ps(w);
    let mut i = 0;
    while i + 8 <= n {
        let x = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i).cast()));
        let a = _mm256_loadu_ps(acc.as_ptr().add(i));
        _mm256_storeu_ps(acc.as_mut_ptr().add(i), _mm256_fmadd_ps(x, wv, a));
        i += 8;
    }
    for j in i..n {
        acc[j] = half::f16::from_bits(v[j]).to_f32().mul_add(w, acc[j]);
    }
}

#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn scale_f16_avx2(acc: &mut [u16], scale: f32) {
    let n = acc.len();
    let s = _mm256_set1_ps(scale);
    let mut i = 0;
    while i + 8 <= n {
        let a = _mm256_cvtph_ps(_mm_loadu_si128(acc.as_ptr().add(i).cast()));
        let r = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(a, s));
        _mm_storeu_si128(acc.as_mut_ptr().add(i).cast(), r);
        i += 8;
    }
    for a in &mut acc[i..] {
        *a = half::f16::from_f32(half::f16::from_bits(*a).to_f32() * scale).to_bits();
    }
}

/// f16 → f32 for a whole row, sixteen values per instruction (exact; the tail one by one).
#[target_feature(enable = "avx512f,avx2,f16c")]
pub unsafe fn f16_to_f32_avx512(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n for both slices.
        unsafe {
            let h = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
        }
        i += 16;
    }
    for j in i..n {
        dst[j] = half::f16::from_bits(src[j]).to_f32();
    }
}

/// f32 → f16 for a whole row, sixteen values per instruction, rounded to nearest even as
/// `half::f16::from_f32` rounds (the tail one by one).
#[target_feature(enable = "avx512f,avx2,f16c")]
pub unsafe fn f32_to_f16_avx512(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 ≤ n for both slices.
        unsafe {
            let x = _mm512_loadu_ps(src.as_ptr().add(i));
            let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), h);
        }
        i += 16;
    }
    for j in i..n {
        dst[j] = half::f16::from_f32(src[j]).to_bits();
    }
}

/// ggml's `nearest_int` on 16 lanes: `x + 1.5·2²³`, its low mantissa bits minus `2²²` (the
/// scalar `quants::nearest_int` bit for bit, NaNs and infinities included).
#[inline(always)]
unsafe fn nearest_int16(x: __m512) -> __m512i {
    let bits = _mm512_castps_si512(_mm512_add_ps(x, _mm512_set1_ps(12582912.0)));
    _mm512_sub_epi32(_mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff)), _mm512_set1_epi32(0x0040_0000))
}

/// The largest magnitude of 16 lanes, NaNs ignored (`vmaxps` keeps its second operand when
/// the first is NaN, as `f32::max` keeps the non-NaN one).
#[inline(always)]
unsafe fn amax16(x: __m512, acc: __m512) -> __m512 {
    _mm512_max_ps(_mm512_abs_ps(x), acc)
}

/// f32 → f16 → f32, rounding to nearest even (the scales ggml stores as f16).
#[inline(always)]
unsafe fn round_to_f16(x: f32) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))))
}

/// [`crate::quants::quantize_q8`] for AVX-512: the scalar reference's steps, 16 values at a
/// time (every step is exact or elementwise, so the bits are the reference's).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
pub unsafe fn quantize_q8_avx512(kind: crate::quants::Q8Kind, x: &[f32], out: crate::quants::Q8RowMut<'_>) {
    use crate::quants::Q8Kind;
    match kind {
        Q8Kind::Blocks32 => {
            assert!(x.len().is_multiple_of(QK) && out.qs.len() >= x.len());
            for b in 0..x.len() / QK {
                let p = x.as_ptr().add(b * QK);
                let (lo, hi) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
                let amax = _mm512_reduce_max_ps(amax16(hi, amax16(lo, _mm512_setzero_ps())));
                let d = amax / 127.0;
                let id = _mm512_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
                let q_lo = _mm512_cvtepi32_epi8(nearest_int16(_mm512_mul_ps(lo, id)));
                let q_hi = _mm512_cvtepi32_epi8(nearest_int16(_mm512_mul_ps(hi, id)));
                _mm_storeu_si128(out.qs.as_mut_ptr().add(b * QK).cast(), q_lo);
                _mm_storeu_si128(out.qs.as_mut_ptr().add(b * QK + 16).cast(), q_hi);
                let sum_lo = _mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(q_lo)) as i16;
                let sum_hi = _mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(q_hi)) as i16;
                out.d[b] = round_to_f16(d);
                out.s[b] = round_to_f16(d * (sum_lo as i32 + sum_hi as i32) as f32);
                out.bsums[2 * b] = sum_lo;
                out.bsums[2 * b + 1] = sum_hi;
            }
        }
        Q8Kind::Blocks256 => {
            assert!(x.len().is_multiple_of(QK_K) && out.qs.len() >= x.len());
            for b in 0..x.len() / QK_K {
                let p = x.as_ptr().add(b * QK_K);
                let load = |j: usize| _mm512_loadu_ps(p.add(16 * j));
                let mut acc = _mm512_setzero_ps();
                for j in 0..16 {
                    acc = amax16(load(j), acc);
                }
                let amax = _mm512_reduce_max_ps(acc);
                // The first value of that magnitude, with its sign (as the reference's scan).
                let mut max = 0.0;
                if amax != 0.0 {
                    for j in 0..16 {
                        let hits =
                            _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(load(j)), _mm512_set1_ps(amax));
                        if hits != 0 {
                            max = *p.add(16 * j + hits.trailing_zeros() as usize);
                            break;
                        }
                    }
                }
                let qs = out.qs.as_mut_ptr().add(b * QK_K);
                if amax == 0.0 || max == 0.0 {
                    out.d[b] = 0.0;
                    std::ptr::write_bytes(qs, 0, QK_K);
                    out.bsums[16 * b..16 * b + 16].fill(0);
                    continue;
                }
                let iscale = -127.0 / max;
                let scale = _mm512_set1_ps(iscale);
                for j in 0..16 {
                    let q = _mm512_min_epi32(
                        nearest_int16(_mm512_mul_ps(scale, load(j))),
                        _mm512_set1_epi32(127),
                    );
                    let q8 = _mm512_cvtepi32_epi8(q);
                    _mm_storeu_si128(qs.add(16 * j).cast(), q8);
                    out.bsums[16 * b + j] = _mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(q8)) as i16;
                }
                out.d[b] = 1.0 / iscale;
            }
        }
    }
}
