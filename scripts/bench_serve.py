#!/usr/bin/env python3
"""Aggregate generation speed of an OpenAI-compatible server with 1 and with P concurrent
streams (default 8), for `baimo serve` and, next to it, llama-cpp-python's server on the same
GGUF (which serves requests one at a time: it has no parallel slots). Not a test: speed figures for docs/performance.md.

    python3 scripts/bench_serve.py --model ~/.cache/baimo/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf \\
        [--parallel 8] [--tokens 128] [--baimo target/release/baimo] [--llama-venv /tmp/llvenv] [--arithmetic fast]

Each stream asks for `--tokens` tokens (temperature 0.8, its own seed) and is counted by the
completion tokens the server reports; aggregate t/s = all completion tokens / wall time.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(base, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        try:
            with urllib.request.urlopen(base + "/v1/models", timeout=2) as r:
                return json.load(r)["data"][0]["id"]
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"server at {base} did not come up")


def one_request(base, model, tokens, seed, out, idx):
    body = json.dumps({
        "model": model, "messages": [{"role": "user", "content": f"Write a long story about lighthouse number {seed}."}],
        "max_tokens": tokens, "temperature": 0.8, "seed": seed,
    }).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"content-type": "application/json"})
    started = time.time()
    with urllib.request.urlopen(req, timeout=600) as r:
        reply = json.load(r)
    out[idx] = (reply["usage"]["completion_tokens"], time.time() - started)


def run_streams(base, model, tokens, streams, rounds=2):
    best = 0.0
    for r in range(rounds):
        out = [None] * streams
        threads = [threading.Thread(target=one_request, args=(base, model, tokens, 1000 * r + i, out, i)) for i in range(streams)]
        started = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - started
        total = sum(o[0] for o in out)
        best = max(best, total / wall)
    return best


def bench(name, cmd, base, tokens, parallel, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        model = wait_up(base)
        run_streams(base, model, 16, 1, rounds=1)  # warm-up
        single = run_streams(base, model, tokens, 1)
        many = run_streams(base, model, tokens, parallel)
        return single, many
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baimo", default="target/release/baimo")
    ap.add_argument("--arithmetic", default=None, choices=["llama-cpp", "fast"],
                    help="passed to baimo serve (default: serve's own, fast)")
    ap.add_argument("--llama-venv", default=None, help="a venv with llama-cpp-python[server] (skipped if absent)")
    args = ap.parse_args()
    rows = []
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [args.baimo, "serve", args.model, "--port", str(port), "-q", "-t", str(args.threads),
           "--parallel", str(args.parallel), "--cache-entries", "0"]
    if args.arithmetic:
        cmd += ["--arithmetic", args.arithmetic]
    rows.append((f"baimo serve ({args.arithmetic or 'fast, the default'})",) + bench("baimo", cmd, base, args.tokens, args.parallel))
    if args.llama_venv:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        py = os.path.join(args.llama_venv, "bin", "python")
        # llama-cpp-python's server answers one request at a time (it has no parallel slots;
        # llama.cpp's own llama-server has --parallel, but is not part of the Python package).
        cmd = [py, "-m", "llama_cpp.server", "--model", args.model, "--port", str(port),
               "--n_threads", str(args.threads), "--n_ctx", "2048"]
        rows.append(("llama-cpp-python 0.3.36 server (serial)",) + bench("llama.cpp", cmd, base, args.tokens, args.parallel))
    print(f"| server | 1 stream (t/s) | {args.parallel} streams, aggregate (t/s) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name, single, many in rows:
        print(f"| {name} | {single:.1f} | {many:.1f} | {many / single:.2f}x |")


if __name__ == "__main__":
    main()
