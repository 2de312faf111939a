#!/usr/bin/env python3
"""Needs: pip install openai. Baichuan publishes no maintained official Python SDK; its current
API is OpenAI-style, so this script uses the unmodified `openai` SDK against the mock's `/v1`: a
chat completion whole and streamed, a tool call, and the SDK's errors for a wrong key and for
exhausted quota. The legacy 2023 API had no SDK either: when a secret is given it is spoken with
the standard library only, signed as clients of the time did (X-BC-Signature =
md5(secret + body + timestamp); reconstructed from client code, not an official page). Exits
non-zero on any mismatch.

    cargo run --release -p baimo-gateway --example mock_provider -- baichuan 8993 sk-test bc-secret
    python3 scripts/sdk/mock_baichuan.py http://127.0.0.1:8993 sk-test bc-secret
"""

import hashlib
import json
import sys
import time
import urllib.request

import openai

base, key = sys.argv[1].rstrip("/"), sys.argv[2]
secret = sys.argv[3] if len(sys.argv) > 3 else None
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
messages = [{"role": "user", "content": "hello from the SDK"}]
want = "mock-baichuan Baichuan2-Turbo heard: hello from the SDK"

whole = client.chat.completions.create(model="Baichuan2-Turbo", messages=messages, temperature=0.3)
assert whole.choices[0].message.content == want and whole.choices[0].finish_reason == "stop", whole
assert whole.usage.completion_tokens == 7, whole.usage

pieces, finish, usage = [], None, None
for chunk in client.chat.completions.create(model="Baichuan2-Turbo", messages=messages, stream=True):
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
    usage = chunk.usage or usage
assert "".join(pieces) == want and finish == "stop", (pieces, finish)
assert usage is not None and usage.completion_tokens == 7, usage

tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
called = client.chat.completions.create(model="Baichuan2-Turbo", messages=messages, tools=tools)
call = called.choices[0].message.tool_calls[0]
assert call.function.name == "weather" and json.loads(call.function.arguments) == {"query": "hello from the SDK"}

try:
    openai.OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0).chat.completions.create(
        model="Baichuan2-Turbo", messages=messages)
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.code == "invalid_api_key", e


def post(path, body):
    request = urllib.request.Request(base + path, method="POST", data=body, headers=headers)
    with urllib.request.urlopen(request) as response:
        return response.read().decode()


headers = {"Content-Type": "application/json"}
post("/_mock/faults", json.dumps({"next": [{"type": "status", "status": 429, "code": "insufficient_quota"}]}).encode())
try:
    client.chat.completions.create(model="Baichuan2-Turbo", messages=messages)
    raise SystemExit("exhausted quota not reported")
except openai.RateLimitError as e:
    assert e.status_code == 429 and e.code == "insufficient_quota", e

legacy = "skipped (no secret given)"
if secret:
    body = json.dumps({"model": "Baichuan2-53B", "messages": messages, "parameters": {"temperature": 0.3}})
    for path, stream in (("/v1/chat", False), ("/v1/stream/chat", True)):
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key,
                   "X-BC-Request-Id": "sdk-script", "X-BC-Timestamp": timestamp, "X-BC-Sign-Algo": "MD5",
                   "X-BC-Signature": hashlib.md5((secret + body + timestamp).encode()).hexdigest()}
        lines = [json.loads(line) for line in post(path, body.encode()).splitlines() if line.strip()]
        assert all(line["code"] == 0 for line in lines), lines
        text = "".join(line["data"]["messages"][-1]["content"] for line in lines)
        assert text == "mock-baichuan Baichuan2-53B heard: hello from the SDK" and (len(lines) > 1) == stream, lines
    headers["X-BC-Signature"] = "0" * 32
    assert json.loads(post("/v1/chat", body.encode()))["code"] == 10105, "a bad signature is refused"
    legacy = "signed whole and NDJSON stream ok, bad signature -> 10105"

print(f"openai SDK {openai.__version__} (Baichuan has no official SDK): whole = streamed ({want!r}), usage, "
      f"tool call, wrong key -> 401, insufficient_quota -> 429; legacy API: {legacy}: ok")
