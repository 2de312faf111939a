//! Tiled kernels over packed groups (see `packed.rs`) for AVX-512 VNNI: 16 rows, one per 32-bit
//! lane, times a few tokens per call. A `vpdpbusd` multiplies four weights of every row by four
//! activations broadcast to all lanes, so a group's weights are unpacked once per block and then
//! serve every token of the call.
//!
//! Two kinds of kernel:
//! - *exact* ones form each output's float sums exactly as the single-row kernels (and ggml) do:
//!   the legacy types keep ggml's eight lanes of partial sums per row (one register per lane
//!   here), Q4_K its per-super-block or per-64-value chains, Q6_K its per-super-block chain or its
//!   eight lanes. Integer sums are exact in any order, so only the float steps are mirrored.
//! - *fast* ones (legacy types, for large batches) keep one chain per row and token: one
//!   conversion and one fused multiply-add per block instead of eight. Their results differ from
//!   llama.cpp's in the last bits only.
//!
//! Each kernel's signature: `(group bytes, blocks per row, tokens, out)`, `out[t][r]` for row `r`
//! of the group and token `t`; the token count is the const parameter `T`.

#![allow(unsafe_op_in_unsafe_fn)]
// Token and lane indices address several arrays of registers in step.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::packed::{GROUP, legacy_offsets};
use crate::quants::Q8Row;

pub const Q4_0: u8 = 0;
pub const Q4_1: u8 = 1;
pub const Q5_0: u8 = 2;
pub const Q5_1: u8 = 3;
pub const Q8_0: u8 = 4;
pub const IQ4_NL: u8 = 5;

/// IQ4_NL's levels plus 128 (as the unsigned operand of the int8 dot products), one copy per
/// 128-bit lane for the byte shuffle.
#[inline(always)]
unsafe fn iq4_nl_table() -> __m512i {
    let levels = crate::lowbit::IQ4_LEVELS.map(|l| (l as i16 + 128) as u8);
    _mm512_broadcast_i32x4(_mm_loadu_si128(levels.as_ptr().cast()))
}

const fn has_min(ty: u8) -> bool {
    ty == Q4_1 || ty == Q5_1
}
const fn has_qh(ty: u8) -> bool {
    ty == Q5_0 || ty == Q5_1
}
/// log2 of the offset the stored unsigned weights carry (q − 8, q − 16, w + 128), 0 for none.
const fn offset_shift(ty: u8) -> u32 {
    match ty {
        Q4_0 => 3,
        Q5_0 => 4,
        Q8_0 | IQ4_NL => 7,
        _ => 0,
    }
}
const fn block_bytes(ty: u8) -> usize {
    let (_, _, qs) = legacy_offsets(has_min(ty), has_qh(ty));
    qs + if ty == Q8_0 { 512 } else { 256 }
}

/// Four activation bytes at `at`, in every lane.
#[inline(always)]
unsafe fn bcast_x(x: &Q8Row<'_>, at: usize) -> __m512i {
    debug_assert!(at + 4 <= x.qs.len());
    _mm512_set1_epi32((x.qs.as_ptr().add(at) as *const i32).read_unaligned())
}

/// Sixteen f16 values as f32.
#[inline(always)]
unsafe fn load_f16x16(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
}

#[inline(always)]
unsafe fn load512(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p.cast())
}

/// Sixteen bytes widened to i32 lanes: unsigned or signed.
#[inline(always)]
unsafe fn u8x16(p: *const u8) -> __m512i {
    _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()))
}
#[inline(always)]
unsafe fn i8x16(p: *const u8) -> __m512i {
    _mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))
}

#[inline(always)]
unsafe fn store(out: &mut [f32; GROUP], v: __m512) {
    _mm512_storeu_ps(out.as_mut_ptr(), v);
}

/// ggml's horizontal sum of eight lanes (`(l0+l4 + l2+l6) + (l1+l5 + l3+l7)`), for 16 rows at once.
#[inline(always)]
unsafe fn hsum_lanes(l: [__m512; 8]) -> __m512 {
    let s: [__m512; 4] = std::array::from_fn(|k| _mm512_add_ps(l[k], l[k + 4]));
    _mm512_add_ps(_mm512_add_ps(s[0], s[2]), _mm512_add_ps(s[1], s[3]))
}

