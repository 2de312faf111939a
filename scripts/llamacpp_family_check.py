#!/usr/bin/env python3
"""Checks the tiny GGUF fixtures of the newer model families against llama.cpp itself.

    /tmp/venv-gguf/bin/python scripts/llamacpp_family_check.py \\
        --llama-python /tmp/venv-llama-noamx/bin/python

Run from anywhere; it touches nothing in the repository. The main process needs gguf and numpy;
the llama.cpp side runs in a child process of --llama-python (default: this interpreter), which
needs llama-cpp-python (0.3.36, llama.cpp b11312, driven through its ctypes module only). One
child per table row, so a llama.cpp abort (GGML_ASSERT) costs that row, not the run.

Why copies: tests/fixtures/gguf/<name>.gguf carries no tokenizer, and llama.cpp refuses a model
without one. Each fixture is re-written into --out-dir (default /tmp/llamacpp-family-check/) with
every KV field and tensor unchanged plus a byte-level BPE tokenizer ("gpt2") taken from
tests/fixtures/hf/<name>/tokenizer.json. Only token ids are ever fed, so the tokenizer only has to
load; it plays no part in the numbers.

What is measured, per fixture, against tests/fixtures/hf/<name>/expected.json (transformers 5.0,
float32, one forward pass per whole sequence):
- logits: every position of the 3 sequences (5, 23, 80 tokens), each in a fresh llama.cpp
  context decoded as one batch with the logits flag on every token; max |llama.cpp - transformers|
  per sequence and over all. Where a sequence goes beyond --tol, the notes give how many leading
  positions still agree (useful for sliding-window families).
- greedy: argmax decoding of 24 tokens from greedy.prompt (prompt as one batch, then one token per
  decode), compared with greedy.tokens: the number of equal tokens before the first difference.
Contexts: n_ctx 128, n_batch = n_ubatch = 128, 2 threads; the notes give the context size
llama.cpp actually made and whether flash attention ran. Every row runs in two set-ups (--configs):
- f32: flash attention off and an f32 KV cache, i.e. the reference's precision, so whatever
  remains is a difference in the computation. (Flash attention has to go too: in b11312 the CPU
  kernel rounds K and V to f16 even from an f32 cache.)
- default: llama.cpp's defaults, flash attention AUTO (resolves to enabled on CPU) and an f16 KV
  cache, i.e. what a user gets; f16 rounding alone costs a few 1e-3 in the logits here.

phi3 gets two more rows, for the two short sequences and greedy (≤ 32 positions): llama.cpp picks
the long or short LongRoPE factors once per context (n_ctx per sequence > original context 32 ->
long), transformers per sequence length. "phi3@n_ctx32" asks for n_ctx 32; b11312 pads every
context to 256 cells, though, so it still uses the long factors (the note says so when it
happens). "phi3[long:=short]" is a diagnostic copy whose rope_factors_long holds the short factors,
which shows whether the rest of llama.cpp's short-context path matches transformers.

Differences that are llama.cpp's and expected (reported, not worked around):
- mistral: the `llama` architecture has no sliding window (fixture window 16), so only the first
  16 positions can agree.
- gemma2 / gemma3: llama.cpp scales queries by 1/sqrt(head_dim) = 1/4 and ignores the GGUF's
  `<arch>.attention.scale` (query_pre_attn_scalar 24 / 20 in the fixtures). A diagnostic row
  "<gemma>[q scale folded]" runs a copy with the fixture's scale folded into the q projection
  (gemma2) or the q norm weight (gemma3) to show whether that is the whole difference.
- phi3 at n_ctx 128: long RoPE factors everywhere, transformers uses short ones up to 32 tokens.
- qwen2-moe: the fixture's layer 1 is dense (mlp_only_layers=[1]); llama.cpp's qwen2moe wants
  expert tensors in every layer and refuses to load it (the error text lands in the table).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ["mistral", "mixtral", "qwen3-moe", "qwen2-moe", "phi3", "gemma2", "gemma3"]

# Why each family may legitimately differ; printed in the notes column.
EXPECTED = {
    "mistral": "llama arch ignores sliding window 16",
    "gemma2": "llama.cpp q scale 1/sqrt(16), fixture 1/sqrt(24)",
    "gemma3": "llama.cpp q scale 1/sqrt(16), fixture 1/sqrt(20)",
    "qwen2-moe": "dense layer 1 (mlp_only_layers) not supported by llama.cpp's qwen2moe",
    "phi3": "n_ctx > 32: long RoPE factors for all lengths (transformers: short up to 32)",
    "phi3[long:=short]": "diagnostic copy, long factors := short ones",
    "gemma2[q scale folded]": "diagnostic copy, q × 0.2041·4 so llama.cpp's 1/4 gives 1/sqrt(24)",
    "gemma3[q scale folded]": "diagnostic copy, q_norm × 0.2236·4 so llama.cpp's 1/4 gives 1/sqrt(20)",
}

# The two llama.cpp set-ups, one table each: (flash_attn_type, KV cache ggml_type, title).
# In b11312 the CPU flash-attention kernel rounds K and V to f16 even with an f32 cache, so
# an f32-exact run needs flash attention off as well as an f32 cache.
CONFIGS = {
    "f32": (0, 0, "flash attention off, f32 KV cache: same precision as the reference"),
    "default": (-1, 1, "llama.cpp's defaults: flash attention auto, f16 KV cache"),
}

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3


# ---------------------------------------------------------------------------------------------
# GGUF copies with a tokenizer (main process: gguf + numpy)

def tokenizer_tables(hf_dir: Path, vocab_size: int):
    """tokens (by id), token types and merges from tokenizer.json, padded to vocab_size so that
    llama.cpp's n_vocab matches the embedding rows."""
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    by_id = {i: s for s, i in tok["model"]["vocab"].items()}
    special = set()
    for added in tok.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        if added.get("special"):
            special.add(added["id"])
    n = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(n):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(TOKEN_CONTROL if i in special else TOKEN_NORMAL)
        else:  # a hole in the vocabulary: a named placeholder llama.cpp never produces
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_CONTROL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    return tokens, types, merges


