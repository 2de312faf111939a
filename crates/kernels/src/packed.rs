//! Weights repacked at load time for the tiled kernels: rows in groups of 8, block by block, so
//! that one pass over a group's memory feeds 8 rows, and (for prompts) each unpacked weight block
//! serves several tokens.
//!
//! Layout of one group (8 rows) for the legacy types, repeated for every block of 32 values:
//! ```text
//! d[8]: f16         scales of rows 0..8
//! m[8]: f16         minimums (Q4_1, Q5_1)
//! qh[4]: u64        fifth bits (Q5_0, Q5_1), per row pair (A, B), in value order
//!                   [A 0..16, B 0..16, A 16..32, B 16..32]
//! qs                per row pair: 4-bit types [A qs 16 B][B qs 16 B] (low nibbles are values
//!                   0..16, high nibbles 16..32); Q8_0 [A 0..16][B 0..16][A 16..32][B 16..32]
//! ```
//! so that, after splitting nibbles, a pair's 64 values always sit in the same value order.
//! Rows past the matrix's end (when it has no multiple of 8) are zero and their results unused.
//!
//! The kernels keep each output's floating-point sums exactly as the single-row kernels (and
//! ggml) form them; only how the integer work is shared changes.

use crate::GgmlType;
use crate::quants::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, as_blocks};

/// Rows per group for the legacy types (two rows per 512-bit register, four pairs).
pub const GROUP: usize = 8;
/// Rows per group for the K-quants (one row per 32-bit lane of a 512-bit register).
pub const GROUP_K: usize = 16;
/// The larger of the two, for output buffers.
pub const MAX_GROUP: usize = 16;

/// A weight matrix in the grouped layout.
pub struct PackedMatrix {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// Rows per group: [`GROUP`] or [`GROUP_K`].
    pub group_rows: usize,
    /// Bytes of one group (all its blocks).
    pub group_bytes: usize,
    data: AlignedBytes,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({} × {} {})", self.rows, self.cols, self.dtype)
    }
}

impl PackedMatrix {
    /// Whether `dtype` has a grouped layout and tiled kernel.
    pub fn supports(dtype: GgmlType) -> bool {
        group_block_bytes(dtype).is_some()
    }

    /// Repacks a row-major matrix (`rows` rows of `cols` values, encoded in `dtype`).
    pub fn pack(dtype: GgmlType, rows: usize, cols: usize, src: &[u8]) -> Option<PackedMatrix> {
        let block_bytes = group_block_bytes(dtype)?;
        let group_rows = group_rows(dtype);
        let n_blocks = cols / dtype.block_size();
        let row_bytes = dtype.row_bytes(cols as u64)? as usize;
        assert_eq!(src.len(), rows * row_bytes, "matrix size");
        let n_groups = rows.div_ceil(group_rows);
        let group_bytes = n_blocks * block_bytes;
        let mut data = AlignedBytes::zeroed(n_groups * group_bytes);
        let out = data.as_mut_slice();
        for g in 0..n_groups {
            for b in 0..n_blocks {
                let dst =
                    &mut out[g * group_bytes + b * block_bytes..g * group_bytes + (b + 1) * block_bytes];
                let row = |r: usize| -> Option<&[u8]> {
                    let r = g * group_rows + r;
                    (r < rows).then(|| &src[r * row_bytes..(r + 1) * row_bytes])
                };
                match dtype {
                    GgmlType::Q4_K => pack_q4_k(b, &row, dst),
                    GgmlType::Q6_K => pack_q6_k(b, &row, dst),
                    _ => pack_block(dtype, b, &row, dst),
                }
            }
        }
        Some(PackedMatrix { dtype, rows, cols, group_rows, group_bytes, data })
    }

    pub fn n_groups(&self) -> usize {
        self.rows.div_ceil(self.group_rows)
    }

    /// The bytes of group `g`.
    pub fn group(&self, g: usize) -> &[u8] {
        &self.data.as_slice()[g * self.group_bytes..(g + 1) * self.group_bytes]
    }

    pub fn n_bytes(&self) -> usize {
        self.data.len
    }
}

