//! Mutation fuzzing of the GGUF reader with proptest: real llama.cpp headers and small synthetic
//! files, damaged by bit flips, overwrites with boundary values, truncation, insertion and
//! removal. `Gguf::parse` must return `Ok` or `Err`, never panic; what it accepts must be
//! consistent (see `common::check_parsed`) and survive a re-write with `GgufWriter`.
//!
//! The default number of cases keeps `cargo test -p baimo-formats` fast; set `PROPTEST_CASES`
//! for a longer run, e.g. `PROPTEST_CASES=100000 cargo test -p baimo-formats --test fuzz_mutations`.

mod common;

use std::sync::LazyLock;

use baimo_formats::{FormatError, Gguf};
use common::{VOCABS, assert_one_line, check_parsed, parse, rewrite, shrunk_vocab, vocab_path};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

const DEFAULT_CASES: u32 = 25_000;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        // Shrinking a failure over a 64 KiB input can take long; a few hundred steps suffice.
        max_shrink_iters: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fuzz_mutations.proptest-regressions"
        )))),
        ..ProptestConfig::default()
    }
}

/// The first 64 KiB of each reference vocabulary (their headers: counts, the first keys, the
/// start of the token arrays; cut short, so they fail somewhere), and each vocabulary's metadata
/// with its arrays cut to 48 elements (complete files that parse).
static REAL: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut out = Vec::new();
    for name in VOCABS {
        let mut bytes = std::fs::read(vocab_path(name)).expect("reference vocabulary");
        bytes.truncate(64 << 10);
        out.push(bytes);
        out.push(shrunk_vocab(name, 48));
    }
    out
});

static SYNTHETIC: LazyLock<Vec<Vec<u8>>> =
    LazyLock::new(|| common::synthetic_ggufs().into_iter().map(|(_, bytes)| bytes).collect());

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit {
        at: Index,
        bit: u8,
    },
    Overwrite {
        at: Index,
        bytes: Vec<u8>,
    },
    /// Writes the file's length plus `delta` as a u64 (a length or offset just fitting or not).
    OverwriteFileLen {
        at: Index,
        delta: i8,
    },
    Truncate {
        at: Index,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Remove {
        at: Index,
        len: u8,
    },
    /// Copies a few bytes from one place to another (fields moved to where others belong).
    Copy {
        from: Index,
        to: Index,
        len: u8,
    },
}

