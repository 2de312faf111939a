#!/usr/bin/env python3
"""The latency baimo's gateway adds: the same small chat completion sent to a loopback mock
provider directly, and through `baimo serve` (hosted models only, one channel to that mock), at a
fixed rate (open loop: requests leave on schedule whether or not earlier ones have answered, and
latency counts from the scheduled time, so a stall is not hidden). Rounds alternate direct and
gateway; the report gives p50 and p99 of each and their differences.

    python3 scripts/bench_gateway.py [--baimo target/release/baimo] [--rate 200] [--seconds 5] [--rounds 3] [--stream]

Standard library only.
"""
import argparse
import http.client
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def start(cmd):
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    line = p.stderr.readline().strip()
    if not line.startswith("listening on http://"):
        p.kill()
        sys.exit(f"{cmd[:2]} did not start: {line}")
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    return p, line.removeprefix("listening on http://")


def run_round(hostport, path, headers, body, rate, seconds, workers=64):
    """Latencies (seconds) of rate*seconds requests scheduled at a fixed rate."""
    host, port = hostport.split(":")
    jobs = queue.Queue()
    latencies, errors = [], []
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        while True:
            scheduled = jobs.get()
            if scheduled is None:
                return
            try:
                conn.request("POST", path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                done = time.perf_counter()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
                with lock:
                    latencies.append(done - scheduled)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(e))
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    n = int(rate * seconds)
    start_at = time.perf_counter() + 0.05
    for i in range(n):
        at = start_at + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        jobs.put(at)
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return latencies


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baimo", default="target/release/baimo")
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stream", action="store_true", help="streamed answers (time to the last byte)")
    args = ap.parse_args()

    key = "sk-bench-upstream"
    mock, mock_addr = start([args.baimo, "mock-provider", "openai", "--port", "0", "--key", key])
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f'local = false\n[[channels]]\nname = "bench"\nprovider = "openai"\n'
              f'base_url = "http://{mock_addr}"\napi_key = "{key}"\nmodels = ["gpt-4"]\n')
    cfg.close()
    gw, gw_addr = start([args.baimo, "serve", "--config", cfg.name, "--port", "0", "-q"])
    try:
        body = json.dumps({"model": "gpt-4", "max_tokens": 16, "stream": args.stream,
                           "messages": [{"role": "user", "content": "hello there, how are you today?"}]})
        h_direct = {"content-type": "application/json", "authorization": f"Bearer {key}"}
        h_gateway = {"content-type": "application/json"}
        # Warm both paths (connections, the gateway's client pool).
        run_round(mock_addr, "/v1/chat/completions", h_direct, body, 50, 1)
        run_round(gw_addr, "/v1/chat/completions", h_gateway, body, 50, 1)
        direct, gateway = [], []
        for r in range(args.rounds):
            d = run_round(mock_addr, "/v1/chat/completions", h_direct, body, args.rate, args.seconds)
            g = run_round(gw_addr, "/v1/chat/completions", h_gateway, body, args.rate, args.seconds)
            print(f"round {r + 1}: direct p50 {pct(d, 50) * 1e3:.2f} ms p99 {pct(d, 99) * 1e3:.2f} ms | "
                  f"gateway p50 {pct(g, 50) * 1e3:.2f} ms p99 {pct(g, 99) * 1e3:.2f} ms", flush=True)
            direct += d
            gateway += g
        print(f"\n{len(direct)} requests each at {args.rate:.0f}/s ({'streamed' if args.stream else 'whole'} answers), "
              f"{os.cpu_count()} CPUs")
        for p in (50, 99):
            d, g = pct(direct, p), pct(gateway, p)
            print(f"p{p}: direct {d * 1e3:.2f} ms, through baimo {g * 1e3:.2f} ms, added {(g - d) * 1e3:.2f} ms")
        print(f"mean added: {(statistics.mean(gateway) - statistics.mean(direct)) * 1e3:.2f} ms")
    finally:
        gw.kill()
        mock.kill()
        os.unlink(cfg.name)


if __name__ == "__main__":
    main()
