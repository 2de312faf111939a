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
    /// The raw f16 bits, when this is f16 (the vectorized block loader reads those).
    fn as_f16_bits(_src: &[Self]) -> Option<&[u16]> {
        None
    }
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
        #[cfg(target_arch = "x86_64")]
        if crate::Isa::best() == crate::Isa::Avx512Vnni {
            // SAFETY: `best` checked AVX-512 F and F16C. Both round to nearest even, so every
            // path stores the same bits.
            return unsafe { crate::simd::x86::f32_to_f16_avx512(src, bytemuck::cast_slice_mut(dst)) };
        }
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
    fn as_f16_bits(src: &[Self]) -> Option<&[u16]> {
        Some(bytemuck::cast_slice(src))
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

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Loads the first `n_keys ≤ KEY_BLOCK` keys and values of `keys` and `values`: runs of
    /// `head_dim`-long rows laid one after another (one head's positions, as the cache keeps
    /// them), f16 or f32. Rows of the runs past `n_keys` (the next block) are fetched ahead.
    pub fn load<T: KvElement>(&mut self, n_keys: usize, keys: &[T], values: &[T]) {
        self.check_runs(n_keys, keys, values);
        #[cfg(target_arch = "x86_64")]
        if self.head_dim.is_multiple_of(16)
            && crate::Isa::best() == crate::Isa::Avx512Vnni
            && let (Some(keys), Some(values)) = (T::as_f16_bits(keys), T::as_f16_bits(values))
        {
            // SAFETY: `best` checked AVX-512 F (and F16C); the runs hold `n_keys` rows of
            // `head_dim`, a multiple of 16 (checked above).
            unsafe { self.load_f16_avx512(n_keys, keys, values) };
            return;
        }
        self.load_scalar(n_keys, keys, values);
    }

    /// Asks for the first rows of runs a later [`KvBlock::load`] will read (the next head or
    /// sequence), so that load does not start by waiting on memory. A hint: no effect on results.
    pub fn prefetch<T>(&self, keys: &[T], values: &[T]) {
        let n = (PREFETCH_ROWS * self.head_dim).min(keys.len()).min(values.len());
        prefetch(&keys[..n]);
        prefetch(&values[..n]);
    }

    fn check_runs<T>(&self, n_keys: usize, keys: &[T], values: &[T]) {
        let rows = n_keys * self.head_dim;
        assert!(n_keys <= KEY_BLOCK && keys.len() >= rows && values.len() >= rows, "key block size");
    }

    /// Rows of both runs (those past the block are fetched ahead).
    fn reachable<T>(&self, keys: &[T], values: &[T]) -> usize {
        keys.len().min(values.len()) / self.head_dim
    }

    /// The reference of [`KvBlock::load`]: row by row, keys scattered into their columns.
    pub fn load_scalar<T: KvElement>(&mut self, n_keys: usize, keys: &[T], values: &[T]) {
        self.check_runs(n_keys, keys, values);
        let d = self.head_dim;
        let reachable = self.reachable(keys, values);
        let mut row = [0f32; 512];
        assert!(d <= row.len(), "head dimension");
        for j in 0..n_keys {
            // The rows stream from memory (a batch's caches do not stay in cache while the
            // weights stream through); asking a few rows ahead keeps more misses in flight.
            if j + PREFETCH_ROWS < reachable {
                prefetch(&keys[(j + PREFETCH_ROWS) * d..(j + PREFETCH_ROWS + 1) * d]);
                prefetch(&values[(j + PREFETCH_ROWS) * d..(j + PREFETCH_ROWS + 1) * d]);
            }
            T::widen(&keys[j * d..(j + 1) * d], &mut row[..d]);
            for (c, &x) in row[..d].iter().enumerate() {
                self.kt[c * KEY_BLOCK + j] = x;
            }
            T::widen(&values[j * d..(j + 1) * d], &mut self.v[j * d..(j + 1) * d]);
        }
        // Keys past the end score as masked below; their slots only need to be finite.
        for c in 0..d {
            self.kt[c * KEY_BLOCK + n_keys..(c + 1) * KEY_BLOCK].fill(0.0);
        }
        self.n_keys = n_keys;
    }
}

