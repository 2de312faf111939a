#!/usr/bin/env python3
"""Aggregate generation speed of an OpenAI-compatible server with 1 and with P concurrent
streams (default 8), for `baimo serve` and, next to it, llama-cpp-python's server on the same
GGUF (which serves requests one at a time: it has no parallel slots). Not a test: speed figures for docs/performance.md.

    python3 scripts/bench_serve.py --model ~/.cache/baimo/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf \\
        [--parallel 8] [--tokens 128] [--baimo target/release/baimo] [--llama-venv /tmp/llvenv] [--arithmetic fast]
        [--llama-server /path/to/llama-server]

`--llama-server` runs llama.cpp's own server with `--parallel P` slots (continuous batching). It
is not on PyPI as a binary: build it from the llama.cpp sources inside the llama-cpp-python 0.3.36
sdist (docs/performance.md says how).

Each of the P clients sends `--requests` requests back to back, each for `--tokens` tokens
(temperature 0.8, its own seed), counted by the completion tokens the server reports; aggregate
t/s = all completion tokens / wall time (prompt reading and the last stragglers included). The
single stream is one such client.
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


def one_request(base, model, tokens, seed):
    body = json.dumps({
        "model": model, "messages": [{"role": "user", "content": f"Write a long story about lighthouse number {seed}."}],
        "max_tokens": tokens, "temperature": 0.8, "seed": seed,
    }).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        reply = json.load(r)
    return reply["usage"]["completion_tokens"]


def run_streams(base, model, tokens, streams, requests, round_no):
    """`streams` clients, each sending `requests` requests back to back (a new one as soon as
    its last answer is in, so `streams` requests are in flight nearly all the time); aggregate
    t/s = completion tokens / wall time."""
    counts = [0] * streams

    def client(i):
        for k in range(requests):
            counts[i] += one_request(base, model, tokens, 1000 * round_no + 100 * i + k)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.time() - started)


def bench(cmd, base, tokens, parallel, requests, rounds):
    """Rounds of (1 stream, then `parallel` streams) on one server process; the machine's speed
    drifts (shared memory bandwidth), so each ratio compares two runs taken back to back."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        model = wait_up(base)
        run_streams(base, model, 16, 1, 1, 0)  # warm-up
        pairs = []
        for r in range(rounds):
            single = run_streams(base, model, tokens, 1, requests, 2 * r + 1)
            many = run_streams(base, model, tokens, parallel, requests, 2 * r + 2)
            pairs.append((single, many))
        return pairs
    finally:
        proc.terminate()
        proc.wait()


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=4, help="requests each client sends back to back")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baimo", default="target/release/baimo")
    ap.add_argument("--arithmetic", default=None, choices=["llama-cpp", "fast"],
                    help="passed to baimo serve (default: serve's own, fast)")
    ap.add_argument("--llama-venv", default=None, help="a venv with llama-cpp-python[server] (skipped if absent)")
    ap.add_argument("--llama-server", default=None,
                    help="a llama-server binary, run with --parallel P slots (skipped if absent)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [args.baimo, "serve", args.model, "--port", str(port), "-q", "-t", str(args.threads),
           "--parallel", str(args.parallel)]
    if args.arithmetic:
        cmd += ["--arithmetic", args.arithmetic]
    name = f"baimo serve ({args.arithmetic or 'fast, the default'})"
    rows.append((name, bench(cmd, base, args.tokens, args.parallel, args.requests, args.rounds)))
    if args.llama_venv:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        py = os.path.join(args.llama_venv, "bin", "python")
        # llama-cpp-python's server answers one request at a time (it has no parallel slots;
        # llama.cpp's own llama-server has --parallel, but is not part of the Python package).
        cmd = [py, "-m", "llama_cpp.server", "--model", args.model, "--port", str(port),
               "--n_threads", str(args.threads), "--n_ctx", "2048"]
        rows.append(("llama-cpp-python 0.3.36 server (serial)",
                     bench(cmd, base, args.tokens, args.parallel, 1, args.rounds)))
    if args.llama_server:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        # Each slot gets its own 2048 positions of the shared context, as baimo's sequences do.
        cmd = [args.llama_server, "--model", args.model, "--port", str(port), "--threads", str(args.threads),
               "--parallel", str(args.parallel), "--ctx-size", str(2048 * args.parallel), "--no-webui",
               "--log-disable"]
        rows.append((f"llama.cpp llama-server ({args.parallel} slots)",
                     bench(cmd, base, args.tokens, args.parallel, args.requests, args.rounds)))
    print(f"| server | 1 stream (t/s) | {args.parallel} streams, aggregate (t/s) | ratio, median (min–max) |")
    print("| --- | ---: | ---: | ---: |")
    for name, pairs in rows:
        ratios = [m / s for s, m in pairs]
        print(f"| {name} | {median([s for s, _ in pairs]):.1f} | {median([m for _, m in pairs]):.1f} "
              f"| {median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
