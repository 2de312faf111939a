//! The low-bit types small-memory users pick: Q2_K and Q3_K (k-quants of 2 and 3 bits) and the
//! non-linear IQ4_NL and IQ4_XS (4-bit indices into a 16-entry table of int8 levels). Block
//! layouts are ggml's (ggml-common.h); dequantization rounds as ggml and gguf-py do (every
//! product and difference in f32, in their order), so it is bit-exact with them.
//!
//! Q2_K, 256 values:  y = d·(sc_j & 15)·q − dmin·(sc_j >> 4),            q ∈ 0..4,  16 groups of 16
//! Q3_K, 256 values:  y = d·(s_j − 32)·(q − 4·[high bit clear]),        q ∈ 0..4,  6-bit s_j
//! IQ4_NL, 32 values: y = d·K[q],                                         K = the 16 levels below
//! IQ4_XS, 256 values: y = d·(s_j − 32)·K[q],                             6-bit s_j per 32 values
//!
//! Dot products take activations quantized as ggml's `vec_dot_type` says: Q8_K (a scale per 256
//! values, sums per 16) for Q2_K, Q3_K and IQ4_XS; Q8_0 (a scale per 32) for IQ4_NL. Integer
//! sums are exact; the float steps follow ggml's reference order per block.

use crate::quants::{Block, Q8Row, QK, QK_K, f16_to_f32};

/// IQ4_NL's and IQ4_XS's 16 levels (`kvalues_iq4nl`): denser near zero, where weights are.
pub const IQ4_LEVELS: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; 16], // per 16 values: scale (low 4 bits), minimum (high 4 bits)
    pub qs: [u8; 64],     // 2 bits per value, see `q2_k_value`
    pub d: u16,
    pub dmin: u16,
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],  // the third bit: bit g of hmask[l] for value 32·g + l
    pub qs: [u8; 64],     // the low 2 bits, as Q2_K's
    pub scales: [u8; 12], // 16 × 6-bit scales, packed (see `q3_k_scales`)
    pub d: u16,
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockIq4Nl {
    pub d: u16,
    pub qs: [u8; 16], // value j: low nibble of qs[j]; value 16 + j: high nibble
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockIq4Xs {
    pub d: u16,
    pub scales_h: u16,     // bits 2·g, 2·g+1: the high 2 bits of group g's scale
    pub scales_l: [u8; 4], // nibble g: the low 4 bits of group g's scale
    pub qs: [u8; 128],     // per group of 32, as IQ4_NL's
}

// SAFETY: plain bytes and u16s, any bit pattern valid; alignment 2 is met by the loaders.
unsafe impl Block for BlockQ2K {}
unsafe impl Block for BlockQ3K {}
unsafe impl Block for BlockIq4Nl {}
unsafe impl Block for BlockIq4Xs {}

const _: () = {
    assert!(size_of::<BlockQ2K>() == 84);
    assert!(size_of::<BlockQ3K>() == 110);
    assert!(size_of::<BlockIq4Nl>() == 18);
    assert!(size_of::<BlockIq4Xs>() == 136);
};

/// The 2-bit field of value `v` (0..256) in Q2_K/Q3_K's `qs`: each 128 values use 32 bytes, four
/// fields per byte, the field chosen by which 32 of the 128.
#[inline]
pub(crate) fn low2(qs: &[u8; 64], v: usize) -> u8 {
    let (half, rest) = (v / 128, v % 128);
    (qs[half * 32 + rest % 32] >> (2 * (rest / 32))) & 3
}

/// Q3_K's 16 scales, unpacked from 12 bytes: low 4 bits from bytes 0..8 (group j: byte j % 8,
/// nibble j / 8), high 2 bits from bytes 8..12 (byte 8 + j % 4, pair j / 4); minus 32.
#[inline]
pub(crate) fn q3_k_scales(packed: &[u8; 12]) -> [i32; 16] {
    std::array::from_fn(|j| {
        let low = (packed[j % 8] >> (4 * (j / 8))) & 0xF;
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        (low | (high << 4)) as i32 - 32
    })
}

/// Q3_K's signed value: the low 2 bits, minus 4 when the high bit is clear.
#[inline]
pub(crate) fn q3_k_value(b: &BlockQ3K, v: usize) -> i32 {
    let high = (b.hmask[v % 32] >> (v / 32)) & 1;
    low2(&b.qs, v) as i32 - if high == 0 { 4 } else { 0 }
}

/// IQ4_XS's scale of group `g` (0..8), minus 32.
#[inline]
pub(crate) fn iq4_xs_scale(b: &BlockIq4Xs, g: usize) -> i32 {
    let low = (b.scales_l[g / 2] >> (4 * (g % 2))) & 0xF;
    let high = ((b.scales_h >> (2 * g)) & 3) as u8;
    (low | (high << 4)) as i32 - 32
}

/// The 32 level indices of a 16-byte nibble group (IQ4_NL's block, IQ4_XS's group).
#[inline]
fn iq4_indices(qs: &[u8]) -> [u8; 32] {
    std::array::from_fn(|j| if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 })
}

