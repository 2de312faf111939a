//! Run-time choice of kernels. The binary is built for baseline x86-64 / aarch64; the CPU is
//! asked at start-up what it supports and the fastest matching path is used. Every path stays
//! selectable so tests can compare each against the scalar reference.

use std::ops::Range;

use crate::GgmlType;

use crate::lowbit;
use crate::packed::{GROUP, PackedMatrix};
use crate::quants::{self, Q8Kind, Q8Row, as_blocks};

/// An instruction-set level a kernel is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, the reference every other path is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL) with VNNI int8 dot products.
    Avx512Vnni,
    /// aarch64 Advanced SIMD.
    Neon,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Neon => "neon",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest path this CPU supports (detected once).
    pub fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            [Isa::Avx512Vnni, Isa::Avx2, Isa::Neon]
                .into_iter()
                .find(|i| i.is_available())
                .unwrap_or(Isa::Scalar)
        })
    }

    /// Every path this CPU can run, scalar first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }
}

/// What a weight type's dot product takes as its other operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationFormat {
    /// Plain f32 (float weights).
    F32,
    /// Activations quantized to 8 bits in blocks of 32 or 256.
    Q8(Q8Kind),
}

impl ActivationFormat {
    pub fn for_weights(dtype: GgmlType) -> ActivationFormat {
        match dtype.vec_dot_type() {
            GgmlType::Q8_0 | GgmlType::Q8_1 => ActivationFormat::Q8(Q8Kind::Blocks32),
            GgmlType::Q8_K => ActivationFormat::Q8(Q8Kind::Blocks256),
            _ => ActivationFormat::F32,
        }
    }
}

type Q8DotFn = unsafe fn(&[u8], Q8Row<'_>) -> f32;
type FloatDotFn = unsafe fn(&[u8], &[f32]) -> f32;

#[derive(Clone, Copy)]
enum DotFn {
    /// The dot product, and the variant used for tokens inside a batch (see
    /// [`VecDot::dot_q8_in_batch`]).
    Q8(Q8Kind, Q8DotFn, Q8DotFn),
    Float(FloatDotFn),
}

/// The dot product of one weight row with one activation row, for one weight type on one
/// instruction set. Only constructed for a path the CPU supports, which is what makes calling
/// the `unsafe` SIMD functions inside sound.
#[derive(Clone, Copy)]
pub struct VecDot {
    dtype: GgmlType,
    isa: Isa,
    f: DotFn,
}

impl std::fmt::Debug for VecDot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VecDot({} on {})", self.dtype, self.isa.name())
    }
}

impl VecDot {
    /// The kernel for `dtype` on `isa`, or `None` when the CPU lacks `isa` or the type has no
    /// kernel.
    pub fn new(isa: Isa, dtype: GgmlType) -> Option<VecDot> {
        if !isa.is_available() || !dtype.is_supported() {
            return None;
        }
        let f = match isa {
            Isa::Scalar => scalar_fn(dtype)?,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86_fn::<false>(dtype)?,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => x86_fn::<true>(dtype)?,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon_fn(dtype)?,
            #[allow(unreachable_patterns)]
            _ => return None,
        };
        Some(VecDot { dtype, isa, f })
    }

    /// The best kernel for `dtype` on this CPU.
    pub fn best(dtype: GgmlType) -> Option<VecDot> {
        VecDot::new(Isa::best(), dtype).or_else(|| VecDot::new(Isa::Scalar, dtype))
    }

    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn activation_format(&self) -> ActivationFormat {
        match self.f {
            DotFn::Q8(kind, ..) => ActivationFormat::Q8(kind),
            DotFn::Float(_) => ActivationFormat::F32,
        }
    }

    /// `w_row · x` for a quantized weight type. Panics if the lengths disagree (shapes are
    /// validated at load time, so that is a bug, never bad input).
    #[inline]
    pub fn dot_q8(&self, w_row: &[u8], x: Q8Row<'_>) -> f32 {
        self.dot_q8_with(w_row, x, false)
    }

