//! Asked for exact results, the tiled kernels over packed weight groups give, bit for bit, those
//! of the single-row kernels (same integer sums, same float operations in the same order) for
//! every batch smaller than `FAST_BATCH`, and for the K-quants and IQ4_NL/IQ4_XS (one order) at
//! every size. The fast kernels:
//! Q4_K and Q6_K still reproduce a single-row order (Q6_K that of large batches); the legacy
//! types must agree with an exact (f64) product to float accuracy.

use baimo_kernels::dispatch::FAST_BATCH;
use baimo_kernels::{GgmlType, Isa, PackedMatrix, Q8Buf, Q8Kind, TileDot, VecDot, dequantize};
use proptest::prelude::*;

const TYPES: [GgmlType; 12] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
];

fn splitmix(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
}

/// Random rows with finite, small f16 scale fields.
fn random_matrix(dtype: GgmlType, rows: usize, cols: usize, rng: &mut impl FnMut() -> u64) -> Vec<u8> {
    let size = dtype.type_size();
    let mut bytes: Vec<u8> = (0..rows * cols / dtype.block_size() * size).map(|_| rng() as u8).collect();
    let f16_fields: &[usize] = match dtype {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        _ => &[0],
    };
    for blk in bytes.chunks_exact_mut(size) {
        for &off in f16_fields {
            let v = ((rng() % 2000) as f32 / 1000.0 - 1.0) * 0.05;
            blk[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
        }
    }
    bytes
}

fn check(dtype: GgmlType, rows: usize, n_blocks: usize, n_tokens: usize, seed: u64, exact_wanted: bool) {
    let Some(tile) = TileDot::new(Isa::best(), dtype) else { return };
    let mut rng = splitmix(seed);
    let cols = dtype.block_size() * n_blocks;
    let w = random_matrix(dtype, rows, cols, &mut rng);
    let packed = PackedMatrix::pack(dtype, rows, cols, &w).unwrap();
    let kind = tile.activation_kind();
    let mut xq = Q8Buf::new(kind, cols, n_tokens);
    for t in 0..n_tokens {
        let x: Vec<f32> = (0..cols).map(|_| ((rng() % 20001) as f32 - 10000.0) / 3000.0).collect();
        xq.quantize_row(t, &x);
    }
    let single = VecDot::new(Isa::best(), dtype).unwrap();
    let row_bytes = w.len() / rows;
    let xs: Vec<_> = (0..n_tokens).map(|t| xq.row(t)).collect();
    // Which single-row order the tile must reproduce exactly: llama.cpp's for this batch size, or
    // for the fast Q6_K kernel that of a batch of eight or more. `None`: the legacy fast kernels.
    let same_as_batch_of = match (exact_wanted, kind) {
        (true, _) if n_tokens < FAST_BATCH => Some(n_tokens),
        (_, Q8Kind::Blocks256) if dtype == GgmlType::Q6_K && !exact_wanted => Some(n_tokens.max(8)),
        (_, Q8Kind::Blocks256) => Some(n_tokens),
        _ => None,
    };
    let mut out = vec![[0f32; 16]; n_tokens];
    let mut w_row = vec![0f32; cols];
    for g in 0..packed.n_groups() {
        tile.run(&packed, g, &xs, &mut out, exact_wanted);
        for r in 0..16 {
            let row = 16 * g + r;
            if row >= rows {
                continue;
            }
            let bytes = &w[row * row_bytes..(row + 1) * row_bytes];
            dequantize(dtype, bytes, &mut w_row);
            for (t, (x, got)) in xs.iter().zip(&out).enumerate() {
                let got = got[r];
                if let Some(batch) = same_as_batch_of {
                    let want = single.dot_q8_in_batch(bytes, *x, t, batch);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{dtype} row {row} token {t} of {n_tokens}: tile {got} vs row kernel {want} (seed {seed})"
                    );
                } else {
                    // The product with the quantized activations, in f64.
                    let mut xd = vec![0f32; cols];
                    dequantize_q8_row(*x, &mut xd);
                    let mut want: f64 = w_row.iter().zip(&xd).map(|(a, b)| *a as f64 * *b as f64).sum();
                    if matches!(dtype, GgmlType::Q4_1 | GgmlType::Q5_1) {
                        // ggml takes a block's Σx from the activations' rounded `s` (Q8_1).
                        for (b, blk) in bytes.chunks_exact(dtype.type_size()).enumerate() {
                            let m = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32() as f64;
                            let sum: f64 = xd[32 * b..32 * b + 32].iter().map(|v| *v as f64).sum();
                            want += m * (x.s[b] as f64 - sum);
                        }
                    }
                    let scale: f64 = w_row.iter().zip(&xd).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                    assert!(
                        (got as f64 - want).abs() <= 1e-5 * scale + 1e-30,
                        "{dtype} row {row} token {t} of {n_tokens}: fast tile {got} vs {want} (seed {seed})"
                    );
                }
            }
        }
    }
}

/// The values a quantized activation row stands for (the block scale is per 32 values here).
fn dequantize_q8_row(x: baimo_kernels::Q8Row<'_>, out: &mut [f32]) {
    let per = x.qs.len() / x.d.len();
    for (i, (o, q)) in out.iter_mut().zip(x.qs).enumerate() {
        *o = x.d[i / per] * *q as f32;
    }
}

#[test]
fn the_tiled_kernels_exist_where_expected() {
    for dtype in TYPES {
        assert_eq!(TileDot::best(dtype).is_some(), Isa::best() == Isa::Avx512Vnni, "{dtype}");
    }
}

#[test]
fn model_shapes_are_identical() {
    for (i, dtype) in TYPES.into_iter().enumerate() {
        for (rows, cols) in [(16, 768), (24, 1536), (13, 256)] {
            for n_tokens in [1, 2, 3, 4, 5, 7, 8, 9, 12, 63] {
                let seed = 17 + i as u64 * 131 + rows as u64 + n_tokens as u64;
                check(dtype, rows, cols / dtype.block_size(), n_tokens, seed, true);
                check(dtype, rows, cols / dtype.block_size(), n_tokens, seed, false);
            }
        }
    }
}

#[test]
fn large_batches_are_accurate() {
    for (i, dtype) in TYPES.into_iter().enumerate() {
        for n_tokens in [FAST_BATCH, FAST_BATCH + 3] {
            check(dtype, 20, 1024 / dtype.block_size(), n_tokens, 5 + i as u64, true);
            check(dtype, 20, 1024 / dtype.block_size(), n_tokens, 5 + i as u64, false);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_tiles_are_identical(type_index in 0usize..TYPES.len(), rows in 1usize..40, n_blocks in 1usize..4, n_tokens in 1usize..14, seed: u64, exact: bool) {
        let dtype = TYPES[type_index];
        let n_blocks = if dtype.block_size() == 32 { n_blocks * 3 } else { n_blocks };
        check(dtype, rows, n_blocks, n_tokens, seed, exact);
    }
}