pub fn dequantize_q2_k(blocks: &[BlockQ2K], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        for (v, y) in y.iter_mut().enumerate() {
            let sc = b.scales[v / 16];
            let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
            *y = dl * low2(&b.qs, v) as f32 - ml;
        }
    }
}

pub fn dequantize_q3_k(blocks: &[BlockQ3K], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let scales = q3_k_scales(&b.scales);
        for (v, y) in y.iter_mut().enumerate() {
            *y = d * scales[v / 16] as f32 * q3_k_value(b, v) as f32;
        }
    }
}

pub fn dequantize_iq4_nl(blocks: &[BlockIq4Nl], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (y, q) in y.iter_mut().zip(iq4_indices(&b.qs)) {
            *y = d * IQ4_LEVELS[q as usize] as f32;
        }
    }
}

pub fn dequantize_iq4_xs(blocks: &[BlockIq4Xs], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        for (g, y) in y.chunks_exact_mut(32).enumerate() {
            let dl = d * iq4_xs_scale(b, g) as f32;
            for (y, q) in y.iter_mut().zip(iq4_indices(&b.qs[16 * g..16 * g + 16])) {
                *y = dl * IQ4_LEVELS[q as usize] as f32;
            }
        }
    }
}

/// Q2_K · Q8_K: `d·x.d·Σ_j (sc_j & 15)·Σ q·x − dmin·x.d·Σ_j (sc_j >> 4)·bsum_j`.
pub fn vec_dot_q2_k(w: &[BlockQ2K], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.iter().enumerate() {
        let xq = &x.qs[i * QK_K..(i + 1) * QK_K];
        let bsums = &x.bsums[i * 16..(i + 1) * 16];
        let mins: i32 = (0..16).map(|j| bsums[j] as i32 * (b.scales[j] >> 4) as i32).sum();
        let mut isum = 0i32;
        for j in 0..16 {
            let dot: i32 = (16 * j..16 * j + 16).map(|v| low2(&b.qs, v) as i32 * xq[v] as i32).sum();
            isum += (b.scales[j] & 0xF) as i32 * dot;
        }
        let (dall, dmin) = (x.d[i] * f16_to_f32(b.d), x.d[i] * f16_to_f32(b.dmin));
        sum += dall * isum as f32 - dmin * mins as f32;
    }
    sum
}

/// Q3_K · Q8_K: `d·x.d·Σ_j s_j·Σ q·x`.
pub fn vec_dot_q3_k(w: &[BlockQ3K], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.iter().enumerate() {
        let xq = &x.qs[i * QK_K..(i + 1) * QK_K];
        let scales = q3_k_scales(&b.scales);
        let mut isum = 0i32;
        for (j, &s) in scales.iter().enumerate() {
            let dot: i32 = (16 * j..16 * j + 16).map(|v| q3_k_value(b, v) * xq[v] as i32).sum();
            isum += s * dot;
        }
        sum += f16_to_f32(b.d) * x.d[i] * isum as f32;
    }
    sum
}

/// IQ4_NL · Q8_0: `Σ_blocks d·x.d·Σ K[q]·x`, one fused multiply-add per block (the order the
/// tiled kernel keeps, so both give the same bits).
pub fn vec_dot_iq4_nl(w: &[BlockIq4Nl], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.iter().enumerate() {
        let xq = &x.qs[i * QK..(i + 1) * QK];
        let dot: i32 =
            iq4_indices(&b.qs).iter().zip(xq).map(|(&q, &x)| IQ4_LEVELS[q as usize] as i32 * x as i32).sum();
        sum = (f16_to_f32(b.d) * x.d[i]).mul_add(dot as f32, sum);
    }
    sum
}

