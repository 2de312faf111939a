#!/usr/bin/env python3
"""llama.cpp's figures on real models requantized to Q2_K, Q3_K_M, IQ4_XS and IQ4_NL, and baimo's
next to them (the quantization issue's acceptance on real files).

    python3 scripts/requantized_references.py make    --venv /tmp/venv-llama   # llama.cpp
    python3 scripts/requantized_references.py compare --baimo /tmp/baimo-q       # baimo

`make`:
  1. Requantizes the two cached real models (SmolLM2-135M-Instruct Q4_1, Qwen2.5-Coder-0.5B-
     Instruct Q4_K_M, see /work/shared/reference/README.md) with llama.cpp's own quantizer,
     `llama_model_quantize` of llama-cpp-python 0.3.36 (llama.cpp b11312), default parameters
     but `allow_requantize` (no float GGUF of either model is available, so the source is the
     quantized file: the new file's weights are the source's dequantized and quantized again;
     compounding does not matter here, as the figures are llama.cpp's on the *new* file) and the
     ftype. Output: ~/.cache/baimo/requantized/<model>-<type>.gguf (never in the repository).
  2. Runs llama.cpp on each new file: greedy tokens for the eight reference prompts of
     ../shared/reference/llama.cpp/*.greedy.jsonl (their prompt ids, decoded in one batch from an
     empty cache, then plain argmax over the logits, one token per step, stopping after an
     end-of-generation token, as the shared reference was made) and the perplexity of
     /usr/share/common-licenses/GPL-3 as llama-perplexity computes it (n_ctx 512, floor(n/512)
     chunks, each from an empty cache in one batch, BOS only if the model adds one, the second
     half of each chunk scored), both on 2 threads.
  3. Writes tests/fixtures/quants/<model>-<type>.json: the file's sha256 and tensor types, the
     greedy ids (and pieces, hex), the top-20 logits at the last prompt position, the PPL, and
     the versions. With --check-sources it first runs the same perplexity on the source files,
     which must reproduce llama-perplexity's figures in the shared README (18.3914, 5.3184).

`agreement --against DIR` sets two llama.cpp reference sets side by side (llama.cpp with its
repacked weights, the default, against `make --no-repack --fixtures DIR`): llama.cpp's own
disagreement with itself, the yardstick for `compare`.

`compare` runs baimo on every file that has a fixture and prints llama.cpp's and baimo's figures
side by side: greedy tokens through `baimo serve FILE --arithmetic llama-cpp` (/v1/completions
with the prompt ids, temperature 0, logprobs 20, one request at a time, no prefix cache), which
gives baimo's tokens one by one with their log-probabilities, so the first mismatch is exact and
comes with both engines' margins there (`baimo run` prints only text; --check-run checks that it
prints the same); and `baimo perplexity FILE GPL-3 --ctx 512`.

The venv: `python3 -m venv VENV && CMAKE_ARGS=... VENV/bin/pip install llama-cpp-python==0.3.36`.
On a CPU that reports AMX (an Intel Xeon), GGML_NATIVE=ON compiles llama.cpp's AMX kernels, and
where the VM does not grant AMX state they die with SIGILL on the first llama_decode; where they
run, they replace the kernels the reference build (AMD Zen 5, no AMX) uses for Q4_0, Q4_1, Q8_0,
Q4_K, ... Build the reference's instruction set instead and say so with --build-note:
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
    -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON
    -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
    -DGGML_AMX_BF16=OFF"

Like scripts/bench_vs_llamacpp.py, only a child process running in the venv imports llama_cpp
(`--llama-worker`); this process stays on the standard library.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import platform
import re
import shlex
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "reference"
FIXTURES = REPO / "tests" / "fixtures" / "quants"
OUT_DIR = Path.home() / ".cache" / "baimo" / "requantized"
GPL3 = Path("/usr/share/common-licenses/GPL-3")
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_BUILD = "b11312 (commit 0c1e57098), vendored by llama-cpp-python 0.3.36"

# name -> (source file in the baimo cache, its sha256, greedy reference, llama-perplexity PPL)
MODELS = {
    "smollm2-135m": (
        "models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct.Q4_1.greedy.jsonl",
        18.3914,
    ),
    "qwen2.5-coder-0.5b": (
        "models/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "qwen2.5-coder-0.5b-instruct.greedy.jsonl",
        5.3184,
    ),
}
TYPES = {  # file suffix -> (llama_ftype constant in llama_cpp.llama_cpp, pure)
    "q2_k": ("LLAMA_FTYPE_MOSTLY_Q2_K", False),
    "q3_k_m": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", False),
    "iq4_xs": ("LLAMA_FTYPE_MOSTLY_IQ4_XS", False),
    "iq4_nl": ("LLAMA_FTYPE_MOSTLY_IQ4_NL", False),
    # The mixes above put no Q2_K tensor in either model, and Q3_K only in the Q2_K mix: the
    # rows of every tensor but ffn_down (576 and 896 columns) are not a multiple of 256, so
    # llama.cpp falls back to Q4_0 / Q5_0 / IQ4_NL for them, and its Q2_K and Q3_K_M mixes put
    # Q3_K / Q4_K / Q5_K in ffn_down. `pure` (llama-quantize --pure) gives every tensor the
    # ftype's base type where the rows allow it: ffn_down in Q2_K and in Q3_K.
    "q2_k_pure": ("LLAMA_FTYPE_MOSTLY_Q2_K", True),
    "q3_k_pure": ("LLAMA_FTYPE_MOSTLY_Q3_K_S", True),
}
DEFAULT_TYPES = list(TYPES)


class Failure(Exception):
    pass


# --------------------------------------------------------------------------------------------
# GGUF tensor listing (standard library only)
# --------------------------------------------------------------------------------------------

GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
    34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}


def gguf_tensors(path: Path) -> tuple[dict, list[tuple[str, list[int], str]]]:
    """(scalar metadata, [(tensor name, dims, type name)]) of a GGUF file."""
    with open(path, "rb") as f:
        def rd(fmt):
            size = struct.calcsize(fmt)
            return struct.unpack("<" + fmt, f.read(size))

        def string():
            (n,) = rd("Q")
            return f.read(n).decode("utf-8", errors="replace")

        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q",
                  11: "q", 12: "d"}

        def value(t):
            if t in scalar:
                return rd(scalar[t])[0]
            if t == 8:
                return string()
            if t == 9:
                (et,), (n,) = rd("I"), rd("Q")
                if et in scalar:  # skip bulk arrays (vocabularies) quickly
                    f.seek(n * struct.calcsize(scalar[et]), 1)
                else:
                    for _ in range(n):
                        value(et)
                return f"<array of {n}>"
            raise Failure(f"{path}: unknown GGUF value type {t}")

        if f.read(4) != b"GGUF":
            raise Failure(f"{path} is not a GGUF file")
        (version,), (n_tensors,), (n_kv,) = rd("I"), rd("Q"), rd("Q")
        meta = {"gguf_version": version}
        for _ in range(n_kv):
            key = string()
            (t,) = rd("I")
            v = value(t)
            if not (isinstance(v, str) and v.startswith("<array")):
                meta[key] = v
        tensors = []
        for _ in range(n_tensors):
            name = string()
            (nd,) = rd("I")
            dims = list(rd("Q" * nd))
            (t,), _offset = rd("I"), rd("Q")
            tensors.append((name, dims, GGML_TYPES.get(t, f"type{t}")))
    return meta, tensors


def tensor_summary(path: Path) -> dict:
    """Counts by type, and by tensor role (block number replaced by *) with dims and types."""
    meta, tensors = gguf_tensors(path)
    counts = Counter(t for _, _, t in tensors)
    roles: dict[str, dict] = {}
    for name, dims, t in tensors:
        role = re.sub(r"^blk\.\d+\.", "blk.*.", name)
        r = roles.setdefault(role, {"dims": dims, "types": Counter()})
        r["types"][t] += 1
    return {
        "file_type": meta.get("general.file_type"),
        "quantization_version": meta.get("general.quantization_version"),
        "tensor_types": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "tensors_by_role": {k: {"dims": v["dims"], "types": dict(v["types"])}
                            for k, v in roles.items()},
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# llama.cpp worker (runs in the venv's Python)
# --------------------------------------------------------------------------------------------

def llama_worker(spec: dict) -> dict:
    import importlib.util
    import types

    import numpy as np

    found = importlib.util.find_spec("llama_cpp")
    if found is None:
        raise SystemExit("llama_cpp is not installed in this Python")
    stub = types.ModuleType("llama_cpp")  # skip the package __init__ (high-level API)
    stub.__path__ = list(found.submodule_search_locations)
    sys.modules["llama_cpp"] = stub
    import llama_cpp.llama_cpp as L  # noqa: N812

    @L.llama_log_callback
    def log_cb(level, text, _user):
        if level == 3 or spec.get("verbose"):  # GGML_LOG_LEVEL_ERROR
            sys.stderr.write(text.decode(errors="replace"))
    L.llama_log_set(log_cb, ctypes.c_void_p(0))
    L.llama_backend_init()
    out: dict = {"system_info": L.llama_print_system_info().decode().strip()}
    threads = spec["threads"]

    if spec["mode"] == "quantize":
        params = L.llama_model_quantize_default_params()
        params.ftype = getattr(L, spec["ftype"])
        params.allow_requantize = True
        params.pure = spec["pure"]
        overrides = spec.get("overrides") or []  # [[regex over tensor names, ggml type id]]
        if overrides:
            arr = (L.llama_model_tensor_override * (len(overrides) + 1))()
            for i, (pattern, ggml_type) in enumerate(overrides):
                arr[i].pattern, arr[i].type = pattern.encode(), ggml_type
            arr[len(overrides)].pattern = None  # end of the list
            params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(L.llama_model_tensor_override))
        params.nthread = threads
        out["params"] = {f: (getattr(params, f) if isinstance(getattr(params, f), (int, float, bool))
                             else None)
                         for f, _ in params._fields_}
        out["params"] = {k: v for k, v in out["params"].items() if v is not None}
        t0 = time.perf_counter()
        rc = L.llama_model_quantize(spec["input"].encode(), spec["output"].encode(),
                                    ctypes.byref(params))
        out["seconds"] = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"llama_model_quantize returned {rc}")
        return out

    mparams = L.llama_model_default_params()
    # use_extra_bufts (default on) lets llama.cpp repack weights for its interleaved kernels
    # (REPACK: Q4_0, Q4_K, IQ4_NL, Q8_0, ...), which sum in another order; off for diagnosis.
    mparams.use_extra_bufts = spec.get("extra_bufts", True)
    model = L.llama_model_load_from_file(spec["model"].encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {spec['model']}")
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)

    def new_context(n_ctx: int, n_batch: int, n_ubatch: int):
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_batch, n_ubatch
        cp.n_threads = cp.n_threads_batch = threads
        ctx = L.llama_init_from_model(model, cp)
        if not ctx:
            raise SystemExit(f"llama.cpp could not create a context (n_ctx {n_ctx})")
        return ctx

    def tokenize(text: bytes, add_special: bool, parse_special: bool) -> list[int]:
        buf = (L.llama_token * (len(text) + 16))()
        n = L.llama_tokenize(vocab, text, len(text), buf, len(buf), add_special, parse_special)
        if n < 0:
            raise SystemExit(f"llama_tokenize returned {n}")
        return list(buf[:n])

    def piece(tok: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(vocab, tok, buf, len(buf), 0, True)
        if n < 0:
            raise SystemExit(f"llama_token_to_piece returned {n}")
        return buf.raw[:n]

    def logits_at(ctx, i: int):
        ptr = L.llama_get_logits_ith(ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    def decode(ctx, batch):
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise SystemExit(f"llama_decode returned {rc}")

    # Greedy: as the shared reference (and tests/llama_cpp_reference.rs): the reference prompt
    # ids in one batch, then argmax of the logits, one token per step.
    greedy = []
    if spec.get("prompts"):
        ctx = new_context(4096, 512, 512)
        mem = L.llama_get_memory(ctx)
        for case in spec["prompts"]:
            L.llama_memory_clear(mem, True)
            ids = case["prompt_ids"]
            own = tokenize(case["prompt"].encode(), False, True)
            arr = (L.llama_token * len(ids))(*ids)
            decode(ctx, L.llama_batch_get_one(arr, len(ids)))
            logits = logits_at(ctx, -1)
            order = np.argsort(-logits, kind="stable")[:20]
            top20 = [[int(t), round(float(logits[t]), 5)] for t in order]
            toks, margins, eog = [], [], False
            for _ in range(spec["n_gen"]):
                tok = int(np.argmax(logits))
                toks.append(tok)
                top2 = np.partition(logits, -2)[-2:]
                margins.append(round(float(top2[1] - top2[0]), 5))
                if L.llama_vocab_is_eog(vocab, tok):
                    eog = True
                    break
                one = (L.llama_token * 1)(tok)
                decode(ctx, L.llama_batch_get_one(one, 1))
                logits = logits_at(ctx, -1)
            pieces = [piece(t) for t in toks]
            greedy.append({
                "prompt": case["prompt"],
                "prompt_ids": ids,
                "prompt_ids_match_llama_tokenize": own == ids,
                "top20_last_prompt_logits": top20,
                "greedy_ids": toks,
                "ends_with_eog": eog,
                # logit of the chosen token minus the runner-up's, per step: how near a tie
                "greedy_margins": margins,
                "greedy_pieces_hex": [p.hex() for p in pieces],
                "greedy_text": b"".join(pieces).decode("utf-8", errors="replace"),
            })
        L.llama_free(ctx)
    out["greedy"] = greedy

    # Perplexity as llama-perplexity -c N -t 2 (n_batch = n_ubatch = n_ctx here).
    if spec.get("ppl_text"):
        n_ctx = spec["ppl_ctx"]
        raw = open(spec["ppl_text"], "rb").read()
        add_bos = bool(L.llama_vocab_get_add_bos(vocab))
        bos = L.llama_vocab_bos(vocab)
        ids = tokenize(raw, True, False)  # common_tokenize(ctx, text, add_special=true)
        n_chunks = len(ids) // n_ctx
        first = n_ctx // 2
        ctx = new_context(n_ctx, n_ctx, n_ctx)
        mem = L.llama_get_memory(ctx)
        batch = L.llama_batch_init(n_ctx, 0, 1)
        nll = nll2 = 0.0
        count = 0
        running = []
        t0 = time.perf_counter()
        for c in range(n_chunks):
            window = ids[c * n_ctx:(c + 1) * n_ctx]
            if add_bos:
                window[0] = bos
            L.llama_memory_clear(mem, True)
            batch.n_tokens = n_ctx
            for i, t in enumerate(window):
                batch.token[i] = t
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if i >= first else 0
            decode(ctx, batch)
            for p in range(first, n_ctx - 1):
                lg = logits_at(ctx, p).astype(np.float64)
                m = lg.max()
                v = -(lg[window[p + 1]] - m - math.log(np.exp(lg - m).sum()))
                nll += v
                nll2 += v * v
                count += 1
            running.append(round(math.exp(nll / count), 4))
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        mean = nll / count
        var = nll2 / count - mean * mean
        ppl = math.exp(mean)
        out["perplexity"] = {
            "text_sha256": hashlib.sha256(raw).hexdigest(),
            "ctx": n_ctx, "bos": bos if add_bos else None, "n_tokens": len(ids),
            "n_chunks": n_chunks, "n_scored": count, "ppl": ppl,
            "error": math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0,
            "ppl_after_chunk": running, "seconds": time.perf_counter() - t0,
        }
    L.llama_model_free(model)
    return out


def llama_run(python: Path, spec: dict, what: str) -> dict:
    cmd = [str(python), str(Path(__file__).resolve()), "--llama-worker", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise Failure(f"{what} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def llama_version(python: Path) -> str:
    probe = "import importlib.metadata as m; print(m.version('llama_cpp_python'))"
    r = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if r.returncode != 0:
        raise Failure(f"llama-cpp-python is not installed in {python}:\n{r.stderr}")
    return r.stdout.strip()


# --------------------------------------------------------------------------------------------
# make
# --------------------------------------------------------------------------------------------

def reference_prompts(name: str) -> list[dict]:
    path = SHARED / "llama.cpp" / MODELS[name][2]
    text = path.read_bytes().decode("utf-8", errors="replace")  # texts may end mid-character
    return [{"prompt": d["prompt"], "prompt_ids": d["prompt_ids"]}
            for d in map(json.loads, text.splitlines())]


def source_path(cache: Path, name: str) -> Path:
    path = cache / MODELS[name][0]
    if not path.is_file():
        raise Failure(f"{path} is missing: `baimo pull {name}` fetches it")
    return path


def make(args) -> int:
    python = args.venv / "bin" / "python"
    version = llama_version(python)
    if version != LLAMA_CPP_PYTHON_VERSION:
        print(f"warning: llama-cpp-python {version}, not {LLAMA_CPP_PYTHON_VERSION}",
              file=sys.stderr)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.fixtures.mkdir(parents=True, exist_ok=True)
    base = {"threads": args.threads, "n_gen": args.n_gen, "ppl_text": str(args.text),
            "ppl_ctx": args.ctx, "extra_bufts": not args.no_repack}
    if args.no_repack:
        base["ppl_text"] = None  # diagnosis run: greedy tokens only
    for name in args.models:
        src = source_path(args.cache, name)
        src_sha = sha256(src)
        if src_sha != MODELS[name][1]:
            raise Failure(f"{src}: sha256 {src_sha}, expected {MODELS[name][1]}")
        if args.check_sources:
            print(f"== {name}: perplexity of the source {src.name}", file=sys.stderr)
            r = llama_run(python, {**base, "mode": "reference", "model": str(src), "prompts": []},
                          "llama.cpp perplexity (source)")
            got, want = r["perplexity"]["ppl"], MODELS[name][3]
            print(f"   PPL {got:.4f} (llama-perplexity in the shared README: {want}; "
                  f"{(got - want) / want * 100:+.3f}%)", file=sys.stderr)
        prompts = reference_prompts(name)
        for kind in args.types:
            out = args.out_dir / f"{name}-{kind}.gguf"
            qparams = None
            if args.force or not out.is_file():
                print(f"== {name} {kind}: quantizing to {out}", file=sys.stderr)
                tmp = out.with_suffix(".gguf.part")
                r = llama_run(python, {"mode": "quantize", "threads": args.threads,
                                       "input": str(src), "output": str(tmp),
                                       "ftype": TYPES[kind][0], "pure": TYPES[kind][1]},
                               "llama_model_quantize")
                tmp.rename(out)
                qparams = r["params"]
                print(f"   {out.stat().st_size:,} bytes in {r['seconds']:.1f} s", file=sys.stderr)
            print(f"== {name} {kind}: greedy and perplexity with llama.cpp", file=sys.stderr)
            r = llama_run(python, {**base, "mode": "reference", "model": str(out),
                                   "prompts": prompts}, "llama.cpp reference")
            p = r.get("perplexity", {"ppl": math.nan, "error": math.nan, "seconds": 0})
            print(f"   PPL {p['ppl']:.4f} ± {p['error']:.4f} ({p['seconds']:.0f} s)",
                  file=sys.stderr)
            fixture = args.fixtures / f"{name}-{kind}.json"
            old = json.loads(fixture.read_text()) if fixture.is_file() else {}
            record = {
                "generator": "scripts/requantized_references.py",
                "command": shlex.join(["python3", "scripts/requantized_references.py", "make",
                                       "--models", name, "--types", kind,
                                       "--venv", str(args.venv)]
                                      + (["--build-note", args.build_note]
                                         if args.build_note else [])),
                "model": name,
                "type": kind,
                "file": f"~/.cache/baimo/requantized/{out.name}",
                "sha256": sha256(out),
                "size_bytes": out.stat().st_size,
                "source": {"file": f"~/.cache/baimo/{MODELS[name][0]}", "sha256": src_sha},
                "quantize": {
                    "function": "llama_model_quantize (llama-quantize's quantizer)",
                    "ftype": TYPES[kind][0],
                    "pure": TYPES[kind][1],
                    "allow_requantize": True,
                    "note": "no float GGUF of this model was available: the source is the "
                            "quantized file above, dequantized and quantized again; no imatrix",
                    "params": qparams or old.get("quantize", {}).get("params"),
                },
                **tensor_summary(out),
                "versions": {"llama_cpp_python": version, "llama_cpp": LLAMA_CPP_BUILD,
                             "system_info": r["system_info"],
                             **({"build": args.build_note} if args.build_note else {}),
                             "python": platform.python_version()},
                "threads": args.threads,
                "llama_model_params": {"use_extra_bufts": not args.no_repack},
                "greedy_method": "prompt_ids in one batch from an empty cache (n_ctx 4096, "
                                 "n_batch 512), then argmax of the logits, one token per step, "
                                 f"at most {args.n_gen} tokens, stopping after an "
                                 "end-of-generation token (included)",
                "greedy": r["greedy"],
                "perplexity_method": "llama-perplexity -c 512 -t 2: text tokenized once "
                                     "(add_special, no special parsing), floor(n/512) chunks "
                                     "each from an empty cache in one batch, NLL of token p+1 "
                                     "at p = 256..510; PPL = exp(mean NLL)",
                "perplexity": {"text": str(args.text), **{k: v for k, v in p.items()
                                                           if k != "seconds"}},
            }
            fixture.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
            print(f"   wrote {fixture}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------

def run_baimo(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=timeout, env=BAIMO_ENV)


BAIMO_ENV = {**os.environ, "BAIMO_DATA": "/tmp/baimo-requantized-data"}  # not the user's DB


class BaimoServer:
    """`baimo serve FILE` on loopback for /v1/completions with token ids and log-probabilities:
    llama.cpp's arithmetic, one request at a time, no prefix cache (each prompt from an empty
    cache, as llama.cpp's run)."""

    def __init__(self, baimo: Path, path: Path, threads: int, port: int):
        self.name, self.port = path.name, port
        cmd = [str(baimo), "serve", str(path), "--arithmetic", "llama-cpp", "-t", str(threads),
               "--port", str(port), "--cache-entries", "0", "--parallel", "1", "--ctx", "4096",
               "-q"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=BAIMO_ENV)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.post("/health", None)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise Failure(f"baimo serve exited: {self.proc.stderr.read().decode()[-800:]}")
                if time.monotonic() > deadline:
                    self.close()
                    raise Failure("baimo serve did not answer /health within 120 s")
                time.sleep(0.3)

    def post(self, route: str, body):
        import urllib.request
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{route}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def complete(self, ids: list[int], n: int) -> dict:
        out = self.post("/v1/completions", {"model": self.name, "prompt": ids, "max_tokens": n,
                                            "temperature": 0, "logprobs": 20})
        return out["choices"][0]

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def joined_by_bytes(pieces: list[bytes]) -> list[str]:
    """Token texts as baimo's log-probabilities give them (backend.rs LogprobText): bytes are
    joined, a token that ends inside a character gives "" and the next one the whole character."""
    pending, out = b"", []
    for p in pieces:
        pending += p
        try:
            pending.decode("utf-8")
            valid = len(pending)
        except UnicodeDecodeError as e:
            valid = e.start if e.reason == "unexpected end of data" else len(pending)
        out.append(pending[:valid].decode("utf-8", errors="replace"))
        pending = pending[valid:]
    return out


