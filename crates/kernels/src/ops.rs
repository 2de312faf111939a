//! The small f32 operations of a transformer layer. Their cost is tiny next to the matrix
//! products, so they are plain Rust (the compiler vectorizes the simple loops); where ggml's
//! arithmetic has a particular order or precision that shows in the logits, it is kept.

/// RMSNorm: `out = weight ⊙ x / sqrt(mean(x²) + eps)`, the sum of squares in f64 as ggml does.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert!(x.len() == weight.len() && x.len() == out.len());
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// LayerNorm: `out = weight ⊙ (x − μ) / sqrt(σ² + eps) + bias` (biased variance).
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert!(x.len() == weight.len() && x.len() == bias.len() && x.len() == out.len());
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let scale = (1.0 / (var + eps as f64).sqrt()) as f32;
    let mean = mean as f32;
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (v - mean) * scale * w + b;
    }
}

/// Softmax in place over `x`, in f32 with the maximum subtracted first.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `e^x` by the vectorizable scheme of Arm's optimized-routines `expf` (MIT OR
/// Apache-2.0; max error ≈ 1.5 ULP): `x = n·ln2 + b`, `e^x = 2^n · (1 + poly(b))`, with the
/// polynomial evaluated in the order ggml's AVX-512 build uses for SiLU. Every instruction set
/// computes the same bits (see `exp_approx` in simd/x86.rs), so activations do not depend on
/// the CPU, and on AVX-512 they equal llama.cpp's.
pub mod exp_approx {
    pub const SHIFT: f32 = 12582912.0; // 0x1.8p23: adding it rounds to an integer
    pub const INV_LN2: f32 = f32::from_bits(0x3fb8aa3b); // 0x1.715476p+0
    pub const LN2_HI: f32 = f32::from_bits(0x3f317200); // 0x1.62e4p-1
    pub const LN2_LO: f32 = f32::from_bits(0x35bfbe8e); // 0x1.7f7d1cp-20
    pub const C0: f32 = f32::from_bits(0x3c072010); // 0x1.0e4020p-7
    pub const C1: f32 = f32::from_bits(0x3d2b9f17); // 0x1.573e2ep-5
    pub const C2: f32 = f32::from_bits(0x3e2aaf33); // 0x1.555e66p-3
    pub const C3: f32 = f32::from_bits(0x3efffedb); // 0x1.fffdb6p-2
    pub const C4: f32 = f32::from_bits(0x3f7ffff6); // 0x1.ffffecp-1

    /// `j · 2^n` rounded once, as AVX-512 `vscalefps` does, for |n| ≤ 252: two exact power-of-two
    /// steps, only the second of which can round.
    #[inline]
    pub fn scale_by_pow2(j: f32, n: i32) -> f32 {
        let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
        let half = n >> 1;
        j * pow2(half) * pow2(n - half)
    }

    #[inline]
    pub fn exp(x: f32) -> f32 {
        let z = x.mul_add(INV_LN2, SHIFT);
        let n = z - SHIFT;
        let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
        let u = b * b;
        let j = C0.mul_add(b, C1).mul_add(u, C2.mul_add(b, C3)).mul_add(u, C4.mul_add(b, 1.0));
        if n.abs() > 192.0 {
            return if n <= 0.0 { 0.0 } else { f32::INFINITY };
        }
        scale_by_pow2(j, n as i32)
    }
}

/// SiLU, `x / (1 + e^−x)`, with [`exp_approx::exp`].
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_approx::exp(0.0 - x))
}

/// `out = silu(gate) ⊙ up`, the gated half of SwiGLU (vectorized where the CPU allows).
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == out.len() && up.len() == out.len(), "swiglu lengths");
    #[cfg(target_arch = "x86_64")]
    {
        use crate::Isa;
        match Isa::best() {
            // SAFETY: `best` checked AVX-512 F/BW/VL (+ AVX2, FMA).
            Isa::Avx512Vnni => return unsafe { crate::simd::x86::swiglu_avx512(gate, up, out) },
            // SAFETY: `best` checked AVX2 and FMA.
            Isa::Avx2 => return unsafe { crate::simd::x86::swiglu_avx2(gate, up, out) },
            _ => {}
        }
    }
    swiglu_scalar(gate, up, out);
}