/// Values at the boundaries the reader checks: counts, lengths, type ids, dimensions, offsets.
fn interesting_bytes() -> impl Strategy<Value = Vec<u8>> {
    let u8s = vec![0u8, 1, 0x7f, 0x80, 0xfe, 0xff];
    let u32s =
        vec![0u32, 1, 2, 3, 4, 5, 8, 9, 12, 13, 31, 32, 39, 40, 256, 0x7fff_ffff, 0x8000_0000, u32::MAX];
    let u64s = vec![
        0u64,
        1,
        31,
        32,
        33,
        256,
        (1 << 32) - 1,
        1 << 32,
        1 << 60,
        i64::MAX as u64,
        1 << 63,
        u64::MAX - 31,
        u64::MAX - 1,
        u64::MAX,
    ];
    prop_oneof![
        prop::sample::select(u8s).prop_map(|x| vec![x]),
        prop::sample::select(u32s).prop_map(|x| x.to_le_bytes().to_vec()),
        prop::sample::select(u64s).prop_map(|x| x.to_le_bytes().to_vec()),
        any::<u32>().prop_map(|x| x.to_le_bytes().to_vec()),
        any::<u64>().prop_map(|x| x.to_le_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 1..24),
        (1usize..64, prop::sample::select(&[0u8, 0xff][..])).prop_map(|(n, b)| vec![b; n]),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        4 => (any::<Index>(), interesting_bytes())
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        1 => (any::<Index>(), any::<i8>())
            .prop_map(|(at, delta)| Mutation::OverwriteFileLen { at, delta }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<Index>(), interesting_bytes())
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<Index>(), 1u8..32).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (any::<Index>(), any::<Index>(), 1u8..32)
            .prop_map(|(from, to, len)| Mutation::Copy { from, to, len }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    let overwrite = |bytes: &mut Vec<u8>, at: usize, new: &[u8]| {
        let end = (at + new.len()).min(bytes.len());
        bytes[at..end].copy_from_slice(&new[..end - at]);
    };
    match m {
        Mutation::FlipBit { at, bit } => bytes[at.index(len)] ^= 1 << bit,
        Mutation::Overwrite { at, bytes: new } => overwrite(bytes, at.index(len), new),
        Mutation::OverwriteFileLen { at, delta } => {
            let x = (len as u64).wrapping_add(*delta as i64 as u64);
            overwrite(bytes, at.index(len), &x.to_le_bytes());
        }
        Mutation::Truncate { at } => bytes.truncate(at.index(len)),
        Mutation::Insert { at, bytes: new } => {
            let at = at.index(len + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Remove { at, len: n } => {
            let at = at.index(len);
            bytes.drain(at..(at + *n as usize).min(len));
        }
        Mutation::Copy { from, to, len: n } => {
            let from = from.index(len);
            let chunk = bytes[from..(from + *n as usize).min(len)].to_vec();
            overwrite(bytes, to.index(len), &chunk);
        }
    }
}

/// Parses a mutated file; whatever comes out must be sound.
fn check(bytes: Vec<u8>) {
    match parse(bytes) {
        Ok(g) => {
            check_parsed(&g);
            check_rewrite(&g);
        }
        Err(e) => check_error(&e),
    }
}

fn check_error(e: &FormatError) {
    assert_one_line(e, &[]);
    assert!(!matches!(e, FormatError::Io { .. } | FormatError::IsADirectory(_)), "{e:?}");
}

/// Re-writing an accepted file gives a file that parses to the same metadata and tensors, and
/// whose own re-write is byte for byte the same.
fn check_rewrite(g: &Gguf) {
    if g.alignment > 4096 {
        return; // GgufWriter would pad to it.
    }
    let first = rewrite(g).to_bytes();
    let again = parse(first.clone()).expect("a re-written file parses");
    assert_eq!(again.metadata().len(), g.metadata().len());
    assert_eq!(again.tensors().len(), g.tensors().len());
    for (a, b) in again.tensors().iter().zip(g.tensors()) {
        assert_eq!((&a.name, &a.ne, a.dtype), (&b.name, &b.ne, b.dtype));
        assert_eq!(*again.tensor_data(a), *g.tensor_data(b));
    }
    assert_eq!(rewrite(&again).to_bytes(), first);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_real_headers_never_panic(
        seed in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let mut bytes = seed.get(&REAL).clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check(bytes);
    }

    #[test]
    fn mutated_synthetic_files_never_panic(
        seed in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let mut bytes = seed.get(&SYNTHETIC).clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check(bytes);
    }
}

/// The seeds themselves: the shrunk vocabularies and the synthetic files parse, the cut-short
/// vocabularies do not, so the mutations start from both sides.
#[test]
fn seeds_parse_as_expected() {
    for (i, bytes) in REAL.iter().enumerate() {
        let result = parse(bytes.clone());
        if i % 2 == 0 {
            let e = result.expect_err("64 KiB of a vocabulary is not the whole file");
            assert!(matches!(e, FormatError::Truncated { .. } | FormatError::CountTooLarge { .. }));
        } else {
            check_parsed(&result.expect("a shrunk vocabulary parses"));
        }
    }
    for bytes in SYNTHETIC.iter() {
        let g = parse(bytes.clone()).expect("a synthetic file parses");
        check_parsed(&g);
        check_rewrite(&g);
    }
}

/// The seed files of the cargo-fuzz target (`fuzz/seeds/`) are the synthetic files and the
/// shrunk llama-spm vocabulary as these tests build them. Set `BAIMO_WRITE_FUZZ_SEEDS=1` to
/// write them again after changing the builders.
#[test]
fn fuzz_seeds_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let mut seeds = common::synthetic_ggufs();
    seeds.push(("vocab_llama_spm", shrunk_vocab("ggml-vocab-llama-spm.gguf", 48)));
    let write = std::env::var_os("BAIMO_WRITE_FUZZ_SEEDS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut total = 0;
    for (name, bytes) in seeds {
        let path = dir.join(name);
        total += bytes.len();
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let on_disk = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (BAIMO_WRITE_FUZZ_SEEDS=1)", path.display()));
            assert!(on_disk == bytes, "{} is stale", path.display());
        }
    }
    assert!(total < 50 << 10, "fuzz seeds take {total} bytes");
}
