#!/usr/bin/env python3
"""How long a running stream stalls while `baimo serve` reads a long new prompt. Not a test: a
figure for docs/performance.md.

    python3 scripts/bench_prompt_gap.py --model ~/.cache/baimo/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf \\
        [--baimo target/release/baimo] [--words 900]

Stream A (greedy, 400 tokens) starts; half a second later request B arrives with a prompt of
`--words` numbered words (~3.5k tokens for 900) and asks for one token. Printed: B's time, and
the largest gap between two of A's streamed chunks while B was being read.
"""

import argparse
import json
import socket
import subprocess
import threading
import time
import urllib.request


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--baimo", default="target/release/baimo")
    ap.add_argument("--words", type=int, default=900)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([args.baimo, "serve", args.model, "--port", str(port), "-q", "-t", str(args.threads),
                             "--ctx", "8192", "--cache-entries", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                model = json.load(urllib.request.urlopen(base + "/v1/models", timeout=2))["data"][0]["id"]
                break
            except Exception:
                time.sleep(0.2)
        else:
            raise SystemExit("the server did not come up")

        def post(body):
            req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                         {"content-type": "application/json"})
            return urllib.request.urlopen(req, timeout=600)

        arrivals = []

        def stream_a():
            with post({"model": model, "stream": True, "max_tokens": 400, "temperature": 0,
                       "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}]}) as r:
                for line in r:
                    if line.startswith(b"data: "):
                        arrivals.append(time.time())

        a = threading.Thread(target=stream_a)
        a.start()
        time.sleep(0.5)
        words = " ".join(f"word{i}" for i in range(args.words))
        t0 = time.time()
        with post({"model": model, "max_tokens": 1,
                   "messages": [{"role": "user", "content": words}]}) as r:
            reply = json.load(r)
        t1 = time.time()
        a.join()
        gaps = [b - x for x, b in zip(arrivals, arrivals[1:]) if t0 <= b <= t1 + 0.5]
        print(f"prompt of {reply['usage']['prompt_tokens']} tokens read and answered in {t1 - t0:.2f} s; "
              f"the running stream's largest gap meanwhile: {max(gaps, default=0) * 1000:.0f} ms")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