/// The weights of packed step `ps` of a legacy block as unsigned bytes: the value steps `ps` and
/// `ps + 4` for the 4-bit types (low and high nibbles), one value step for Q8_0.
#[inline(always)]
unsafe fn legacy_step<const TY: u8>(base: *const u8, ps: usize) -> (__m512i, __m512i) {
    let (_, qh_at, qs_at) = legacy_offsets(has_min(TY), has_qh(TY));
    let raw = load512(base.add(qs_at + 64 * ps));
    if TY == Q8_0 {
        return (raw, raw);
    }
    let nib = _mm512_set1_epi8(0xF);
    let mut lo = _mm512_and_si512(raw, nib);
    let mut hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nib);
    if TY == IQ4_NL {
        // Each nibble picks its level (+ 128) within its 128-bit lane.
        let table = iq4_nl_table();
        return (_mm512_shuffle_epi8(table, lo), _mm512_shuffle_epi8(table, hi));
    }
    if has_qh(TY) {
        let fifth = _mm512_set1_epi8(0x10);
        let mask = |s: usize| (base.add(qh_at + 8 * s) as *const u64).read_unaligned();
        lo = _mm512_mask_add_epi8(lo, mask(ps), lo, fifth);
        hi = _mm512_mask_add_epi8(hi, mask(ps + 4), hi, fifth);
    }
    (lo, hi)
}

/// Legacy types, exact: per row and token eight float lanes, lane `l` taking
/// `fma(d_w·d_x, f32(Σ of values 4l..4l+4), lane)` per block, ggml's horizontal sum at the end
/// (plus `Σ m_w·s_x` for the types with a minimum).
#[inline(always)]
pub unsafe fn legacy_exact<const TY: u8, const T: usize>(
    group: &[u8],
    n_blocks: usize,
    xs: &[Q8Row<'_>],
    out: &mut [[f32; GROUP]],
) {
    debug_assert!(xs.len() == T && out.len() >= T && group.len() >= n_blocks * block_bytes(TY));
    let (m_at, _, _) = legacy_offsets(has_min(TY), has_qh(TY));
    let shift = _mm_cvtsi32_si128(offset_shift(TY) as i32);
    let mut lanes = [[_mm512_setzero_ps(); 8]; T];
    let mut mins = [_mm512_setzero_ps(); T];
    for b in 0..n_blocks {
        let base = group.as_ptr().add(b * block_bytes(TY));
        prefetch_ahead(base, block_bytes(TY));
        let d = load_f16x16(base);
        let mut scale = [_mm512_setzero_ps(); T];
        // The offset of each value step (4 values), negated: the integer sums start from it.
        let mut start = [[0i32; 8]; T];
        for t in 0..T {
            scale[t] = _mm512_mul_ps(d, _mm512_set1_ps(*xs[t].d.get_unchecked(b)));
            if has_min(TY) {
                let m = load_f16x16(base.add(m_at));
                mins[t] = _mm512_add_ps(mins[t], _mm512_mul_ps(m, _mm512_set1_ps(*xs[t].s.get_unchecked(b))));
            }
            if offset_shift(TY) != 0 {
                let x = _mm256_loadu_si256(xs[t].qs.as_ptr().add(32 * b).cast());
                let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), x);
                let neg = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_sll_epi32(sums, shift));
                _mm256_storeu_si256(start[t].as_mut_ptr().cast(), neg);
            }
        }
        // One value step (4 values of the 16 rows) into lane `vs` of every token.
        macro_rules! step {
            ($vs:expr, $q:expr) => {
                for t in 0..T {
                    let x = bcast_x(&xs[t], 32 * b + 4 * $vs);
                    let isum = _mm512_dpbusd_epi32(_mm512_set1_epi32(start[t][$vs]), $q, x);
                    lanes[t][$vs] = _mm512_fmadd_ps(scale[t], _mm512_cvtepi32_ps(isum), lanes[t][$vs]);
                }
            };
        }
        if TY == Q8_0 {
            for vs in 0..8 {
                step!(vs, legacy_step::<TY>(base, vs).0);
            }
        } else {
            for ps in 0..4 {
                let (lo, hi) = legacy_step::<TY>(base, ps);
                step!(ps, lo);
                step!(ps + 4, hi);
            }
        }
    }
    for t in 0..T {
        let mut sum = hsum_lanes(lanes[t]);
        if has_min(TY) {
            sum = _mm512_add_ps(sum, mins[t]);
        }
        store(&mut out[t], sum);
    }
}

/// Blocks ahead that [`prefetch_ahead`] asks for.
const PREFETCH_BLOCKS: usize = 6;

/// Asks for the cache lines of the block `PREFETCH_BLOCKS` blocks after the one at `base` (the
/// next group follows in memory; a hint past the end of the weights is harmless). Every kernel
/// asks, for any number of tokens: the hardware prefetcher alone fell behind both with several
/// tokens (arithmetic per weight byte) and with one (decoding Qwen2.5-0.5B IQ4_NL read weights
/// at 24 GB/s without these hints, 34 GB/s with them: the DRAM roof of two cores here).
#[inline(always)]
unsafe fn prefetch_ahead(base: *const u8, block_bytes: usize) {
    let ahead = base.wrapping_add(PREFETCH_BLOCKS * block_bytes);
    let mut at = 0;
    while at < block_bytes {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(at).cast());
        at += 64;
    }
}

