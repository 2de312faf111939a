//! Development aid: throughput of the tiled kernels on one core, for a feed-forward-sized matrix
//! and several batch sizes (weights streamed in GB/s, and multiply-adds per second).
use baimo_kernels::{GgmlType, PackedMatrix, Q8Buf, TileDot};
use std::time::Instant;

fn main() {
    let types =
        [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K];
    for dtype in types {
        let rows: usize = std::env::args().nth(1).map_or(1024, |a| a.parse().unwrap());
        let cols = 4864 / 256 * 256;
        let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
        let mut w: Vec<u8> = (0..rows * row_bytes).map(|i| ((i * 2654435761usize) >> 13) as u8).collect();
        let scale = half::f16::from_f32(0.01).to_bits().to_le_bytes();
        let f16_fields: &[usize] = match dtype {
            GgmlType::Q4_1 | GgmlType::Q4_K => &[0, 2],
            GgmlType::Q6_K => &[208],
            _ => &[0],
        };
        for blk in w.chunks_exact_mut(dtype.type_size()) {
            for &f in f16_fields {
                blk[f..f + 2].copy_from_slice(&scale);
            }
        }
        let packed = PackedMatrix::pack(dtype, rows, cols, &w).unwrap();
        let Some(tile) = TileDot::best(dtype) else {
            println!("no tiled kernel for {dtype} on this CPU");
            return;
        };
        let mut xq = Q8Buf::new(tile.activation_kind(), cols, 64);
        for t in 0..64 {
            xq.quantize_row(t, &(0..cols).map(|i| ((i * 7 + t) % 13) as f32 - 6.0).collect::<Vec<_>>());
        }
        for (n_tok, exact) in
            [(1usize, true), (1, false), (4, true), (4, false), (8, true), (8, false), (64, false)]
        {
            let xs: Vec<_> = (0..n_tok).map(|t| xq.row(t)).collect();
            let mut out = vec![[0f32; 16]; n_tok];
            let reps = (256 / n_tok).max(4);
            let t0 = Instant::now();
            let mut sink = 0f32;
            for _ in 0..reps {
                for g in 0..packed.n_groups() {
                    tile.run(&packed, g, &xs, &mut out, exact);
                    sink += out[0][0];
                }
            }
            let s = t0.elapsed().as_secs_f64();
            println!(
                "{dtype} n={n_tok:2} {}: {:6.1} GB/s of weights, {:6.1} GMAC/s ({sink:.0})",
                if exact { "exact" } else { "fast " },
                (packed.n_bytes() * reps) as f64 / s / 1e9,
                (rows * cols * n_tok * reps) as f64 / s / 1e9,
            );
        }
    }
}
