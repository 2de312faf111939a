//! Development aid: throughput of the tiled kernels on one core (GB/s of weights streamed).
use baimo_kernels::{GgmlType, PackedMatrix, Q8Buf, Q8Kind, TileDot};
use std::time::Instant;

fn main() {
    for dtype in [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_1] {
        let (rows, cols) = (4864, 896);
        let row_bytes = dtype.row_bytes(cols as u64).unwrap() as usize;
        let mut w = vec![0u8; rows * row_bytes];
        for (i, b) in w.iter_mut().enumerate() {
            *b = ((i * 2654435761usize) >> 13) as u8;
        }
        for blk in w.chunks_exact_mut(dtype.type_size()) {
            blk[0..2].copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
            if matches!(dtype, GgmlType::Q4_1) {
                blk[2..4].copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
            }
        }
        let packed = PackedMatrix::pack(dtype, rows, cols, &w).unwrap();
        let tile = TileDot::best(dtype).unwrap();
        let mut xq = Q8Buf::new(Q8Kind::Blocks32, cols, 4);
        for t in 0..4 {
            xq.quantize_row(t, &(0..cols).map(|i| ((i * 7 + t) % 13) as f32 - 6.0).collect::<Vec<_>>());
        }
        for n_tok in [1usize, 4] {
            let xs: Vec<_> = (0..n_tok).map(|t| xq.row(t)).collect();
            let mut out = [[0f32; 8]; 4];
            let reps = 200;
            let t0 = Instant::now();
            let mut sink = 0f32;
            for _ in 0..reps {
                for g in 0..packed.n_groups() {
                    tile.run(&packed, g, &xs, &mut out);
                    sink += out[0][0];
                }
            }
            let s = t0.elapsed().as_secs_f64();
            let bytes = (packed.n_bytes() * reps) as f64;
            println!(
                "{dtype} T={n_tok}: {:.1} GB/s of weights, {:.1} ns per 8-row block ({sink})",
                bytes / s / 1e9,
                s * 1e9 / (reps * packed.n_groups() * cols / 32) as f64
            );
        }
    }
}
