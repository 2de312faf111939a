#!/usr/bin/env python3
"""Looks through the test suite (tests/ and crates/*/tests/) for patterns that let a test pass by
accident: timing assertions (timing facts belong in benchmarks), results thrown away with
`let _ =`, tests that return early (a skip that looks like a pass), and sleeps (a test waits for a
condition, not for time). Every hit must be on the allow-list below with its reason; anything else
fails (exit 1). Run by .ci/run.

    python3 scripts/check_tests.py
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

PATTERNS = {
    "timing assertion": re.compile(r"assert.*(\.elapsed\(\)|Instant::now|as_secs|as_millis)"),
    "clock read": re.compile(r"Instant::now\(\)|\.elapsed\(\)"),
    "result thrown away": re.compile(r"\blet _ = "),
    "early return": re.compile(r"\breturn;|else \{ return \}"),
    "sleep": re.compile(r"thread::sleep|time::sleep"),
}

# (file, text on the line, reason): hits that are not what the patterns guard against.
ALLOWED = [
    ("tests/common/mod.rs", "let _ = self.child.kill()", "Drop of a test server: it may have exited already"),
    ("tests/common/mod.rs", "let _ = self.child.wait()", "Drop of a test server: reaping it"),
    ("tests/common/mod.rs", "let _ = rustls::crypto", "installing the TLS provider fails only when one is installed already"),
    ("tests/gateway.rs", "let _ = self.child.kill()", "Drop of a test process: it may have exited already"),
    ("tests/gateway.rs", "let _ = self.child.wait()", "Drop of a test process: reaping it"),
    ("tests/gateway.rs", "let _ = rustls::crypto", "installing the TLS provider fails only when one is installed already"),
    ("tests/gateway.rs", "std::thread::sleep(Duration::from_millis(10))", "`eventually` polls a condition"),
    ("tests/serve.rs", "std::thread::sleep(Duration::from_millis(20))", "polls the metrics until the cancellation shows"),
    ("tests/serve.rs", "std::thread::sleep(Duration::from_millis(5))", "polls the metrics until decoding has begun"),
    ("crates/chat/tests/errors.rs", "let _ = template.render(", "random templates: any result is fine, only a panic fails"),
    ("crates/formats/tests/alloc_limit.rs", "let _ = LARGEST.try_with", "the counting allocator may run while the thread-local is gone"),
    ("crates/formats/tests/alloc_limit.rs", "let _ = TOTAL.try_with", "the counting allocator may run while the thread-local is gone"),
    ("crates/formats/tests/common/mod.rs", "let _ = value.as_u64()", "any metadata value: the accessor must not panic, its result is free"),
    ("crates/formats/tests/common/mod.rs", "let _ = value.as_f64()", "any metadata value: the accessor must not panic, its result is free"),
    ("crates/formats/tests/fuzz_mutations.rs", "return;", "a mutation helper with nothing to mutate, not a test body"),
    ("crates/formats/tests/fuzz_mutations.rs", "return; // GgufWriter", "a helper: files aligned past 4096 are not re-written"),
    ("crates/hub/tests/support/mod.rs", "let _ = stream.", "the local test hub writing to a client that may hang up"),
    ("crates/hub/tests/support/mod.rs", "let _ = read_head(", "the local test hub draining a request it answers regardless"),
    ("crates/hub/tests/support/mod.rs", "return;", "the local test hub ignoring a connection without a request"),
    ("crates/hub/tests/fetch_fallback.rs", "Instant::now()", "an #[ignore]d manual download that prints timings, asserts none"),
    ("crates/hub/tests/fetch_fallback.rs", ".elapsed()", "an #[ignore]d manual download that prints timings, asserts none"),
    ("crates/gateway/tests/ernie.rs", "Instant::now() - Duration", "sets a cached token's expiry in the past; no clock assertion"),
    ("crates/kernels/tests/simd_equals_scalar.rs", "let _ = (QK, QK_K", "keeps imports used on every target"),
    ("crates/kernels/tests/tiles_equal_rows.rs", "else { return }",
     "hardware: tiled kernels exist only for AVX2 / AVX-512 VNNI; the_tiled_kernels_exist_where_expected "
     "asserts they exist on CI's CPU (AVX-512 VNNI), so CI always runs these checks"),
]


def main():
    files = sorted(list((ROOT / "tests").rglob("*.rs")) + list(ROOT.glob("crates/*/tests/**/*.rs")))
    used = set()
    problems = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for kind, pattern in PATTERNS.items():
                if not pattern.search(line):
                    continue
                allowed = [i for i, (f, text, _) in enumerate(ALLOWED) if f == rel and text in line]
                if allowed:
                    used.update(allowed)
                else:
                    problems.append(f"{rel}:{n}: {kind}: {line.strip()}")
    stale = [f"{f}: {text!r} ({why})" for i, (f, text, why) in enumerate(ALLOWED) if i not in used]
    for p in problems:
        print(p)
    for s in stale:
        print(f"allow-list entry matches nothing (remove it): {s}")
    print(f"check_tests: {len(files)} files, {len(problems)} problems, {len(stale)} stale allow-list entries")
    return 1 if problems or stale else 0


if __name__ == "__main__":
    sys.exit(main())
