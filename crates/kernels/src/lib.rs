//! baimo's compute kernels: the ggml tensor types, a scalar reference for every operation on
//! them, and SIMD paths (AVX2, AVX-512 VNNI, NEON) chosen at run time.
//!
//! Kernels do not return `Result`: callers validate shapes once, at load time, and the kernels
//! assert what they rely on.

pub mod dispatch;
pub mod dtype;
pub mod flash;
pub mod lowbit;
pub mod ops;
pub mod packed;
pub mod quants;
mod simd;

pub use dispatch::{ActivationFormat, Isa, TileDot, VecDot, dequantize, dot_f16, quantize};
pub use dtype::GgmlType;
pub use packed::PackedMatrix;
pub use quants::{Q8Buf, Q8Kind, Q8Row, Q8RowMut};