/// The scalar reference of [`swiglu`].
pub fn swiglu_scalar(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// `out = gelu(gate) ⊙ up` (tanh GELU), the gated half of GeGLU (Gemma's feed-forward).
pub fn geglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == out.len() && up.len() == out.len(), "geglu lengths");
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = gelu(g) * u;
    }
}

/// `out[i] = e^((x[i] − shift) · scale)` with [`exp_approx::exp`]: the unnormalised weights of a
/// softmax at temperature `1 / scale` (the sampler draws from them over a whole vocabulary every
/// token, so this is vectorized where the CPU allows).
pub fn exp_shifted(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "exp_shifted lengths");
    #[cfg(target_arch = "x86_64")]
    {
        use crate::Isa;
        match Isa::best() {
            // SAFETY: `best` checked AVX-512 F/BW/VL (+ AVX2, FMA).
            Isa::Avx512Vnni => return unsafe { crate::simd::x86::exp_shifted_avx512(x, shift, scale, out) },
            // SAFETY: `best` checked AVX2 and FMA.
            Isa::Avx2 => return unsafe { crate::simd::x86::exp_shifted_avx2(x, shift, scale, out) },
            _ => {}
        }
    }
    exp_shifted_scalar(x, shift, scale, out);
}

/// The scalar reference of [`exp_shifted`].
pub fn exp_shifted_scalar(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp_approx::exp((v - shift) * scale);
    }
}

/// GELU, tanh approximation (GPT-2's `gelu_new`).
#[inline]
pub fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// `y += x`
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    for (a, &b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

/// `y += a · x`
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (b, &v) in y.iter_mut().zip(x) {
        *b += a * v;
    }
}

/// `acc = f16(acc · scale)`, element by element (ggml's `ggml_vec_scale_f16`).
pub fn scale_f16(acc: &mut [half::f16], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if matches!(crate::Isa::best(), crate::Isa::Avx2 | crate::Isa::Avx512Vnni) {
        // SAFETY: `best` checked AVX2, F16C and FMA.
        return unsafe { crate::simd::x86::scale_f16_avx2(bytemuck::cast_slice_mut(acc), scale) };
    }
    for a in acc {
        *a = half::f16::from_f32(a.to_f32() * scale);
    }
}

/// `acc = f16(v · w + acc)` with one rounding of the product-sum, element by element (ggml's
/// `ggml_vec_mad_f16`): attention's running sum of softmax-weighted values.
pub fn mad_f16(acc: &mut [half::f16], v: &[half::f16], w: f32) {
    assert_eq!(acc.len(), v.len(), "mad_f16 lengths");
    #[cfg(target_arch = "x86_64")]
    if matches!(crate::Isa::best(), crate::Isa::Avx2 | crate::Isa::Avx512Vnni) {
        // SAFETY: `best` checked AVX2, F16C and FMA.
        return unsafe {
            crate::simd::x86::mad_f16_avx2(bytemuck::cast_slice_mut(acc), bytemuck::cast_slice(v), w)
        };
    }
    mad_f16_scalar(acc, v, w);
}

pub fn mad_f16_scalar(acc: &mut [half::f16], v: &[half::f16], w: f32) {
    for (a, v) in acc.iter_mut().zip(v) {
        *a = half::f16::from_f32(v.to_f32().mul_add(w, a.to_f32()));
    }
}

/// `acc += w · v` with `v` in f16, in f32 (attention's value sum for batched prompts).
pub fn axpy_f16(w: f32, v: &[half::f16], acc: &mut [f32]) {
    assert_eq!(acc.len(), v.len(), "axpy_f16 lengths");
    #[cfg(target_arch = "x86_64")]
    if matches!(crate::Isa::best(), crate::Isa::Avx2 | crate::Isa::Avx512Vnni) {
        // SAFETY: `best` checked AVX2, F16C and FMA.
        return unsafe { crate::simd::x86::axpy_f16_avx2(w, bytemuck::cast_slice(v), acc) };
    }
    for (a, v) in acc.iter_mut().zip(v) {
        *a = v.to_f32().mul_add(w, *a);
    }
}

/// How the rotated pairs of a head are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)`: Meta's original LLaMA and llama.cpp's `llama`/`baichuan` GGUFs
    /// (ggml `ROPE_TYPE_NORM`).
    Interleaved,
    /// Pairs `(i, i + d/2)`: Hugging Face "rotate_half", Qwen, GPT-NeoX (ggml `ROPE_TYPE_NEOX`).
    Neox,
}

