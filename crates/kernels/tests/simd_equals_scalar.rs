//! Every SIMD path this CPU can run gives the scalar reference's dot product, for every weight
//! type, over random blocks (random bits, with valid f16 scales) and random activations.
//!
//! Integer parts of the kernels are exact; only the order of float accumulation differs, so the
//! bound is relative to Σ|wᵢ·xᵢ|, the size of the terms being summed.

use baimo_kernels::quants::{self, QK, QK_K};
use baimo_kernels::{ActivationFormat, GgmlType, Isa, Q8Buf, VecDot, dequantize};
use proptest::prelude::*;

const QUANT_TYPES: [GgmlType; 12] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];
const FLOAT_TYPES: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];

/// Byte offsets of the f16 fields inside one block of each type.
fn f16_fields(dtype: GgmlType) -> &'static [usize] {
    match dtype {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL | GgmlType::IQ4_XS => &[0],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// Random blocks: random bits everywhere, then each f16 scale replaced by a finite value.
fn random_row(dtype: GgmlType, n_blocks: usize, rng: &mut impl FnMut() -> u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..n_blocks * dtype.type_size()).map(|_| rng() as u8).collect();
    for b in 0..n_blocks {
        for &off in f16_fields(dtype) {
            let scale = (rng() % 2000) as f32 / 1000.0 * if rng().is_multiple_of(2) { 1.0 } else { -1.0 };
            let bits = half::f16::from_f32(scale * 0.05).to_bits().to_le_bytes();
            let at = b * dtype.type_size() + off;
            bytes[at..at + 2].copy_from_slice(&bits);
        }
    }
    bytes
}

fn random_floats(n: usize, rng: &mut impl FnMut() -> u64) -> Vec<f32> {
    (0..n).map(|_| ((rng() % 20001) as f32 - 10000.0) / 2500.0).collect()
}

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

fn check_quant_type(dtype: GgmlType, n_blocks: usize, seed: u64) {
    let mut rng = splitmix(seed);
    let n = n_blocks * dtype.block_size();
    let w = random_row(dtype, n_blocks, &mut rng);
    let x = random_floats(n, &mut rng);

    let scalar = VecDot::new(Isa::Scalar, dtype).unwrap();
    let ActivationFormat::Q8(kind) = scalar.activation_format() else { panic!("{dtype} is quantized") };
    let mut xq = Q8Buf::new(kind, n, 1);
    xq.quantize_row(0, &x);

    // Size of the terms: Σ|w·x| over dequantized weights and activations.
    let mut wf = vec![0f32; n];
    dequantize(dtype, &w, &mut wf);
    let block = kind.block_size();
    let magnitude: f64 = (0..n)
        .map(|i| (wf[i] as f64 * xq.qs[i] as f64 * xq.d[i / block] as f64).abs())
        .sum::<f64>()
        .max(1e-3);

    let want = scalar.dot_q8(&w, xq.row(0));
    for isa in Isa::available() {
        let dot = VecDot::new(isa, dtype).unwrap();
        // The single-token kernel, and the variants for tokens inside batches of 4 and of 8.
        for (got, variant) in [
            (dot.dot_q8(&w, xq.row(0)), "single"),
            (dot.dot_q8_in_batch(&w, xq.row(0), 0, 4), "in a group of 4"),
            (dot.dot_q8_in_batch(&w, xq.row(0), 0, 8), "in a batch of 8"),
        ] {
            let err = (got as f64 - want as f64).abs();
            assert!(
                err <= 2e-6 * magnitude,
                "{dtype} on {} ({variant}): {got} vs scalar {want} (error {err:e}, terms {magnitude:e}, seed {seed})",
                isa.name()
            );
        }
    }
}

fn check_float_type(dtype: GgmlType, n: usize, seed: u64) {
    let mut rng = splitmix(seed);
    let x = random_floats(n, &mut rng);
    let wf = random_floats(n, &mut rng);
    let w: Vec<u8> = match dtype {
        GgmlType::F32 => wf.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => wf.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        _ => wf.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
    };
    let magnitude: f64 = wf.iter().zip(&x).map(|(a, b)| (a * b).abs() as f64).sum::<f64>().max(1e-3);
    let want = VecDot::new(Isa::Scalar, dtype).unwrap().dot_f32(&w, &x);
    for isa in Isa::available() {
        let got = VecDot::new(isa, dtype).unwrap().dot_f32(&w, &x);
        let err = (got as f64 - want as f64).abs();
        assert!(
            err <= 2e-6 * magnitude,
            "{dtype} on {}: {got} vs scalar {want} (n {n}, seed {seed})",
            isa.name()
        );
    }
}

