//! One step of tiled ("flash") attention for a block of query rows: their scores against a block
//! of keys, an online softmax update, and the weighted sum of the block's values, without ever
//! holding a row of scores longer than one key block.
//!
//! For each query row `i` (already scaled by `1/√d`) and the keys `j` of the block it may see:
//! ```text
//! s_j   = q_i · k_j
//! m'    = max(m_i, max_j s_j)
//! out_i = out_i · e^(m_i − m') + Σ_j e^(s_j − m') · v_j
//! l_i   = l_i · e^(m_i − m') + Σ_j e^(s_j − m')
//! ```
//! and `out_i / l_i` is the attention output once every block is done.
//!
//! The body is written once over plain slices of fixed-width chunks and compiled three times
//! (AVX-512, AVX2 + FMA, baseline), so each instruction set vectorizes the same operations in the
//! same order: every path gives the same bits.

/// Keys per block.
pub const KEY_BLOCK: usize = 64;

/// An element type of the KV cache.
pub trait KvElement: Copy + Send + Sync + 'static {
    /// `dst = src` as f32.
    fn widen(src: &[Self], dst: &mut [f32]);
    /// `dst = src`, rounded to this type.
    fn store(src: &[f32], dst: &mut [Self]);
}

impl KvElement for half::f16 {
    #[inline]
    fn widen(src: &[Self], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::Isa::best() == crate::Isa::Avx512Vnni {
            // SAFETY: `best` checked AVX-512 F and F16C. The conversion is exact, so every path
            // gives the same values.
            return unsafe { crate::simd::x86::f16_to_f32_avx512(bytemuck::cast_slice(src), dst) };
        }
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

impl KvElement for f32 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn store(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

/// A block of keys and values widened to f32: keys transposed (`kt[c][j]`, component `c` of key
/// `j`), values as rows (`v[j][c]`).
pub struct KvBlock {
    head_dim: usize,
    n_keys: usize,
    kt: Vec<f32>,
    v: Vec<f32>,
}

impl KvBlock {
    pub fn new(head_dim: usize) -> KvBlock {
        KvBlock {
            head_dim,
            n_keys: 0,
            kt: vec![0.0; head_dim * KEY_BLOCK],
            v: vec![0.0; KEY_BLOCK * head_dim],
        }
    }

    /// Loads `n_keys ≤ KEY_BLOCK` keys and values: `key(j)`, `value(j)` give row `j` (f16 or
    /// f32, as the cache keeps them).
    pub fn load<'a, T: KvElement + 'a>(
        &mut self,
        n_keys: usize,
        key: impl Fn(usize) -> &'a [T],
        value: impl Fn(usize) -> &'a [T],
    ) {
        assert!(n_keys <= KEY_BLOCK, "key block size");
        let d = self.head_dim;
        let mut row = [0f32; 512];
        assert!(d <= row.len(), "head dimension");
        for j in 0..n_keys {
            T::widen(key(j), &mut row[..d]);
            for (c, &x) in row[..d].iter().enumerate() {
                self.kt[c * KEY_BLOCK + j] = x;
            }
            T::widen(value(j), &mut self.v[j * d..(j + 1) * d]);
        }
        // Keys past the end score as masked below; their slots only need to be finite.
        for c in 0..d {
            self.kt[c * KEY_BLOCK + n_keys..(c + 1) * KEY_BLOCK].fill(0.0);
        }
        self.n_keys = n_keys;
    }
}

/// The running state of a block of query rows.
pub struct FlashRows<'a> {
    /// `m` rows of `head_dim` queries, scaled by `1/√d`.
    pub q: &'a [f32],
    /// For each row, the keys of the block it may see: `0..visible[i]`.
    pub visible: &'a [usize],
    /// Unnormalized outputs (`m × head_dim`), maxima and sums, updated in place.
    pub out: &'a mut [f32],
    pub max: &'a mut [f32],
    pub sum: &'a mut [f32],
}

/// Applies key block `kv` to every row of `rows`.
pub fn flash_step(rows: &mut FlashRows<'_>, kv: &KvBlock) {
    let d = kv.head_dim;
    let m = rows.visible.len();
    assert!(
        rows.q.len() == m * d && rows.out.len() == m * d && rows.max.len() == m && rows.sum.len() == m,
        "flash rows layout"
    );
    assert!(rows.visible.iter().all(|&v| v <= kv.n_keys), "visible keys beyond the block");
    #[cfg(target_arch = "x86_64")]
    {
        use crate::Isa;
        match Isa::best() {
            // SAFETY: `best` checked AVX-512 F/BW/VL, AVX2 and FMA.
            Isa::Avx512Vnni => return unsafe { flash_avx512(rows, kv) },
            // SAFETY: `best` checked AVX2 and FMA.
            Isa::Avx2 => return unsafe { flash_avx2(rows, kv) },
            _ => {}
        }
    }
    flash_body(rows, kv)
}

/// The baseline build of the body (the reference the vectorized builds equal).
pub fn flash_step_scalar(rows: &mut FlashRows<'_>, kv: &KvBlock) {
    flash_body(rows, kv)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn flash_avx512(rows: &mut FlashRows<'_>, kv: &KvBlock) {
    flash_body(rows, kv)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn flash_avx2(rows: &mut FlashRows<'_>, kv: &KvBlock) {
    flash_body(rows, kv)
}

/// `e^x` for `x ≤ 0` by the scheme of [`crate::ops::exp_approx`], without branches so that it
/// vectorizes; below −87 (where the result would be subnormal) it returns 0.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    use crate::ops::exp_approx::*;
    let xc = x.max(-87.0);
    let z = xc.mul_add(INV_LN2, SHIFT);
    let n = z - SHIFT;
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, xc));
    let u = b * b;
    let j = C0.mul_add(b, C1).mul_add(u, C2.mul_add(b, C3)).mul_add(u, C4.mul_add(b, 1.0));
    // n ∈ [−126, 0]: 2^n is a normal number.
    let pow2 = f32::from_bits((((n as i32) + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { j * pow2 }
}

/// Lanes of the partial sums and maxima (a fixed order, so every build adds alike).
const LANES: usize = 16;

#[inline(always)]
fn flash_body(rows: &mut FlashRows<'_>, kv: &KvBlock) {
    let d = kv.head_dim;
    for (i, &visible) in rows.visible.iter().enumerate() {
        if visible == 0 {
            continue;
        }
        let q = &rows.q[i * d..(i + 1) * d];
        // s = q · Kᵀ, one score per key of the block; keys the row may not see score −∞.
        // Four registers of scores (64 keys), summed over the head's components.
        let (mut a0, mut a1, mut a2, mut a3) = ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
        for (c, &qc) in q.iter().enumerate() {
            let kt: &[f32; KEY_BLOCK] = kv.kt[c * KEY_BLOCK..(c + 1) * KEY_BLOCK].try_into().unwrap();
            for k in 0..LANES {
                a0[k] = qc.mul_add(kt[k], a0[k]);
                a1[k] = qc.mul_add(kt[LANES + k], a1[k]);
                a2[k] = qc.mul_add(kt[2 * LANES + k], a2[k]);
                a3[k] = qc.mul_add(kt[3 * LANES + k], a3[k]);
            }
        }
        let mut s = [0f32; KEY_BLOCK];
        for (chunk, a) in s.chunks_exact_mut(LANES).zip([a0, a1, a2, a3]) {
            chunk.copy_from_slice(&a);
        }
        for (j, s) in s.iter_mut().enumerate() {
            *s = if j < visible { *s } else { f32::NEG_INFINITY };
        }
        let mut lane_max = [f32::NEG_INFINITY; LANES];
        for chunk in s.chunks_exact(LANES) {
            for k in 0..LANES {
                lane_max[k] = lane_max[k].max(chunk[k]);
            }
        }
        let block_max = lane_max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let new_max = rows.max[i].max(block_max);
        let rescale = exp_nonpositive(rows.max[i] - new_max);
        let mut p = [0f32; KEY_BLOCK];
        for j in 0..KEY_BLOCK {
            p[j] = exp_nonpositive(s[j] - new_max);
        }
        let mut lane_sum = [0f32; LANES];
        for chunk in p.chunks_exact(LANES) {
            for k in 0..LANES {
                lane_sum[k] += chunk[k];
            }
        }
        let block_sum: f32 = lane_sum.iter().sum();
        rows.sum[i] = rows.sum[i].mul_add(rescale, block_sum);
        rows.max[i] = new_max;
        // out = out·rescale + Σ_j p_j·v_j, a register-sized slice of the row at a time.
        let out = &mut rows.out[i * d..(i + 1) * d];
        let mut c0 = 0;
        while c0 + 64 <= d {
            let mut acc: [f32; 64] = out[c0..c0 + 64].try_into().unwrap();
            acc.iter_mut().for_each(|a| *a *= rescale);
            for (j, &pj) in p[..visible].iter().enumerate() {
                let v: &[f32; 64] = kv.v[j * d + c0..j * d + c0 + 64].try_into().unwrap();
                for k in 0..64 {
                    acc[k] = pj.mul_add(v[k], acc[k]);
                }
            }
            out[c0..c0 + 64].copy_from_slice(&acc);
            c0 += 64;
        }
        if c0 < d {
            let rest = &mut out[c0..];
            rest.iter_mut().for_each(|a| *a *= rescale);
            for (j, &pj) in p[..visible].iter().enumerate() {
                for (a, &vc) in rest.iter_mut().zip(&kv.v[j * d + c0..(j + 1) * d]) {
                    *a = pj.mul_add(vc, *a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain softmax attention in f64 over f16-rounded keys and values.
    fn reference(q: &[f32], keys: &[Vec<half::f16>], values: &[Vec<half::f16>], d: usize) -> Vec<f64> {
        let scores: Vec<f64> =
            keys.iter().map(|k| q.iter().zip(k).map(|(a, b)| *a as f64 * b.to_f64()).sum()).collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = w.iter().sum();
        (0..d).map(|c| w.iter().zip(values).map(|(w, v)| w * v[c].to_f64()).sum::<f64>() / total).collect()
    }

    #[test]
    fn blocks_compose_to_softmax_attention() {
        let d = 48;
        let n = 150; // three blocks, the last partial
        let mut seed = 7u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        let keys: Vec<Vec<half::f16>> =
            (0..n).map(|_| (0..d).map(|_| half::f16::from_f32(rnd() * 3.0)).collect()).collect();
        let values: Vec<Vec<half::f16>> =
            (0..n).map(|_| (0..d).map(|_| half::f16::from_f32(rnd())).collect()).collect();
        // Two query rows seeing different prefixes (causal masking): all 150 keys, and 70.
        let q: Vec<f32> = (0..2 * d).map(|_| rnd()).collect();
        let limits = [n, 70];
        for scalar in [false, true] {
            let (mut out, mut max, mut sum) = (vec![0f32; 2 * d], vec![f32::NEG_INFINITY; 2], vec![0f32; 2]);
            let mut block = KvBlock::new(d);
            for p0 in (0..n).step_by(KEY_BLOCK) {
                let nk = (n - p0).min(KEY_BLOCK);
                block.load(nk, |j| &keys[p0 + j], |j| &values[p0 + j]);
                let visible: Vec<usize> = limits.iter().map(|&l| l.saturating_sub(p0).min(nk)).collect();
                let mut rows =
                    FlashRows { q: &q, visible: &visible, out: &mut out, max: &mut max, sum: &mut sum };
                if scalar { flash_step_scalar(&mut rows, &block) } else { flash_step(&mut rows, &block) }
            }
            for (i, &limit) in limits.iter().enumerate() {
                let want = reference(&q[i * d..(i + 1) * d], &keys[..limit], &values[..limit], d);
                for c in 0..d {
                    let got = out[i * d + c] / sum[i];
                    assert!(
                        (got as f64 - want[c]).abs() < 1e-5,
                        "row {i} component {c}: {got} vs {}",
                        want[c]
                    );
                }
            }
        }
    }

    #[test]
    fn vectorized_and_baseline_builds_agree_bit_for_bit() {
        let d = 64;
        let keys: Vec<Vec<half::f16>> = (0..KEY_BLOCK)
            .map(|j| {
                (0..d).map(|c| half::f16::from_f32(((j * 31 + c * 7) % 23) as f32 / 7.0 - 1.5)).collect()
            })
            .collect();
        let values = keys.clone();
        let q: Vec<f32> = (0..3 * d).map(|i| ((i * 13) % 17) as f32 / 9.0 - 0.8).collect();
        let mut block = KvBlock::new(d);
        block.load(KEY_BLOCK, |j| &keys[j], |j| &values[j]);
        let visible = [KEY_BLOCK, 10, 1];
        let run = |scalar: bool| {
            let (mut out, mut max, mut sum) = (vec![0.5f32; 3 * d], vec![0.25f32; 3], vec![1f32; 3]);
            let mut rows =
                FlashRows { q: &q, visible: &visible, out: &mut out, max: &mut max, sum: &mut sum };
            if scalar {
                flash_step_scalar(&mut rows, &block)
            } else {
                flash_step(&mut rows, &block)
            }
            (out, max, sum)
        };
        let (a, b) = (run(false), run(true));
        assert!(a.0.iter().zip(&b.0).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(a.2.iter().zip(&b.2).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert_eq!(a.1, b.1);
    }
}