/// Bytes of one block of a group, per type.
pub fn group_block_bytes(dtype: GgmlType) -> Option<usize> {
    Some(match dtype {
        GgmlType::Q4_0 => 16 + 128,
        GgmlType::Q4_1 => 16 + 16 + 128,
        GgmlType::Q5_0 => 16 + 32 + 128,
        GgmlType::Q5_1 => 16 + 16 + 32 + 128,
        GgmlType::Q8_0 => 16 + 256,
        // d[16], dmin[16] (f16); scales[8][16], mins[8][16] (u8); qs[4 chunks][8 steps][16 rows][4]
        GgmlType::Q4_K => 32 + 32 + 128 + 128 + 2048,
        // d[16] (f16); scales[16 sub-groups][16 rows] (i8); low nibbles [32 steps][16][4];
        // high bits [16 steps][16][4]
        GgmlType::Q6_K => 32 + 256 + 2048 + 1024,
        _ => return None,
    })
}

/// Rows per group of a type's layout.
pub fn group_rows(dtype: GgmlType) -> usize {
    if matches!(dtype, GgmlType::Q4_K | GgmlType::Q6_K) { GROUP_K } else { GROUP }
}

/// Q4_K, super-block `b` of 16 rows. Each row's `qs` bytes are kept, transposed so that one
/// 64-byte load holds four consecutive bytes of every row: step `s` of chunk `c` holds
/// `qs[32c + 4s .. 32c + 4s + 4]`, whose low nibbles are values `64c + 4s ..` (sub-block `2c`)
/// and high nibbles values `64c + 32 + 4s ..` (sub-block `2c + 1`).
fn pack_q4_k<'s>(b: usize, row: &dyn Fn(usize) -> Option<&'s [u8]>, dst: &mut [u8]) {
    use crate::quants::{BlockQ4K, scale_min_k4};
    let (scales_at, mins_at, qs_at) = (64, 64 + 128, 64 + 256);
    for r in 0..GROUP_K {
        let Some(bytes) = row(r) else { continue };
        let blk = &as_blocks::<BlockQ4K>(bytes)[b];
        dst[2 * r..2 * r + 2].copy_from_slice(&blk.d.to_le_bytes());
        dst[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&blk.dmin.to_le_bytes());
        for s in 0..8 {
            let (sc, m) = scale_min_k4(s, &blk.scales);
            dst[scales_at + 16 * s + r] = sc;
            dst[mins_at + 16 * s + r] = m;
        }
        for c in 0..4 {
            for step in 0..8 {
                let at = qs_at + (c * 8 + step) * 64 + 4 * r;
                dst[at..at + 4].copy_from_slice(&blk.qs[32 * c + 4 * step..32 * c + 4 * step + 4]);
            }
        }
    }
}

/// Q6_K, super-block `b` of 16 rows. The 6-bit values `v[0..256]` are stored as low nibbles of
/// positions `j` and `j + 128` in one byte (step `j / 4`, 32 steps) and the two high bits of
/// `j`, `j + 64`, `j + 128`, `j + 192` in one byte (step `j / 4`, 16 steps), each step holding
/// four consecutive positions of all 16 rows.
fn pack_q6_k<'s>(b: usize, row: &dyn Fn(usize) -> Option<&'s [u8]>, dst: &mut [u8]) {
    use crate::quants::BlockQ6K;
    let (scales_at, low_at, high_at) = (32, 32 + 256, 32 + 256 + 2048);
    for r in 0..GROUP_K {
        let Some(bytes) = row(r) else { continue };
        let blk = &as_blocks::<BlockQ6K>(bytes)[b];
        dst[2 * r..2 * r + 2].copy_from_slice(&blk.d.to_le_bytes());
        for s in 0..16 {
            dst[scales_at + 16 * s + r] = blk.scales[s] as u8;
        }
        let mut v = [0u8; 256];
        crate::quants::q6_k_values_into(blk, &mut v);
        for j in 0..128 {
            let at = low_at + (j / 4) * 64 + 4 * r + j % 4;
            dst[at] = (v[j] & 15) | ((v[j + 128] & 15) << 4);
        }
        for j in 0..64 {
            let at = high_at + (j / 4) * 64 + 4 * r + j % 4;
            dst[at] =
                (v[j] >> 4) | ((v[j + 64] >> 4) << 2) | ((v[j + 128] >> 4) << 4) | ((v[j + 192] >> 4) << 6);
        }
    }
}

