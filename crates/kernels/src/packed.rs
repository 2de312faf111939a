//! Weights repacked at load time for the tiled kernels: rows in groups of 16, block by block,
//! with the bytes of the 16 rows interleaved four at a time. One 64-byte load then holds four
//! consecutive weights of each of 16 rows, which is one 32-bit lane per row: an int8 dot product
//! instruction against four activations broadcast to every lane advances 16 rows at once, and an
//! unpacked group serves every token of a batch.
//!
//! Layout of one group for the legacy types, repeated for every block of 32 values:
//! ```text
//! d[16]: f16          scales of rows 0..16
//! m[16]: f16          minimums (Q4_1, Q5_1)
//! qh[8]: u64          fifth bits (Q5_0, Q5_1): word s, bit 4r + k = value 4s + k of row r
//! qs                  4-bit types: [4 steps][16 rows][4 bytes], step s = the row's qs bytes
//!                     4s..4s+4 (low nibbles values 4s.., high nibbles values 16 + 4s..);
//!                     Q8_0: [8 steps][16 rows][4 bytes], values 4s..4s+4 stored as w + 128
//! ```
//! IQ4_NL takes Q4_0's layout; its nibbles index the 16 levels (the kernel looks them up).
//! Q2_K, per super-block of 256 values:
//! ```text
//! d[16], dmin[16]: f16
//! scales[16][16]: u8                 sub-block j's byte (scale low nibble, minimum high), row r
//! qs[16 sub-blocks][16 rows][4]      byte k, bits 2c..2c+2: value 16j + 4c + k, so a shift by
//!                                    2c and a mask give values 16j + 4c .. + 4 in a lane
//! ```
//! Q3_K, per super-block of 256 values, each value stored plus 4 (0..8):
//! ```text
//! d[16]: f16
//! scales[16][16]: i8                 sub-block j's scale (minus 32), row r
//! qs[16 sub-blocks][16 rows][4]      the low two bits, as Q2_K's
//! high[16 sub-blocks][4 steps]: u64  bit 4r + k: the third bit of value 16j + 4c + k, row r
//! ```
//! IQ4_XS, per super-block of 256 values:
//! ```text
//! d[16]: f16
//! scales[8][16]: i8                  group g's scale minus 32, row r
//! qs[8 groups][4 steps][16 rows][4]  as IQ4_NL's block, for each group of 32 values
//! ```
//! Q4_K, per super-block of 256 values:
//! ```text
//! d[16], dmin[16]: f16
//! scales[8][16], mins[8][16]: u8     the 6-bit scale and minimum of sub-block s, row r
//! qs[4 chunks][8 steps][16 rows][4]  chunk c, step s = the row's qs bytes 32c + 4s..: low
//!                                    nibbles values 64c + 4s.., high nibbles 64c + 32 + 4s..
//! ```
//! Q5_K takes Q4_K's layout and adds the fifth bits after the values:
//! ```text
//! qh[4 chunks][8 steps][2]: u64      bit 4r + k of word (c, s, 0): the fifth bit of value
//!                                    64c + 4s + k of row r; of word (c, s, 1): of 64c + 32 + 4s + k
//! ```
//! Q6_K, per super-block: `d[16]: f16`, `scales[16][16]: i8`, then the 6-bit values in 16 steps
//! `i` of three parts `[16 rows][4]` each, read together: the low nibbles of positions 4i..
//! (bits 0..4) and 128 + 4i.. (bits 4..8); the same for 64 + 4i.. and 192 + 4i..; and the top
//! two bits of positions 4i.., 64 + 4i.., 128 + 4i.., 192 + 4i.. (bits 0, 2, 4, 6).
//!
//! Rows past the matrix's end (when it has no multiple of 16) are zero and their results unused.

use crate::GgmlType;
use crate::lowbit::{
    BlockIq4Nl, BlockIq4Xs, BlockQ2K, BlockQ3K, iq4_xs_scale, low2, q3_k_scales, q3_k_value,
};
use crate::quants::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, as_blocks,
    scale_min_k4,
};

/// Rows per group.
pub const GROUP: usize = 16;

/// A weight matrix in the grouped layout.
pub struct PackedMatrix {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
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
    /// Whether `dtype` has a grouped layout.
    pub fn supports(dtype: GgmlType) -> bool {
        group_block_bytes(dtype).is_some()
    }