/// Legacy types, fast: per row and token one chain, `fma(d_w·d_x, f32(block sum), acc)` per
/// block, with `m_w·s_x` folded into the same chain.
#[inline(always)]
pub unsafe fn legacy_fast<const TY: u8, const T: usize>(
    group: &[u8],
    n_blocks: usize,
    xs: &[Q8Row<'_>],
    out: &mut [[f32; GROUP]],
) {
    debug_assert!(xs.len() == T && out.len() >= T && group.len() >= n_blocks * block_bytes(TY));
    let (m_at, _, _) = legacy_offsets(has_min(TY), has_qh(TY));
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..n_blocks {
        let base = group.as_ptr().add(b * block_bytes(TY));
        prefetch_ahead(base, block_bytes(TY));
        let mut isum = [_mm512_setzero_si512(); T];
        if offset_shift(TY) != 0 {
            for t in 0..T {
                let bs = &xs[t].bsums;
                let sum = *bs.get_unchecked(2 * b) as i32 + *bs.get_unchecked(2 * b + 1) as i32;
                isum[t] = _mm512_set1_epi32(-(sum << offset_shift(TY)));
            }
        }
        if TY == Q8_0 {
            for vs in 0..8 {
                let q = legacy_step::<TY>(base, vs).0;
                for t in 0..T {
                    isum[t] = _mm512_dpbusd_epi32(isum[t], q, bcast_x(&xs[t], 32 * b + 4 * vs));
                }
            }
        } else {
            for ps in 0..4 {
                let (lo, hi) = legacy_step::<TY>(base, ps);
                for t in 0..T {
                    isum[t] = _mm512_dpbusd_epi32(isum[t], lo, bcast_x(&xs[t], 32 * b + 4 * ps));
                    isum[t] = _mm512_dpbusd_epi32(isum[t], hi, bcast_x(&xs[t], 32 * b + 16 + 4 * ps));
                }
            }
        }
        let d = load_f16x16(base);
        for t in 0..T {
            let scale = _mm512_mul_ps(d, _mm512_set1_ps(*xs[t].d.get_unchecked(b)));
            acc[t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum[t]), acc[t]);
            if has_min(TY) {
                let m = load_f16x16(base.add(m_at));
                acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(*xs[t].s.get_unchecked(b)), acc[t]);
            }
        }
    }
    for t in 0..T {
        store(&mut out[t], acc[t]);
    }
}

const Q2K_BYTES: usize = 32 + 32 + 256 + 1024;

/// Q2_K against Q8_K activations, one order for exact and fast (the single-row kernel's): per
/// super-block `Σ_j s_j·Σ q·x` and `Σ_j m_j·bsum_j` in integers, then
/// `acc + ((d_w·d_x)·isum − (dmin_w·d_x)·msum)` with separate roundings, as that kernel.
#[inline(always)]
pub unsafe fn q2_k<const T: usize>(
    group: &[u8],
    n_blocks: usize,
    xs: &[Q8Row<'_>],
    out: &mut [[f32; GROUP]],
) {
    debug_assert!(xs.len() == T && out.len() >= T && group.len() >= n_blocks * Q2K_BYTES);
    let (scales_at, qs_at) = (64, 64 + 256);
    let two_bits = _mm512_set1_epi8(3);
    let low_nibble = _mm512_set1_epi32(0xF);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..n_blocks {
        let base = group.as_ptr().add(b * Q2K_BYTES);
        prefetch_ahead(base, Q2K_BYTES);
        let mut isum = [_mm512_setzero_si512(); T];
        let mut msum = [_mm512_setzero_si512(); T];
        for j in 0..16 {
            let packed_scales = u8x16(base.add(scales_at + 16 * j));
            let scale = _mm512_and_si512(packed_scales, low_nibble);
            let min = _mm512_srli_epi32(packed_scales, 4);
            let raw = load512(base.add(qs_at + 64 * j));
            let mut gsum = [_mm512_setzero_si512(); T];
            for c in 0..4 {
                // A 16-bit shift moves no bit of a byte's low pair across bytes for shifts < 8.
                let q = _mm512_and_si512(_mm512_srl_epi16(raw, _mm_cvtsi32_si128(2 * c as i32)), two_bits);
                for t in 0..T {
                    gsum[t] = _mm512_dpbusd_epi32(gsum[t], q, bcast_x(&xs[t], 256 * b + 16 * j + 4 * c));
                }
            }
            for t in 0..T {
                isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(gsum[t], scale));
                let bsum = _mm512_set1_epi32(*xs[t].bsums.get_unchecked(16 * b + j) as i32);
                msum[t] = _mm512_add_epi32(msum[t], _mm512_mullo_epi32(min, bsum));
            }
        }
        let (d, dmin) = (load_f16x16(base), load_f16x16(base.add(32)));
        for t in 0..T {
            let xd = _mm512_set1_ps(*xs[t].d.get_unchecked(b));
            let main = _mm512_mul_ps(_mm512_mul_ps(xd, d), _mm512_cvtepi32_ps(isum[t]));
            let mins = _mm512_mul_ps(_mm512_mul_ps(xd, dmin), _mm512_cvtepi32_ps(msum[t]));
            acc[t] = _mm512_add_ps(acc[t], _mm512_sub_ps(main, mins));
        }
    }
    for t in 0..T {
        store(&mut out[t], acc[t]);
    }
}

