#!/usr/bin/env python3
"""Writes crates/kernels/tests/fixtures/dequant.json: random blocks of every ggml type baimo
reads, with the values gguf-py (llama.cpp's own Python package) dequantizes them to. The Rust
test checks baimo's dequantizers against it, so a misread block layout cannot hide.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install gguf==0.19.0 numpy
    /tmp/venv/bin/python scripts/make_dequant_fixture.py
"""
import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES, quants

TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
# Byte offsets of the f16 scale fields in one block: they must hold finite numbers.
F16_FIELDS = {T.Q4_0: [0], T.Q5_0: [0], T.Q8_0: [0], T.Q4_1: [0, 2], T.Q5_1: [0, 2],
              T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}

rng = np.random.default_rng(20261128)
cases = []
for t in TYPES:
    block, size = GGML_QUANT_SIZES[t]
    n_blocks = max(2, 64 // block)
    if t in (T.F32, T.F16, T.BF16):
        values = rng.standard_normal(n_blocks).astype(np.float32)
        raw = {T.F32: values, T.F16: values.astype(np.float16),
               T.BF16: (values.view(np.uint32) >> 16).astype(np.uint16)}[t].tobytes()
    else:
        raw = bytearray(rng.integers(0, 256, n_blocks * size, dtype=np.uint8).tobytes())
        for b in range(n_blocks):
            for off in F16_FIELDS[t]:
                scale = np.float16(rng.uniform(-0.1, 0.1))
                raw[b * size + off:b * size + off + 2] = scale.tobytes()
        raw = bytes(raw)
    deq = quants.dequantize(np.frombuffer(raw, dtype=np.uint8), t).reshape(-1)
    cases.append({"type": t.name, "hex": raw.hex(), "values": [float(v) for v in deq]})

out = pathlib.Path(__file__).resolve().parent.parent / "crates/kernels/tests/fixtures/dequant.json"
out.write_text(json.dumps({"generator": "gguf-py 0.19.0 quants.dequantize", "cases": cases}, indent=0) + "\n")
print(f"wrote {out} ({out.stat().st_size} bytes)")