def special_ids(hf_dir: Path, tokens: list[str]) -> dict[str, int]:
    cfg = json.loads((hf_dir / "config.json").read_text())
    index = {t: i for i, t in enumerate(tokens)}
    eos = cfg.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    pad = cfg.get("pad_token_id")
    if eos is None:
        eos = index.get("<|endoftext|>", 0)
    if pad is None:
        pad = index.get("<|endoftext|>", eos)
    # The fixtures have no BOS (Qwen-style); give the end-of-text token as Qwen GGUFs do and
    # switch off add_bos, which does not matter anyway since ids are fed directly.
    bos = cfg.get("bos_token_id")
    if bos is None:
        bos = index.get("<|endoftext|>", pad)
    return {"bos": bos, "eos": eos, "pad": pad}


def write_with_tokenizer(src: Path, hf_dir: Path, dst: Path, vocab_size: int, edit=None) -> None:
    """edit(name, tensors, fields) -> array or None: new data for a tensor (diagnostic copies);
    tensors maps names to the source's arrays, fields is the reader's KV fields."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)  # writes general.architecture itself
    for key, field in reader.fields.items():
        # GGUF.* are the reader's header pseudo-fields; tokenizer.* is replaced below.
        if key.startswith("GGUF.") or key == "general.architecture" or key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            if len(field.types) > 2:
                raise SystemExit(f"{src}: nested array {key} not supported")
            writer.add_key_value(key, field.contents(), vtype, sub_type=field.types[1])
        else:
            writer.add_key_value(key, field.contents(), vtype)

    tokens, types, merges = tokenizer_tables(hf_dir, vocab_size)
    ids = special_ids(hf_dir, tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ids["bos"])
    writer.add_eos_token_id(ids["eos"])
    writer.add_pad_token_id(ids["pad"])
    writer.add_add_bos_token(False)

    by_name = {t.name: t.data for t in reader.tensors}
    for t in reader.tensors:
        data = edit(t.name, by_name, reader.fields) if edit else None
        data = t.data if data is None else data
        # raw_dtype keeps the stored type (and lets quantized data through as bytes)
        writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def short_factors(name, tensors, _fields):
    """phi3 diagnostic: the long LongRoPE factors replaced by the short ones."""
    return tensors["rope_factors_short.weight"] if name == "rope_factors_long.weight" else None


def gemma_q_scale(name, tensors, fields):
    """gemma diagnostic: queries pre-multiplied by attention.scale * sqrt(head_dim), so that
    llama.cpp's 1/sqrt(head_dim) ends up as the fixture's 1/sqrt(query_pre_attn_scalar). Gemma 3
    normalises q after the projection, so there it goes into the q norm's weight instead."""
    import numpy as np

    arch = fields["general.architecture"].contents()
    factor = fields[f"{arch}.attention.scale"].contents() * np.sqrt(fields[f"{arch}.attention.key_length"].contents())
    target = "attn_q_norm.weight" if arch == "gemma3" else "attn_q.weight"
    if name.startswith("blk.") and name.endswith("." + target):
        return (tensors[name] * np.float32(factor)).astype(np.float32)
    return None