const Q3K_BYTES: usize = 32 + 256 + 1024 + 512;

/// Q3_K against Q8_K activations, one order for exact and fast (the single-row kernel's): the
/// values plus 4 as unsigned bytes, each sub-block's sum started at −4·bsum, times its scale;
/// then `acc + (d_w·d_x)·isum` with separate roundings, as that kernel.
#[inline(always)]
pub unsafe fn q3_k<const T: usize>(
    group: &[u8],
    n_blocks: usize,
    xs: &[Q8Row<'_>],
    out: &mut [[f32; GROUP]],
) {
    debug_assert!(xs.len() == T && out.len() >= T && group.len() >= n_blocks * Q3K_BYTES);
    let (scales_at, qs_at, high_at) = (32, 32 + 256, 32 + 256 + 1024);
    let two_bits = _mm512_set1_epi8(3);
    let four = _mm512_set1_epi8(4);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..n_blocks {
        let base = group.as_ptr().add(b * Q3K_BYTES);
        prefetch_ahead(base, Q3K_BYTES);
        let mut isum = [_mm512_setzero_si512(); T];
        for j in 0..16 {
            let scale = i8x16(base.add(scales_at + 16 * j));
            let raw = load512(base.add(qs_at + 64 * j));
            let mut gsum = [_mm512_setzero_si512(); T];
            for t in 0..T {
                gsum[t] = _mm512_set1_epi32(-4 * *xs[t].bsums.get_unchecked(16 * b + j) as i32);
            }
            for c in 0..4 {
                let low = _mm512_and_si512(_mm512_srl_epi16(raw, _mm_cvtsi32_si128(2 * c as i32)), two_bits);
                let high = (base.add(high_at + 8 * (4 * j + c)) as *const u64).read_unaligned();
                let q = _mm512_mask_add_epi8(low, high, low, four);
                for t in 0..T {
                    gsum[t] = _mm512_dpbusd_epi32(gsum[t], q, bcast_x(&xs[t], 256 * b + 16 * j + 4 * c));
                }
            }
            for t in 0..T {
                isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(gsum[t], scale));
            }
        }
        let d = load_f16x16(base);
        for t in 0..T {
            let s = _mm512_mul_ps(d, _mm512_set1_ps(*xs[t].d.get_unchecked(b)));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(s, _mm512_cvtepi32_ps(isum[t])));
        }
    }
    for t in 0..T {
        store(&mut out[t], acc[t]);
    }
}

const IQ4XS_BYTES: usize = 32 + 128 + 2048;