    /// Repacks a row-major matrix (`rows` rows of `cols` values, encoded in `dtype`).
    pub fn pack(dtype: GgmlType, rows: usize, cols: usize, src: &[u8]) -> Option<PackedMatrix> {
        let block_bytes = group_block_bytes(dtype)?;
        let n_blocks = cols / dtype.block_size();
        let row_bytes = dtype.row_bytes(cols as u64)? as usize;
        assert_eq!(src.len(), rows * row_bytes, "matrix size");
        let n_groups = rows.div_ceil(GROUP);
        let group_bytes = n_blocks * block_bytes;
        let mut data = AlignedBytes::zeroed(n_groups * group_bytes);
        let out = data.as_mut_slice();
        for g in 0..n_groups {
            for b in 0..n_blocks {
                let dst =
                    &mut out[g * group_bytes + b * block_bytes..g * group_bytes + (b + 1) * block_bytes];
                let row = |r: usize| -> Option<&[u8]> {
                    let r = g * GROUP + r;
                    (r < rows).then(|| &src[r * row_bytes..(r + 1) * row_bytes])
                };
                match dtype {
                    GgmlType::Q4_K => pack_k4(&row, dst, |bytes| {
                        let blk = &as_blocks::<BlockQ4K>(bytes)[b];
                        (blk.d, blk.dmin, &blk.scales, &blk.qs, None)
                    }),
                    GgmlType::Q5_K => pack_k4(&row, dst, |bytes| {
                        let blk = &as_blocks::<BlockQ5K>(bytes)[b];
                        (blk.d, blk.dmin, &blk.scales, &blk.qs, Some(&blk.qh))
                    }),
                    GgmlType::IQ4_XS => pack_iq4_xs(b, &row, dst),
                    GgmlType::Q2_K => pack_q2_k(b, &row, dst),
                    GgmlType::Q3_K => pack_q3_k(b, &row, dst),
                    GgmlType::Q6_K => pack_q6_k(b, &row, dst),
                    _ => pack_legacy(dtype, b, &row, dst),
                }
            }
        }
        Some(PackedMatrix { dtype, rows, cols, group_bytes, data })
    }

    pub fn n_groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    /// The bytes of group `g`.
    pub fn group(&self, g: usize) -> &[u8] {
        &self.data.as_slice()[g * self.group_bytes..(g + 1) * self.group_bytes]
    }

    pub fn n_bytes(&self) -> usize {
        self.data.len
    }
}

/// Bytes of one block (32 values, or a 256-value super-block for the K-quants) of a group.
pub fn group_block_bytes(dtype: GgmlType) -> Option<usize> {
    Some(match dtype {
        GgmlType::Q4_0 => 32 + 256,
        GgmlType::Q4_1 => 32 + 32 + 256,
        GgmlType::Q5_0 => 32 + 64 + 256,
        GgmlType::Q5_1 => 32 + 32 + 64 + 256,
        GgmlType::Q8_0 => 32 + 512,
        // Q4_0's layout: the nibbles are indices into IQ4_NL's levels.
        GgmlType::IQ4_NL => 32 + 256,
        GgmlType::IQ4_XS => 32 + 128 + 2048,
        GgmlType::Q2_K => 32 + 32 + 256 + 1024,
        GgmlType::Q3_K => 32 + 256 + 1024 + 512,
        GgmlType::Q4_K => 32 + 32 + 128 + 128 + 2048,
        GgmlType::Q5_K => 32 + 32 + 128 + 128 + 2048 + 512,
        GgmlType::Q6_K => 32 + 256 + 2048 + 1024,
        _ => return None,
    })
}

/// Where each part of a legacy block starts: (m, qh, qs).
pub(crate) const fn legacy_offsets(has_min: bool, has_qh: bool) -> (usize, usize, usize) {
    let m = 32;
    let qh = if has_min { m + 32 } else { m };
    let qs = if has_qh { qh + 64 } else { qh };
    (m, qh, qs)
}

