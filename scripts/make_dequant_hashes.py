#!/usr/bin/env python3
"""Expected dequantization of random blocks for the quant types added in issue 15 (Q2_K, Q3_K,
IQ4_NL, IQ4_XS), computed by the `gguf` Python package (gguf-py, llama.cpp's own reader):
10,000 blocks per type drawn from a SplitMix64 stream that crates/kernels/tests/dequant_gguf.rs
draws the same way, every f16 scale field made finite. What is committed is the SHA-256 of the
little-endian f32 output (the blocks themselves are regenerated), so the check is bit-exact
without megabytes of fixtures.

    pip install gguf==0.17.1 numpy
    python3 scripts/make_dequant_hashes.py > crates/kernels/tests/fixtures/dequant_hashes.json
"""
import hashlib
import json
import sys

import gguf
import numpy as np
from gguf.quants import dequantize

BLOCKS = 10_000
MASK = (1 << 64) - 1

# Byte offsets of the f16 fields in each block (ggml-common.h).
HALF_FIELDS = {"Q2_K": [80, 82], "Q3_K": [108], "IQ4_NL": [0], "IQ4_XS": [0]}


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def blocks(name, size):
    """The test's random blocks: bytes from the stream, f16 fields then set to a finite value
    (sign, exponent 10..17 of 31, any mantissa: magnitudes 2^-5 .. 2^2)."""
    rng = SplitMix64(int.from_bytes(name.encode(), "little"))
    out = bytearray()
    for _ in range(BLOCKS):
        block = bytearray()
        while len(block) < size:
            block += rng.next().to_bytes(8, "little")
        block = block[:size]
        for at in HALF_FIELDS[name]:
            r = rng.next()
            half = (r & 0x8000) | ((10 + (r >> 16) % 8) << 10) | ((r >> 32) & 0x3FF)
            block[at : at + 2] = half.to_bytes(2, "little")
        out += block
    return bytes(out)


def main():
    result = {"generator": "scripts/make_dequant_hashes.py", "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.17.1",
              "blocks": BLOCKS, "sha256": {}}
    for name, fields in HALF_FIELDS.items():
        qtype = getattr(gguf.GGMLQuantizationType, name)
        _, size = gguf.GGML_QUANT_SIZES[qtype]
        data = np.frombuffer(blocks(name, size), dtype=np.uint8)
        values = dequantize(data, qtype).astype("<f4")
        assert np.isfinite(values).all(), name
        result["sha256"][name] = hashlib.sha256(values.tobytes()).hexdigest()
        # The first values, to show where a mismatch starts.
        result.setdefault("first", {})[name] = [float(v) for v in values[:8]]
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