/// IQ4_XS against Q8_K activations, one order for exact and fast (the single-row kernel's): per
/// group of 32, the levels' integer dot product times the group's scale, summed over the
/// super-block, then one fused multiply-add by `d_w·d_x` per super-block.
#[inline(always)]
pub unsafe fn iq4_xs<const T: usize>(
    group: &[u8],
    n_blocks: usize,
    xs: &[Q8Row<'_>],
    out: &mut [[f32; GROUP]],
) {
    debug_assert!(xs.len() == T && out.len() >= T && group.len() >= n_blocks * IQ4XS_BYTES);
    let (scales_at, qs_at) = (32, 32 + 128);
    let table = iq4_nl_table();
    let nib = _mm512_set1_epi8(0xF);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..n_blocks {
        let base = group.as_ptr().add(b * IQ4XS_BYTES);
        prefetch_ahead(base, IQ4XS_BYTES);
        let mut isum = [_mm512_setzero_si512(); T];
        for g in 0..8 {
            let scale = i8x16(base.add(scales_at + 16 * g));
            // The levels are stored + 128: start each group's sum from −128·Σx.
            let mut gsum = [_mm512_setzero_si512(); T];
            for t in 0..T {
                let bs = &xs[t].bsums;
                let sum =
                    *bs.get_unchecked(16 * b + 2 * g) as i32 + *bs.get_unchecked(16 * b + 2 * g + 1) as i32;
                gsum[t] = _mm512_set1_epi32(-(sum << 7));
            }
            for ps in 0..4 {
                let raw = load512(base.add(qs_at + 256 * g + 64 * ps));
                let lo = _mm512_shuffle_epi8(table, _mm512_and_si512(raw, nib));
                let hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(raw, 4), nib));
                let at = 256 * b + 32 * g + 4 * ps;
                for t in 0..T {
                    gsum[t] = _mm512_dpbusd_epi32(gsum[t], lo, bcast_x(&xs[t], at));
                    gsum[t] = _mm512_dpbusd_epi32(gsum[t], hi, bcast_x(&xs[t], at + 16));
                }
            }
            for t in 0..T {
                isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(gsum[t], scale));
            }
        }
        let d = load_f16x16(base);
        for t in 0..T {
            let s = _mm512_mul_ps(d, _mm512_set1_ps(*xs[t].d.get_unchecked(b)));
            acc[t] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(isum[t]), acc[t]);
        }
    }
    for t in 0..T {
        store(&mut out[t], acc[t]);
    }
}

const Q4K_BYTES: usize = 32 + 32 + 128 + 128 + 2048;
const Q5K_BYTES: usize = Q4K_BYTES + 512;
const Q6K_BYTES: usize = 32 + 256 + 2048 + 1024;

/// Q4_K (and Q5_K: `FIFTH`, its fifth bits added to the nibbles), exact. `BATCHED`: ggml's
/// repacked GEMM (four tokens), one fused multiply-add per 64 values on each chain; otherwise
/// its GEMV, one per super-block. Per token the result is `acc − acc_min`, `acc` gathering
/// `isum·(d_w·d_x)` and `acc_min` gathering `imin·(dmin_w·d_x)`.
#[inline(always)]
pub unsafe fn q4_k<const T: usize, const BATCHED: bool, const FIFTH: bool>(
    group: &[u8],
    n_blocks: usize,
    xs: &[Q8Row<'_>],
    out: &mut [[f32; GROUP]],
) {
    let block_bytes = if FIFTH { Q5K_BYTES } else { Q4K_BYTES };
    debug_assert!(xs.len() == T && out.len() >= T && group.len() >= n_blocks * block_bytes);
    let nib = _mm512_set1_epi8(0xF);
    let sixteen = _mm512_set1_epi8(16);
    let (mut acc, mut acc_min) = ([_mm512_setzero_ps(); T], [_mm512_setzero_ps(); T]);
    for b in 0..n_blocks {
        let base = group.as_ptr().add(b * block_bytes);
        prefetch_ahead(base, block_bytes);
        let fifth = |step: usize, half: usize| {
            (base.add(Q4K_BYTES + 8 * (2 * step + half)) as *const u64).read_unaligned()
        };
        let (d, dmin) = (load_f16x16(base), load_f16x16(base.add(32)));
        let (scales, mins, qs) = (base.add(64), base.add(64 + 128), base.add(64 + 256));
        // Whole super-block sums (GEMV): integers, and the minimums' part, exact in f32 (below 2²⁴).
        let mut isum = [_mm512_setzero_si512(); T];
        let mut imin = [_mm512_setzero_ps(); T];
        for c in 0..4 {
            let (mut lo_sum, mut hi_sum) = ([_mm512_setzero_si512(); T], [_mm512_setzero_si512(); T]);
            for s in 0..8 {
                let raw = load512(qs.add(64 * (8 * c + s)));
                let mut lo = _mm512_and_si512(raw, nib);
                let mut hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nib);
                if FIFTH {
                    lo = _mm512_mask_add_epi8(lo, fifth(8 * c + s, 0), lo, sixteen);
                    hi = _mm512_mask_add_epi8(hi, fifth(8 * c + s, 1), hi, sixteen);
                }
                for t in 0..T {
                    let at = 256 * b + 64 * c + 4 * s;
                    lo_sum[t] = _mm512_dpbusd_epi32(lo_sum[t], lo, bcast_x(&xs[t], at));
                    hi_sum[t] = _mm512_dpbusd_epi32(hi_sum[t], hi, bcast_x(&xs[t], at + 32));
                }
            }
            let (sc_lo, sc_hi) = (u8x16(scales.add(16 * 2 * c)), u8x16(scales.add(16 * (2 * c + 1))));
            let m_lo = _mm512_cvtepi32_ps(u8x16(mins.add(16 * 2 * c)));
            let m_hi = _mm512_cvtepi32_ps(u8x16(mins.add(16 * (2 * c + 1))));
            for t in 0..T {
                let chunk = _mm512_add_epi32(
                    _mm512_mullo_epi32(lo_sum[t], sc_lo),
                    _mm512_mullo_epi32(hi_sum[t], sc_hi),
                );
                let bs = |k: usize| *xs[t].bsums.get_unchecked(16 * b + k) as i32;
                let (bs_lo, bs_hi) =
                    ((bs(4 * c) + bs(4 * c + 1)) as f32, (bs(4 * c + 2) + bs(4 * c + 3)) as f32);
                let chunk_min =
                    _mm512_fmadd_ps(m_lo, _mm512_set1_ps(bs_lo), _mm512_mul_ps(m_hi, _mm512_set1_ps(bs_hi)));
                if BATCHED {
                    let dx = _mm512_set1_ps(*xs[t].d.get_unchecked(b));
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(chunk), _mm512_mul_ps(d, dx), acc[t]);
                    acc_min[t] = _mm512_fmadd_ps(chunk_min, _mm512_mul_ps(dmin, dx), acc_min[t]);
                } else {
                    isum[t] = _mm512_add_epi32(isum[t], chunk);
                    imin[t] = _mm512_add_ps(imin[t], chunk_min);
                }
            }
        }
        if !BATCHED {
            for t in 0..T {
                let dx = _mm512_set1_ps(*xs[t].d.get_unchecked(b));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(d, dx), acc[t]);
                acc_min[t] = _mm512_fmadd_ps(imin[t], _mm512_mul_ps(dmin, dx), acc_min[t]);
            }
        }
    }
    for t in 0..T {
        store(&mut out[t], _mm512_sub_ps(acc[t], acc_min[t]));
    }
}