def compare_case(case: dict, choice: dict) -> dict:
    """llama.cpp's greedy tokens against baimo's, token by token (as texts joined by bytes).

    Exact for whole-character tokens. Where both engines' tokens end inside a character both
    texts are "" and the difference shows one token later; baimo's top-20 texts are per token, so
    llama.cpp's token is not found among them when it is such a partial or joined character."""
    of = len(case["greedy_ids"])
    pieces = [bytes.fromhex(h) for h in case["greedy_pieces_hex"]]
    want = joined_by_bytes(pieces[:-1] if case["ends_with_eog"] else pieces)
    lp = choice["logprobs"]
    got = lp["tokens"]
    same = 0
    while same < min(len(want), len(got)) and want[same] == got[same]:
        same += 1
    res = {"prompt": case["prompt"], "same": same, "of": of, "note": ""}
    if same == len(want) and case["ends_with_eog"] and choice["finish_reason"] == "stop" \
            and len(got) == len(want):
        res["same"] = of  # both ended with the end-of-generation token
        return res
    if same == of:
        return res
    llama_margin = case["greedy_margins"][same] if same < len(case["greedy_margins"]) else None
    if same < len(got):
        top = lp["top_logprobs"][same]
        mine = lp["token_logprobs"][same]
        # Past `want`: llama.cpp's end-of-generation token, whose text baimo writes as llama.cpp
        # renders it with special tokens shown (e.g. "<|im_end|>").
        theirs_text = (want[same] if same < len(want)
                       else pieces[-1].decode("utf-8", errors="replace"))
        theirs = top.get(theirs_text)
        res["baimo_token"], res["llama_token"] = got[same], theirs_text
        res["baimo_margin"] = None if theirs is None else mine - theirs
        res["note"] = (f"llama.cpp {theirs_text!r} (margin {llama_margin:.3f} over its "
                       f"runner-up), baimo {got[same]!r} (")
        res["note"] += ("llama.cpp's token not in baimo's top 20)" if theirs is None else
                        f"{mine - theirs:.3f} over llama.cpp's token)")
    else:
        res["note"] = (f"baimo ended after {len(got)} tokens ({choice['finish_reason']}); "
                       f"llama.cpp went on with {want[same]!r} (margin {llama_margin:.3f})")
    return res