#[cfg(target_arch = "x86_64")]
impl KvBlock {
    /// [`KvBlock::load`] for f16 rows: sixteen keys at a time widened and transposed in
    /// registers (16×16 tiles) instead of one scattered store per value. Exact, so it gives the
    /// scalar loader's values.
    ///
    /// # Safety
    /// AVX-512 F and F16C; `head_dim % 16 == 0`; the runs hold at least `n_keys` rows.
    #[target_feature(enable = "avx512f,avx2,f16c")]
    unsafe fn load_f16_avx512(&mut self, n_keys: usize, keys: &[u16], values: &[u16]) {
        use std::arch::x86_64::*;
        let d = self.head_dim;
        let reachable = self.reachable(keys, values);
        let (k, v) = (keys.as_ptr(), values.as_ptr());
        // SAFETY: rows j < n_keys lie inside the runs, rows j < reachable are only prefetched,
        // `d % 16 == 0`, and the block buffers hold KEY_BLOCK rows of `d`.
        unsafe {
            for j0 in (0..n_keys).step_by(16) {
                let m = (n_keys - j0).min(16);
                for i in 0..m {
                    let j = j0 + i;
                    if j + PREFETCH_ROWS < reachable {
                        prefetch_row(k.add((j + PREFETCH_ROWS) * d), d);
                        prefetch_row(v.add((j + PREFETCH_ROWS) * d), d);
                    }
                    for c0 in (0..d).step_by(16) {
                        let h = _mm256_loadu_si256(v.add(j * d + c0).cast());
                        _mm512_storeu_ps(self.v.as_mut_ptr().add(j * d + c0), _mm512_cvtph_ps(h));
                    }
                }
                for c0 in (0..d).step_by(16) {
                    let mut tile = [_mm512_setzero_ps(); 16];
                    for (i, row) in tile.iter_mut().enumerate().take(m) {
                        *row = _mm512_cvtph_ps(_mm256_loadu_si256(k.add((j0 + i) * d + c0).cast()));
                    }
                    let cols = transpose16(tile);
                    for (c, col) in cols.iter().enumerate() {
                        _mm512_storeu_ps(self.kt.as_mut_ptr().add((c0 + c) * KEY_BLOCK + j0), *col);
                    }
                }
            }
        }
        // Keys past the end score as masked; their slots only need to be finite (the tiles
        // wrote zeros up to the next multiple of 16).
        let filled = n_keys.div_ceil(16) * 16;
        for c in 0..d {
            self.kt[c * KEY_BLOCK + filled..(c + 1) * KEY_BLOCK].fill(0.0);
        }
        self.n_keys = n_keys;
    }
}

/// Transposes a 16×16 tile of f32 (row `i` in register `i` → column `i` in register `i`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose16(r: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    // SAFETY: register shuffles only (the caller runs with AVX-512 F).
    unsafe {
        // 32-bit interleaves within 128-bit lanes, then 64-bit, then 128-bit lanes across registers.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            let (a, b, c, e) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            let pd = |x: __m512| _mm512_castps_pd(x);
            u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
            u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
            u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(e)));
            u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(e)));
        }
        // u[4i + k] holds, in 128-bit lane L, component (4L + k) of rows 4i..4i+4.
        let mut w = [_mm512_setzero_ps(); 16];
        for k in 0..4 {
            // Lanes 0,1 of u[k] and u[4+k] | lanes 0,1 of u[8+k] and u[12+k], and so on.
            let (a, b, c, e) = (u[k], u[4 + k], u[8 + k], u[12 + k]);
            let ab_lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b); // a.L0 a.L1 b.L0 b.L1
            let ab_hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b); // a.L2 a.L3 b.L2 b.L3
            let ce_lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(c, e);
            let ce_hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(c, e);
            w[k] = _mm512_shuffle_f32x4::<0b10_00_10_00>(ab_lo, ce_lo); // L0 of a, b, c, e
            w[4 + k] = _mm512_shuffle_f32x4::<0b11_01_11_01>(ab_lo, ce_lo); // L1
            w[8 + k] = _mm512_shuffle_f32x4::<0b10_00_10_00>(ab_hi, ce_hi); // L2
            w[12 + k] = _mm512_shuffle_f32x4::<0b11_01_11_01>(ab_hi, ce_hi); // L3
        }
        w
    }
}