/// IQ4_XS · Q8_K: `d·x.d·Σ_g s_g·Σ K[q]·x`.
pub fn vec_dot_iq4_xs(w: &[BlockIq4Xs], x: Q8Row<'_>) -> f32 {
    let mut sum = 0f32;
    for (i, b) in w.iter().enumerate() {
        let xq = &x.qs[i * QK_K..(i + 1) * QK_K];
        let mut isum = 0i32;
        for g in 0..8 {
            let xg = &xq[32 * g..32 * g + 32];
            let dot: i32 = iq4_indices(&b.qs[16 * g..16 * g + 16])
                .iter()
                .zip(xg)
                .map(|(&q, &x)| IQ4_LEVELS[q as usize] as i32 * x as i32)
                .sum();
            isum += iq4_xs_scale(b, g) * dot;
        }
        // Fused, as the tiled kernel.
        sum = (f16_to_f32(b.d) * x.d[i]).mul_add(isum as f32, sum);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quants::{Q8Buf, Q8Kind, as_blocks};

    /// Deterministic bytes (SplitMix64), with each block's f16 fields set finite.
    fn random_blocks(n: usize, size: usize, halves: &[usize], seed: u64) -> Vec<u8> {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut out = Vec::with_capacity(n * size);
        for _ in 0..n {
            let mut block: Vec<u8> = (0..size.div_ceil(8)).flat_map(|_| next().to_le_bytes()).collect();
            block.truncate(size);
            for &at in halves {
                // Exponents 10..17 only: scales of 2^-5 .. 2^2, as real files have.
                let r = next();
                let half =
                    (r & 0x8000) as u16 | (((10 + (r >> 16) % 8) as u16) << 10) | ((r >> 32) & 0x3FF) as u16;
                block[at..at + 2].copy_from_slice(&half.to_le_bytes());
            }
            out.extend(block);
        }
        out
    }

    /// Each dot product equals the dequantized weights times the dequantized activations, summed
    /// in f64, within float rounding (the integer part is exact).
    #[test]
    fn dot_products_agree_with_dequantized_weights() {
        let n = 4 * QK_K;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let cases: [(&str, usize, &[usize], Q8Kind); 4] = [
            ("q2_k", 84, &[80, 82], Q8Kind::Blocks256),
            ("q3_k", 110, &[108], Q8Kind::Blocks256),
            ("iq4_nl", 18, &[0], Q8Kind::Blocks32),
            ("iq4_xs", 136, &[0], Q8Kind::Blocks256),
        ];
        for (name, size, halves, kind) in cases {
            let bytes = random_blocks(n / if size == 18 { QK } else { QK_K }, size, halves, size as u64);
            let mut q8 = Q8Buf::new(kind, n, 1);
            q8.quantize_row(0, &x);
            let row = q8.row(0);
            let mut w = vec![0f32; n];
            let got = match name {
                "q2_k" => {
                    dequantize_q2_k(as_blocks(&bytes), &mut w);
                    vec_dot_q2_k(as_blocks(&bytes), row)
                }
                "q3_k" => {
                    dequantize_q3_k(as_blocks(&bytes), &mut w);
                    vec_dot_q3_k(as_blocks(&bytes), row)
                }
                "iq4_nl" => {
                    dequantize_iq4_nl(as_blocks(&bytes), &mut w);
                    vec_dot_iq4_nl(as_blocks(&bytes), row)
                }
                _ => {
                    dequantize_iq4_xs(as_blocks(&bytes), &mut w);
                    vec_dot_iq4_xs(as_blocks(&bytes), row)
                }
            };
            let bs = kind.block_size();
            let want: f64 = (0..n).map(|i| w[i] as f64 * row.qs[i] as f64 * row.d[i / bs] as f64).sum();
            let scale: f64 =
                (0..n).map(|i| (w[i] as f64 * row.qs[i] as f64 * row.d[i / bs] as f64).abs()).sum();
            assert!(
                ((got as f64) - want).abs() <= 1e-5 * scale.max(1.0),
                "{name}: {got} vs {want} (scale {scale})"
            );
        }
    }
}