def compare(args) -> int:
    rows = []
    for name in args.models:
        for kind in args.types:
            fixture = args.fixtures / f"{name}-{kind}.json"
            if not fixture.is_file():
                print(f"(no fixture {fixture})", file=sys.stderr)
                continue
            ref = json.loads(fixture.read_text())
            path = args.out_dir / f"{name}-{kind}.gguf"
            row = {"model": name, "type": kind, "file": str(path)}
            if not path.is_file() or (not args.skip_sha and sha256(path) != ref["sha256"]):
                row["error"] = "file missing or not the fixture's (sha256)"
                rows.append(row)
                continue
            print(f"== {name} {kind}", file=sys.stderr)
            greedy = []
            try:
                server = BaimoServer(args.baimo, path, args.threads, args.port)
            except Failure as e:
                row["error"] = str(e)
                server = None
            if server:
                try:
                    for case in ref["greedy"]:
                        choice = server.complete(case["prompt_ids"], len(case["greedy_ids"]))
                        res = compare_case(case, choice)
                        if args.check_run:
                            # `baimo run` on the same prompt must print the same text.
                            cmd = [str(args.baimo), "run", str(path), case["prompt"], "--raw",
                                   "--temperature", "0", "-n", str(len(case["greedy_ids"])),
                                   "-t", str(args.threads), "--ctx", "4096", "-q"]
                            r = run_baimo(cmd, args.timeout)
                            text = r.stdout.decode("utf-8", errors="replace")
                            if text.rstrip("\n") != choice["text"].rstrip("\n"):
                                res["note"] += " [baimo run printed another text than serve]"
                                res["run_differs"] = True
                        greedy.append(res)
                        print(f"   {case['prompt'][:30]!r:34} {res['same']}/{res['of']} "
                              f"{res['note']}", file=sys.stderr)
                finally:
                    server.close()
            row["greedy"] = greedy
            if "error" not in row and not args.no_ppl:
                t0 = time.monotonic()
                cmd = [str(args.baimo), "perplexity", str(path), ref["perplexity"]["text"],
                       "--ctx", str(ref["perplexity"]["ctx"]), "-t", str(args.threads), "-q"]
                r = run_baimo(cmd, args.timeout)
                if r.returncode != 0:
                    row["error"] = f"baimo perplexity failed: {r.stderr.decode(errors='replace')[-600:]}"
                else:
                    m = re.search(rb"PPL = ([0-9.]+)", r.stdout)
                    row["baimo_ppl"] = float(m.group(1))
                    row["baimo_ppl_seconds"] = time.monotonic() - t0
            row["llama_ppl"] = ref["perplexity"]["ppl"]
            if "baimo_ppl" in row:
                row["rel"] = (row["baimo_ppl"] - row["llama_ppl"]) / row["llama_ppl"]
                print(f"   PPL baimo {row['baimo_ppl']:.4f}, llama.cpp {row['llama_ppl']:.4f}, "
                      f"{row['rel'] * 100:+.3f}% ({row['baimo_ppl_seconds']:.0f} s)",
                      file=sys.stderr)
            if "error" in row:
                print(f"   {row['error']}", file=sys.stderr)
            rows.append(row)
            if args.json:  # after every file, so an interrupted run keeps what it has
                args.json.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    print("| model | type | greedy: prompts equal | first mismatch (token index) | "
          "llama.cpp PPL | baimo PPL | difference |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    for row in rows:
        g = row.get("greedy", [])
        eq = sum(1 for x in g if x["same"] == x["of"])
        mism = ", ".join(f"{x['same']}" for x in g if x["same"] != x["of"])
        ppl = row.get("llama_ppl", math.nan)
        if "rel" in row:
            tail = f"{ppl:.4f} | {row['baimo_ppl']:.4f} | {row['rel'] * 100:+.3f}%"
        else:
            tail = f"{ppl:.4f} | - | {row.get('error', '-')[:200]}"
        print(f"| {row['model']} | {row['type']} | {eq}/{len(g)} | {mism or '-'} | {tail} |")
    return 0


def agreement(args) -> int:
    """llama.cpp against itself: two reference sets of the same files (e.g. `make` with and
    without --no-repack) side by side, as `compare` sets baimo against one. The yardstick for
    `compare`: how far apart two of llama.cpp's own kernel paths put the same file's tokens."""
    print("| model | type | greedy: prompts equal | first mismatch (token index) | "
          "max |Δ| of the top-20 last-prompt logits |")
    print("| --- | --- | ---: | --- | ---: |")
    total = prompts = 0
    for name in args.models:
        for kind in args.types:
            a, b = (d / f"{name}-{kind}.json" for d in (args.fixtures, args.against))
            if not (a.is_file() and b.is_file()):
                continue
            ga, gb = (json.loads(f.read_text())["greedy"] for f in (a, b))
            firsts, worst = [], 0.0
            for x, y in zip(ga, gb):
                if x["prompt_ids"] != y["prompt_ids"]:
                    raise Failure(f"{a} and {b} hold other prompts")
                same = 0
                while (same < min(len(x["greedy_ids"]), len(y["greedy_ids"]))
                       and x["greedy_ids"][same] == y["greedy_ids"][same]):
                    same += 1
                if x["greedy_ids"] != y["greedy_ids"]:
                    firsts.append(str(same))
                top_b = dict(map(tuple, y["top20_last_prompt_logits"]))
                for tok, logit in x["top20_last_prompt_logits"]:
                    if tok in top_b:
                        worst = max(worst, abs(logit - top_b[tok]))
            eq = len(ga) - len(firsts)
            total, prompts = total + eq, prompts + len(ga)
            print(f"| {name} | {kind} | {eq}/{len(ga)} | {', '.join(firsts) or '-'} | "
                  f"{worst:.3f} |")
    print(f"\n{total}/{prompts} prompts give the same greedy tokens under both references")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["make", "compare", "agreement"])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--types", nargs="+", default=list(TYPES), choices=list(TYPES))
    p.add_argument("--venv", type=Path, default=REPO / ".venv-bench",
                   help="venv with llama-cpp-python 0.3.36 (default: .venv-bench)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "baimo")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--threads", "-t", type=int, default=2)
    p.add_argument("--n-gen", type=int, default=32, help="greedy tokens per prompt (default 32)")
    p.add_argument("--text", type=Path, default=GPL3)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--force", action="store_true", help="requantize even if the file exists")
    p.add_argument("--build-note", default="",
                   help="make: how the venv's llama.cpp was built (e.g. its CMAKE_ARGS), "
                        "recorded in the JSON")
    p.add_argument("--check-sources", action="store_true",
                   help="first check the perplexity method on the source files")
    p.add_argument("--baimo", type=Path, default=REPO / "target" / "release" / "baimo")
    p.add_argument("--no-ppl", action="store_true", help="compare: greedy tokens only")
    p.add_argument("--check-run", action="store_true",
                   help="compare: also check that `baimo run --raw` prints serve's text")
    p.add_argument("--port", type=int, default=18431, help="compare: port for `baimo serve`")
    p.add_argument("--skip-sha", action="store_true")
    p.add_argument("--timeout", type=float, default=7200)
    p.add_argument("--fixtures", type=Path, default=FIXTURES,
                   help="where the reference JSON goes (default: tests/fixtures/quants)")
    p.add_argument("--no-repack", action="store_true",
                   help="make: llama.cpp without its repacked weights (use_extra_bufts off), "
                        "greedy only; for diagnosis, with --fixtures elsewhere")
    p.add_argument("--json", type=Path, help="compare: also write the rows here")
    p.add_argument("--against", type=Path,
                   help="agreement: the second reference set (e.g. made with --no-repack)")
    args = p.parse_args(argv)
    try:
        if args.action == "agreement":
            if args.against is None:
                raise Failure("agreement needs --against DIR")
            return agreement(args)
        return make(args) if args.action == "make" else compare(args)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--llama-worker":
        print(json.dumps(llama_worker(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
