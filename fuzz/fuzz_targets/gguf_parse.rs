//! `Gguf::parse` on arbitrary bytes: it returns `Ok` or `Err` and never panics; an accepted file
//! is consistent, every accessor works on it, and re-writing it with `GgufWriter` gives a file
//! that parses to the same thing. Run with `scripts/fuzz.sh` (seeds in `fuzz/seeds/`).
#![no_main]

use baimo_formats::gguf::GgufWriter;
use baimo_formats::{Bytes, Gguf, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Gguf::parse(Bytes::from_vec(data.to_vec())) {
        Ok(g) => check(&g),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
        }
    }
});

fn check(g: &Gguf) {
    assert!(g.alignment.is_power_of_two());
    for t in g.tensors() {
        let end = t
            .offset
            .checked_add(t.n_bytes)
            .expect("tensor end overflows");
        assert!(end <= g.file_len());
        assert_eq!(t.offset % g.alignment, 0);
        assert!(t.ne.len() <= 4);
        assert_eq!(t.dtype.row_bytes(t.n_elements()), Some(t.n_bytes));
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes);
        assert!(g.tensor_info(&t.name).is_some_and(|u| std::ptr::eq(t, u)));
    }
    for (key, value) in g.metadata() {
        assert!(g.get(key).is_some_and(|v| std::ptr::eq(v, value)));
        let _ = (value.as_u64(), value.as_f64());
        let _ = (
            g.get_str(key),
            g.get_u64(key),
            g.get_usize(key),
            g.get_f32(key),
        );
        let _ = (g.get_bool(key), g.get_str_array(key), g.get_f32_array(key));
        if let Value::Array(a) = value {
            assert_eq!(a.is_empty(), matches!(a.len(), 0));
            assert!(a.to_i64_vec().is_none_or(|v| v.len() == a.len()));
        }
    }
    if g.alignment <= 4096 {
        let first = rewrite(g).to_bytes();
        let again = Gguf::parse(Bytes::from_vec(first.clone())).expect("re-written file parses");
        assert_eq!(again.tensors().len(), g.tensors().len());
        for (a, b) in again.tensors().iter().zip(g.tensors()) {
            assert_eq!((&a.name, &a.ne, a.dtype), (&b.name, &b.ne, b.dtype));
            assert_eq!(*again.tensor_data(a), *g.tensor_data(b));
        }
        assert_eq!(rewrite(&again).to_bytes(), first);
    }
}

fn rewrite(g: &Gguf) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (key, value) in g.metadata() {
        w.add(key, value.clone());
    }
    for t in g.tensors() {
        w.add_tensor(&t.name, &t.ne, t.dtype, g.tensor_data(t).to_vec());
    }
    w
}