#[test]
fn this_cpu_reports_its_paths() {
    let available = Isa::available();
    assert_eq!(available[0], Isa::Scalar);
    assert!(available.contains(&Isa::best()));
    eprintln!("kernel paths on this CPU: {available:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn quantized_dot_products_agree(type_index in 0usize..QUANT_TYPES.len(), n_blocks in 1usize..12, seed: u64) {
        check_quant_type(QUANT_TYPES[type_index], n_blocks, seed);
    }

    #[test]
    fn float_dot_products_agree(type_index in 0usize..FLOAT_TYPES.len(), n in 1usize..300, seed: u64) {
        check_float_type(FLOAT_TYPES[type_index], n, seed);
    }
}

#[test]
fn every_type_at_model_sizes() {
    // Row lengths of the real models (576, 896, 1536, 4864) and a long one.
    for (i, dtype) in QUANT_TYPES.into_iter().enumerate() {
        for n in [576usize, 896, 1536, 4864, 8192] {
            if n % dtype.block_size() == 0 {
                check_quant_type(dtype, n / dtype.block_size(), 1000 + i as u64 * 7 + n as u64);
            }
        }
    }
    for dtype in FLOAT_TYPES {
        check_float_type(dtype, 896, 5);
    }
}

/// The scalar Q8 dot equals the f64 dot of the dequantized weights with the dequantized
/// activations: the integer arithmetic and the scale bookkeeping are right.
#[test]
fn scalar_dot_equals_dequantized_dot() {
    for (i, dtype) in QUANT_TYPES.into_iter().enumerate() {
        let mut rng = splitmix(77 + i as u64);
        let n_blocks = 4;
        let n = n_blocks * dtype.block_size();
        let w = random_row(dtype, n_blocks, &mut rng);
        let x = random_floats(n, &mut rng);
        let dot = VecDot::new(Isa::Scalar, dtype).unwrap();
        let ActivationFormat::Q8(kind) = dot.activation_format() else { unreachable!() };
        let mut xq = Q8Buf::new(kind, n, 1);
        xq.quantize_row(0, &x);
        let mut wf = vec![0f32; n];
        dequantize(dtype, &w, &mut wf);
        let block = kind.block_size();
        let exact: f64 = (0..n).map(|j| wf[j] as f64 * xq.qs[j] as f64 * xq.d[j / block] as f64).sum();
        let magnitude: f64 =
            (0..n).map(|j| (wf[j] as f64 * xq.qs[j] as f64 * xq.d[j / block] as f64).abs()).sum();
        let got = dot.dot_q8(&w, xq.row(0)) as f64;
        // Q4_1/Q5_1 use the f16-rounded activation sum `s` for the minimum, as ggml does.
        let tol = if matches!(dtype, GgmlType::Q4_1 | GgmlType::Q5_1) { 2e-3 } else { 1e-5 };
        assert!((got - exact).abs() <= tol * magnitude.max(1e-3), "{dtype}: {got} vs {exact}");
    }
    let _ = (QK, QK_K, quants::f16_to_f32(0));
}

/// Activation rows quantized by the vectorized build equal the scalar reference's, byte for
/// byte and bit for bit, including rows with zeros, ties, infinities and NaNs.
fn check_quantize(values: &[f32]) {
    use baimo_kernels::Q8Kind;
    for kind in [Q8Kind::Blocks32, Q8Kind::Blocks256] {
        let n = values.len() / kind.block_size() * kind.block_size();
        if n == 0 {
            continue;
        }
        let (mut fast, mut reference) = (Q8Buf::new(kind, n, 1), Q8Buf::new(kind, n, 1));
        quants::quantize_q8(kind, &values[..n], fast.row_mut(0));
        quants::quantize_q8_scalar(kind, &values[..n], reference.row_mut(0));
        let (a, b) = (fast.row(0), reference.row(0));
        assert_eq!(a.qs, b.qs, "{kind:?} values");
        assert_eq!(a.bsums, b.bsums, "{kind:?} sums");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a.d), bits(b.d), "{kind:?} scales");
        assert_eq!(bits(a.s), bits(b.s), "{kind:?} Q8_1 sums");
    }
}

#[test]
fn quantized_activations_equal_the_reference() {
    let mut rng = splitmix(99);
    for round in 0..200 {
        let n = 512;
        let mut values: Vec<f32> = (0..n).map(|_| ((rng() % 200_001) as f32 - 100_000.0) / 7_000.0).collect();
        match round % 5 {
            0 => values[..256].fill(0.0),
            1 => values[37] = f32::NAN,
            2 => values[300] = f32::INFINITY,
            3 => {
                // Equal magnitudes of both signs: the first one sets the sign of the scale.
                values[10] = -20.0;
                values[200] = 20.0;
            }
            _ => values.iter_mut().for_each(|v| *v = v.round() * 0.5),
        }
        check_quantize(&values);
    }
}
