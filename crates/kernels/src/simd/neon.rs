//! aarch64 Advanced SIMD dot products. Weights are unpacked to signed bytes (offsets applied)
//! and multiplied with the int8 activations by `smull` + `sadalp` (baseline NEON, so every
//! aarch64 CPU runs it); each block's integer sum is then scaled in f32, as in the scalar
//! reference.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::aarch64::*;

use crate::quants::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, Q8Row, QK, QK_K,
    as_blocks, f16_to_f32, scale_min_k4,
};

/// Σ a·b over 16 signed bytes, as four i32 partial sums added into `acc`.
#[inline(always)]
unsafe fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// Σ a·b over 32 signed bytes.
#[inline(always)]
unsafe fn dot32(a0: int8x16_t, a1: int8x16_t, x: *const i8) -> i32 {
    let acc = dot16(vdupq_n_s32(0), a0, vld1q_s8(x));
    vaddvq_s32(dot16(acc, a1, vld1q_s8(x.add(16))))
}

/// 16 packed bytes → (low nibbles, high nibbles), minus `offset`.
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16], offset: i8) -> (int8x16_t, int8x16_t) {
    let bytes = vld1q_u8(qs.as_ptr());
    let lo = vreinterpretq_s8_u8(vandq_u8(bytes, vdupq_n_u8(0xF)));
    let hi = vreinterpretq_s8_u8(vshrq_n_u8(bytes, 4));
    let off = vdupq_n_s8(offset);
    (vsubq_s8(lo, off), vsubq_s8(hi, off))
}

/// The fifth bits of a Q5 block as 0x10 per byte, for elements 0..16 and 16..32.
#[inline(always)]
unsafe fn fifth_bits(qh: [u8; 4]) -> (int8x16_t, int8x16_t) {
    let bits = u32::from_le_bytes(qh);
    let mut lo = [0u8; 16];
    let mut hi = [0u8; 16];
    for j in 0..16 {
        lo[j] = (((bits >> j) & 1) << 4) as u8;
        hi[j] = (((bits >> (j + 16)) & 1) << 4) as u8;
    }
    (vreinterpretq_s8_u8(vld1q_u8(lo.as_ptr())), vreinterpretq_s8_u8(vld1q_u8(hi.as_ptr())))
}

#[target_feature(enable = "neon")]
pub unsafe fn q4_0(w: &[u8], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ4_0>(w).iter().enumerate() {
        let (lo, hi) = nibbles(&b.qs, 8);
        let isum = dot32(lo, hi, x.qs.as_ptr().add(i * QK));
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32;
    }
    sum
}

#[target_feature(enable = "neon")]
pub unsafe fn q4_1(w: &[u8], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ4_1>(w).iter().enumerate() {
        let (lo, hi) = nibbles(&b.qs, 0);
        let isum = dot32(lo, hi, x.qs.as_ptr().add(i * QK));
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32 + f16_to_f32(b.m) * x.s[i];
    }
    sum
}

#[target_feature(enable = "neon")]
pub unsafe fn q5_0(w: &[u8], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ5_0>(w).iter().enumerate() {
        let (lo, hi) = nibbles(&b.qs, 0);
        let (hlo, hhi) = fifth_bits(b.qh);
        let off = vdupq_n_s8(16);
        let lo = vsubq_s8(vorrq_s8(lo, hlo), off);
        let hi = vsubq_s8(vorrq_s8(hi, hhi), off);
        let isum = dot32(lo, hi, x.qs.as_ptr().add(i * QK));
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32;
    }
    sum
}

#[target_feature(enable = "neon")]
pub unsafe fn q5_1(w: &[u8], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ5_1>(w).iter().enumerate() {
        let (lo, hi) = nibbles(&b.qs, 0);
        let (hlo, hhi) = fifth_bits(b.qh);
        let isum = dot32(vorrq_s8(lo, hlo), vorrq_s8(hi, hhi), x.qs.as_ptr().add(i * QK));
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32 + f16_to_f32(b.m) * x.s[i];
    }
    sum
}

#[target_feature(enable = "neon")]
pub unsafe fn q8_0(w: &[u8], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ8_0>(w).iter().enumerate() {
        let a0 = vld1q_s8(b.qs.as_ptr());
        let a1 = vld1q_s8(b.qs.as_ptr().add(16));
        let isum = dot32(a0, a1, x.qs.as_ptr().add(i * QK));
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32;
    }
    sum
}