/// How far ahead [`KvBlock::load`] fetches.
const PREFETCH_ROWS: usize = 8;

/// Asks for the cache lines of `row` ahead of use (a hint: no effect on results).
#[inline(always)]
fn prefetch<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the row's bytes are inside one slice.
    unsafe {
        prefetch_row(row.as_ptr(), row.len())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Asks for the cache lines of the `len` elements at `row` (a hint that never faults).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_row<T>(row: *const T, len: usize) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    let bytes = len * std::mem::size_of::<T>();
    let p = row.cast::<i8>();
    let mut at = 0;
    while at < bytes {
        // SAFETY: prefetching is a hint that never faults; the address is inside the row.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at)) };
        at += 64;
    }
}

/// The running state of a block of query rows.
pub struct FlashRows<'a> {
    /// `m` rows of `head_dim` queries, scaled by `1/√d`.
    pub q: &'a [f32],
    /// For each row, the keys of the block it may see: `first[i]..visible[i]` (`first` is 0
    /// but under sliding-window attention, where keys too far back are out of sight).
    pub first: &'a [usize],
    pub visible: &'a [usize],
    /// Gemma 2's logit soft-capping: scores become `cap · tanh(s / cap)` before the softmax.
    pub softcap: Option<f32>,
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
    assert_eq!(rows.first.len(), m, "flash rows layout");
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

/// Query rows stepped together: each score and output sum is a chain of fused multiply-adds
/// (four cycles each), and one row gives only four independent chains (half of what two FMA
/// units take); two rows give eight. Each row's chains keep the one-row order, so grouping
/// changes no bit.
const ROW_GROUP: usize = 2;

#[inline(always)]
fn flash_body(rows: &mut FlashRows<'_>, kv: &KvBlock) {
    let m = rows.visible.len();
    let sees = |i: usize| rows.visible[i] > rows.first[i];
    let mut i = 0;
    while i < m {
        // A row that sees none of the block's keys keeps its state (its maximum may still be
        // −∞, and −∞ − −∞ would poison it): groups are made of rows that see some.
        if i + ROW_GROUP <= m && (i..i + ROW_GROUP).all(sees) {
            flash_group::<ROW_GROUP>(rows, kv, i);
            i += ROW_GROUP;
        } else {
            if sees(i) {
                flash_group::<1>(rows, kv, i);
            }
            i += 1;
        }
    }
}

/// `acc[k] += p · v[k]` for a 64-wide slice of a row.
#[inline(always)]
fn add_scaled(acc: &mut [f32; 64], p: f32, v: &[f32; 64]) {
    for k in 0..64 {
        acc[k] = p.mul_add(v[k], acc[k]);
    }
}