    /// `w_row · x` for token `t` of a batch of `n` tokens multiplied together. llama.cpp
    /// multiplies batches of some types with other kernels, whose float sums are rounded at
    /// other points: its repacked GEMM (Q4_K, Q5_K) takes the tokens in whole groups of four,
    /// its tiled K-quant matmul (Q6_K) batches of eight or more. Following the same rule keeps
    /// logits identical to llama.cpp's; for the other types this is `dot_q8`.
    #[inline]
    pub fn dot_q8_in_batch(&self, w_row: &[u8], x: Q8Row<'_>, t: usize, n: usize) -> f32 {
        let batched = match self.dtype {
            GgmlType::Q4_K | GgmlType::Q5_K => t < n - n % 4,
            GgmlType::Q6_K => n >= 8,
            _ => false,
        };
        self.dot_q8_with(w_row, x, batched)
    }

    #[inline]
    fn dot_q8_with(&self, w_row: &[u8], x: Q8Row<'_>, batched: bool) -> f32 {
        let DotFn::Q8(kind, single, in_batch) = self.f else {
            panic!("dot_q8 called for float weights of type {}", self.dtype)
        };
        let n = x.qs.len();
        assert_eq!(Some(w_row.len() as u64), self.dtype.row_bytes(n as u64), "weight row length");
        assert!(
            x.d.len() == n / kind.block_size() && x.bsums.len() == n / 16 && x.s.len() == n / 32,
            "activation row layout"
        );
        let f = if batched { in_batch } else { single };
        // SAFETY: `self` exists only for an ISA this CPU supports (see `new`), and the lengths
        // the kernels index by were checked just above.
        unsafe { f(w_row, x) }
    }

    /// `w_row · x` for float weights.
    #[inline]
    pub fn dot_f32(&self, w_row: &[u8], x: &[f32]) -> f32 {
        let DotFn::Float(f) = self.f else {
            panic!("dot_f32 called for quantized weights of type {}", self.dtype)
        };
        assert_eq!(Some(w_row.len() as u64), self.dtype.row_bytes(x.len() as u64), "weight row length");
        // SAFETY: as in `dot_q8`.
        unsafe { f(w_row, x) }
    }
}

fn scalar_fn(dtype: GgmlType) -> Option<DotFn> {
    use GgmlType::*;
    use Q8Kind::*;
    Some(match dtype {
        Q4_0 => DotFn::Q8(
            Blocks32,
            |w, x| quants::vec_dot_q4_0(as_blocks(w), x),
            |w, x| quants::vec_dot_q4_0(as_blocks(w), x),
        ),
        Q4_1 => DotFn::Q8(
            Blocks32,
            |w, x| quants::vec_dot_q4_1(as_blocks(w), x),
            |w, x| quants::vec_dot_q4_1(as_blocks(w), x),
        ),
        Q5_0 => DotFn::Q8(
            Blocks32,
            |w, x| quants::vec_dot_q5_0(as_blocks(w), x),
            |w, x| quants::vec_dot_q5_0(as_blocks(w), x),
        ),
        Q5_1 => DotFn::Q8(
            Blocks32,
            |w, x| quants::vec_dot_q5_1(as_blocks(w), x),
            |w, x| quants::vec_dot_q5_1(as_blocks(w), x),
        ),
        Q8_0 => DotFn::Q8(
            Blocks32,
            |w, x| quants::vec_dot_q8_0(as_blocks(w), x),
            |w, x| quants::vec_dot_q8_0(as_blocks(w), x),
        ),
        Q4_K => DotFn::Q8(
            Blocks256,
            |w, x| quants::vec_dot_q4_k(as_blocks(w), x),
            |w, x| quants::vec_dot_q4_k(as_blocks(w), x),
        ),
        Q5_K => DotFn::Q8(
            Blocks256,
            |w, x| quants::vec_dot_q5_k(as_blocks(w), x),
            |w, x| quants::vec_dot_q5_k(as_blocks(w), x),
        ),
        Q6_K => DotFn::Q8(
            Blocks256,
            |w, x| quants::vec_dot_q6_k(as_blocks(w), x),
            |w, x| quants::vec_dot_q6_k(as_blocks(w), x),
        ),
        Q2_K => DotFn::Q8(
            Blocks256,
            |w, x| lowbit::vec_dot_q2_k(as_blocks(w), x),
            |w, x| lowbit::vec_dot_q2_k(as_blocks(w), x),
        ),
        Q3_K => DotFn::Q8(
            Blocks256,
            |w, x| lowbit::vec_dot_q3_k(as_blocks(w), x),
            |w, x| lowbit::vec_dot_q3_k(as_blocks(w), x),
        ),
        IQ4_NL => DotFn::Q8(
            Blocks32,
            |w, x| lowbit::vec_dot_iq4_nl(as_blocks(w), x),
            |w, x| lowbit::vec_dot_iq4_nl(as_blocks(w), x),
        ),
        IQ4_XS => DotFn::Q8(
            Blocks256,
            |w, x| lowbit::vec_dot_iq4_xs(as_blocks(w), x),
            |w, x| lowbit::vec_dot_iq4_xs(as_blocks(w), x),
        ),
        F32 => DotFn::Float(quants::vec_dot_f32),
        F16 => DotFn::Float(quants::vec_dot_f16),
        BF16 => DotFn::Float(quants::vec_dot_bf16),
        _ => return None,
    })
}

