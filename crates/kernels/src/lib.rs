//! baimo's compute kernels: the ggml tensor types, a scalar reference for every operation on
//! them, and SIMD paths (AVX2, AVX-512 VNNI, NEON) chosen at run time.
//!
//! Kernels do not return `Result`: callers validate shapes once, at load time, and the kernels
//! `debug_assert!` what they rely on.

pub mod dtype;

pub use dtype::GgmlType;