/// Q4_K / Q5_K: sub-block `s` of 32 values has scale `sc_s` and minimum `m_s`.
#[inline(always)]
unsafe fn k4(
    qs: &[u8; 128],
    qh: Option<&[u8; 32]>,
    d: u16,
    dmin: u16,
    scales: &[u8; 12],
    x: &Q8Row<'_>,
    i: usize,
) -> f32 {
    let xq = x.qs.as_ptr().add(i * QK_K);
    let (mut isum, mut mins) = (0i32, 0i32);
    for c in 0..4 {
        let b0 = vld1q_u8(qs.as_ptr().add(32 * c));
        let b1 = vld1q_u8(qs.as_ptr().add(32 * c + 16));
        let mask = vdupq_n_u8(0xF);
        let (mut l0, mut l1) = (vandq_u8(b0, mask), vandq_u8(b1, mask));
        let (mut h0, mut h1) = (vshrq_n_u8(b0, 4), vshrq_n_u8(b1, 4));
        if let Some(qh) = qh {
            let q0 = vld1q_u8(qh.as_ptr());
            let q1 = vld1q_u8(qh.as_ptr().add(16));
            let bit_lo = vdupq_n_u8(1 << (2 * c));
            let bit_hi = vdupq_n_u8(1 << (2 * c + 1));
            let sixteen = vdupq_n_u8(16);
            l0 = vorrq_u8(l0, vandq_u8(vtstq_u8(q0, bit_lo), sixteen));
            l1 = vorrq_u8(l1, vandq_u8(vtstq_u8(q1, bit_lo), sixteen));
            h0 = vorrq_u8(h0, vandq_u8(vtstq_u8(q0, bit_hi), sixteen));
            h1 = vorrq_u8(h1, vandq_u8(vtstq_u8(q1, bit_hi), sixteen));
        }
        let (sc_lo, m_lo) = scale_min_k4(2 * c, scales);
        let (sc_hi, m_hi) = scale_min_k4(2 * c + 1, scales);
        let s = |v: uint8x16_t| vreinterpretq_s8_u8(v);
        isum += sc_lo as i32 * dot32(s(l0), s(l1), xq.add(64 * c));
        isum += sc_hi as i32 * dot32(s(h0), s(h1), xq.add(64 * c + 32));
        let bs = |k: usize| x.bsums[16 * i + k] as i32;
        mins += m_lo as i32 * (bs(4 * c) + bs(4 * c + 1)) + m_hi as i32 * (bs(4 * c + 2) + bs(4 * c + 3));
    }
    x.d[i] * (f16_to_f32(d) * isum as f32 - f16_to_f32(dmin) * mins as f32)
}

#[target_feature(enable = "neon")]
pub unsafe fn q4_k(w: &[u8], x: Q8Row<'_>) -> f32 {
    as_blocks::<BlockQ4K>(w)
        .iter()
        .enumerate()
        .map(|(i, b)| k4(&b.qs, None, b.d, b.dmin, &b.scales, &x, i))
        .sum()
}

#[target_feature(enable = "neon")]
pub unsafe fn q5_k(w: &[u8], x: Q8Row<'_>) -> f32 {
    as_blocks::<BlockQ5K>(w)
        .iter()
        .enumerate()
        .map(|(i, b)| k4(&b.qs, Some(&b.qh), b.d, b.dmin, &b.scales, &x, i))
        .sum()
}

#[target_feature(enable = "neon")]
pub unsafe fn q6_k(w: &[u8], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ6K>(w).iter().enumerate() {
        let xq = x.qs.as_ptr().add(i * QK_K);
        let mut isum = 0i32;
        for half in 0..2 {
            for part in 0..2 {
                // 16 of the 32 columns `l` of this half.
                let l = 16 * part;
                let ql0 = vld1q_u8(b.ql.as_ptr().add(64 * half + l));
                let ql1 = vld1q_u8(b.ql.as_ptr().add(64 * half + 32 + l));
                let qh = vld1q_u8(b.qh.as_ptr().add(32 * half + l));
                let m4 = vdupq_n_u8(0xF);
                let m2 = vdupq_n_u8(3);
                let groups = [
                    vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8(vandq_u8(qh, m2), 4)),
                    vorrq_u8(vandq_u8(ql1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 2), m2), 4)),
                    vorrq_u8(vshrq_n_u8(ql0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 4), m2), 4)),
                    vorrq_u8(vshrq_n_u8(ql1, 4), vshlq_n_u8(vshrq_n_u8(qh, 6), 4)),
                ];
                for (g, q) in groups.into_iter().enumerate() {
                    let q = vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(32));
                    let at = 128 * half + 32 * g + l;
                    let dot = vaddvq_s32(dot16(vdupq_n_s32(0), q, vld1q_s8(xq.add(at))));
                    isum += b.scales[at / 16] as i32 * dot;
                }
            }
        }
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32;
    }
    sum
}

/// Float weights: 4 accumulators of 4 lanes, widened from `load4`.
#[inline(always)]
unsafe fn float_dot(
    w: &[u8],
    x: &[f32],
    bytes: usize,
    load4: impl Fn(*const u8) -> float32x4_t,
    scalar: impl Fn(&[u8]) -> f32,
) -> f32 {
    let n = x.len();
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            let j = i + 4 * k;
            *a = vfmaq_f32(*a, load4(w.as_ptr().add(j * bytes)), vld1q_f32(x.as_ptr().add(j)));
        }
        i += 16;
    }
    let mut total = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
    for j in i..n {
        total += scalar(&w[j * bytes..]) * x[j];
    }
    total
}

#[target_feature(enable = "neon")]
pub unsafe fn f32(w: &[u8], x: &[f32]) -> f32 {
    float_dot(w, x, 4, |p| vld1q_f32(p.cast()), |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

#[target_feature(enable = "neon")]
pub unsafe fn f16(w: &[u8], x: &[f32]) -> f32 {
    // Widening f16 → f32 needs the fp16 types, which are not stable in Rust yet: convert four
    // values at a time through `half` (it uses the hardware instruction when available).
    float_dot(
        w,
        x,
        2,
        |p| {
            let mut v = [0f32; 4];
            for (k, v) in v.iter_mut().enumerate() {
                *v = half::f16::from_le_bytes([*p.add(2 * k), *p.add(2 * k + 1)]).to_f32();
            }
            vld1q_f32(v.as_ptr())
        },
        |c| half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
    )
}

#[target_feature(enable = "neon")]
pub unsafe fn bf16(w: &[u8], x: &[f32]) -> f32 {
    float_dot(
        w,
        x,
        2,
        |p| vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p.cast()), 16)),
        |c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
    )
}