#[cfg(target_arch = "x86_64")]
fn x86_fn<const VNNI: bool>(dtype: GgmlType) -> Option<DotFn> {
    use crate::simd::x86::{avx2, avx512vnni};
    use GgmlType::*;
    use Q8Kind::*;
    macro_rules! pick {
        ($name:ident) => {
            if VNNI { avx512vnni::$name } else { avx2::$name }
        };
    }
    Some(match dtype {
        Q4_0 => DotFn::Q8(Blocks32, pick!(q4_0), pick!(q4_0)),
        Q4_1 => DotFn::Q8(Blocks32, pick!(q4_1), pick!(q4_1)),
        Q5_0 => DotFn::Q8(Blocks32, pick!(q5_0), pick!(q5_0)),
        Q5_1 => DotFn::Q8(Blocks32, pick!(q5_1), pick!(q5_1)),
        Q8_0 => DotFn::Q8(Blocks32, pick!(q8_0), pick!(q8_0)),
        Q4_K => DotFn::Q8(Blocks256, pick!(q4_k), pick!(q4_k_batched)),
        Q5_K => DotFn::Q8(Blocks256, pick!(q5_k), pick!(q5_k_batched)),
        Q6_K => DotFn::Q8(Blocks256, pick!(q6_k), pick!(q6_k_tiled)),
        Q2_K => DotFn::Q8(Blocks256, pick!(q2_k), pick!(q2_k)),
        Q3_K => DotFn::Q8(Blocks256, pick!(q3_k), pick!(q3_k)),
        IQ4_NL => DotFn::Q8(Blocks32, pick!(iq4_nl), pick!(iq4_nl)),
        IQ4_XS => DotFn::Q8(Blocks256, pick!(iq4_xs), pick!(iq4_xs)),
        F32 => DotFn::Float(pick!(f32)),
        F16 => DotFn::Float(pick!(f16)),
        BF16 => DotFn::Float(pick!(bf16)),
        _ => return None,
    })
}

#[cfg(target_arch = "aarch64")]
fn neon_fn(dtype: GgmlType) -> Option<DotFn> {
    use crate::simd::neon;
    use GgmlType::*;
    use Q8Kind::*;
    Some(match dtype {
        Q4_0 => DotFn::Q8(Blocks32, neon::q4_0, neon::q4_0),
        Q4_1 => DotFn::Q8(Blocks32, neon::q4_1, neon::q4_1),
        Q5_0 => DotFn::Q8(Blocks32, neon::q5_0, neon::q5_0),
        Q5_1 => DotFn::Q8(Blocks32, neon::q5_1, neon::q5_1),
        Q8_0 => DotFn::Q8(Blocks32, neon::q8_0, neon::q8_0),
        Q4_K => DotFn::Q8(Blocks256, neon::q4_k, neon::q4_k),
        Q5_K => DotFn::Q8(Blocks256, neon::q5_k, neon::q5_k),
        Q6_K => DotFn::Q8(Blocks256, neon::q6_k, neon::q6_k),
        // No NEON kernels for the low-bit types yet: the scalar reference serves.
        Q2_K | Q3_K | IQ4_NL | IQ4_XS => scalar_fn(dtype)?,
        F32 => DotFn::Float(neon::f32),
        F16 => DotFn::Float(neon::f16),
        BF16 => DotFn::Float(neon::bf16),
        _ => return None,
    })
}