/// Block `kv` applied to rows `i0..i0 + R` of `rows`, each of which sees some of its keys.
// Index loops: one index walks several arrays (queries, scores, weights) at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn flash_group<const R: usize>(rows: &mut FlashRows<'_>, kv: &KvBlock, i0: usize) {
    let d = kv.head_dim;
    let first: [usize; R] = std::array::from_fn(|r| rows.first[i0 + r]);
    let visible: [usize; R] = std::array::from_fn(|r| rows.visible[i0 + r]);
    let q: [&[f32]; R] = std::array::from_fn(|r| &rows.q[(i0 + r) * d..(i0 + r + 1) * d]);
    // s = q · Kᵀ, one score per key of the block; keys a row may not see score −∞.
    // Four registers of scores (64 keys) per row, summed over the head's components.
    let mut a = [[[0f32; LANES]; 4]; R];
    for c in 0..d {
        let kt: &[f32; KEY_BLOCK] = kv.kt[c * KEY_BLOCK..(c + 1) * KEY_BLOCK].try_into().unwrap();
        for r in 0..R {
            let qc = q[r][c];
            for k in 0..LANES {
                a[r][0][k] = qc.mul_add(kt[k], a[r][0][k]);
                a[r][1][k] = qc.mul_add(kt[LANES + k], a[r][1][k]);
                a[r][2][k] = qc.mul_add(kt[2 * LANES + k], a[r][2][k]);
                a[r][3][k] = qc.mul_add(kt[3 * LANES + k], a[r][3][k]);
            }
        }
    }
    let mut p = [[0f32; KEY_BLOCK]; R];
    let mut rescale = [0f32; R];
    for r in 0..R {
        let i = i0 + r;
        let mut s = [0f32; KEY_BLOCK];
        for (chunk, acc) in s.chunks_exact_mut(LANES).zip(&a[r]) {
            chunk.copy_from_slice(acc);
        }
        if let Some(cap) = rows.softcap {
            s.iter_mut().for_each(|s| *s = cap * (*s / cap).tanh());
        }
        for (j, s) in s.iter_mut().enumerate() {
            *s = if (first[r]..visible[r]).contains(&j) { *s } else { f32::NEG_INFINITY };
        }
        let mut lane_max = [f32::NEG_INFINITY; LANES];
        for chunk in s.chunks_exact(LANES) {
            for k in 0..LANES {
                lane_max[k] = lane_max[k].max(chunk[k]);
            }
        }
        let block_max = lane_max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let new_max = rows.max[i].max(block_max);
        rescale[r] = exp_nonpositive(rows.max[i] - new_max);
        for j in 0..KEY_BLOCK {
            p[r][j] = exp_nonpositive(s[j] - new_max);
        }
        let mut lane_sum = [0f32; LANES];
        for chunk in p[r].chunks_exact(LANES) {
            for k in 0..LANES {
                lane_sum[k] += chunk[k];
            }
        }
        let block_sum: f32 = lane_sum.iter().sum();
        rows.sum[i] = rows.sum[i].mul_add(rescale[r], block_sum);
        rows.max[i] = new_max;
    }
    // out = out·rescale + Σ_j p_j·v_j, a register-sized slice of each row at a time, every row
    // adding the keys it sees in key order: its own keys before the ones all rows see, those
    // together, then its own after them.
    let (shared_lo, shared_hi) = (*first.iter().max().unwrap(), *visible.iter().min().unwrap());
    let shared_hi = shared_hi.max(shared_lo);
    let value = |j: usize, c0: usize| -> &[f32; 64] { kv.v[j * d + c0..j * d + c0 + 64].try_into().unwrap() };
    let mut c0 = 0;
    while c0 + 64 <= d {
        let mut acc = [[0f32; 64]; R];
        for r in 0..R {
            let out: &[f32; 64] = rows.out[(i0 + r) * d + c0..(i0 + r) * d + c0 + 64].try_into().unwrap();
            for k in 0..64 {
                acc[r][k] = out[k] * rescale[r];
            }
            for j in first[r]..shared_lo.min(visible[r]) {
                add_scaled(&mut acc[r], p[r][j], value(j, c0));
            }
        }
        for j in shared_lo..shared_hi {
            let v = value(j, c0);
            for r in 0..R {
                add_scaled(&mut acc[r], p[r][j], v);
            }
        }
        for r in 0..R {
            for j in shared_hi.max(first[r])..visible[r] {
                add_scaled(&mut acc[r], p[r][j], value(j, c0));
            }
            rows.out[(i0 + r) * d + c0..(i0 + r) * d + c0 + 64].copy_from_slice(&acc[r]);
        }
        c0 += 64;
    }
    if c0 < d {
        for r in 0..R {
            let rest = &mut rows.out[(i0 + r) * d + c0..(i0 + r + 1) * d];
            rest.iter_mut().for_each(|a| *a *= rescale[r]);
            for j in first[r]..visible[r] {
                for (a, &vc) in rest.iter_mut().zip(&kv.v[j * d + c0..(j + 1) * d]) {
                    *a = p[r][j].mul_add(vc, *a);
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
    fn vectorized_f16_stores_round_as_half_does() {
        // Values around f16's rounding boundaries, its overflow and subnormal ranges, signs.
        let src: Vec<f32> = (0..4099)
            .map(|i| {
                let x = f32::from_bits(0x3800_0000 + (i as u32) * 0x0004_1011);
                let x = if i % 7 == 0 {
                    x * 1e-5
                } else if i % 11 == 0 {
                    x * 7e4
                } else {
                    x
                };
                if i % 2 == 0 { -x } else { x }
            })
            .chain([0.0, -0.0, 65504.0, 65520.0, 1e-8, f32::INFINITY, f32::NEG_INFINITY])
            .collect();
        let mut got = vec![half::f16::ZERO; src.len()];
        <half::f16 as KvElement>::store(&src, &mut got);
        for (x, g) in src.iter().zip(&got) {
            assert_eq!(g.to_bits(), half::f16::from_f32(*x).to_bits(), "{x}");
        }
    }

    #[test]
    fn vectorized_block_loads_equal_the_scalar_ones() {
        for d in [64, 128] {
            let rows: Vec<half::f16> = (0..KEY_BLOCK * d)
                .map(|i| half::f16::from_f32(((i / d * 131 + i % d * 7) % 97) as f32 / 9.0 - 5.0))
                .collect();
            let reversed: Vec<half::f16> = rows.chunks(d).rev().flatten().copied().collect();
            for n_keys in [1, 5, 15, 16, 17, 33, 63, 64] {
                let mut want = KvBlock::new(d);
                want.load_scalar(n_keys, &rows, &reversed);
                let mut got = KvBlock::new(d);
                // Stale values from a longer block must not survive a shorter load.
                got.load(KEY_BLOCK, &rows, &rows);
                // Runs that end with the block, and runs that go on past it.
                got.load(n_keys, &rows[..n_keys * d], &reversed[..n_keys * d]);
                assert_eq!(got.kt, want.kt, "keys, d {d}, {n_keys} keys");
                assert_eq!(&got.v[..n_keys * d], &want.v[..n_keys * d], "values, d {d}, {n_keys} keys");
                got.load(n_keys, &rows, &reversed);
                assert_eq!(got.kt, want.kt, "keys, d {d}, {n_keys} keys");
                assert_eq!(&got.v[..n_keys * d], &want.v[..n_keys * d], "values, d {d}, {n_keys} keys");
                assert_eq!(got.n_keys, n_keys);
            }
        }
    }

    /// Rows stepped together (in groups sharing each key and value load) end with the bits they
    /// get stepped one by one, whatever keys each sees (none, a prefix, a window).
    #[test]
    fn grouped_rows_equal_rows_alone() {
        let d = 80; // a 64-wide slice and a rest
        let mut seed = 11u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        let keys: Vec<half::f16> = (0..KEY_BLOCK * d).map(|_| half::f16::from_f32(rnd() * 2.0)).collect();
        let values: Vec<half::f16> = (0..KEY_BLOCK * d).map(|_| half::f16::from_f32(rnd())).collect();
        let mut block = KvBlock::new(d);
        block.load(KEY_BLOCK, &keys, &values);
        // Pairs (0, 1), (4, 5), (6, 7), ... are grouped; row 3 sees nothing; rows 8 and 9 see
        // disjoint runs, rows 10 and 11 overlapping ones.
        let first = [0, 0, 3, 0, 10, 0, 0, 20, 0, 40, 5, 30, 7];
        let visible = [64, 1, 40, 0, 64, 33, 64, 30, 20, 64, 64, 50, 9];
        let m = first.len();
        let q: Vec<f32> = (0..m * d).map(|_| rnd()).collect();
        for softcap in [None, Some(3.0)] {
            let mut out: Vec<f32> = (0..m * d).map(|i| (i % 17) as f32 * 0.25).collect();
            let mut max: Vec<f32> =
                (0..m).map(|i| if i % 3 == 0 { f32::NEG_INFINITY } else { 0.5 }).collect();
            let mut sum = vec![1.5f32; m];
            let (mut alone_out, mut alone_max, mut alone_sum) = (out.clone(), max.clone(), sum.clone());
            let mut all = FlashRows {
                q: &q,
                first: &first,
                visible: &visible,
                softcap,
                out: &mut out,
                max: &mut max,
                sum: &mut sum,
            };
            flash_step(&mut all, &block);
            for i in 0..m {
                let mut one = FlashRows {
                    q: &q[i * d..(i + 1) * d],
                    first: &first[i..i + 1],
                    visible: &visible[i..i + 1],
                    softcap,
                    out: &mut alone_out[i * d..(i + 1) * d],
                    max: &mut alone_max[i..i + 1],
                    sum: &mut alone_sum[i..i + 1],
                };
                flash_step(&mut one, &block);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&alone_out), "outputs, softcap {softcap:?}");
            assert_eq!(bits(&max), bits(&alone_max), "maxima");
            assert_eq!(bits(&sum), bits(&alone_sum), "sums");
        }
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
        let (key_run, value_run) = (keys.concat(), values.concat());
        // Query rows seeing different runs of keys: all 150 (causal masking), the first 70, and
        // a sliding window of 60 (keys 90..150), starting inside the second block.
        let q: Vec<f32> = (0..3 * d).map(|_| rnd()).collect();
        let (starts, limits): ([usize; 3], [usize; 3]) = ([0, 0, 90], [n, 70, n]);
        for scalar in [false, true] {
            let (mut out, mut max, mut sum) = (vec![0f32; 3 * d], vec![f32::NEG_INFINITY; 3], vec![0f32; 3]);
            let mut block = KvBlock::new(d);
            for p0 in (0..n).step_by(KEY_BLOCK) {
                let nk = (n - p0).min(KEY_BLOCK);
                block.load(nk, &key_run[p0 * d..], &value_run[p0 * d..]);
                let visible: Vec<usize> = limits.iter().map(|&l| l.saturating_sub(p0).min(nk)).collect();
                let first: Vec<usize> = starts.iter().map(|&s| s.saturating_sub(p0).min(nk)).collect();
                let mut rows = FlashRows {
                    q: &q,
                    first: &first,
                    visible: &visible,
                    softcap: None,
                    out: &mut out,
                    max: &mut max,
                    sum: &mut sum,
                };
                if scalar { flash_step_scalar(&mut rows, &block) } else { flash_step(&mut rows, &block) }
            }
            for (i, &limit) in limits.iter().enumerate() {
                let (keys, values) = (&keys[starts[i]..limit], &values[starts[i]..limit]);
                let want = reference(&q[i * d..(i + 1) * d], keys, values, d);
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
        let (keys, values) = (keys.concat(), keys.concat());
        let q: Vec<f32> = (0..3 * d).map(|i| ((i * 13) % 17) as f32 / 9.0 - 0.8).collect();
        let mut block = KvBlock::new(d);
        block.load(KEY_BLOCK, &keys, &values);
        let (first, visible) = ([0, 0, 3], [KEY_BLOCK, 10, 40]);
        let run = |scalar: bool| {
            let (mut out, mut max, mut sum) = (vec![0.5f32; 3 * d], vec![0.25f32; 3], vec![1f32; 3]);
            let mut rows = FlashRows {
                q: &q,
                first: &first,
                visible: &visible,
                softcap: None,
                out: &mut out,
                max: &mut max,
                sum: &mut sum,
            };
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
