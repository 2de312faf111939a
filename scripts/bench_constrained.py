#!/usr/bin/env python3
"""What grammar-constrained decoding costs: decoding speed (tokens/s after the first token) of
answers constrained to a nested JSON Schema against the same requests unconstrained, on one
`baimo serve`, alternated round by round. Prints the medians and their ratio.

    python3 scripts/bench_constrained.py [--baimo target/release/baimo] [--model qwen2.5-coder-0.5b] [--rounds 7]
"""

import argparse
import json
import statistics
import subprocess
import time
import urllib.request

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "country": {"type": "string"},
        "population_millions": {"type": "number"},
        "districts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "known_for": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                    "tourist_rating": {"type": "integer", "minimum": 1, "maximum": 5},
                },
                "required": ["name", "known_for", "tourist_rating"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["city", "country", "population_millions", "districts"],
    "additionalProperties": False,
}
PROMPTS = ["Describe Paris and its districts as JSON.", "Describe Tokyo and its districts as JSON.",
           "Describe Rome and its districts as JSON."]


def start(baimo, model):
    proc = subprocess.Popen([baimo, "serve", model, "--port", "0", "-q"], stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline().strip()
    assert line.startswith("listening on "), line
    return proc, line.removeprefix("listening on ")


def decode_rate(base, model, prompt, constrained, tokens):
    body = {"model": model, "temperature": 0, "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": prompt}]}
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    first = last = None
    usage = None
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if any(c["delta"].get("content") for c in chunk["choices"]):
                now = time.perf_counter()
                first = first or now
                last = now
    n = usage["completion_tokens"]
    return (n - 1) / (last - first), n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--baimo", default="target/release/baimo")
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tokens", type=int, default=160)
    a = p.parse_args()
    proc, base = start(a.baimo, a.model)
    try:
        decode_rate(base, a.model, PROMPTS[0], True, 16)  # warm-up (builds the vocabulary's trie)
        free, bound = [], []
        for i in range(a.rounds):
            prompt = PROMPTS[i % len(PROMPTS)]
            rate, n = decode_rate(base, a.model, prompt, False, a.tokens)
            free.append(rate)
            rate_c, n_c = decode_rate(base, a.model, prompt, True, a.tokens)
            bound.append(rate_c)
            print(f"round {i}: unconstrained {rate:.1f} t/s ({n} tokens), constrained {rate_c:.1f} t/s ({n_c} tokens)")
        f, b = statistics.median(free), statistics.median(bound)
        print(f"median decode: unconstrained {f:.1f} t/s, constrained {b:.1f} t/s, "
              f"ratio {b / f:.3f} (cost {100 * (1 - b / f):.1f}%)")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