fn pack_legacy<'s>(dtype: GgmlType, b: usize, row: &dyn Fn(usize) -> Option<&'s [u8]>, dst: &mut [u8]) {
    let has_min = matches!(dtype, GgmlType::Q4_1 | GgmlType::Q5_1);
    let has_qh = matches!(dtype, GgmlType::Q5_0 | GgmlType::Q5_1);
    let (m_at, qh_at, qs_at) = legacy_offsets(has_min, has_qh);
    for r in 0..GROUP {
        let Some(bytes) = row(r) else { continue };
        // (d, m, qh, qs) of block b of this row.
        let (d, m, qh, qs): (u16, u16, u32, &[u8]) = match dtype {
            GgmlType::Q4_0 => {
                let blk = &as_blocks::<BlockQ4_0>(bytes)[b];
                (blk.d, 0, 0, &blk.qs)
            }
            GgmlType::Q4_1 => {
                let blk = &as_blocks::<BlockQ4_1>(bytes)[b];
                (blk.d, blk.m, 0, &blk.qs)
            }
            GgmlType::Q5_0 => {
                let blk = &as_blocks::<BlockQ5_0>(bytes)[b];
                (blk.d, 0, u32::from_le_bytes(blk.qh), &blk.qs)
            }
            GgmlType::Q5_1 => {
                let blk = &as_blocks::<BlockQ5_1>(bytes)[b];
                (blk.d, blk.m, u32::from_le_bytes(blk.qh), &blk.qs)
            }
            GgmlType::Q8_0 => {
                let blk = &as_blocks::<BlockQ8_0>(bytes)[b];
                (blk.d, 0, 0, bytemuck::cast_slice(&blk.qs))
            }
            GgmlType::IQ4_NL => {
                let blk = &as_blocks::<BlockIq4Nl>(bytes)[b];
                (blk.d, 0, 0, &blk.qs)
            }
            _ => unreachable!("group_block_bytes gates the types"),
        };
        dst[2 * r..2 * r + 2].copy_from_slice(&d.to_le_bytes());
        if has_min {
            dst[m_at + 2 * r..m_at + 2 * r + 2].copy_from_slice(&m.to_le_bytes());
        }
        if has_qh {
            for s in 0..8 {
                let nibble = (qh >> (4 * s)) & 0xF;
                let at = qh_at + 8 * s;
                let mut word = u64::from_le_bytes(dst[at..at + 8].try_into().unwrap());
                word |= (nibble as u64) << (4 * r);
                dst[at..at + 8].copy_from_slice(&word.to_le_bytes());
            }
        }
        for (s, four) in qs.chunks_exact(4).enumerate() {
            let at = qs_at + 64 * s + 4 * r;
            if dtype == GgmlType::Q8_0 {
                for (o, &v) in dst[at..at + 4].iter_mut().zip(four) {
                    *o = v ^ 0x80;
                }
            } else {
                dst[at..at + 4].copy_from_slice(four);
            }
        }
    }
}

/// The parts of a Q4_K or Q5_K super-block: d, dmin, packed scales, 4-bit values, fifth bits.
type K4Parts<'s> = (u16, u16, &'s [u8; 12], &'s [u8; 128], Option<&'s [u8; 32]>);