/// Dequantizes a whole row (or several) of any supported type to f32 (scalar reference; used
/// for embedding lookups and tests, not in hot loops).
pub fn dequantize(dtype: GgmlType, src: &[u8], dst: &mut [f32]) {
    use GgmlType::*;
    assert_eq!(Some(src.len() as u64), dtype.row_bytes(dst.len() as u64), "dequantize lengths");
    match dtype {
        F32 => quants::dequantize_f32(src, dst),
        F16 => quants::dequantize_f16(src, dst),
        BF16 => quants::dequantize_bf16(src, dst),
        Q4_0 => quants::dequantize_q4_0(as_blocks(src), dst),
        Q4_1 => quants::dequantize_q4_1(as_blocks(src), dst),
        Q5_0 => quants::dequantize_q5_0(as_blocks(src), dst),
        Q5_1 => quants::dequantize_q5_1(as_blocks(src), dst),
        Q8_0 => quants::dequantize_q8_0(as_blocks(src), dst),
        Q4_K => quants::dequantize_q4_k(as_blocks(src), dst),
        Q5_K => quants::dequantize_q5_k(as_blocks(src), dst),
        Q6_K => quants::dequantize_q6_k(as_blocks(src), dst),
        Q2_K => lowbit::dequantize_q2_k(as_blocks(src), dst),
        Q3_K => lowbit::dequantize_q3_k(as_blocks(src), dst),
        IQ4_NL => lowbit::dequantize_iq4_nl(as_blocks(src), dst),
        IQ4_XS => lowbit::dequantize_iq4_xs(as_blocks(src), dst),
        other => panic!("dequantize: no kernel for {other} (callers check is_supported)"),
    }
}

/// Encodes `src` (a whole number of blocks) as `dtype`, with the reference quantizers. Returns
/// false for types baimo does not write.
pub fn quantize(dtype: GgmlType, src: &[f32], dst: &mut [u8]) -> bool {
    use GgmlType::*;
    assert_eq!(Some(dst.len() as u64), dtype.row_bytes(src.len() as u64), "quantize lengths");
    match dtype {
        Q4_0 => quants::quantize_q4_0(src, crate::quants::as_blocks_mut(dst)),
        Q4_1 => quants::quantize_q4_1(src, crate::quants::as_blocks_mut(dst)),
        Q5_0 => quants::quantize_q5_0(src, crate::quants::as_blocks_mut(dst)),
        Q5_1 => quants::quantize_q5_1(src, crate::quants::as_blocks_mut(dst)),
        Q8_0 => quants::quantize_q8_0(src, crate::quants::as_blocks_mut(dst)),
        Q4_K => quants::quantize_q4_k(src, crate::quants::as_blocks_mut(dst)),
        _ => return false,
    }
    true
}

/// `k · q` over f16 vectors, for attention scores. On x86 the sum is formed in the order of
/// ggml's f16 dot product for the same instruction set, so scores (and, through them, every
/// later rounding) match llama.cpp's bit for bit; elsewhere it is a plain f32 sum.
pub fn dot_f16(k: &[half::f16], q: &[half::f16]) -> f32 {
    assert_eq!(k.len(), q.len(), "dot_f16 lengths");
    let (k_bits, q_bits): (&[u16], &[u16]) = (bytemuck::cast_slice(k), bytemuck::cast_slice(q));
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::x86;
        if Isa::best() == Isa::Avx512Vnni {
            // SAFETY: AVX-512F, F16C and FMA are part of what `best` checked.
            return unsafe { x86::dot_f16_ggml_avx512(k_bits, q_bits) };
        }
        if Isa::best() == Isa::Avx2 {
            // SAFETY: AVX2, F16C and FMA are part of what `best` checked.
            return unsafe { x86::dot_f16_ggml_avx2(k_bits, q_bits) };
        }
    }
    let _ = (k_bits, q_bits);
    k.iter().zip(q).map(|(a, b)| a.to_f32() * b.to_f32()).sum()
}

type TileFn = unsafe fn(&[u8], usize, &[Q8Row<'_>], &mut [[f32; GROUP]]);

/// With exact arithmetic asked for, batches of at least this many tokens still take the fast
/// kernels for the legacy types: llama.cpp's own attention leaves its bit-exact path there too.
pub const FAST_BATCH: usize = 64;

/// The kernels of one type, by token count.
#[derive(Clone, Copy)]
// Only x86-64 has tiled kernels so far; elsewhere no variant is built.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum TileKernels {
    Legacy { exact: [TileFn; 2], fast: [TileFn; 8] },
    Q4K { single: [TileFn; 4], batched: TileFn },
    Q6K { tiled: [TileFn; 4], lanes: TileFn },
}

/// The product of a [`PackedMatrix`] group (16 rows) with a batch of tokens, on CPUs that have
/// it. Asked for exact results, it gives (for batches smaller than [`FAST_BATCH`], and for the
/// K-quants at any size) those of [`VecDot::dot_q8_in_batch`] row by row, bit for bit, which are
/// llama.cpp's; otherwise the fastest kernels, whose float sums are ordered differently.
#[derive(Clone, Copy)]
pub struct TileDot {
    dtype: GgmlType,
    kind: Q8Kind,
    kernels: TileKernels,
}

impl std::fmt::Debug for TileDot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TileDot({})", self.dtype)
    }
}

