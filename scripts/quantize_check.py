#!/usr/bin/env python3
"""`baimo quantize` against llama.cpp's quantizer, judged by llama.cpp (the issue's acceptance).

    python3 scripts/quantize_check.py --venv VENV [--models smollm2-135m qwen2.5-coder-0.5b]
                                      [--types Q8_0 Q4_0 Q4_K] [--baimo target/release/baimo]

For each model (the cached real GGUFs; no float GGUF of either is published where this machine
can fetch it, so the float source is made here: `baimo quantize MODEL F16`):
  1. `baimo quantize SRC-F16 OUT TYPE` (timed), and `llama_model_quantize` (llama-quantize's
     function, llama-cpp-python 0.3.36, `pure`, so every matrix takes the type as baimo's do;
     timed, same threads) on the same F16 file;
  2. llama.cpp's perplexity (as llama-perplexity, ctx 512 over GPL-3) on both files, and
     `baimo perplexity` on baimo's file.
Prints one row per (model, type): llama.cpp's PPL on its own file and on baimo's (the
difference is the quantizers'), baimo's PPL on its file (the difference from llama.cpp's on the
same file is the engines'), and both quantizers' seconds. Files go to ~/.cache/baimo/quantize-check/.
Reuses the llama.cpp worker of scripts/requantized_references.py; this process needs only the
standard library.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import requantized_references as rr  # noqa: E402

LLAMA_FTYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
                "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1", "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
                "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1", "Q4_K": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
                "F16": "LLAMA_FTYPE_MOSTLY_F16"}


def baimo(args: list[str], binary: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, check=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", type=Path, required=True)
    p.add_argument("--models", nargs="+", default=list(rr.MODELS), choices=list(rr.MODELS))
    p.add_argument("--types", nargs="+", default=["Q8_0", "Q4_0", "Q4_K"], choices=list(LLAMA_FTYPES))
    p.add_argument("--baimo", type=Path, default=rr.REPO / "target" / "release" / "baimo")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "baimo")
    p.add_argument("--threads", "-t", type=int, default=2)
    p.add_argument("--ctx", type=int, default=512)
    args = p.parse_args(argv)
    python = args.venv / "bin" / "python"
    out_dir = args.cache / "quantize-check"
    out_dir.mkdir(parents=True, exist_ok=True)
    base = {"threads": args.threads, "n_gen": 0, "ppl_text": str(rr.GPL3), "ppl_ctx": args.ctx,
            "extra_bufts": True}

    def llama_ppl(model: Path) -> float:
        r = rr.llama_run(python, {**base, "mode": "reference", "model": str(model), "prompts": []},
                         "llama.cpp perplexity")
        return r["perplexity"]["ppl"]

    def baimo_ppl(model: Path) -> float:
        r = baimo(["perplexity", str(model), str(rr.GPL3), "--ctx", str(args.ctx), "-t",
                   str(args.threads), "-q"], args.baimo)
        return float(re.search(r"PPL = ([0-9.]+)", r.stdout).group(1))

    rows = []
    for name in args.models:
        src = rr.source_path(args.cache, name)
        f16 = out_dir / f"{name}-f16.gguf"
        if not f16.is_file():
            baimo(["quantize", str(src), str(f16), "F16", "-q"], args.baimo)
        for kind in args.types:
            ours, theirs = out_dir / f"{name}-{kind}-baimo.gguf", out_dir / f"{name}-{kind}-llama.gguf"
            t0 = time.perf_counter()
            baimo(["quantize", str(f16), str(ours), kind, "-t", str(args.threads), "-q"], args.baimo)
            baimo_s = time.perf_counter() - t0
            r = rr.llama_run(python, {"mode": "quantize", "threads": args.threads, "input": str(f16),
                                      "output": str(theirs), "ftype": LLAMA_FTYPES[kind], "pure": True},
                             "llama_model_quantize")
            row = {"model": name, "type": kind, "baimo_s": baimo_s, "llama_s": r["seconds"],
                   "llama_on_llama": llama_ppl(theirs), "llama_on_baimo": llama_ppl(ours),
                   "baimo_on_baimo": baimo_ppl(ours)}
            rows.append(row)
            print(f"   {row}", file=sys.stderr)
    print("| model | type | llama.cpp PPL, its file | llama.cpp PPL, baimo's file | diff | "
          "baimo PPL, baimo's file | diff | quantize s, baimo / llama.cpp |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        d1 = (r["llama_on_baimo"] - r["llama_on_llama"]) / r["llama_on_llama"] * 100
        d2 = (r["baimo_on_baimo"] - r["llama_on_baimo"]) / r["llama_on_baimo"] * 100
        print(f"| {r['model']} | {r['type']} | {r['llama_on_llama']:.4f} | {r['llama_on_baimo']:.4f} | "
              f"{d1:+.2f}% | {r['baimo_on_baimo']:.4f} | {d2:+.2f}% | "
              f"{r['baimo_s']:.1f} / {r['llama_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