/// The four value vectors of Q6_K high step `i`: positions `64q + 4i..` for `q` in 0..4, as
/// unsigned 6-bit values.
#[inline(always)]
unsafe fn q6_k_step(base: *const u8, i: usize) -> [__m512i; 4] {
    let step = base.add(32 + 256 + 192 * i);
    let (nib, top) = (_mm512_set1_epi8(0xF), _mm512_set1_epi8(0x30));
    let (l0, l1, high) = (load512(step), load512(step.add(64)), load512(step.add(128)));
    // 16-bit shifts move bits across bytes, but only into positions the masks clear.
    let join = |low: __m512i, high_bits: __m512i| {
        _mm512_or_si512(_mm512_and_si512(low, nib), _mm512_and_si512(high_bits, top))
    };
    [
        join(l0, _mm512_slli_epi16(high, 4)),
        join(l1, _mm512_slli_epi16(high, 2)),
        join(_mm512_srli_epi16(l0, 4), high),
        join(_mm512_srli_epi16(l1, 4), _mm512_srli_epi16(high, 2)),
    ]
}

/// Q6_K as ggml's tiled K-quant matmul (batches of eight or more tokens): the super-block's
/// whole integer sum (the −32 offset included), then `acc = fma(f32(isum)·d_w, d_x, acc)`.
#[inline(always)]
pub unsafe fn q6_k_tiled<const T: usize>(
    group: &[u8],
    n_blocks: usize,
    xs: &[Q8Row<'_>],
    out: &mut [[f32; GROUP]],
) {
    debug_assert!(xs.len() == T && out.len() >= T && group.len() >= n_blocks * Q6K_BYTES);
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..n_blocks {
        let base = group.as_ptr().add(b * Q6K_BYTES);
        prefetch_ahead(base, Q6K_BYTES);
        let scales = base.add(32);
        // −32·Σx of each 16 values: where each sub-block's integer sum starts.
        let mut start = [[0i32; 16]; T];
        for t in 0..T {
            let bsums = _mm256_loadu_si256(xs[t].bsums.as_ptr().add(16 * b).cast());
            let neg =
                _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_cvtepi16_epi32(bsums), 5));
            _mm512_storeu_si512(start[t].as_mut_ptr().cast(), neg);
        }
        let mut isum = [_mm512_setzero_si512(); T];
        for a in 0..4 {
            // Sub-blocks a, 4 + a, 8 + a, 12 + a: high steps 4a..4a+4.
            let mut sub = [[_mm512_setzero_si512(); 4]; T];
            for t in 0..T {
                for q in 0..4 {
                    sub[t][q] = _mm512_set1_epi32(start[t][4 * q + a]);
                }
            }
            for i in 4 * a..4 * a + 4 {
                let v = q6_k_step(base, i);
                for t in 0..T {
                    for q in 0..4 {
                        sub[t][q] =
                            _mm512_dpbusd_epi32(sub[t][q], v[q], bcast_x(&xs[t], 256 * b + 64 * q + 4 * i));
                    }
                }
            }
            for q in 0..4 {
                let sc = i8x16(scales.add(16 * (4 * q + a)));
                for t in 0..T {
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(sub[t][q], sc));
                }
            }
        }
        let d = load_f16x16(base);
        for t in 0..T {
            let dx = _mm512_set1_ps(*xs[t].d.get_unchecked(b));
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(isum[t]), d), dx, acc[t]);
        }
    }
    for t in 0..T {
        store(&mut out[t], acc[t]);
    }
}

