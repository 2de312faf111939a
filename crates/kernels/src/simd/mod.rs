//! SIMD implementations of the kernels in `quants`, one module per instruction-set family.

#[cfg(target_arch = "x86_64")]
pub mod x86;

#[cfg(target_arch = "x86_64")]
pub mod x86_tiles;

#[cfg(target_arch = "aarch64")]
pub mod neon;
