#!/usr/bin/env python3
"""Soak benchmark of `baimo serve`: many concurrent clients for a long time, mixing the local model
and hosted models behind loopback mock providers, with clients that hang up mid-stream and
providers that fail (429s, 5xx, delays, streams cut or ended by an error event). At the end it
reports the requests made, the errors by kind, the serve process's memory at the start and end,
and whether the usage table (one row per request, in the SQLite store) matches what the clients
received.

    python3 scripts/soak.py [--duration 600] [--clients 64] [--baimo target/release/baimo]
                            [--model SmolLM2-135M-Instruct.Q4_1.gguf] [--out soak.json]
                            [--records requests.jsonl] [--keep]

It starts and stops everything it needs, in a temporary folder (removed at the end unless
--keep): `baimo mock-provider openai` (two channels, weights 3:1, both to it: model `gpt-4`),
`baimo mock-provider spark` (WebSocket; usage only in the last frame: model `spark-3.5`), one
client key per client in a fresh database (`baimo keys create`), and `baimo serve MODEL --config
... --db ...`. Ctrl-C ends the run early and still reports; a second Ctrl-C stops at once (the
processes are stopped either way).

Each client has its own key and sends one request at a time: the local model, `gpt-4` or
`spark-3.5` at random, streamed or not, through the OpenAI front (`/v1/chat/completions`) or the
Anthropic front (`/v1/messages`); some streams are cut by the client after a random number of
content chunks (the connection is closed). A fault injector queues faults on the mocks
(`POST /_mock/faults`) and now and then sets one for every request for a few seconds (an outage).

The usage check pairs every request with its usage row (same key, same model and stream flag,
the row's start time, at_ms - latency_ms, within the request's time span):
- a whole answer (status 200, usage given to the client): the row has status 200 and exactly the
  prompt and completion tokens the client was told (and a stream had no more content chunks
  than completion tokens, one more for a local stream's final flush);
- an error before any answer: the row has the status the client got;
- a stream cut by the client (status 499; or 200 when the server had the whole answer before it
  saw the client leave; or, hosted, the provider's error when that came first) or by the
  provider (an error event after the stream began; the row's status is the error's, not 200):
  the row's completion tokens are at least the content chunks
  the client received (every chunk is at least one token; a local stream's last chunk may be
  held-back text flushed at its end) and at most the request's max_tokens.
  Rows marked estimated (an `estimated` column, when the schema has one: a hosted stream cut
  before the provider reported usage) may be up to --estimate-tolerance (default 0.5, the ±50%
  `estimate_tokens` states) below the provider's count of what the client received (the mocks
  count a word a token; never 0 when the client received text), and at most one token a byte of
  all the provider could have sent (the text received, for a provider's cut; the mock's whole
  answer, for a client's);
- no request has two rows and no row is left without its request.
Prompt tokens of cut streams are reported but not checked (a client is not told them).
It also samples the serve process's RSS, file descriptors, threads and CPU every 5 s, and
compares the tries each mock counted with those the usage rows account for (retries + 1).
The exit status is 1 when anything does not match, a process died or serve's log has a panic;
0 otherwise. --out writes the summary as JSON, --records every request as its client saw it.

Needs `httpx`: when it cannot be imported, a venv (--venv, default /tmp/venv-soak) is created
with httpx installed and the script runs again in it.
"""
import argparse
import asyncio
import bisect
import collections
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HTTPX_VERSION = "0.28.1"

OPENAI_KEY = "sk-soak-openai"
SPARK_KEY, SPARK_SECRET, SPARK_APP = "soak-spark-key", "soak-spark-secret", "soakapp1"
HOSTED = {"openai": "gpt-4", "spark": "spark-3.5"}

WORDS = (
    "apple river stone cloud paper window garden silver market engine yellow travel winter "
    "candle forest button number planet signal letter bridge castle pocket rabbit summer "
    "thunder violin wonder anchor basket circle desert family harbor island jacket kitten "
    "ladder meadow orange pencil quiet rocket sunset tunnel valley wagon"
).split()


class SoakError(Exception):
    """A setup problem: printed without a traceback."""


# --------------------------------------------------------------------------------------------
# httpx, in a venv of its own when it is not importable


def ensure_httpx(venv: Path):
    try:
        import httpx  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get("BAIMO_SOAK_REEXEC"):
        raise SoakError(f"httpx is still not importable in {sys.executable}")
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with httpx=={HTTPX_VERSION} ...", file=sys.stderr)
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)])
        if r.returncode:
            raise SoakError(f"`{sys.executable} -m venv {venv}` failed (python3-venv missing?)")
    r = subprocess.run([str(python), "-c", "import httpx"], capture_output=True)
    if r.returncode:
        # -I: pip imports nothing from the working directory or the user's site folder.
        r = subprocess.run([str(python), "-I", "-m", "pip", "install", "--quiet",
                            f"httpx=={HTTPX_VERSION}"], cwd=str(venv))
        if r.returncode:
            raise SoakError(f"installing httpx into {venv} failed")
    env = dict(os.environ, BAIMO_SOAK_REEXEC="1")
    os.execve(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]], env)


# --------------------------------------------------------------------------------------------
# processes