/// Q6_K as ggml's `vec_dot_q6_K_q8_K` (fewer than eight tokens), one token: eight integer lanes
/// per row, lane `l` gathering the scaled sums of bytes `4l..4l+4` of every 32-value group and
/// the −32 offset of group `l`; per super-block `lane = fma(d_x·d_w, f32(lane), lane)`, ggml's
/// horizontal sum at the end.
#[inline(always)]
pub unsafe fn q6_k_lanes(group: &[u8], n_blocks: usize, xs: &[Q8Row<'_>], out: &mut [[f32; GROUP]]) {
    debug_assert!(!xs.is_empty() && !out.is_empty() && group.len() >= n_blocks * Q6K_BYTES);
    let x = &xs[0];
    let low16 = _mm512_set1_epi32(0xFFFF);
    // Scale pairs as two i16 per lane: (sc_a, sc_b).
    let pair = |a: __m512i, b: __m512i| _mm512_or_si512(_mm512_and_si512(a, low16), _mm512_slli_epi32(b, 16));
    let mut acc = [_mm512_setzero_ps(); 8];
    for b in 0..n_blocks {
        let base = group.as_ptr().add(b * Q6K_BYTES);
        prefetch_ahead(base, Q6K_BYTES);
        let scales = base.add(32);
        let sc = |g: usize| i8x16(scales.add(16 * g));
        let mut lanes = [_mm512_setzero_si512(); 8];
        for a in 0..4 {
            let dup: [__m512i; 4] = std::array::from_fn(|q| {
                let s = sc(4 * q + a);
                pair(s, s)
            });
            for i in 4 * a..4 * a + 4 {
                let v = q6_k_step(base, i);
                for q in 0..4 {
                    let pairs = _mm512_maddubs_epi16(v[q], bcast_x(x, 256 * b + 64 * q + 4 * i));
                    lanes[i % 8] = _mm512_dpwssd_epi32(lanes[i % 8], pairs, dup[q]);
                }
            }
        }
        for (k, lane) in lanes.iter_mut().enumerate() {
            let bs = |j: usize| *x.bsums.get_unchecked(16 * b + j) as u16 as u32;
            let bs_pair = _mm512_set1_epi32((bs(2 * k) | (bs(2 * k + 1) << 16)) as i32);
            let offset = _mm512_dpwssd_epi32(_mm512_setzero_si512(), pair(sc(2 * k), sc(2 * k + 1)), bs_pair);
            *lane = _mm512_sub_epi32(*lane, _mm512_slli_epi32(offset, 5));
        }
        let d = _mm512_mul_ps(_mm512_set1_ps(*x.d.get_unchecked(b)), load_f16x16(base));
        for (acc, lane) in acc.iter_mut().zip(lanes) {
            *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(lane), *acc);
        }
    }
    store(&mut out[0], hsum_lanes(acc));
}

