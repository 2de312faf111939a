#!/usr/bin/env python3
"""Side-by-side speed and memory benchmark: baimo against llama.cpp on the same GGUF.

Run by hand on an idle machine (not in CI):

    python3 scripts/bench_vs_llamacpp.py                       # both models, 3 rounds
    python3 scripts/bench_vs_llamacpp.py --models smollm2-135m --rounds 1 --venv /tmp/llvenv
    python3 scripts/bench_vs_llamacpp.py --long --json bench.json

llama.cpp is driven through the ctypes bindings of llama-cpp-python 0.3.36, which builds the same
llama.cpp (b11312) as the reference figures in /work/shared/reference/README.md. The bindings live
in a virtual environment (--venv, default .venv-bench in the repository), created and built on
first use (about 5 minutes on 2 cores). This file is also the llama.cpp worker: the venv's Python
runs it with --llama-worker, so only that child process ever imports llama_cpp and the main
process stays on the standard library.

How each figure is measured (both engines, same thread count, default 2):
- ppN (tokens/s): N random token ids read in one forward pass from an empty cache, logits for the
  last position only. baimo: `baimo bench -p 64,512 -n 0 --json`. llama.cpp: as llama-bench does
  it: a context per test with n_ctx = n_batch = n_ubatch = N, memory cleared, one llama_decode of
  the N tokens (llama_batch_get_one), llama_synchronize. One warm-up run, then --reps measured runs.
- tgN (tokens/s): N decode steps of one token each from an empty cache. baimo: `baimo bench -p 0
  -n 128`. llama.cpp: a context with n_ctx = n_batch = n_ubatch = N, N llama_decode calls of one
  token. One warm-up run (a full tgN, for both engines), then --reps measured runs.
- TTFT (ms): a 64-token prompt (plain English, trimmed to exactly 64 tokens with `baimo tokenize`)
  read from an empty cache, then the first token picked greedily; wall time from the start of
  prompt processing to that token. It is the first request of a fresh process, as a user sees it:
  baimo from the "first token after Z ms" in the stderr line of `baimo run MODEL PROMPT --raw
  --temperature 0 -n 1 --ctx 128` (timed inside Session::generate, after model load and
  tokenization); llama.cpp in a fresh worker process after model load and context creation
  (n_ctx = n_batch = n_ubatch = 128): llama_decode of the 64 tokens + llama_sampler_sample with
  a greedy sampler. Each TTFT sample is its own process (--ttft-runs per round per engine).
- Peak RSS (MiB) of the tg128 process: the tg measurement runs in its own child process and its
  ru_maxrss is read from os.wait4() on that child. That is what a getrusage(RUSAGE_CHILDREN) delta
  would give, but exact per child (RUSAGE_CHILDREN keeps the maximum over all children, so deltas
  go wrong once an earlier child had a bigger peak). For llama.cpp this includes the Python
  interpreter and the ctypes bindings (the package __init__, which would pull in numpy, is
  skipped); the worker reports that baseline, printed under each table.

Rounds: each round runs baimo, then llama.cpp, each test group in its own process; min / median /
max pool every measured repetition of every round (tokens/s), every TTFT process, and one RSS
figure per round.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import platform
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
DEFAULT_MODELS = ["smollm2-135m", "qwen2.5-coder-0.5b"]
PP_SIZES = [64, 512]
TG_SIZE = 128
LONG_SIZES = [2048, 4096, 8192]
LONG_CTX_LLAMA = 8192  # n_ctx = n_batch = n_ubatch for the long prompts in llama.cpp
LONG_CTX_BAIMO = 8200  # `bench --ctx`: room for 8192 prompt tokens
TTFT_PROMPT_TOKENS = 64
TTFT_CTX = 128  # context of the TTFT request in both engines (64 prompt + 1 answer fit)

# The TTFT prompt, cut to exactly TTFT_PROMPT_TOKENS tokens per model. The cost of reading a
# prompt does not depend on what it says; ordinary text keeps both tokenizers on their usual path.
TTFT_TEXT = (
    "Benchmarks are only useful when both programs do the same work on the same machine at the "
    "same time. This paragraph is the prompt for the time to first token test: each engine reads "
    "it in one batch from an empty cache, then picks the most likely next token with greedy "
    "sampling. The words themselves do not matter much, because the cost of reading a prompt "
    "depends on its length and on the model, not on what it says, but plain English keeps the "
    "tokenizers on their common path and makes the test easy to repeat by hand on any machine "
    "that has both engines installed side by side."
)


class BenchError(Exception):
    """A problem the user can fix (missing binary, model, venv): printed without a traceback."""


# --------------------------------------------------------------------------------------------
# Child processes: each measurement is a separate process, so its peak RSS is its own, and none
# may outlive this script.
# --------------------------------------------------------------------------------------------

@dataclass
class ChildResult:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    maxrss_kib: int  # ru_maxrss of this child alone (Linux reports KiB)
    seconds: float


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if this script is killed outright (SIGKILL, no
    # chance to clean up), the kernel kills the child too.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def run_child(cmd: list[str], timeout: float, what: str) -> ChildResult:
    """Runs cmd to completion and returns its output and peak RSS; raises BenchError on failure.

    The child gets its own session (Ctrl-C in the terminal reaches only this script, which then
    kills the child's whole process group) and dies with this script. Output goes to temporary
    files rather than pipes so that waiting with os.wait4 (which gives the child's own rusage)
    cannot deadlock on a full pipe.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        reaped = None
        try:
            while reaped is None:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    reaped = (status, usage)
                    break
                if time.monotonic() - started > timeout:
                    raise BenchError(f"{what}: no result after {timeout:.0f} s (see --timeout): "
                                     f"{shlex.join(cmd)}")
                time.sleep(0.05)
        finally:
            if reaped is None:  # timeout, Ctrl-C, SIGTERM: leave nothing behind
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.wait4(proc.pid, 0)
            proc.returncode = -1  # reaped here; keeps Popen from waiting on it again
        status, usage = reaped
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = ChildResult(cmd, proc.returncode, out.read().decode(errors="replace"),
                             err.read().decode(errors="replace"), usage.ru_maxrss, seconds)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        how = (f"killed by {signal.Signals(-result.returncode).name} from outside"
               if result.returncode < 0 else f"exit {result.returncode}")
        raise BenchError(f"{what} failed ({how}): {shlex.join(cmd)}\n{tail}")
    return result


def _on_signal(signum, _frame):
    # Turn SIGTERM / SIGHUP into an exception so run_child's cleanup runs.
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------------------------
# baimo side
# --------------------------------------------------------------------------------------------

def baimo_bench(baimo: Path, model: Path, prompts: list[int], gens: list[int], reps: int,
                threads: int, timeout: float, extra: list[str] = ()) -> tuple[dict, ChildResult]:
    """`baimo bench --json` in a child; returns {test: [tokens/s per measured rep]}."""
    cmd = [str(baimo), "bench", str(model),
           "-p", ",".join(map(str, prompts)) or "0", "-n", ",".join(map(str, gens)) or "0",
           "-r", str(reps), "--json", "-t", str(threads), "-q", *extra]
    res = run_child(cmd, timeout, "baimo bench")
    tests = {}
    for line in res.stdout.splitlines():
        if line.strip():
            row = json.loads(line)
            tests[row["test"]] = row["tokens_per_second"]
    return tests, res


_RUN_LINE = re.compile(r"\[prompt (\d+) tokens at .*first token after ([0-9.]+) ms")
_LOAD_LINE = re.compile(r"^loaded .* in ([0-9.]+) s$", re.M)


def baimo_ttft(baimo: Path, model: Path, prompt: str, threads: int, timeout: float) -> dict:
    """One `baimo run` (a fresh process): its own TTFT figure from the stderr summary line."""
    cmd = [str(baimo), "run", str(model), prompt, "--raw", "--temperature", "0", "-n", "1",
           "-t", str(threads), "--ctx", str(TTFT_CTX)]
    res = run_child(cmd, timeout, "baimo run")
    m = _RUN_LINE.search(res.stderr)
    if not m:
        raise BenchError(f"baimo run printed no summary line:\n{res.stderr}")
    load = _LOAD_LINE.search(res.stderr)
    return {"ttft_ms": float(m.group(2)), "prompt_tokens": int(m.group(1)),
            "load_ms": float(load.group(1)) * 1e3 if load else None,
            "maxrss_kib": res.maxrss_kib}


def baimo_token_count(baimo: Path, model: Path, text: str, timeout: float) -> int:
    res = run_child([str(baimo), "tokenize", "-q", str(model), text], timeout, "baimo tokenize")
    return len(json.loads(res.stdout))


def fit_prompt(baimo: Path, model: Path, n_tokens: int, timeout: float) -> str:
    """TTFT_TEXT cut to exactly n_tokens tokens of this model (whole words, then ' the')."""
    words = TTFT_TEXT.split()
    count = lambda k: baimo_token_count(baimo, model, " ".join(words[:k]), timeout)  # noqa: E731
    if count(len(words)) < n_tokens:
        raise BenchError(f"the TTFT text has fewer than {n_tokens} tokens for {model}")
    lo, hi = 1, len(words)  # largest k with count(k) <= n_tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(mid) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    have = count(lo)
    for _ in range(n_tokens):  # ' the' is one token in the BPE vocabularies of these models
        if have >= n_tokens:
            break
        text += " the"
        have = baimo_token_count(baimo, model, text, timeout)
    if have != n_tokens:
        raise BenchError(f"could not cut the TTFT prompt to {n_tokens} tokens for {model}")
    return text


def resolve_model(baimo: Path, spec: str, timeout: float) -> Path:
    """A GGUF path, or a known name resolved (and fetched if missing) by `baimo pull`."""
    if spec.endswith(".gguf") or os.sep in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise BenchError(f"model file not found: {path}")
        return path.resolve()
    try:
        res = run_child([str(baimo), "pull", spec], timeout, f"baimo pull {spec}")
    except BenchError as e:
        raise BenchError(f"model {spec!r} is not available (not a GGUF path, and `baimo pull` "
                         f"could not provide it; known names: `{baimo} list`):\n{e}") from None
    lines = res.stdout.strip().splitlines()
    path = Path(lines[-1].strip()) if lines else None
    if path is None or not path.is_file():
        raise BenchError(f"`baimo pull {spec}` printed no usable path:\n{res.stdout}{res.stderr}")
    return path


# --------------------------------------------------------------------------------------------
# llama.cpp side: the worker (runs inside the venv) and its driver
# --------------------------------------------------------------------------------------------

def _rss_kib_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def llama_worker(spec: dict) -> dict:
    """Runs in the venv's Python. spec: {mode: bench|ttft, model, threads, ...}; prints JSON."""
    import importlib.util
    import types

    # Import only the ctypes module llama_cpp.llama_cpp: the package __init__ also imports the
    # high-level API (numpy, jinja2, ...), which would add ~20 MiB to the RSS we measure.
    found = importlib.util.find_spec("llama_cpp")
    if found is None:
        raise SystemExit("llama_cpp is not installed in this Python")
    stub = types.ModuleType("llama_cpp")
    stub.__path__ = list(found.submodule_search_locations)
    sys.modules["llama_cpp"] = stub
    import llama_cpp.llama_cpp as L  # noqa: N812

    # Silence llama.cpp's log (it goes to stderr by default) except errors; keep a reference so
    # the callback is not garbage-collected while C holds it.
    @L.llama_log_callback
    def log_cb(level, text, _user):
        if level == 4:  # GGML_LOG_LEVEL_ERROR (3 is WARN in ggml.h)
            sys.stderr.write(text.decode(errors="replace"))
    L.llama_log_set(log_cb, ctypes.c_void_p(0))
    out: dict = {"harness_rss_kib": _rss_kib_now(),
                 "system_info": L.llama_print_system_info().decode().strip()}

    threads = spec["threads"]
    t0 = time.perf_counter()
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(spec["model"].encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {spec['model']}")
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)

    def new_context(n_ctx: int, n_batch: int):
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_AUTO  # llama.cpp's default, as llama-bench
        cp.swa_full = False  # as llama-bench
        ctx = L.llama_init_from_model(model, cp)
        if not ctx:
            raise SystemExit(f"llama.cpp could not create a context (n_ctx {n_ctx})")
        return ctx

    def decode(ctx, batch):
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise SystemExit(f"llama_decode returned {rc}")

    # Random tokens as llama-bench draws them (BOS first only if the model adds one).
    rng = random.Random(1234)
    add_bos = L.llama_vocab_get_add_bos(vocab)
    bos = L.llama_vocab_bos(vocab)

    def bench_tokens(n: int) -> list[int]:
        toks = [rng.randrange(n_vocab) for _ in range(n)]
        if add_bos and toks:
            toks[0] = bos
        return toks

    if spec["mode"] == "ttft":
        ctx = new_context(TTFT_CTX, TTFT_CTX)
        out["load_ms"] = (time.perf_counter() - t0) * 1e3
        text = spec["prompt"].encode()
        buf = (L.llama_token * (len(text) + 16))()
        n = L.llama_tokenize(vocab, text, len(text), buf, len(buf), True, True)
        if n <= 0:
            raise SystemExit(f"llama_tokenize returned {n}")
        sampler = L.llama_sampler_init_greedy()
        started = time.perf_counter()  # start of processing: tokens ready, context empty
        decode(ctx, L.llama_batch_get_one(buf, n))
        token = L.llama_sampler_sample(sampler, ctx, -1)
        out["ttft_ms"] = (time.perf_counter() - started) * 1e3
        out["prompt_tokens"] = n
        out["token"] = token
        L.llama_sampler_free(sampler)
        L.llama_free(ctx)
    else:
        out["load_ms"] = (time.perf_counter() - t0) * 1e3
        out["tests"] = {}
        for kind, n, n_ctx in spec["tests"]:
            ctx = new_context(n_ctx, n_ctx)
            mem = L.llama_get_memory(ctx)

            def once() -> float:
                L.llama_memory_clear(mem, True)
                toks = bench_tokens(n)
                if kind == "pp":
                    arr = (L.llama_token * n)(*toks)
                    batches = [L.llama_batch_get_one(arr, n)]
                else:  # one single-token batch per step, built before the clock starts
                    arrs = [(L.llama_token * 1)(t) for t in toks]
                    batches = [L.llama_batch_get_one(a, 1) for a in arrs]
                started = time.perf_counter()
                for b in batches:
                    decode(ctx, b)
                    L.llama_synchronize(ctx)
                return n / (time.perf_counter() - started)

            once()  # warm-up
            out["tests"][f"{kind}{n}"] = [once() for _ in range(spec["reps"])]
            L.llama_free(ctx)
    L.llama_model_free(model)
    return out


def llama_run(python: Path, spec: dict, timeout: float, what: str) -> tuple[dict, ChildResult]:
    cmd = [str(python), str(Path(__file__).resolve()), "--llama-worker", json.dumps(spec)]
    res = run_child(cmd, timeout, what)
    try:
        return json.loads(res.stdout.strip().splitlines()[-1]), res
    except (ValueError, IndexError):
        raise BenchError(f"{what}: no JSON from the worker:\n{res.stdout}\n{res.stderr}") from None


def ensure_llama_venv(venv: Path) -> tuple[Path, str]:
    """The venv's python with llama-cpp-python importable; creates and builds it when missing."""
    python = venv / "bin" / "python"
    probe = ("import importlib.metadata as m, importlib.util as u;"
             "print(m.version('llama_cpp_python') if u.find_spec('llama_cpp') else '')")

    def installed() -> str:
        if not python.exists():
            return ""
        r = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    version = installed()
    if not version:
        if not python.exists():
            print(f"creating the llama.cpp venv {venv} ...", file=sys.stderr)
            r = subprocess.run([sys.executable, "-m", "venv", str(venv)])
            if r.returncode != 0:
                raise BenchError(f"`{sys.executable} -m venv {venv}` failed (python3-venv "
                                 "missing?)")
        print(f"building llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} into {venv} "
              "(about 5 minutes on 2 cores) ...", file=sys.stderr)
        r = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"])
        version = installed()
        if r.returncode != 0 or not version:
            raise BenchError(f"installing llama-cpp-python into {venv} failed (see pip's output "
                             "above; it needs a C++ compiler and cmake)")
    if version != LLAMA_CPP_PYTHON_VERSION:
        print(f"warning: {venv} has llama-cpp-python {version}, not {LLAMA_CPP_PYTHON_VERSION} "
              "(the reference build b11312)", file=sys.stderr)
    return python, version


# --------------------------------------------------------------------------------------------
# Orchestration and report
# --------------------------------------------------------------------------------------------

@dataclass
class EngineSamples:
    """Everything one engine measured on one model, pooled over rounds."""
    tests: dict[str, list[float]] = field(default_factory=dict)  # tokens/s per rep
    ttft_ms: list[float] = field(default_factory=list)
    tg_rss_kib: list[int] = field(default_factory=list)
    load_ms: list[float] = field(default_factory=list)
    harness_rss_kib: list[int] = field(default_factory=list)
    prompt_tokens: set[int] = field(default_factory=set)
    rounds: list[dict] = field(default_factory=list)  # raw, per round, for --json

    def add_tests(self, tests: dict[str, list[float]]):
        for name, values in tests.items():
            self.tests.setdefault(name, []).extend(values)


def bench_model(name: str, path: Path, args, python: Path, long: bool, results: list[dict]):
    """Measures one model, both engines, all rounds; appends its record to results."""
    print(f"\n== {name}: {path}", file=sys.stderr)
    prompt = fit_prompt(args.baimo, path, TTFT_PROMPT_TOKENS, args.timeout)
    base = {"model": str(path), "threads": args.threads}
    pp_tests = [["pp", n, n] for n in PP_SIZES]
    tg_tests = [["tg", TG_SIZE, TG_SIZE]]
    long_tests = [["pp", n, LONG_CTX_LLAMA] for n in LONG_SIZES]
    engines = {"baimo": EngineSamples(), "llama.cpp": EngineSamples()}
    # Appended before measuring, so an interrupted run still saves what it has (--json).
    results.append({"name": name, "path": str(path), "size_bytes": path.stat().st_size,
                    "ttft_prompt": prompt, "engines": engines, "long": long})

    for rnd in range(1, args.rounds + 1):
        # baimo first, then llama.cpp: alternating engines round by round spreads slow drifts of
        # the machine (other load, frequency) over both.
        b = engines["baimo"]
        raw: dict = {"round": rnd}
        log = lambda msg: print(f"   round {rnd}/{args.rounds} {msg}", file=sys.stderr)  # noqa
        log("baimo pp")
        tests, res = baimo_bench(args.baimo, path, PP_SIZES, [], args.reps, args.threads,
                                 args.timeout)
        raw["pp"], raw["pp_maxrss_kib"] = tests, res.maxrss_kib
        b.add_tests(tests)
        log("baimo tg")
        tests, res = baimo_bench(args.baimo, path, [], [TG_SIZE], args.reps, args.threads,
                                 args.timeout)
        raw["tg"], raw["tg_maxrss_kib"] = tests, res.maxrss_kib
        b.add_tests(tests)
        b.tg_rss_kib.append(res.maxrss_kib)
        if long:
            log("baimo long prompts")
            tests, res = baimo_bench(args.baimo, path, LONG_SIZES, [], args.long_reps,
                                     args.threads, args.timeout, ["--ctx", str(LONG_CTX_BAIMO)])
            raw["long"], raw["long_maxrss_kib"] = tests, res.maxrss_kib
            b.add_tests(tests)
        log("baimo TTFT")
        raw["ttft"] = [baimo_ttft(args.baimo, path, prompt, args.threads, args.timeout)
                       for _ in range(args.ttft_runs)]
        for t in raw["ttft"]:
            b.ttft_ms.append(t["ttft_ms"])
            b.prompt_tokens.add(t["prompt_tokens"])
            if t["load_ms"] is not None:
                b.load_ms.append(t["load_ms"])
        b.rounds.append(raw)

        lc = engines["llama.cpp"]
        raw = {"round": rnd}
        log("llama.cpp pp")
        out, res = llama_run(python, {**base, "mode": "bench", "tests": pp_tests,
                                      "reps": args.reps}, args.timeout, "llama.cpp pp")
        raw["pp"], raw["pp_maxrss_kib"] = out["tests"], res.maxrss_kib
        raw["system_info"] = out["system_info"]
        lc.add_tests(out["tests"])
        log("llama.cpp tg")
        out, res = llama_run(python, {**base, "mode": "bench", "tests": tg_tests,
                                      "reps": args.reps}, args.timeout, "llama.cpp tg")
        raw["tg"], raw["tg_maxrss_kib"] = out["tests"], res.maxrss_kib
        raw["harness_rss_kib"] = out["harness_rss_kib"]
        lc.add_tests(out["tests"])
        lc.tg_rss_kib.append(res.maxrss_kib)
        lc.harness_rss_kib.append(out["harness_rss_kib"])
        if long:
            log("llama.cpp long prompts")
            out, res = llama_run(python, {**base, "mode": "bench", "tests": long_tests,
                                          "reps": args.long_reps}, args.timeout,
                                 "llama.cpp long prompts")
            raw["long"], raw["long_maxrss_kib"] = out["tests"], res.maxrss_kib
            lc.add_tests(out["tests"])
        log("llama.cpp TTFT")
        raw["ttft"] = []
        for _ in range(args.ttft_runs):
            out, res = llama_run(python, {**base, "mode": "ttft", "prompt": prompt},
                                 args.timeout, "llama.cpp TTFT")
            raw["ttft"].append({k: out[k] for k in ("ttft_ms", "prompt_tokens", "load_ms")}
                               | {"maxrss_kib": res.maxrss_kib})
            lc.ttft_ms.append(out["ttft_ms"])
            lc.prompt_tokens.add(out["prompt_tokens"])
            lc.load_ms.append(out["load_ms"])
        lc.rounds.append(raw)


def machine_info() -> dict:
    cpu, flags, cores = "unknown", set(), None
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        cpu = m.group(1).strip() if m else cpu
        m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        flags = set(m.group(1).split()) if m else flags
        m = re.search(r"^cpu cores\s*:\s*(\d+)$", text, re.M)
        cores = int(m.group(1)) if m else None
    except OSError:
        pass
    mem_gib = None
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        mem_gib = int(m.group(1)) / 2**20 if m else None
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                        "avx512_bf16", "avxvnni") if f in flags]
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "cores_per_socket": cores,
            "mem_gib": mem_gib, "kernel": platform.release(), "simd": simd,
            "loadavg_start": os.getloadavg(), "busy_start": busy_cpu_seconds(),
            "own_start": own_cpu_seconds(), "wall_start": time.monotonic()}


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this script and all the children it waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def git_commit() -> str:
    def git(*a):
        r = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return commit


