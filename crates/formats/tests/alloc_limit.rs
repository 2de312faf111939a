//! No allocation sized by an unchecked header field: a header may claim any count or length, but
//! the reader allocates only in proportion to the bytes it has actually read.
//!
//! This test binary runs under a counting global allocator. It records, per thread, the largest
//! single allocation and the total bytes allocated while a parse runs, and, for the whole
//! process, whether any single allocation ever exceeded [`CAP`].

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use baimo_formats::{Bytes, FormatError, Gguf};
use common::{VOCABS, vocab_path};

/// No allocation in this test binary may be larger than this.
const CAP: usize = 64 << 20;

struct Counting;

static LARGEST_EVER: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialised and without destructors, so reading them never allocates.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    LARGEST_EVER.fetch_max(size, Ordering::Relaxed);
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
    let _ = TOTAL.try_with(|c| c.set(c.get().saturating_add(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Usage {
    largest: usize,
    total: usize,
}

/// Parses `bytes` and reports the allocations the parse made on this thread.
fn parse_measured(bytes: Vec<u8>) -> (Result<Gguf, FormatError>, Usage) {
    let bytes = Bytes::from_vec(bytes);
    LARGEST.with(|c| c.set(0));
    TOTAL.with(|c| c.set(0));
    let result = Gguf::parse(bytes);
    let usage = Usage { largest: LARGEST.with(Cell::get), total: TOTAL.with(Cell::get) };
    assert!(LARGEST_EVER.load(Ordering::Relaxed) <= CAP, "an allocation exceeded 64 MiB");
    (result, usage)
}

/// A file's bytes, written field by field.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.0.extend_from_slice(b"GGUF");
        r.u32(3).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, x: u32) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn u64(&mut self, x: u64) -> &mut Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// Pads with zeros to `len` bytes.
    fn padded(&self, len: usize) -> Vec<u8> {
        let mut v = self.0.clone();
        assert!(v.len() <= len);
        v.resize(len, 0);
        v
    }
}

const HUGE: u64 = 1 << 60;

#[test]
fn huge_counts_in_a_100_byte_file_fail_fast_without_allocating() {
    let file_len = 100;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("2^60 tensors", Raw::header(HUGE, 0).padded(file_len)),
        ("2^60 keys", Raw::header(0, HUGE).padded(file_len)),
        ("u64::MAX tensors", Raw::header(u64::MAX, 0).padded(file_len)),
        ("u64::MAX keys", Raw::header(0, u64::MAX).padded(file_len)),
        ("a 2^60-byte key", Raw::header(0, 1).u64(HUGE).padded(file_len)),
        ("a 2^60-byte string value", Raw::header(0, 1).str("k").u32(8).u64(HUGE).padded(file_len)),
        ("a 2^60-byte tensor name", Raw::header(1, 0).u64(HUGE).padded(file_len)),
        (
            "an array of 2^60 arrays of 2^60 bytes",
            Raw::header(0, 1).str("k").u32(9).u32(9).u64(1).u32(0).u64(HUGE).padded(file_len),
        ),
    ];
    for elem_type in 0..=12 {
        for n in [HUGE, u64::MAX, u64::MAX / 2 + 1] {
            cases.push((
                "an array of 2^60 elements",
                Raw::header(0, 1).str("k").u32(9).u32(elem_type).u64(n).padded(file_len),
            ));
        }
    }
    for (what, bytes) in cases {
        let (result, usage) = parse_measured(bytes);
        let err = result.expect_err(what);
        assert!(
            matches!(
                err,
                FormatError::CountTooLarge { file_len: 100, .. }
                    | FormatError::Truncated { file_len: 100, .. }
            ),
            "{what}: {err:?}"
        );
        // Nothing but the error message and the few bytes of the key are allocated.
        assert!(usage.largest <= 256, "{what}: allocated {} bytes", usage.largest);
        assert!(usage.total <= 4096, "{what}: allocated {} bytes", usage.total);
    }
}

/// Counts small enough to pass the check against the file size, with a first element that is
/// broken: nothing may be reserved in advance for the elements that do not exist.
#[test]
fn counts_that_fit_the_file_reserve_only_what_was_read() {
    const BODY: usize = 16 << 20;
    let remaining = (BODY - 24) as u64;
    type Case = (&'static str, Vec<u8>, fn(&FormatError) -> bool);
    let cases: Vec<Case> = vec![
        (
            "keys",
            // Zero bytes read as empty keys of type u8: the second one is a duplicate.
            Raw::header(0, remaining / 13).padded(BODY),
            |e| matches!(e, FormatError::DuplicateKey(k) if k.is_empty()),
        ),
        (
            "tensors",
            // Zero bytes read as 0-dimensional F32 tensors named "": the second is a duplicate.
            Raw::header(remaining / 24, 0).padded(BODY),
            |e| matches!(e, FormatError::DuplicateTensor(k) if k.is_empty()),
        ),
        (
            "array of strings",
            Raw::header(0, 1).str("k").u32(9).u32(8).u64((remaining - 32) / 8).u64(u64::MAX).padded(BODY),
            |e| matches!(e, FormatError::Truncated { need: u64::MAX, .. }),
        ),
        (
            "array of arrays",
            Raw::header(0, 1).str("k").u32(9).u32(9).u64((remaining - 32) / 12).u32(13).padded(BODY),
            |e| matches!(e, FormatError::UnknownValueType { type_id: 13, .. }),
        ),
    ];
    for (what, bytes, expected) in cases {
        let (result, usage) = parse_measured(bytes);
        let err = result.expect_err(what);
        assert!(expected(&err), "{what}: {err:?}");
        assert!(usage.largest <= 1 << 20, "{what}: a {}-byte allocation for a 16 MiB file", usage.largest);
    }
}

/// Whatever parses, the bytes allocated on the way are a small multiple of the file's size.
#[test]
fn allocation_is_proportional_to_the_file() {
    // One long key and many empty nested arrays: per-element work must not repeat the key.
    let key = "k".repeat(16 << 10);
    let n = 20_000;
    let mut raw = Raw::header(0, 1);
    raw.str(&key).u32(9).u32(9).u64(n);
    for _ in 0..n {
        raw.u32(0).u64(0);
    }
    let mut files = vec![("nested".to_string(), raw.0)];
    for name in VOCABS {
        files.push((name.to_string(), std::fs::read(vocab_path(name)).unwrap()));
    }
    for (name, bytes) in files {
        let file_len = bytes.len();
        let (result, usage) = parse_measured(bytes);
        let g = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!g.metadata().is_empty());
        assert!(
            usage.total <= 16 * file_len,
            "{name}: {} bytes allocated for a {file_len}-byte file",
            usage.total
        );
        assert!(
            usage.largest <= 4 * file_len,
            "{name}: a {}-byte allocation for a {file_len}-byte file",
            usage.largest
        );
    }
}