macro_rules! entries {
    ($($name:ident = $body:expr;)*) => {$(
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $name(group: &[u8], n_blocks: usize, xs: &[Q8Row<'_>], out: &mut [[f32; GROUP]]) {
            $body(group, n_blocks, xs, out)
        }
    )*};
}

macro_rules! legacy_entries {
    ($ty:expr, $exact1:ident, $exact2:ident, [$($fast:ident = $t:expr),*]) => {
        entries! {
            $exact1 = legacy_exact::<{ $ty }, 1>;
            $exact2 = legacy_exact::<{ $ty }, 2>;
            $($fast = legacy_fast::<{ $ty }, { $t }>;)*
        }
    };
}

legacy_entries!(
    Q4_0,
    q4_0_exact1,
    q4_0_exact2,
    [
        q4_0_fast1 = 1,
        q4_0_fast2 = 2,
        q4_0_fast3 = 3,
        q4_0_fast4 = 4,
        q4_0_fast5 = 5,
        q4_0_fast6 = 6,
        q4_0_fast7 = 7,
        q4_0_fast8 = 8
    ]
);
legacy_entries!(
    Q4_1,
    q4_1_exact1,
    q4_1_exact2,
    [
        q4_1_fast1 = 1,
        q4_1_fast2 = 2,
        q4_1_fast3 = 3,
        q4_1_fast4 = 4,
        q4_1_fast5 = 5,
        q4_1_fast6 = 6,
        q4_1_fast7 = 7,
        q4_1_fast8 = 8
    ]
);
legacy_entries!(
    Q5_0,
    q5_0_exact1,
    q5_0_exact2,
    [
        q5_0_fast1 = 1,
        q5_0_fast2 = 2,
        q5_0_fast3 = 3,
        q5_0_fast4 = 4,
        q5_0_fast5 = 5,
        q5_0_fast6 = 6,
        q5_0_fast7 = 7,
        q5_0_fast8 = 8
    ]
);
legacy_entries!(
    Q5_1,
    q5_1_exact1,
    q5_1_exact2,
    [
        q5_1_fast1 = 1,
        q5_1_fast2 = 2,
        q5_1_fast3 = 3,
        q5_1_fast4 = 4,
        q5_1_fast5 = 5,
        q5_1_fast6 = 6,
        q5_1_fast7 = 7,
        q5_1_fast8 = 8
    ]
);
legacy_entries!(
    Q8_0,
    q8_0_exact1,
    q8_0_exact2,
    [
        q8_0_fast1 = 1,
        q8_0_fast2 = 2,
        q8_0_fast3 = 3,
        q8_0_fast4 = 4,
        q8_0_fast5 = 5,
        q8_0_fast6 = 6,
        q8_0_fast7 = 7,
        q8_0_fast8 = 8
    ]
);

// IQ4_NL has one order for both: its single-row kernel takes legacy_fast's (one fused
// multiply-add per block).
entries! {
    q3_k1 = q3_k::<1>;
    q3_k2 = q3_k::<2>;
    q3_k3 = q3_k::<3>;
    q3_k4 = q3_k::<4>;
    q3_k5 = q3_k::<5>;
    q3_k6 = q3_k::<6>;
    q3_k7 = q3_k::<7>;
    q3_k8 = q3_k::<8>;
    q2_k1 = q2_k::<1>;
    q2_k2 = q2_k::<2>;
    q2_k3 = q2_k::<3>;
    q2_k4 = q2_k::<4>;
    q2_k5 = q2_k::<5>;
    q2_k6 = q2_k::<6>;
    q2_k7 = q2_k::<7>;
    q2_k8 = q2_k::<8>;
    iq4_xs1 = iq4_xs::<1>;
    iq4_xs2 = iq4_xs::<2>;
    iq4_xs3 = iq4_xs::<3>;
    iq4_xs4 = iq4_xs::<4>;
    iq4_xs5 = iq4_xs::<5>;
    iq4_xs6 = iq4_xs::<6>;
    iq4_xs7 = iq4_xs::<7>;
    iq4_xs8 = iq4_xs::<8>;
    iq4_nl_fast1 = legacy_fast::<{ IQ4_NL }, 1>;
    iq4_nl_fast2 = legacy_fast::<{ IQ4_NL }, 2>;
    iq4_nl_fast3 = legacy_fast::<{ IQ4_NL }, 3>;
    iq4_nl_fast4 = legacy_fast::<{ IQ4_NL }, 4>;
    iq4_nl_fast5 = legacy_fast::<{ IQ4_NL }, 5>;
    iq4_nl_fast6 = legacy_fast::<{ IQ4_NL }, 6>;
    iq4_nl_fast7 = legacy_fast::<{ IQ4_NL }, 7>;
    iq4_nl_fast8 = legacy_fast::<{ IQ4_NL }, 8>;
}

entries! {
    q4_k_single1 = q4_k::<1, false, false>;
    q4_k_single2 = q4_k::<2, false, false>;
    q4_k_single3 = q4_k::<3, false, false>;
    q4_k_single4 = q4_k::<4, false, false>;
    q4_k_batched4 = q4_k::<4, true, false>;
    q5_k_single1 = q4_k::<1, false, true>;
    q5_k_single2 = q4_k::<2, false, true>;
    q5_k_single3 = q4_k::<3, false, true>;
    q5_k_single4 = q4_k::<4, false, true>;
    q5_k_batched4 = q4_k::<4, true, true>;
    q6_k_tiled1 = q6_k_tiled::<1>;
    q6_k_tiled2 = q6_k_tiled::<2>;
    q6_k_tiled3 = q6_k_tiled::<3>;
    q6_k_tiled4 = q6_k_tiled::<4>;
    q6_k_lanes1 = q6_k_lanes;
}