/// A Q4_K or Q5_K super-block of 16 rows (layout above); `parts` finds it in a row's bytes.
fn pack_k4<'s>(
    row: &dyn Fn(usize) -> Option<&'s [u8]>,
    dst: &mut [u8],
    parts: impl Fn(&'s [u8]) -> K4Parts<'s>,
) {
    let (scales_at, mins_at, qs_at) = (64, 64 + 128, 64 + 256);
    let qh_at = qs_at + 2048;
    for r in 0..GROUP {
        let Some(bytes) = row(r) else { continue };
        let (d, dmin, scales, qs, qh) = parts(bytes);
        dst[2 * r..2 * r + 2].copy_from_slice(&d.to_le_bytes());
        dst[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&dmin.to_le_bytes());
        for s in 0..8 {
            let (sc, m) = scale_min_k4(s, scales);
            dst[scales_at + 16 * s + r] = sc;
            dst[mins_at + 16 * s + r] = m;
        }
        for (step, four) in qs.chunks_exact(4).enumerate() {
            let at = qs_at + 64 * step + 4 * r;
            dst[at..at + 4].copy_from_slice(four);
        }
        // Q5_K: bit 2c of qh[l] tops value 64c + l, bit 2c + 1 value 64c + 32 + l.
        let Some(qh) = qh else { continue };
        for step in 0..32 {
            let (c, s) = (step / 8, step % 8);
            for half in 0..2 {
                let at = qh_at + 8 * (2 * step + half);
                let mut word = u64::from_le_bytes(dst[at..at + 8].try_into().unwrap());
                for k in 0..4 {
                    if qh[4 * s + k] >> (2 * c + half) & 1 != 0 {
                        word |= 1 << (4 * r + k);
                    }
                }
                dst[at..at + 8].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
}

/// Q2_K super-block `b` of 16 rows (layout above).
fn pack_q2_k<'s>(b: usize, row: &dyn Fn(usize) -> Option<&'s [u8]>, dst: &mut [u8]) {
    let (scales_at, qs_at) = (64, 64 + 256);
    for r in 0..GROUP {
        let Some(bytes) = row(r) else { continue };
        let blk = &as_blocks::<BlockQ2K>(bytes)[b];
        dst[2 * r..2 * r + 2].copy_from_slice(&blk.d.to_le_bytes());
        dst[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&blk.dmin.to_le_bytes());
        for j in 0..16 {
            dst[scales_at + 16 * j + r] = blk.scales[j];
            for k in 0..4 {
                let byte = (0..4).fold(0u8, |acc, c| acc | (low2(&blk.qs, 16 * j + 4 * c + k) << (2 * c)));
                dst[qs_at + 64 * j + 4 * r + k] = byte;
            }
        }
    }
}

/// Q3_K super-block `b` of 16 rows (layout above).
fn pack_q3_k<'s>(b: usize, row: &dyn Fn(usize) -> Option<&'s [u8]>, dst: &mut [u8]) {
    let (scales_at, qs_at, high_at) = (32, 32 + 256, 32 + 256 + 1024);
    for r in 0..GROUP {
        let Some(bytes) = row(r) else { continue };
        let blk = &as_blocks::<BlockQ3K>(bytes)[b];
        dst[2 * r..2 * r + 2].copy_from_slice(&blk.d.to_le_bytes());
        let scales = q3_k_scales(&blk.scales);
        for j in 0..16 {
            dst[scales_at + 16 * j + r] = scales[j] as i8 as u8;
            for c in 0..4 {
                let at = high_at + 8 * (4 * j + c);
                let mut word = u64::from_le_bytes(dst[at..at + 8].try_into().unwrap());
                for k in 0..4 {
                    // The value plus 4 (0..8): its low pair with the others of the lane, its
                    // third bit in the step's mask.
                    let u = (q3_k_value(blk, 16 * j + 4 * c + k) + 4) as u8;
                    dst[qs_at + 64 * j + 4 * r + k] |= (u & 3) << (2 * c);
                    word |= ((u >> 2) as u64) << (4 * r + k);
                }
                dst[at..at + 8].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
}

/// IQ4_XS super-block `b` of 16 rows (layout above).
fn pack_iq4_xs<'s>(b: usize, row: &dyn Fn(usize) -> Option<&'s [u8]>, dst: &mut [u8]) {
    let (scales_at, qs_at) = (32, 32 + 128);
    for r in 0..GROUP {
        let Some(bytes) = row(r) else { continue };
        let blk = &as_blocks::<BlockIq4Xs>(bytes)[b];
        dst[2 * r..2 * r + 2].copy_from_slice(&blk.d.to_le_bytes());
        for g in 0..8 {
            // The scale with its offset taken off (−32..31), as a signed byte.
            dst[scales_at + 16 * g + r] = iq4_xs_scale(blk, g) as i8 as u8;
            for (s, four) in blk.qs[16 * g..16 * g + 16].chunks_exact(4).enumerate() {
                let at = qs_at + 256 * g + 64 * s + 4 * r;
                dst[at..at + 4].copy_from_slice(four);
            }
        }
    }
}

/// Q6_K super-block `b` of 16 rows (layout above).
fn pack_q6_k<'s>(b: usize, row: &dyn Fn(usize) -> Option<&'s [u8]>, dst: &mut [u8]) {
    let scales_at = 32;
    // Step i: [low step i][low step 16 + i][high step i], 64 bytes each.
    let steps_at = 32 + 256;
    for r in 0..GROUP {
        let Some(bytes) = row(r) else { continue };
        let blk = &as_blocks::<BlockQ6K>(bytes)[b];
        dst[2 * r..2 * r + 2].copy_from_slice(&blk.d.to_le_bytes());
        for s in 0..16 {
            dst[scales_at + 16 * s + r] = blk.scales[s] as u8;
        }
        let mut v = [0u8; 256];
        crate::quants::q6_k_values_into(blk, &mut v);
        for j in 0..128 {
            let (i, part) = ((j / 4) % 16, (j / 4) / 16);
            dst[steps_at + 192 * i + 64 * part + 4 * r + j % 4] = (v[j] & 15) | ((v[j + 128] & 15) << 4);
        }
        for j in 0..64 {
            dst[steps_at + 192 * (j / 4) + 128 + 4 * r + j % 4] =
                (v[j] >> 4) | ((v[j + 64] >> 4) << 2) | ((v[j + 128] >> 4) << 4) | ((v[j + 192] >> 4) << 6);
        }
    }
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
