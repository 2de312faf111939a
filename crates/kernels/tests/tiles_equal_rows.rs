//! The tiled kernels over packed weight groups give, bit for bit, the results of the single-row
//! kernels: same integer sums, same float operations in the same order, for every output.

use baimo_kernels::{GgmlType, Isa, PackedMatrix, Q8Buf, Q8Kind, TileDot, VecDot};
use proptest::prelude::*;

const TYPES: [GgmlType; 5] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0];

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

/// Random rows with finite f16 scale fields.
fn random_matrix(dtype: GgmlType, rows: usize, cols: usize, rng: &mut impl FnMut() -> u64) -> Vec<u8> {
    let size = dtype.type_size();
    let mut bytes: Vec<u8> = (0..rows * cols / 32 * size).map(|_| rng() as u8).collect();
    let f16_fields: &[usize] = match dtype {
        GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
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

fn check(dtype: GgmlType, rows: usize, n_blocks: usize, n_tokens: usize, seed: u64) {
    let Some(tile) = TileDot::new(Isa::best(), dtype) else { return };
    let mut rng = splitmix(seed);
    let cols = 32 * n_blocks;
    let w = random_matrix(dtype, rows, cols, &mut rng);
    let packed = PackedMatrix::pack(dtype, rows, cols, &w).unwrap();
    let mut xq = Q8Buf::new(Q8Kind::Blocks32, cols, n_tokens);
    for t in 0..n_tokens {
        let x: Vec<f32> = (0..cols).map(|_| ((rng() % 20001) as f32 - 10000.0) / 3000.0).collect();
        xq.quantize_row(t, &x);
    }
    let single = VecDot::new(Isa::best(), dtype).unwrap();
    let row_bytes = w.len() / rows;
    let xs: Vec<_> = (0..n_tokens).map(|t| xq.row(t)).collect();
    for g in 0..packed.n_groups() {
        let mut out = [[0f32; 8]; 4];
        tile.run(&packed, g, &xs, &mut out);
        for r in 0..8 {
            let row = 8 * g + r;
            if row >= rows {
                continue;
            }
            for (t, (x, got)) in xs.iter().zip(&out).enumerate() {
                let want = single.dot_q8(&w[row * row_bytes..(row + 1) * row_bytes], *x);
                assert_eq!(
                    got[r].to_bits(),
                    want.to_bits(),
                    "{dtype} row {row} token {t}: tile {} vs row kernel {want} (seed {seed})",
                    got[r]
                );
            }
        }
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
        for (rows, cols) in [(16, 576), (24, 896), (8, 1536), (13, 96)] {
            for n_tokens in 1..=4 {
                check(dtype, rows, cols / 32, n_tokens, 17 + i as u64 * 131 + rows as u64 + n_tokens as u64);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_tiles_are_identical(type_index in 0usize..TYPES.len(), rows in 1usize..20, n_blocks in 1usize..10, n_tokens in 1usize..5, seed: u64) {
        check(TYPES[type_index], rows, n_blocks, n_tokens, seed);
    }
}