impl TileDot {
    /// The tiled kernel for `dtype` on `isa`, if there is one.
    pub fn new(isa: Isa, dtype: GgmlType) -> Option<TileDot> {
        if !isa.is_available() || !PackedMatrix::supports(dtype) {
            return None;
        }
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                use crate::simd::x86_tiles as t;
                use TileKernels::*;
                let legacy = |exact, fast| Some((Q8Kind::Blocks32, Legacy { exact, fast }));
                let (kind, kernels) = match dtype {
                    GgmlType::Q4_0 => legacy(
                        [t::q4_0_exact1, t::q4_0_exact2],
                        [
                            t::q4_0_fast1,
                            t::q4_0_fast2,
                            t::q4_0_fast3,
                            t::q4_0_fast4,
                            t::q4_0_fast5,
                            t::q4_0_fast6,
                            t::q4_0_fast7,
                            t::q4_0_fast8,
                        ],
                    ),
                    GgmlType::Q4_1 => legacy(
                        [t::q4_1_exact1, t::q4_1_exact2],
                        [
                            t::q4_1_fast1,
                            t::q4_1_fast2,
                            t::q4_1_fast3,
                            t::q4_1_fast4,
                            t::q4_1_fast5,
                            t::q4_1_fast6,
                            t::q4_1_fast7,
                            t::q4_1_fast8,
                        ],
                    ),
                    GgmlType::Q5_0 => legacy(
                        [t::q5_0_exact1, t::q5_0_exact2],
                        [
                            t::q5_0_fast1,
                            t::q5_0_fast2,
                            t::q5_0_fast3,
                            t::q5_0_fast4,
                            t::q5_0_fast5,
                            t::q5_0_fast6,
                            t::q5_0_fast7,
                            t::q5_0_fast8,
                        ],
                    ),
                    GgmlType::Q5_1 => legacy(
                        [t::q5_1_exact1, t::q5_1_exact2],
                        [
                            t::q5_1_fast1,
                            t::q5_1_fast2,
                            t::q5_1_fast3,
                            t::q5_1_fast4,
                            t::q5_1_fast5,
                            t::q5_1_fast6,
                            t::q5_1_fast7,
                            t::q5_1_fast8,
                        ],
                    ),
                    GgmlType::Q8_0 => legacy(
                        [t::q8_0_exact1, t::q8_0_exact2],
                        [
                            t::q8_0_fast1,
                            t::q8_0_fast2,
                            t::q8_0_fast3,
                            t::q8_0_fast4,
                            t::q8_0_fast5,
                            t::q8_0_fast6,
                            t::q8_0_fast7,
                            t::q8_0_fast8,
                        ],
                    ),
                    GgmlType::IQ4_NL => legacy(
                        [t::iq4_nl_fast1, t::iq4_nl_fast2],
                        [
                            t::iq4_nl_fast1,
                            t::iq4_nl_fast2,
                            t::iq4_nl_fast3,
                            t::iq4_nl_fast4,
                            t::iq4_nl_fast5,
                            t::iq4_nl_fast6,
                            t::iq4_nl_fast7,
                            t::iq4_nl_fast8,
                        ],
                    ),
                    // Q8_K activations, one order (see `q2_k`): the Legacy hand-out serves.
                    GgmlType::Q2_K => Some((
                        Q8Kind::Blocks256,
                        Legacy {
                            exact: [t::q2_k1, t::q2_k2],
                            fast: [
                                t::q2_k1,
                                t::q2_k2,
                                t::q2_k3,
                                t::q2_k4,
                                t::q2_k5,
                                t::q2_k6,
                                t::q2_k7,
                                t::q2_k8,
                            ],
                        },
                    )),
                    GgmlType::Q3_K => Some((
                        Q8Kind::Blocks256,
                        Legacy {
                            exact: [t::q3_k1, t::q3_k2],
                            fast: [
                                t::q3_k1,
                                t::q3_k2,
                                t::q3_k3,
                                t::q3_k4,
                                t::q3_k5,
                                t::q3_k6,
                                t::q3_k7,
                                t::q3_k8,
                            ],
                        },
                    )),
                    // Q8_K activations, one order (see `iq4_xs`): the Legacy hand-out serves.
                    GgmlType::IQ4_XS => Some((
                        Q8Kind::Blocks256,
                        Legacy {
                            exact: [t::iq4_xs1, t::iq4_xs2],
                            fast: [
                                t::iq4_xs1,
                                t::iq4_xs2,
                                t::iq4_xs3,
                                t::iq4_xs4,
                                t::iq4_xs5,
                                t::iq4_xs6,
                                t::iq4_xs7,
                                t::iq4_xs8,
                            ],
                        },
                    )),
                    GgmlType::Q4_K => Some((
                        Q8Kind::Blocks256,
                        Q4K {
                            single: [t::q4_k_single1, t::q4_k_single2, t::q4_k_single3, t::q4_k_single4],
                            batched: t::q4_k_batched4,
                        },
                    )),
                    GgmlType::Q5_K => Some((
                        Q8Kind::Blocks256,
                        Q4K {
                            single: [t::q5_k_single1, t::q5_k_single2, t::q5_k_single3, t::q5_k_single4],
                            batched: t::q5_k_batched4,
                        },
                    )),
                    GgmlType::Q6_K => Some((
                        Q8Kind::Blocks256,
                        Q6K {
                            tiled: [t::q6_k_tiled1, t::q6_k_tiled2, t::q6_k_tiled3, t::q6_k_tiled4],
                            lanes: t::q6_k_lanes1,
                        },
                    )),
                    _ => None,
                }?;
                Some(TileDot { dtype, kind, kernels })
            }
            _ => None,
        }
    }

    /// The best tiled kernel for `dtype` on this CPU.
    pub fn best(dtype: GgmlType) -> Option<TileDot> {
        TileDot::new(Isa::best(), dtype)
    }

    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    /// The activation format the kernel reads.
    pub fn activation_kind(&self) -> Q8Kind {
        self.kind
    }

    /// `out[t][r] = row (16·group + r) · xs[t]` for every token of the batch `xs`.
    pub fn run(
        &self,
        m: &PackedMatrix,
        group: usize,
        xs: &[Q8Row<'_>],
        out: &mut [[f32; GROUP]],
        exact: bool,
    ) {
        let n = xs.len();
        assert!(n >= 1 && out.len() >= n, "token count");
        assert_eq!(m.dtype, self.dtype, "packed matrix type");
        assert!(group < m.n_groups(), "group index");
        let n_blocks = m.cols / self.kind.block_size();
        for x in xs {
            assert!(
                x.qs.len() == m.cols
                    && x.d.len() == n_blocks
                    && x.s.len() == m.cols / 32
                    && x.bsums.len() == m.cols / 16,
                "activation row layout"
            );
        }
        let bytes = m.group(group);
        // Runs `kernels[k − 1]` on consecutive chunks of `k ≤ kernels.len()` tokens of `tokens`.
        let mut chunks = |kernels: &[TileFn], tokens: Range<usize>| {
            let mut t = tokens.start;
            while t < tokens.end {
                let k = (tokens.end - t).min(kernels.len());
                // SAFETY: the kernels exist only for an ISA this CPU supports (see `new`); the
                // group holds `n_blocks` blocks and every activation row the lengths checked
                // above; kernel `k − 1` reads exactly `k` tokens and writes `k` outputs.
                unsafe { kernels[k - 1](bytes, n_blocks, &xs[t..t + k], &mut out[t..t + k]) };
                t += k;
            }
        };
        match self.kernels {
            TileKernels::Legacy { exact: in_order, fast } => {
                chunks(if exact && n < FAST_BATCH { &in_order } else { &fast }, 0..n)
            }
            TileKernels::Q4K { single, batched } => {
                // As llama.cpp: whole groups of four tokens through the GEMM, the rest the GEMV.
                let quads = n - n % 4;
                let only_four = [batched, batched, batched, batched];
                chunks(&only_four, 0..quads);
                chunks(&single, quads..n);
            }
            TileKernels::Q6K { tiled, lanes } => {
                // llama.cpp takes the tiled matmul from eight tokens; below, its eight-lane order.
                if n >= 8 || !exact { chunks(&tiled, 0..n) } else { chunks(&[lanes], 0..n) }
            }
        }
    }
}