# ---------------------------------------------------------------------------------------------
# llama.cpp child (only llama_cpp's ctypes module, no numpy needed)

def llama_worker(spec: dict) -> dict:
    """spec: {model, threads, runs: [{tokens, n_ctx, out}], greedy: {prompt, n, n_ctx} | None}.
    Writes each run's logits (f32, one row of n_vocab per position) to run["out"]."""
    import importlib.util
    import types

    # The package __init__ pulls in the high-level API (numpy, jinja2, ...); the ctypes module is
    # all that is needed, so load it under a bare package stub.
    found = importlib.util.find_spec("llama_cpp")
    if found is None:
        raise SystemExit("llama_cpp is not installed in this Python")
    stub = types.ModuleType("llama_cpp")
    stub.__path__ = list(found.submodule_search_locations)
    sys.modules["llama_cpp"] = stub
    import llama_cpp.llama_cpp as L  # noqa: N812

    # Keep the whole log (for the flash-attention verdict and load errors); warnings and errors
    # also go to stderr so the parent can quote them when something fails.
    log_lines: list[str] = []
    WARN, ERROR = 3, 4  # ggml_log_level

    @L.llama_log_callback
    def log_cb(level, text, _user):
        s = text.decode(errors="replace")
        log_lines.append(s)
        if level in (WARN, ERROR):
            sys.stderr.write(s)
    L.llama_log_set(log_cb, ctypes.c_void_p(0))

    out: dict = {"runs": []}
    try:
        L.llama_backend_init()
        model = L.llama_model_load_from_file(spec["model"].encode(), L.llama_model_default_params())
        if not model:
            raise SystemExit(f"llama.cpp could not load {spec['model']}")
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        out["n_vocab"] = n_vocab
        threads = spec["threads"]

        def new_context(n_ctx: int):
            cp = L.llama_context_default_params()
            cp.n_ctx = n_ctx
            cp.type_k = cp.type_v = spec["kv_type"]  # ggml_type
            cp.n_batch = 128
            cp.n_ubatch = 128
            cp.n_threads = threads
            cp.n_threads_batch = threads
            cp.flash_attn_type = spec["flash_attn"]  # LLAMA_FLASH_ATTN_TYPE_*
            ctx = L.llama_init_from_model(model, cp)
            if not ctx:
                raise SystemExit(f"llama.cpp could not create a context (n_ctx {n_ctx})")
            return ctx

        def decode(ctx, tokens: list[int], start: int, all_logits: bool):
            batch = L.llama_batch_init(len(tokens), 0, 1)
            try:
                batch.n_tokens = len(tokens)
                for i, t in enumerate(tokens):
                    batch.token[i] = t
                    batch.pos[i] = start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 1 if all_logits or i == len(tokens) - 1 else 0
                rc = L.llama_decode(ctx, batch)
                if rc != 0:
                    raise SystemExit(f"llama_decode returned {rc}")
            finally:
                L.llama_batch_free(batch)

        def row(ctx, i: int) -> bytes:
            return ctypes.string_at(L.llama_get_logits_ith(ctx, i), 4 * n_vocab)

        for run in spec["runs"]:
            ctx = new_context(run["n_ctx"])  # fresh context = empty memory per sequence
            toks = run["tokens"]
            decode(ctx, toks, 0, True)
            with open(run["out"], "wb") as f:
                for i in range(len(toks)):
                    f.write(row(ctx, i))
            out["runs"].append({"n_ctx": L.llama_n_ctx(ctx), "n_ctx_seq": L.llama_n_ctx_seq(ctx)})
            L.llama_free(ctx)

        g = spec.get("greedy")
        if g:
            ctx = new_context(g["n_ctx"])
            prompt = list(g["prompt"])
            decode(ctx, prompt, 0, False)
            pos = len(prompt)
            generated: list[int] = []
            while True:
                logits = L.llama_get_logits_ith(ctx, -1)  # float* of the last output
                # first maximum, as torch.argmax
                best = max(range(n_vocab), key=lambda k: logits[k])
                generated.append(best)
                if len(generated) == g["n"]:
                    break
                decode(ctx, [best], pos, True)
                pos += 1
            out["greedy"] = generated
            out["greedy_n_ctx"] = L.llama_n_ctx(ctx)
            L.llama_free(ctx)
        L.llama_model_free(model)
    finally:
        out["log"] = "".join(log_lines)
    return out