def summary(values: list[float]) -> tuple[float, float, float] | None:
    return (min(values), statistics.median(values), max(values)) if values else None


def render(results: list[dict], meta: dict, args) -> str:
    m = meta["machine"]
    lines = ["## baimo vs llama.cpp", ""]
    cores = f"{m['logical_cpus']} logical CPUs" + (
        f", {m['cores_per_socket']} cores" if m["cores_per_socket"] else "")
    mem = f", {m['mem_gib']:.1f} GiB RAM" if m["mem_gib"] else ""
    lines.append(f"- machine: {m['cpu']} ({cores}{mem}), Linux {m['kernel']}, "
                 f"{' '.join(m['simd']) or 'no AVX2'}")
    lines.append("- load average at start {:.2f} {:.2f} {:.2f}, at end {:.2f} {:.2f} {:.2f}"
                 .format(*m["loadavg_start"], *meta["loadavg_end"]))
    lines.append(f"- baimo: commit {meta['baimo_commit']}, `{meta['baimo_binary']}`")
    version = meta["llama_cpp_python"]
    features = " ".join(k for k, v in re.findall(r"(\w+) = (\d+)", meta["llama_system_info"])
                        if v == "1")  # "AVX2 = 1 | AVX512 = 1 | ..." -> "AVX2 AVX512 ..."
    lines.append(f"- llama.cpp: llama-cpp-python {version}"
                 + (" (llama.cpp b11312)" if version == LLAMA_CPP_PYTHON_VERSION else "")
                 + f", CPU backend with {features or 'unknown features'}")
    lines.append(f"- {args.threads} threads for both; {args.rounds} round(s), each baimo then "
                 f"llama.cpp, every test group in its own process; {args.reps} measured reps "
                 f"after 1 warm-up per test; {args.ttft_runs} fresh TTFT process(es) per round")
    lines.append(f"- command: `{meta['command']}`")
    for r in results:
        e = r["engines"]
        b, lc = e["baimo"], e["llama.cpp"]
        lines += ["", f"### {r['name']} (`{Path(r['path']).name}`, "
                      f"{r['size_bytes'] / 2**20:.1f} MiB)", ""]
        lines.append("| test | baimo min | baimo median | baimo max | llama.cpp min "
                     "| llama.cpp median | llama.cpp max | baimo / llama.cpp (median; t/s: "
                     "higher is better, TTFT and RSS: lower is better) |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        tests = [f"pp{n}" for n in PP_SIZES] + [f"tg{TG_SIZE}"]
        if r["long"]:
            tests[len(PP_SIZES):len(PP_SIZES)] = [f"pp{n}" for n in LONG_SIZES]
        rows = [(f"{t} (t/s)", b.tests.get(t, []), lc.tests.get(t, []), 1) for t in tests]
        rows.append(("TTFT, 64-token prompt (ms)", b.ttft_ms, lc.ttft_ms, 1))
        rows.append((f"peak RSS, tg{TG_SIZE} process (MiB)", [k / 1024 for k in b.tg_rss_kib],
                     [k / 1024 for k in lc.tg_rss_kib], 1))
        for label, bv, lv, digits in rows:
            bs, ls = summary(bv), summary(lv)
            cells = [f"{x:.{digits}f}" for x in (bs or ())] or ["–"] * 3
            cells += [f"{x:.{digits}f}" for x in (ls or ())] or ["–"] * 3
            ratio = f"{bs[1] / ls[1]:.2f}" if bs and ls and ls[1] else "–"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
        notes = []
        if lc.harness_rss_kib:
            notes.append(f"llama.cpp's RSS includes its Python harness: "
                         f"{statistics.median(lc.harness_rss_kib) / 1024:.1f} MiB before the "
                         "model is loaded")
        if b.load_ms and lc.load_ms:
            notes.append(f"model load before the TTFT request (median): baimo "
                         f"{statistics.median(b.load_ms):.0f} ms (10 ms resolution), llama.cpp "
                         f"{statistics.median(lc.load_ms):.0f} ms (model + context)")
        tokens = b.prompt_tokens | lc.prompt_tokens
        if tokens != {TTFT_PROMPT_TOKENS}:
            notes.append(f"warning: TTFT prompt lengths seen: baimo {sorted(b.prompt_tokens)}, "
                         f"llama.cpp {sorted(lc.prompt_tokens)} (expected {TTFT_PROMPT_TOKENS})")
        lines += [""] + [f"- {n}" for n in notes]
    # The benchmark itself keeps the load average near 2; what matters is CPU taken by *other*
    # processes: the machine's busy time minus this script's and its children's.
    other, wall = meta.get("other_cpu_seconds"), meta.get("wall_seconds")
    if other is not None and wall:
        share = max(other, 0.0) / wall
        lines += ["", f"- CPU used by other processes during the run: {max(other, 0.0):.1f} s over "
                      f"{wall:.0f} s ({share * 100:.1f}% of one core)"]
        if share > 0.05:
            lines += ["", f"**Warning: other processes used {share * 100:.0f}% of a core during the "
                          "run: the machine was not idle, so these figures are not meaningful.**"]
    return "\n".join(lines)


def to_json(results: list[dict], meta: dict, args, complete: bool) -> dict:
    models = []
    for r in results:
        eng = {}
        for name, s in r["engines"].items():
            eng[name] = {"tests_tokens_per_second": s.tests, "ttft_ms": s.ttft_ms,
                         "tg_peak_rss_kib": s.tg_rss_kib, "load_ms": s.load_ms,
                         "harness_rss_kib": s.harness_rss_kib, "rounds": s.rounds}
        models.append({k: r[k] for k in ("name", "path", "size_bytes", "ttft_prompt")}
                      | {"engines": eng})
    return {"complete": complete, **meta,
            "settings": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in vars(args).items()},
            "models": models}


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(
        description="Benchmark baimo against llama.cpp (llama-cpp-python "
                    f"{LLAMA_CPP_PYTHON_VERSION}) on the same GGUF files, side by side.")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="MODEL",
                   help="known model names (fetched by `baimo pull` if missing) or GGUF paths; "
                        "commas also separate (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds per model; each runs baimo, then llama.cpp (default: 3)")
    p.add_argument("--reps", type=int, default=5,
                   help="measured repetitions per test per process, after one warm-up "
                        "(default: 5, as llama-bench -r 5)")
    p.add_argument("--ttft-runs", type=int, default=3,
                   help="fresh processes per engine per round for TTFT (default: 3)")
    p.add_argument("--threads", "-t", type=int, default=2, help="threads for both (default: 2)")
    p.add_argument("--long", action="store_true",
                   help=f"also pp{'/'.join(map(str, LONG_SIZES))} on SmolLM2 (slow: tens of "
                        "minutes per round)")
    p.add_argument("--long-reps", type=int, default=1,
                   help="measured repetitions of the long prompts, after one warm-up "
                        "(default: 1)")
    p.add_argument("--baimo", type=Path, default=REPO / "target" / "release" / "baimo",
                   help="the baimo binary (default: target/release/baimo)")
    p.add_argument("--venv", type=Path, default=REPO / ".venv-bench",
                   help="venv with llama-cpp-python; created and built when missing "
                        "(default: .venv-bench in the repository)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also save the raw numbers here")
    p.add_argument("--timeout", type=float, default=7200,
                   help="seconds any one child process may take (default: 7200; the long "
                        "prompts in baimo take the longest)")
    args = p.parse_args(argv)
    args.models = [m for spec in args.models for m in spec.split(",") if m]
    for opt in ("rounds", "reps", "ttft_runs", "threads", "long_reps"):
        if getattr(args, opt) < 1:
            p.error(f"--{opt.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    results: list[dict] = []
    meta: dict = {}
    complete = False
    try:
        args.baimo = args.baimo.expanduser().resolve()
        if not (args.baimo.is_file() and os.access(args.baimo, os.X_OK)):
            raise BenchError(f"baimo binary not found at {args.baimo}: build it with "
                             f"`cargo build --release` in {REPO}, or pass --baimo PATH")
        meta = {"machine": machine_info(), "baimo_commit": git_commit(),
                "baimo_binary": str(args.baimo),
                "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))}
        # Models first: a missing model should fail before a 5-minute llama.cpp build.
        paths = [(spec, resolve_model(args.baimo, spec, args.timeout)) for spec in args.models]
        python, version = ensure_llama_venv(args.venv.expanduser().absolute())
        meta["llama_cpp_python"] = version
        long_model = next((s for s, p in paths if "smollm2" in (s + p.name).lower()), None)
        if args.long and long_model is None:
            print("note: --long runs on SmolLM2 only, which is not among --models",
                  file=sys.stderr)
        for spec, path in paths:
            bench_model(spec, path, args, python, args.long and spec == long_model, results)
        meta["loadavg_end"] = os.getloadavg()
        m = meta["machine"] if "machine" in meta else meta
        meta["other_cpu_seconds"] = (busy_cpu_seconds() - m["busy_start"]) - (own_cpu_seconds() - m["own_start"])
        meta["wall_seconds"] = time.monotonic() - m["wall_start"]
        infos = [raw.get("system_info") for r in results
                 for raw in r["engines"]["llama.cpp"].rounds]
        meta["llama_system_info"] = next((i for i in infos if i), "")
        print()
        print(render(results, meta, args))
        complete = True
        return 0
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; child processes stopped", file=sys.stderr)
        return 130
    finally:
        if args.json and meta:
            meta.setdefault("loadavg_end", os.getloadavg())
            args.json.write_text(json.dumps(to_json(results, meta, args, complete), indent=1)
                                 + "\n")
            print(f"raw numbers saved to {args.json}" + ("" if complete else " (incomplete)"),
                  file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--llama-worker":
        # Worker mode, inside the venv: one measurement, JSON on the last stdout line.
        print(json.dumps(llama_worker(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