class Procs:
    """The processes this script started: each in its own session (a Ctrl-C in the terminal
    reaches only this script, which stops them), stderr to a log file."""

    def __init__(self, tmp: Path, env: dict):
        self.tmp, self.env = tmp, env
        self.procs = {}  # name -> (Popen, log path)
        self.exits = {}  # name -> how it ended

    def start(self, name, cmd, timeout=180.0):
        log = self.tmp / f"{name}.log"
        f = open(log, "w")
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, stdin=subprocess.DEVNULL,
                             env=self.env, start_new_session=True)
        f.close()
        self.procs[name] = (p, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"http://([0-9.]+:[0-9]+)", log.read_text(errors="replace"))
            if m:
                return m.group(1)
            if p.poll() is not None:
                raise SoakError(f"{name} exited with {p.returncode}: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise SoakError(f"{name} did not say where it listens within {timeout:.0f} s")

    def pid(self, name):
        return self.procs[name][0].pid

    def dead(self):
        """Names of the processes that ended on their own, with their exit status."""
        return {n: p.returncode for n, (p, _) in self.procs.items()
                if n not in self.exits and p.poll() is not None}

    def log_tail(self, name, chars=3000):
        return self.procs[name][1].read_text(errors="replace")[-chars:]

    def stop_all(self):
        for name, (p, _) in list(self.procs.items()):
            if name in self.exits:
                continue
            if p.poll() is not None:
                self.exits[name] = f"exited by itself with status {p.returncode}"
                continue
            try:
                p.send_signal(signal.SIGINT)  # serve shuts down gracefully on Ctrl-C
                p.wait(timeout=15)
                self.exits[name] = f"stopped by SIGINT (status {p.returncode})"
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                self.exits[name] = "did not stop within 15 s of SIGINT: killed"


def proc_status(pid):
    """VmRSS and VmHWM (MiB), threads and open file descriptors of a process, or None."""
    try:
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            fields[k] = v.strip()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        load1 = float(Path("/proc/loadavg").read_text().split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    kib = lambda k: int(fields.get(k, "0 kB").split()[0])  # noqa: E731
    return {"rss_mib": round(kib("VmRSS") / 1024, 1), "hwm_mib": round(kib("VmHWM") / 1024, 1),
            "threads": int(fields.get("Threads", 0)), "fds": fds, "cpu_s": round(cpu_s, 1), "load1": load1}


def find_model():
    found = sorted(Path.home().glob(".cache/baimo/**/SmolLM2-135M*.gguf"))
    if not found:
        raise SoakError("no SmolLM2-135M GGUF under ~/.cache/baimo (`baimo pull smollm2-135m`), "
                        "or give --model")
    return found[0]


# --------------------------------------------------------------------------------------------
# one request


def words(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def make_request(rng, args, local_name):
    r = rng.random()
    if r < args.local_share:
        kind, model = "local", local_name
    elif r < args.local_share + (1 - args.local_share) * 0.55:
        kind, model = "openai", HOSTED["openai"]
    else:
        kind, model = "spark", HOSTED["spark"]
    messages = []
    if rng.random() < 0.2:  # an earlier turn
        messages += [{"role": "user", "content": words(rng, 2, 10)},
                     {"role": "assistant", "content": words(rng, 2, 10)}]
    messages.append({"role": "user", "content": words(rng, 2, 20)})
    stream = rng.random() < args.stream_share
    max_tokens = rng.randint(4, 40) if kind == "local" else rng.randint(3, 30)
    cut = rng.randint(1, 8) if stream and rng.random() < args.cut_share else None
    # The mocks count a prompt's tokens as the words of every message.
    expected_prompt = max(1, sum(len(m["content"].split()) for m in messages)) if kind != "local" else None
    return {
        "kind": kind, "model": model, "front": "anthropic" if rng.random() < args.anthropic_share else "openai",
        "stream": stream, "max_tokens": max_tokens, "messages": messages, "cut_after": cut,
        "expected_prompt": expected_prompt, "seed": rng.randrange(1 << 31),
        "answer_bytes_max": mock_answer_bytes(kind, messages, max_tokens) if kind != "local" else None,
    }


def mock_answer_bytes(kind, messages, max_tokens):
    """Bytes of the longest answer the mock can give (its reply, `crates/gateway/src/mock/mod.rs`:
    `mock-<provider> <model> heard: <last user message>`, one word a token, cut at max_tokens)."""
    upstream_model = {"openai": "gpt-4", "spark": "generalv3.5"}[kind]
    last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    parts = f"mock-{kind} {upstream_model} heard: {last_user}".split(" ")
    pieces = [w + " " for w in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    return len("".join(pieces[:max(1, max_tokens)]).encode())


def error_kind(status, body):
    """`429 rate_limit_exceeded`, `502 upstream_error`...: the status and the error's code/type."""
    try:
        err = json.loads(body).get("error") or {}
        label = err.get("code") or err.get("type") or ""
    except (ValueError, AttributeError):
        label = "unparsable body"
    return f"{status} {label}".strip()


async def send(client, key, spec, deadline_s):
    """Runs one request; what the client saw."""
    import httpx
    rec = dict(spec)
    del rec["messages"]
    rec.update(status=None, outcome=None, error=None, chunks=0, text_bytes=0, prompt=None, completion=None,
               prompt_seen=None)
    if spec["front"] == "openai":
        path = "/v1/chat/completions"
        headers = {"authorization": f"Bearer {key}"}
        body = {"model": spec["model"], "messages": spec["messages"], "max_tokens": spec["max_tokens"],
                "stream": spec["stream"], "temperature": 0.8, "seed": spec["seed"]}
        if spec["stream"]:
            body["stream_options"] = {"include_usage": True}
    else:
        path = "/v1/messages"
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        body = {"model": spec["model"], "messages": spec["messages"], "max_tokens": spec["max_tokens"],
                "stream": spec["stream"], "temperature": 0.8}
    rec["t_send"] = time.time() * 1000
    began = False

    async def run():
        nonlocal began
        if not spec["stream"]:
            r = await client.post(path, json=body, headers=headers)
            rec["status"] = r.status_code
            if r.status_code != 200:
                rec["outcome"], rec["error"] = "http_error", error_kind(r.status_code, r.text)
                return
            try:
                usage = r.json()["usage"]
            except (ValueError, KeyError, TypeError):
                rec["outcome"], rec["error"] = "bad_response", "200 without usage"
                return
            if spec["front"] == "openai":
                rec["prompt"], rec["completion"] = usage["prompt_tokens"], usage["completion_tokens"]
            else:
                rec["prompt"], rec["completion"] = usage["input_tokens"], usage["output_tokens"]
            rec["outcome"] = "complete"
            return
        async with client.stream("POST", path, json=body, headers=headers) as r:
            rec["status"] = r.status_code
            if r.status_code != 200:
                await r.aread()
                rec["outcome"], rec["error"] = "http_error", error_kind(r.status_code, r.text)
                return
            began = True
            event, ended = None, False
            pieces = []
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                    continue
                if not line.startswith("data:"):
                    if not line:
                        event = None
                    continue
                data = line[5:].strip()
                if spec["front"] == "openai":
                    if data == "[DONE]":
                        ended = True
                        break
                    msg = json.loads(data)
                    if "error" in msg:
                        err = msg["error"] or {}
                        rec["outcome"] = "upstream_cut"
                        rec["error"] = f"stream error {err.get('code') or err.get('type')}"
                        return
                    for c in msg.get("choices") or []:
                        text = (c.get("delta") or {}).get("content")
                        if text:
                            rec["chunks"] += 1
                            rec["text_bytes"] += len(text.encode())
                            pieces.append(text)
                    if msg.get("usage"):
                        rec["prompt"] = msg["usage"]["prompt_tokens"]
                        rec["completion"] = msg["usage"]["completion_tokens"]
                else:
                    msg = json.loads(data)
                    kind = msg.get("type") or event
                    if kind == "error":
                        rec["outcome"] = "upstream_cut"
                        rec["error"] = f"stream error {(msg.get('error') or {}).get('type')}"
                        return
                    if kind == "message_start":
                        seen = ((msg.get("message") or {}).get("usage") or {}).get("input_tokens")
                        rec["prompt_seen"] = seen or None
                    elif kind == "content_block_delta" and (msg.get("delta") or {}).get("text"):
                        rec["chunks"] += 1
                        rec["text_bytes"] += len(msg["delta"]["text"].encode())
                        pieces.append(msg["delta"]["text"])
                    elif kind == "message_delta":
                        u = msg.get("usage") or {}
                        rec["prompt"], rec["completion"] = u.get("input_tokens"), u.get("output_tokens")
                    elif kind == "message_stop":
                        ended = True
                        break
                if spec["cut_after"] is not None and rec["chunks"] >= spec["cut_after"] and not ended:
                    rec["outcome"] = "client_cut"
                    return  # leaving the `async with` closes the connection
            if not ended:
                rec["outcome"], rec["error"] = "truncated", "stream ended without its end or an error"
            elif rec["completion"] is None:
                rec["outcome"], rec["error"] = "bad_response", "stream without usage"
            else:
                rec["outcome"] = "complete"
                if rec["chunks"] > rec["completion"] + (spec["kind"] == "local"):
                    rec["pieces"] = pieces  # kept for the report: an anomaly

    try:
        await asyncio.wait_for(run(), timeout=deadline_s)
    except asyncio.TimeoutError:
        rec["outcome"], rec["error"] = ("timeout_stream" if began else "timeout"), f"no answer in {deadline_s:.0f} s"
    except (httpx.TransportError, httpx.StreamError) as e:
        # After the stream began, a broken connection is a cut the server made.
        rec["outcome"] = "truncated" if began else "transport"
        rec["error"] = f"{type(e).__name__}"
    except (ValueError, KeyError, TypeError) as e:
        rec["outcome"], rec["error"] = "bad_response", f"{type(e).__name__}: {e}"[:120]
    rec["t_end"] = time.time() * 1000
    return rec


# --------------------------------------------------------------------------------------------
# the run


class Run:
    def __init__(self, args, base, keys, local_name, mocks, procs, db):
        self.args, self.base, self.keys, self.local_name = args, base, keys, local_name
        self.mocks, self.procs, self.db = mocks, procs, db
        self.records = []
        self.stop = asyncio.Event()
        self.faults = collections.Counter()
        self.samples = []  # (seconds since start, proc_status)
        self.crashed = {}

    async def client(self, i, deadline):
        import httpx
        rng = random.Random(self.args.seed * 1000 + i)
        timeout = httpx.Timeout(connect=10, read=self.args.request_timeout, write=10, pool=10)
        async with httpx.AsyncClient(base_url=f"http://{self.base}", timeout=timeout) as client:
            seq = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                spec = make_request(rng, self.args, self.local_name)
                rec = await send(client, self.keys[i][1], spec, self.args.request_timeout)
                rec.update(client=i, key_id=self.keys[i][0], seq=seq)
                seq += 1
                self.records.append(rec)
                if self.args.think_ms:
                    await asyncio.sleep(rng.uniform(0, self.args.think_ms) / 1000)

    async def fault_injector(self, deadline):
        import httpx
        rng = random.Random(self.args.seed * 7919)
        menu = [  # (weight, fault)
            (3, lambda: {"type": "status", "status": 429, "retry_after_ms": rng.randint(50, 800)}),
            (3, lambda: {"type": "status", "status": rng.choice([500, 502, 503])}),
            (2, lambda: {"type": "delay", "ms": rng.randint(100, 1500)}),
            (3, lambda: {"type": "drop_stream", "after_events": rng.randint(1, 8)}),
            (2, lambda: {"type": "error_event", "after_events": rng.randint(1, 8)}),
            (0.3, lambda: {"type": "status", "status": 429, "code": "insufficient_quota"}),
        ]
        weights = [w for w, _ in menu]
        drained = {name: 0 for name in self.mocks}  # the request count by which the queue is empty
        next_outage = time.monotonic() + rng.uniform(20, 40)
        async with httpx.AsyncClient(timeout=5) as client:
            async def post(name, body):
                await client.post(f"http://{self.mocks[name]}/_mock/faults", json=body)

            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(self.stop.wait(), rng.uniform(0.3, 2 * self.args.fault_interval))
                    break
                except asyncio.TimeoutError:
                    pass
                try:
                    name = rng.choice(list(self.mocks))
                    served = (await client.get(f"http://{self.mocks[name]}/_mock/stats")).json()["requests"]
                    if time.monotonic() >= next_outage:
                        fault = rng.choice([{"type": "status", "status": 503},
                                            {"type": "delay", "ms": 400}])
                        await post(name, {"always": fault})
                        self.faults[f"{name} outage {fault['type']} {fault.get('status', fault.get('ms'))}"] += 1
                        await asyncio.sleep(rng.uniform(2, 5))
                        await post(name, {})  # `always` off again
                        next_outage = time.monotonic() + rng.uniform(30, 60)
                        continue
                    if served < drained[name]:
                        continue  # earlier faults are still queued: do not let them pile up
                    faults = [rng.choices(menu, weights)[0][1]() for _ in range(rng.randint(1, 3))]
                    await post(name, {"next": faults})
                    drained[name] = served + len(faults)
                    for f in faults:
                        label = " ".join(str(x) for x in (name, f["type"], f.get("status"), f.get("code")) if x)
                        self.faults[label] += 1
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    self.faults[f"injector error {type(e).__name__}"] += 1

    async def monitor(self, started, deadline):
        last_report = time.monotonic()
        serve_pid = self.procs.pid("serve")
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), 5)
                break
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            st = proc_status(serve_pid)
            if st:
                self.samples.append((round(now - started, 1), st))
            dead = self.procs.dead()
            if dead:
                self.crashed.update(dead)
                print(f"\n!! process ended during the run: {dead}", file=sys.stderr)
                self.stop.set()
                break
            if now >= deadline:
                continue
            if now - last_report >= self.args.progress_every:
                last_report = now
                n = len(self.records)
                errs = sum(1 for r in self.records if r["outcome"] != "complete")
                rss = f"{st['rss_mib']:.0f} MiB" if st else "?"
                print(f"[{now - started:6.0f} s] {n} requests ({n / (now - started):.1f}/s), "
                      f"{errs} not whole, serve RSS {rss}, fds {st['fds'] if st else '?'}", file=sys.stderr)

    async def main(self):
        started = time.monotonic()
        deadline = started + self.args.duration
        loop = asyncio.get_running_loop()
        interrupts = {"n": 0}

        def interrupted():
            interrupts["n"] += 1
            if interrupts["n"] == 1:
                print("\ninterrupted: stopping the clients (again to stop at once)", file=sys.stderr)
                self.stop.set()
            else:
                raise KeyboardInterrupt

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupted)
        clients = [asyncio.create_task(self.client(i, deadline)) for i in range(self.args.clients)]
        side = [asyncio.create_task(self.fault_injector(deadline)),
                asyncio.create_task(self.monitor(started, deadline))]
        # Clients finish their request in flight after the deadline (bounded by its timeout).
        done, pending = await asyncio.wait(clients, timeout=self.args.duration + self.args.request_timeout + 30)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception():
                print(f"a client failed: {t.exception()!r}", file=sys.stderr)
        self.elapsed = time.monotonic() - started
        self.stop.set()
        await asyncio.gather(*side, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# --------------------------------------------------------------------------------------------
# the usage table against the clients


def read_usage(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    columns = [r[1] for r in conn.execute("PRAGMA table_info(usage)")]
    rows = [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY id")]
    conn.close()
    return columns, rows


def wait_for_rows(db, expected_at_least, settle=3.0, limit=60.0):
    """Waits until the usage table stops growing (records of cut streams come last)."""
    t0 = time.monotonic()
    last, since = -1, time.monotonic()
    while time.monotonic() - t0 < limit:
        n = len(read_usage(db)[1])
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= settle and n >= expected_at_least:
            break
        elif time.monotonic() - since >= settle * 3:
            break
        time.sleep(0.5)
    return last


ROW_OPTIONAL = {"transport", "timeout"}  # the request may not have reached the handler


def row_expected(r):
    if r["outcome"] in ROW_OPTIONAL:
        return False
    if r["outcome"] == "http_error":
        s = r["status"]
        # Refused before the request is counted: bad JSON, key, model; the local queue full.
        if s in (400, 401, 403, 404, 413, 415, 422) or (s == 429 and r["kind"] == "local"):
            return False
    return True


def pair(records, rows, slack_ms=3.0):
    """(record, row) pairs, records without a row, rows without a record: per key, a row belongs
    to the request of the same model and stream flag whose time span holds the row's start."""
    by_key = collections.defaultdict(list)
    for r in records:
        by_key[r["key_id"]].append(r)
    rows_by_key = collections.defaultdict(list)
    for row in rows:
        rows_by_key[row["key_id"]].append(row)
    pairs, lonely_rows = [], []
    paired_ids = set()
    for key_id, recs in by_key.items():
        recs.sort(key=lambda r: r["t_send"])
        sends = [r["t_send"] for r in recs]
        for row in sorted(rows_by_key.pop(key_id, []), key=lambda w: (w["at_ms"] - w["latency_ms"], w["id"])):
            start = row["at_ms"] - row["latency_ms"]
            i = bisect.bisect_right(sends, start + slack_ms) - 1
            # Requests a few milliseconds apart may all fit (the times are whole milliseconds):
            # the earliest unpaired one, unless another told its client exactly the row's usage.
            fits = []
            for j in range(max(0, i - 3), min(len(recs), i + 2)):
                r = recs[j]
                if id(r) in paired_ids or r["model"] != row["model"] or bool(row["stream"]) != r["stream"]:
                    continue
                if r["t_send"] - slack_ms <= start <= r["t_end"] + slack_ms:
                    fits.append(r)
            same = [r for r in fits if r["outcome"] == "complete"
                    and (r["prompt"], r["completion"]) == (row["prompt_tokens"], row["completion_tokens"])]
            match = (same or fits or [None])[0]
            if match is None:
                lonely_rows.append(row)
            else:
                paired_ids.add(id(match))
                pairs.append((match, row))
    for rest in rows_by_key.values():
        lonely_rows.extend(rest)
    unpaired = [r for r in records if id(r) not in paired_ids]
    return pairs, unpaired, lonely_rows


def compare(records, rows, columns, tolerance):
    """The checks of the module docs; a JSON-able report with a list of mismatches."""
    has_estimated = "estimated" in columns
    pairs, unpaired, lonely = pair(records, rows)
    mismatches = []
    missing = [r for r in unpaired if row_expected(r)]
    for r in missing:
        mismatches.append({"what": "no usage row", "request": slim(r)})
    for row in lonely:
        mismatches.append({"what": "usage row without its request", "row": row})

    def bad(what, r, row, **more):
        mismatches.append({"what": what, "request": slim(r), "row": row, **more})

    cats = collections.defaultdict(lambda: collections.Counter())
    cut_detail = collections.defaultdict(lambda: collections.Counter())
    info = collections.Counter()
    ratios = collections.defaultdict(list)  # estimated / the provider's count
    for r, row in pairs:
        est = bool(row.get("estimated")) if has_estimated else False
        cat = f"{r['outcome']} {r['kind']}{' estimated' if est else ''}"
        c = cats[cat]
        c["requests"] += 1
        c["table_prompt"] += row["prompt_tokens"]
        c["table_completion"] += row["completion_tokens"]
        if r["outcome"] == "complete":
            c["client_prompt"] += r["prompt"]
            c["client_completion"] += r["completion"]
            if row["status"] != 200:
                bad("whole answer recorded with another status", r, row)
            elif (row["prompt_tokens"], row["completion_tokens"]) != (r["prompt"], r["completion"]):
                bad("whole answer: tokens differ from the usage the client got", r, row)
            # A local stream may end with one chunk more: text held back (an unfinished character)
            # flushed at the end.
            if r["stream"] and r["chunks"] > r["completion"] + (r["kind"] == "local"):
                bad("more content chunks than completion tokens (a token's text in two chunks, or a "
                    "token not counted)", r, row)
            if r["expected_prompt"] is not None and r["prompt"] != r["expected_prompt"]:
                info["hosted whole answers whose prompt tokens are not the provider's count"] += 1
            if r["completion"] > r["max_tokens"]:
                info["whole answers longer than max_tokens"] += 1
        elif r["outcome"] in ("http_error", "timeout", "transport", "bad_response"):
            if r["status"] is not None and row["status"] != r["status"]:
                bad("error recorded with another status", r, row)
            if row["prompt_tokens"] or row["completion_tokens"]:
                info["error rows with tokens (the client got none)"] += 1
        else:  # client_cut, timeout_stream, upstream_cut, truncated
            got = r["chunks"]
            c["client_completion"] += got
            rec = row["completion_tokens"]
            d = cut_detail[f"{r['outcome']} {r['kind']}{' estimated' if est else ''}"]
            d["rows"] += 1
            d[f"status {row['status']}"] += 1
            if r["outcome"] in ("client_cut", "timeout_stream"):
                # 499; or 200 when the server had the whole answer before it saw the client leave;
                # or, hosted, the provider's failure when that came first (the client cannot know).
                if not (row["status"] in (499, 200) or (r["kind"] != "local" and (
                        row["status"] == 429 or row["status"] >= 500))):
                    bad(f"cut by the client, recorded with status {row['status']}", r, row)
            elif row["status"] == 200:
                bad("stream cut by the provider recorded as 200", r, row)
            if est:
                # Never below the provider's count of what the client got, less the tolerance;
                # never above one token a byte of all the provider could have sent.
                lo = max(min(got, 1), math.floor(got * (1 - tolerance)))  # text is at least a token
                hi = r["text_bytes"] if r["outcome"] == "upstream_cut" else max(
                    r["text_bytes"], r["answer_bytes_max"] or 0)
                if r["outcome"] == "upstream_cut" and got:
                    ratios[f"{r['kind']} completion"].append(rec / got)
                if r["expected_prompt"]:
                    ratios[f"{r['kind']} prompt"].append(row["prompt_tokens"] / r["expected_prompt"])
            else:
                # (a local stream that ended as the client left may have sent its held-back flush)
                lo, hi = got - (r["kind"] == "local" and row["status"] == 200), r["max_tokens"]
            d["client_chunks"] += got
            d["table_completion"] += rec
            d["zero_in_table"] += rec == 0
            if rec < lo:
                d["below_client"] += 1
                d["short_by"] += got - rec
                bad(f"cut stream: {rec} completion tokens recorded, the client received {got} chunks"
                    f"{' (estimated; at least ' + str(lo) + ' expected)' if est else ''}", r, row)
            elif rec > hi:
                d["above_bound"] += 1
                bad(f"cut stream: {rec} completion tokens recorded, more than possible ({hi})", r, row)
            else:
                d["within"] += 1
                d["extra_over_client"] += rec - got
            known = r["expected_prompt"] if r["kind"] != "local" else r["prompt_seen"]
            if known is not None and not est:
                d["prompt_known"] += 1
                d["prompt_differs"] += row["prompt_tokens"] != known
    return {
        "estimated_column": has_estimated,
        "estimate_tolerance": tolerance,
        "rows": len(rows),
        "paired": len(pairs),
        "requests_without_row": len(unpaired),
        "requests_without_row_expected_one": len(missing),
        "rows_without_request": len(lonely),
        "by_category": {k: dict(v) for k, v in sorted(cats.items())},
        "cut_streams": {k: dict(v) for k, v in sorted(cut_detail.items())},
        "informational": dict(info),
        "estimate_vs_provider": {k: {"n": len(v), "min": round(min(v), 2), "median": round(statistics.median(v), 2),
                                     "max": round(max(v), 2)} for k, v in sorted(ratios.items())},
        "mismatches": len(mismatches),
        "mismatch_kinds": dict(collections.Counter(
            re.sub(r"\d+", "N", m["what"]) for m in mismatches)),
        "mismatch_examples": mismatches[:20],
    }


def slim(r):
    keep = ("client", "seq", "kind", "model", "front", "stream", "max_tokens", "cut_after", "outcome",
            "status", "error", "chunks", "prompt", "completion", "prompt_seen", "expected_prompt")
    return {k: r.get(k) for k in keep + (("pieces",) if "pieces" in r else ())}


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


# --------------------------------------------------------------------------------------------


def setup(args, procs, tmp):
    baimo = str(args.baimo)
    mocks = {
        "openai": procs.start("mock-openai", [baimo, "mock-provider", "openai", "--key", OPENAI_KEY]),
        "spark": procs.start("mock-spark", [baimo, "mock-provider", "spark", "--key", SPARK_KEY,
                                            "--secret", SPARK_SECRET, "--app-id", SPARK_APP]),
    }
    db = tmp / "baimo.db"
    keys = []
    for i in range(args.clients + 1):  # the last one is the probe's (warm-up), left out of checks
        r = subprocess.run([baimo, "keys", "--db", str(db), "create", f"soak-{i}"],
                           capture_output=True, text=True, env=procs.env)
        m = re.search(r"key (\d+)", r.stderr)
        if r.returncode or not m or not r.stdout.strip():
            raise SoakError(f"`baimo keys create` failed: {r.stderr.strip()}")
        keys.append((int(m.group(1)), r.stdout.strip()))
    config = tmp / "soak.toml"
    config.write_text(f"""
[[channels]]
name = "openai-a"
provider = "openai"
base_url = "http://{mocks['openai']}"
api_key = "{OPENAI_KEY}"
models = ["gpt-4"]
weight = 3

[[channels]]
name = "openai-b"
provider = "openai"
base_url = "http://{mocks['openai']}"
api_key = "{OPENAI_KEY}"
models = ["gpt-4"]
weight = 1

[[channels]]
name = "spark"
provider = "spark"
base_url = "ws://{mocks['spark']}"
api_key = "{SPARK_KEY}"
secret_key = "{SPARK_SECRET}"
app_id = "{SPARK_APP}"
models = ["spark-3.5"]

[retry]
retries_per_channel = 1
base_backoff_ms = 50
max_backoff_ms = 1000
timeout_secs = 30
idle_timeout_secs = 15
failures_to_open = 3
cool_down_secs = 5
""")
    cmd = [baimo, "serve", str(args.model), "--config", str(config), "--db", str(db), "--port", "0",
           "-q", "--parallel", str(args.parallel)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    base = procs.start("serve", cmd)
    return mocks, db, keys, base, cmd


def warm_up(base, key):
    import httpx
    h = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=f"http://{base}", timeout=120) as c:
        models = c.get("/v1/models", headers=h).json()["data"]
        local = [m["id"] for m in models if m.get("owned_by") == "baimo"]
        if not local:
            raise SoakError(f"serve lists no local model: {models}")
        # Prefer the file name: short, and what a client would type.
        name = next((n for n in local if n.endswith(".gguf") and "/" not in n), local[0])
        for model in (name, HOSTED["openai"], HOSTED["spark"]):
            r = c.post("/v1/chat/completions", headers=h, json={
                "model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "warm up"}]})
            if r.status_code != 200:
                raise SoakError(f"warm-up request to {model}: {r.status_code} {r.text[:300]}")
    return name


def report(args, run, procs, serve_cmd, rss_start, rss_end, mock_stats, usage_report, rows, columns,
           probe_key):
    recs = run.records
    n = len(recs)
    outcomes = collections.Counter(r["outcome"] for r in recs)
    errors = collections.Counter(f"{r['kind']}: {r['outcome']}: {r['error'] or 'the client closed the stream'}"
                                 for r in recs if r["outcome"] != "complete")
    by_kind = collections.Counter(f"{r['kind']} {'stream' if r['stream'] else 'whole'} {r['front']}" for r in recs)
    lat = {}
    for kind in ("local", "openai", "spark"):
        for stream in (False, True):
            xs = [r["t_end"] - r["t_send"] for r in recs
                  if r["kind"] == kind and r["stream"] == stream and r["outcome"] == "complete"]
            if xs:
                lat[f"{kind} {'stream' if stream else 'whole'}"] = {
                    "n": len(xs), "p50_ms": round(percentile(xs, 50), 1),
                    "p99_ms": round(percentile(xs, 99), 1), "max_ms": round(max(xs), 1)}
    samples = run.samples
    slope = None
    if len(samples) >= 6:  # MiB per minute over the second half of the run
        half = samples[len(samples) // 2:]
        xs = [t for t, _ in half]
        ys = [s["rss_mib"] for _, s in half]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        if den:
            slope = round(60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den, 2)
    # Tries the mocks saw against those the usage rows account for (each row: retries + 1).
    tries = collections.Counter()
    for row in rows:
        if row["channel"].startswith("openai"):
            tries["openai"] += row["retries"] + 1
        elif row["channel"] == "spark":
            tries["spark"] += row["retries"] + 1
    summary = {
        "command": " ".join(sys.argv),
        "serve": " ".join(serve_cmd),
        "duration_s": round(run.elapsed, 1),
        "clients": args.clients,
        "requests": n,
        "requests_per_s": round(n / run.elapsed, 2) if run.elapsed else None,
        "outcomes": dict(outcomes.most_common()),
        "errors_by_kind": dict(errors.most_common()),
        "requests_by_kind": dict(sorted(by_kind.items())),
        "completion_tokens_received": sum(r["completion"] or 0 for r in recs if r["outcome"] == "complete"),
        "latency_whole_answers": lat,
        "faults_injected": dict(sorted(run.faults.items())),
        "serve_at_start": rss_start,
        "serve_at_end": rss_end,
        "serve_rss_max_mib": max((s["rss_mib"] for _, s in samples), default=None),
        "serve_rss_slope_second_half_mib_per_min": slope,
        "serve_samples (s, rss MiB, fds, threads, cpu s, load1)": [
            (t, s["rss_mib"], s["fds"], s["threads"], s["cpu_s"], s["load1"]) for t, s in samples],
        "serve_cpu_s_during_run": round((rss_end or {}).get("cpu_s", 0) - (rss_start or {}).get("cpu_s", 0), 1),
        "load1_mean": round(statistics.fmean(s["load1"] for _, s in samples), 2) if samples else None,
        "mock_requests": mock_stats,
        "mock_tries_from_usage_rows": dict(tries),
        "processes": procs.exits,
        "died_during_run": run.crashed,
        "usage_columns": columns,
        "probe_key_id": probe_key,
        "usage": usage_report,
    }
    return summary


def print_summary(s):
    p = print
    p("\n== soak summary")
    p(f"duration {s['duration_s']} s, {s['clients']} clients: {s['requests']} requests "
      f"({s['requests_per_s']}/s), {s['completion_tokens_received']} completion tokens in whole answers")
    p("outcomes: " + ", ".join(f"{k} {v}" for k, v in s["outcomes"].items()))
    p("requests by model/mode/front:")
    for k, v in s["requests_by_kind"].items():
        p(f"  {k:<32} {v}")
    p("errors by kind:")
    for k, v in s["errors_by_kind"].items():
        p(f"  {v:>6}  {k}")
    p("faults injected: " + ", ".join(f"{k} ×{v}" for k, v in s["faults_injected"].items()))
    p("latency of whole answers (ms): " + "; ".join(
        f"{k} p50 {v['p50_ms']} p99 {v['p99_ms']} max {v['max_ms']} (n={v['n']})"
        for k, v in s["latency_whole_answers"].items()))
    a, b = s["serve_at_start"] or {}, s["serve_at_end"] or {}
    p(f"serve RSS: start {a.get('rss_mib')} MiB, end {b.get('rss_mib')} MiB, max {s['serve_rss_max_mib']} MiB, "
      f"peak (VmHWM) {b.get('hwm_mib')} MiB; slope over the second half {s['serve_rss_slope_second_half_mib_per_min']} "
      f"MiB/min; fds {a.get('fds')} -> {b.get('fds')}, threads {a.get('threads')} -> {b.get('threads')}")
    p(f"serve CPU during the run {s['serve_cpu_s_during_run']} s ({s['serve_cpu_s_during_run'] / s['duration_s']:.2f} "
      f"cores); machine load average (1 min) mean {s['load1_mean']}")
    p(f"mock requests (tries): {s['mock_requests']}; tries accounted by usage rows: {s['mock_tries_from_usage_rows']}")
    p("processes: " + "; ".join(f"{k}: {v}" for k, v in s["processes"].items()))
    if s["died_during_run"]:
        p(f"!! DIED DURING THE RUN: {s['died_during_run']}")
    u = s["usage"]
    p(f"usage table: {u['rows']} rows (columns: {', '.join(s['usage_columns'])}), paired {u['paired']}, "
      f"requests without a row {u['requests_without_row']} (of which should have one: "
      f"{u['requests_without_row_expected_one']}), rows without a request {u['rows_without_request']}")
    p(f"  {'category':<34} {'n':>6} {'client prompt':>13} {'table prompt':>12} {'client compl.':>13} {'table compl.':>12}")
    for k, v in u["by_category"].items():
        p(f"  {k:<34} {v.get('requests', 0):>6} {v.get('client_prompt', '-'):>13} {v.get('table_prompt', 0):>12} "
          f"{v.get('client_completion', '-'):>13} {v.get('table_completion', 0):>12}")
    if u["cut_streams"]:
        p("  cut streams (client chunks vs recorded completion tokens):")
        for k, v in u["cut_streams"].items():
            p(f"    {k:<30} rows {v.get('rows', 0)}: within bounds {v.get('within', 0)}, below the client's count "
              f"{v.get('below_client', 0)} (short by {v.get('short_by', 0)} tokens), above the bound "
              f"{v.get('above_bound', 0)}, recorded 0: {v.get('zero_in_table', 0)}; chunks {v.get('client_chunks', 0)} "
              f"vs recorded {v.get('table_completion', 0)}; prompt known (not estimated) {v.get('prompt_known', 0)}, differs "
              f"{v.get('prompt_differs', 0)}; statuses "
              + ", ".join(f"{k[7:]}: {n}" for k, n in sorted(v.items()) if k.startswith("status ")))
    if u["estimate_vs_provider"]:
        p("  estimated rows, estimate / the provider's count (mock: one word a token): " + "; ".join(
            f"{k} median {v['median']} (min {v['min']}, max {v['max']}, n={v['n']})"
            for k, v in u["estimate_vs_provider"].items()))
    if u["informational"]:
        p("  note: " + "; ".join(f"{k}: {v}" for k, v in u["informational"].items()))
    verdict = "MATCH" if not u["mismatches"] and not s["died_during_run"] else "MISMATCH"
    p(f"usage vs clients: {verdict}: {u['mismatches']} mismatches"
      + (": " + ", ".join(f"{k} ×{v}" for k, v in u["mismatch_kinds"].items()) if u["mismatches"] else ""))
    for m in u["mismatch_examples"][:5]:
        p(f"  e.g. {json.dumps(m)[:400]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    ap.add_argument("--baimo", type=Path, default=REPO / "target" / "release" / "baimo")
    ap.add_argument("--model", type=Path, help="the local GGUF (default: SmolLM2-135M under ~/.cache/baimo)")
    ap.add_argument("--out", type=Path, help="write the summary as JSON here")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--local-share", type=float, default=0.35, help="share of requests to the local model")
    ap.add_argument("--stream-share", type=float, default=0.6, help="share of streamed requests")
    ap.add_argument("--anthropic-share", type=float, default=0.4, help="share through /v1/messages")
    ap.add_argument("--cut-share", type=float, default=0.25, help="share of streams the client cuts")
    ap.add_argument("--fault-interval", type=float, default=1.5, help="mean seconds between fault batches")
    ap.add_argument("--think-ms", type=float, default=50, help="a client's pause between requests, at most")
    ap.add_argument("--request-timeout", type=float, default=120, help="a client gives up after this")
    ap.add_argument("--estimate-tolerance", type=float, default=0.5,
                    help="how far below the provider's count of what the client got an estimated usage "
                         "row may be (default 0.5: the ±50%% of `estimate_tokens`); above, the bound is one "
                         "token a byte of what the provider could have sent")
    ap.add_argument("--parallel", type=int, default=16, help="serve --parallel")
    ap.add_argument("--threads", type=int, help="serve --threads")
    ap.add_argument("--progress-every", type=float, default=30)
    ap.add_argument("--venv", type=Path, default=Path("/tmp/venv-soak"), help="where to install httpx if needed")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, database)")
    ap.add_argument("--records", type=Path, help="write every request as the client saw it (JSON lines)")
    args = ap.parse_args()

    ensure_httpx(args.venv)
    args.baimo = args.baimo.absolute()
    if not args.baimo.exists():
        raise SoakError(f"{args.baimo} does not exist (cargo build --release)")
    args.model = (args.model or find_model()).absolute()
    if not args.model.exists():
        raise SoakError(f"{args.model} does not exist")

    tmp = Path(tempfile.mkdtemp(prefix="baimo-soak-"))
    env = dict(os.environ, BAIMO_DATA=str(tmp), RUST_BACKTRACE="1")
    procs = Procs(tmp, env)
    failed = True
    try:
        print(f"soak: {args.clients} clients for {args.duration:.0f} s; logs in {tmp}", file=sys.stderr)
        mocks, db, keys, base, serve_cmd = setup(args, procs, tmp)
        probe_id, probe_key = keys[-1]
        local_name = warm_up(base, probe_key)
        rss_start = proc_status(procs.pid("serve"))
        print(f"serve at {base} (local model `{local_name}`), RSS {rss_start['rss_mib']} MiB", file=sys.stderr)
        run = Run(args, base, keys[:-1], local_name, mocks, procs, db)
        asyncio.run(run.main())
        n_rows = wait_for_rows(db, sum(row_expected(r) for r in run.records))
        rss_end = proc_status(procs.pid("serve"))
        mock_stats = {}
        import httpx
        for name, addr in mocks.items():
            try:
                mock_stats[name] = httpx.get(f"http://{addr}/_mock/stats", timeout=5).json()["requests"]
            except (httpx.HTTPError, ValueError, KeyError):
                mock_stats[name] = None
        if run.crashed:
            print(procs.log_tail("serve"), file=sys.stderr)
        procs.stop_all()
        columns, rows = read_usage(db)
        assert len(rows) >= n_rows
        rows_clients = [r for r in rows if r["key_id"] != probe_id]
        usage_report = compare(run.records, rows_clients, columns, args.estimate_tolerance)
        summary = report(args, run, procs, serve_cmd, rss_start, rss_end, mock_stats, usage_report, rows,
                         columns, probe_id)
        serve_log = (tmp / "serve.log").read_text(errors="replace")
        summary["serve_log_lines"] = len(serve_log.splitlines())
        summary["serve_log_panics"] = serve_log.count("panicked")
        summary["serve_log_tail"] = serve_log[-2000:]
        print_summary(summary)
        if summary["serve_log_panics"]:
            print(f"!! serve's log has {summary['serve_log_panics']} panics", file=sys.stderr)
        if args.records:
            with open(args.records, "w") as f:
                for r in run.records:
                    f.write(json.dumps(r) + "\n")
        if args.out:
            args.out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
            print(f"summary written to {args.out}")
        failed = bool(usage_report["mismatches"] or run.crashed or summary["serve_log_panics"])
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
    finally:
        procs.stop_all()
        if args.keep or failed:
            print(f"logs and database kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SoakError as e:
        sys.exit(f"soak: {e}")