# ---------------------------------------------------------------------------------------------
# comparison (main process)

def flash_attn_state(log: str) -> str:
    # With flash_attn AUTO, llama.cpp decides per context after reserving the graph and logs
    # "Flash Attention enabled" (or "... disabled"); collect the distinct verdicts.
    # With it set to disabled there is no verdict line, only "flash_attn = disabled".
    seen = []
    for line in log.splitlines():
        if "Flash Attention" in line or ("flash_attn" in line and "= disabled" in line):
            v = line.rsplit(" ", 1)[-1].strip()
            if v not in seen:
                seen.append(v)
    return "/".join(seen) or "?"


def run_worker(python: str, spec: dict, timeout: float) -> tuple[dict | None, str]:
    cmd = [python, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if p.returncode != 0:
        err = "\n".join(line for line in p.stderr.strip().splitlines() if line.strip())
        return None, f"exit {p.returncode}: {err}"
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def fmt(x: float) -> str:
    return f"{x:.2e}"


def check(label: str, model: Path, expected: dict, ref, seq_idx: list[int], n_ctx: int,
          config: str, args, work: Path) -> dict:
    import numpy as np

    seqs = expected["sequences"]
    starts = np.cumsum([0] + [len(s) for s in seqs])
    tag = f"{label}.{config}"
    flash_attn, kv_type, _ = CONFIGS[config]
    runs = [{"tokens": seqs[i], "n_ctx": n_ctx, "out": str(work / f"{tag}.seq{i}.f32")}
            for i in seq_idx]
    spec = {"model": str(model), "threads": args.threads, "runs": runs,
            "flash_attn": flash_attn, "kv_type": kv_type,
            "greedy": {"prompt": expected["greedy"]["prompt"],
                       "n": len(expected["greedy"]["tokens"]), "n_ctx": n_ctx}}
    t0 = time.perf_counter()
    res, stderr = run_worker(args.llama_python, spec, args.timeout)
    row = {"label": label, "config": config, "lengths": [len(seqs[i]) for i in seq_idx], "n_ctx": n_ctx,
           "seconds": round(time.perf_counter() - t0, 1)}
    if res is None:
        row["error"] = stderr
        return row
    (work / f"{tag}.log").write_text(res.get("log", ""))
    vocab = expected["vocab_size"]
    per_seq, notes = [], []
    for i, run in zip(seq_idx, runs):
        got = np.fromfile(run["out"], dtype="<f4").reshape(len(seqs[i]), -1)
        want = ref[starts[i]:starts[i + 1]]
        if got.shape[1] != vocab:
            notes.append(f"n_vocab {got.shape[1]} != {vocab}")
            got = got[:, :vocab]
        d = np.abs(got.astype(np.float64) - want).max(axis=1)
        per_seq.append(float(d.max()))
        if d.max() > args.tol:
            ok = int(np.argmax(d > args.tol))  # leading positions within tolerance
            notes.append(f"seq{len(seqs[i])}: first {ok} pos ≤ tol")
    row["max_per_seq"] = per_seq
    row["max"] = max(per_seq)
    want = expected["greedy"]["tokens"]
    got = res["greedy"]
    row["greedy_prefix"] = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b),
                                min(len(got), len(want)))
    row["greedy_len"] = len(want)
    row["greedy_tokens"] = got
    ctxs = sorted({r["n_ctx"] for r in res["runs"]} | {res["greedy_n_ctx"]})
    row["llama_n_ctx"] = ctxs
    row["flash_attn"] = flash_attn_state(res.get("log", ""))
    row["notes"] = notes
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-python", default=sys.executable,
                    help="Python with llama-cpp-python installed (default: this one)")
    ap.add_argument("--fixtures", nargs="+", default=FIXTURES, choices=FIXTURES)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                    help="llama.cpp set-ups to run, one table each (default: f32 default)")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/llamacpp-family-check"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tol", type=float, default=1e-3,
                    help="|Δlogit| counted as agreement for the per-position notes (default 1e-3)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(llama_worker(json.loads(args.worker))))
        return

    import numpy as np

    args.out_dir.mkdir(parents=True, exist_ok=True)
    # (label, GGUF copy, expected, reference logits, sequence indices, n_ctx) per table row
    cases = []
    for name in args.fixtures:
        hf_dir = ROOT / "tests" / "fixtures" / "hf" / name
        src = ROOT / "tests" / "fixtures" / "gguf" / f"{name}.gguf"
        expected = json.loads((hf_dir / "expected.json").read_text())
        ref = np.fromfile(hf_dir / expected["logits"], dtype="<f4").reshape(-1, expected["vocab_size"])
        model = args.out_dir / f"{name}.gguf"
        write_with_tokenizer(src, hf_dir, model, expected["vocab_size"])
        every = list(range(len(expected["sequences"])))
        cases.append((name, model, expected, ref, every, 128))
        if name == "phi3":
            # LongRoPE: the sequences within the original context (32) again with n_ctx 32, the
            # documented way to make llama.cpp use the short factors, as transformers does there.
            short = [i for i in every if len(expected["sequences"][i]) <= 32]
            cases.append(("phi3@n_ctx32", model, expected, ref, short, 32))
            # llama.cpp pads every context to 256 cells, so n_ctx 32 cannot reach the short
            # factors; a copy whose long factors are the short ones shows whether the rest of
            # the short-context path agrees (a diagnostic, the fixture itself is untouched).
            forced = args.out_dir / "phi3-short-factors.gguf"
            write_with_tokenizer(src, hf_dir, forced, expected["vocab_size"], edit=short_factors)
            cases.append(("phi3[long:=short]", forced, expected, ref, short, 128))
        if name in ("gemma2", "gemma3"):
            # llama.cpp scales queries by 1/sqrt(head_dim); a copy with the fixture's own scale
            # folded into the queries tells whether that is the only difference.
            scaled = args.out_dir / f"{name}-q-scaled.gguf"
            write_with_tokenizer(src, hf_dir, scaled, expected["vocab_size"], edit=gemma_q_scale)
            cases.append((f"{name}[q scale folded]", scaled, expected, ref, every, 128))

    rows = []
    for config in args.configs:
        for label, model, expected, ref, seq_idx, n_ctx in cases:
            rows.append(check(label, model, expected, ref, seq_idx, n_ctx, config, args, args.out_dir))
            print(f"# {label} {config}: {rows[-1]['seconds']} s", file=sys.stderr)

    for config in args.configs:
        print(f"\n### {config}: {CONFIGS[config][2]}\n")
        print("| fixture | seq lengths | max |Δlogit| per sequence (all) | greedy equal prefix /24 | notes |")
        print("|---|---|---|---|---|")
        for r in (r for r in rows if r["config"] == config):
            lengths = ", ".join(map(str, r["lengths"]))
            expect = EXPECTED.get(r["label"], "")
            if "error" in r:
                err = r["error"].replace("\n", " ⏎ ").replace("|", "\\|")
                print(f"| {r['label']} | {lengths} | load/run failed | – | {err}"
                      + (f"; expected: {expect}" if expect else "") + " |")
                continue
            deltas = " / ".join(fmt(x) for x in r["max_per_seq"]) + f" ({fmt(r['max'])})"
            greedy = f"{r['greedy_prefix']}/{r['greedy_len']}"
            notes = [f"n_ctx {'/'.join(map(str, r['llama_n_ctx']))}", f"FA {r['flash_attn']}"]
            notes += r["notes"]
            if r["label"] == "phi3@n_ctx32" and max(r["llama_n_ctx"]) > 32:
                notes.append(f"llama.cpp padded n_ctx 32 to {max(r['llama_n_ctx'])} > 32: still long factors")
            if expect:
                notes.append(f"expected: {expect}")
            print(f"| {r['label']} | {lengths} | {deltas} | {greedy} | {'; '.join(notes)} |")
    print(f"\n'first k pos ≤ tol': leading positions with max |Δlogit| ≤ {args.tol:g}; "
          f"n_ctx is the size llama.cpp reports; llama.cpp logs in {args.out_dir}/")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