/// The fifth bits of a row pair in group value order: bits 0..16 A's values 0..16, 16..32 B's
/// values 0..16, 32..48 A's 16..32, 48..64 B's 16..32.
fn pair_mask(a: u32, b: u32) -> u64 {
    (a as u64 & 0xFFFF) | ((b as u64 & 0xFFFF) << 16) | ((a as u64 >> 16) << 32) | ((b as u64 >> 16) << 48)
}

fn pack_block<'s>(dtype: GgmlType, b: usize, row: &dyn Fn(usize) -> Option<&'s [u8]>, dst: &mut [u8]) {
    // Per row: (d, m, qh, qs) of block b, zero for padding rows.
    let mut d = [0u16; GROUP];
    let mut m = [0u16; GROUP];
    let mut qh = [0u32; GROUP];
    let mut qs = [[0u8; 32]; GROUP];
    for r in 0..GROUP {
        let Some(bytes) = row(r) else { continue };
        match dtype {
            GgmlType::Q4_0 => {
                let blk = &as_blocks::<BlockQ4_0>(bytes)[b];
                d[r] = blk.d;
                qs[r][..16].copy_from_slice(&blk.qs);
            }
            GgmlType::Q4_1 => {
                let blk = &as_blocks::<BlockQ4_1>(bytes)[b];
                d[r] = blk.d;
                m[r] = blk.m;
                qs[r][..16].copy_from_slice(&blk.qs);
            }
            GgmlType::Q5_0 => {
                let blk = &as_blocks::<BlockQ5_0>(bytes)[b];
                d[r] = blk.d;
                qh[r] = u32::from_le_bytes(blk.qh);
                qs[r][..16].copy_from_slice(&blk.qs);
            }
            GgmlType::Q5_1 => {
                let blk = &as_blocks::<BlockQ5_1>(bytes)[b];
                d[r] = blk.d;
                m[r] = blk.m;
                qh[r] = u32::from_le_bytes(blk.qh);
                qs[r][..16].copy_from_slice(&blk.qs);
            }
            GgmlType::Q8_0 => {
                let blk = &as_blocks::<BlockQ8_0>(bytes)[b];
                d[r] = blk.d;
                for (q, &v) in qs[r].iter_mut().zip(&blk.qs) {
                    *q = v as u8;
                }
            }
            _ => unreachable!("group_block_bytes gates the types"),
        }
    }
    let mut at = 0;
    let mut put = |bytes: &[u8], at: &mut usize| {
        dst[*at..*at + bytes.len()].copy_from_slice(bytes);
        *at += bytes.len();
    };
    for v in d {
        put(&v.to_le_bytes(), &mut at);
    }
    if matches!(dtype, GgmlType::Q4_1 | GgmlType::Q5_1) {
        for v in m {
            put(&v.to_le_bytes(), &mut at);
        }
    }
    if matches!(dtype, GgmlType::Q5_0 | GgmlType::Q5_1) {
        for p in 0..GROUP / 2 {
            put(&pair_mask(qh[2 * p], qh[2 * p + 1]).to_le_bytes(), &mut at);
        }
    }
    for p in 0..GROUP / 2 {
        let (a, bq) = (&qs[2 * p], &qs[2 * p + 1]);
        if dtype == GgmlType::Q8_0 {
            put(&a[..16], &mut at);
            put(&bq[..16], &mut at);
            put(&a[16..], &mut at);
            put(&bq[16..], &mut at);
        } else {
            put(&a[..16], &mut at);
            put(&bq[..16], &mut at);
        }
    }
    debug_assert_eq!(at, dst.len());
}

/// A byte buffer aligned to 64 (cache lines and 512-bit loads).
struct AlignedBytes {
    words: Vec<[u64; 8]>,
    len: usize,
}

impl AlignedBytes {
    fn zeroed(len: usize) -> AlignedBytes {
        AlignedBytes { words: vec![[0u64; 8]; len.div_ceil(64)], len }
    }
    fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }
}