/// The rotation angles of one position: `cos`/`sin` of `θ_i = pos · base^(−2i/d) / ff_i` for
/// each pair `i` of the `d` rotated dimensions. θ is built by repeated multiplication, as ggml's
/// rope cache does, so angles agree with llama.cpp to the last bit at every position.
/// `pos` is fractional under linear RoPE scaling.
pub fn rope_angles(pos: f32, dims: usize, base: f32, freq_factors: Option<&[f32]>, cos_sin: &mut [f32]) {
    debug_assert_eq!(cos_sin.len(), dims);
    let theta_scale = base.powf(-2.0 / dims as f32);
    let mut theta = pos;
    for i in 0..dims / 2 {
        let ff = freq_factors.map_or(1.0, |f| f[i]);
        let t = theta / ff;
        cos_sin[2 * i] = t.cos();
        cos_sin[2 * i + 1] = t.sin();
        theta *= theta_scale;
    }
}

/// Rotates the first `cos_sin.len()` dimensions of one head in place; the rest pass through.
pub fn rope_apply(head: &mut [f32], cos_sin: &[f32], style: RopeStyle) {
    #[cfg(target_arch = "x86_64")]
    if matches!(crate::Isa::best(), crate::Isa::Avx2 | crate::Isa::Avx512Vnni) {
        // SAFETY: both levels include FMA. Without the feature every `mul_add` is a libm call
        // (~1.5% of a batched decoding step); a fused multiply-add rounds once either way, so
        // the results are the same.
        return unsafe { rope_apply_fma(head, cos_sin, style) };
    }
    rope_body(head, cos_sin, style)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn rope_apply_fma(head: &mut [f32], cos_sin: &[f32], style: RopeStyle) {
    rope_body(head, cos_sin, style)
}

#[inline(always)]
fn rope_body(head: &mut [f32], cos_sin: &[f32], style: RopeStyle) {
    let dims = cos_sin.len();
    let half = dims / 2;
    for i in 0..half {
        let (c, s) = (cos_sin[2 * i], cos_sin[2 * i + 1]);
        let (a, b) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + half),
        };
        let (x0, x1) = (head[a], head[b]);
        // Fused multiply-adds in the shape GCC contracts ggml's rope to: the results are then
        // bit-identical to llama.cpp's (and a little more accurate than two roundings).
        head[a] = x0.mul_add(c, -(x1 * s));
        head[b] = x0.mul_add(s, x1 * c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximate_exp_is_within_two_ulp_of_libm() {
        for i in -20000..20000 {
            let x = i as f32 * 0.0043;
            let (got, want) = (exp_approx::exp(x), x.exp());
            let ulp = (want.to_bits() as i64 - got.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, libm {want}");
        }
        assert_eq!(exp_approx::exp(-200.0), 0.0);
        assert_eq!(exp_approx::exp(200.0), f32::INFINITY);
        assert!(exp_approx::exp(-100.0) > 0.0 && exp_approx::exp(-100.0) < 1e-43);
    }

    #[test]
    fn f16_accumulation_paths_agree_bit_for_bit() {
        use half::f16;
        let v: Vec<f16> = (0..77).map(|i| f16::from_f32((i as f32 * 0.37).sin() * 3.0)).collect();
        let start: Vec<f16> = (0..77).map(|i| f16::from_f32((i as f32 * 0.11).cos())).collect();
        let (mut simd, mut scalar) = (start.clone(), start.clone());
        for w in [0.3f32, 1.0, 0.0071, 2.5] {
            mad_f16(&mut simd, &v, w);
            mad_f16_scalar(&mut scalar, &v, w);
        }
        assert_eq!(simd, scalar);
        scale_f16(&mut simd, 0.37);
        for a in &mut scalar {
            *a = f16::from_f32(a.to_f32() * 0.37);
        }
        assert_eq!(simd, scalar);
    }

    #[test]
    fn exp_shifted_paths_agree_bit_for_bit() {
        let x: Vec<f32> = (0..1003).map(|i| ((i * 7919 % 4000) as f32 - 2000.0) / 13.0).collect();
        let mut want = vec![0f32; x.len()];
        exp_shifted_scalar(&x, 150.0, 1.25, &mut want);
        assert!(want.iter().all(|w| w.is_finite() && *w >= 0.0));
        assert!(want.contains(&0.0) && want.iter().any(|&w| w > 1.0));
        let mut got = vec![0f32; x.len()];
        exp_shifted(&x, 150.0, 1.25, &mut got);
        assert_eq!(got, want);
        #[cfg(target_arch = "x86_64")]
        for isa in crate::Isa::available() {
            got.fill(-1.0);
            // SAFETY: each path is called only when the CPU has it.
            match isa {
                crate::Isa::Avx2 => unsafe { crate::simd::x86::exp_shifted_avx2(&x, 150.0, 1.25, &mut got) },
                crate::Isa::Avx512Vnni => unsafe {
                    crate::simd::x86::exp_shifted_avx512(&x, 150.0, 1.25, &mut got)
                },
                _ => continue,
            }
            assert_eq!(got, want, "{isa:?}");
        }
        // Close to the library exp where it matters (weights near the maximum).
        for (&v, &w) in x.iter().zip(&want) {
            let exact = ((v - 150.0) * 1.25).exp();
            assert!((w - exact).abs() <= 1e-6 * exact.max(1e-30), "{v}: {w} vs {exact}");
        }
    }

    #[test]
    fn swiglu_paths_agree_bit_for_bit() {
        let gate: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 2000) as f32 - 1000.0) / 37.0).collect();
        let up: Vec<f32> = (0..1000).map(|i| ((i * 104729 % 999) as f32 - 500.0) / 91.0).collect();
        let mut want = vec![0f32; 1000];
        swiglu_scalar(&gate, &up, &mut want);
        let mut got = vec![0f32; 1000];
        swiglu(&gate, &up, &mut got);
        assert_eq!(got, want);
        #[cfg(target_arch = "x86_64")]
        for isa in crate::Isa::available() {
            got.fill(0.0);
            // SAFETY: each path is called only when the CPU has it.
            match isa {
                crate::Isa::Avx2 => unsafe { crate::simd::x86::swiglu_avx2(&gate, &up, &mut got) },
                crate::Isa::Avx512Vnni => unsafe { crate::simd::x86::swiglu_avx512(&gate, &up, &mut got) },
                _ => continue,
            }
            assert_eq!(got, want, "{isa:?}");
        }
        assert!((silu(1.0) - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn rms_norm_of_a_constant_vector_is_the_weight() {
        let x = [3.0f32; 8];
        let w = [0.5f32, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let mut out = [0f32; 8];
        rms_norm(&x, &w, 0.0, &mut out);
        assert!((out[0] - 0.5).abs() < 1e-6 && (out[2] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut out = [0f32; 4];
        layer_norm(&x, &[1.0; 4], &[0.0; 4], 0.0, &mut out);
        let mean: f32 = out.iter().sum::<f32>() / 4.0;
        let var: f32 = out.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_inputs() {
        let mut x = [1000.0f32, 1001.0, 999.0, f32::NEG_INFINITY];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
        assert!(x[1] > x[0] && x[0] > x[2]);
    }

    #[test]
    fn rope_styles_rotate_the_same_pairs_differently() {
        let mut cs = [0f32; 4];
        rope_angles(3.0, 4, 10000.0, None, &mut cs);
        assert!((cs[0] - 3f32.cos()).abs() < 1e-6 && (cs[1] - 3f32.sin()).abs() < 1e-6);
        let theta1 = 3.0 * 10000f32.powf(-0.5);
        assert!((cs[2] - theta1.cos()).abs() < 1e-5);

        let mut a = [1.0f32, 0.0, 0.0, 0.0];
        rope_apply(&mut a, &cs, RopeStyle::Interleaved);
        assert!((a[0] - 3f32.cos()).abs() < 1e-6 && (a[1] - 3f32.sin()).abs() < 1e-6);
        let mut b = [1.0f32, 0.0, 0.0, 0.0];
        rope_apply(&mut b, &cs, RopeStyle::Neox);
        assert!((b[0] - 3f32.cos()).abs() < 1e-6 && (b[2] - 3f32.sin()).abs() < 1e-6);
        // A rotation keeps the norm.
        let norm: f32 = b.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-6);
    }
}
