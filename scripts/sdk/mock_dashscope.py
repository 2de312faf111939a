#!/usr/bin/env python3
"""Needs: pip install dashscope openai. The official `dashscope` SDK (and the `openai` SDK for the
compatible mode), unmodified, against the mock DashScope: Generation.call with
result_format="message" whole and streamed (incremental_output=True), an error frame after the 200, the SDK's error for a wrong
key, and the OpenAI-compatible endpoint whole and streamed. Exits non-zero on any mismatch.

    cargo run --release -p baimo-gateway --example mock_provider -- dashscope 8991 sk-test
    python3 scripts/sdk/mock_dashscope.py http://127.0.0.1:8991 sk-test
"""

import sys
from http import HTTPStatus

import dashscope
import openai
from dashscope import Generation

base, key = sys.argv[1].rstrip("/"), sys.argv[2]
# The SDK's documented way to pick a host (as for the international endpoint).
dashscope.base_http_api_url = base + "/api/v1"
messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello from the SDK"}]
want = "mock-dashscope qwen-plus heard: hello from the SDK"

whole = Generation.call(model="qwen-plus", messages=messages, api_key=key, result_format="message")
assert whole.status_code == HTTPStatus.OK, whole
choice = whole.output.choices[0]
assert choice.message.content == want and choice.finish_reason == "stop", whole
assert whole.usage.output_tokens == 7 and whole.usage.input_tokens > 0, whole.usage

pieces, last = [], None
for part in Generation.call(model="qwen-plus", messages=messages, api_key=key, result_format="message",
                            stream=True, incremental_output=True):
    assert part.status_code == HTTPStatus.OK, part
    pieces.append(part.output.choices[0].message.content)
    last = part
assert "".join(pieces) == want and len(pieces) > 2, pieces
assert last.output.choices[0].finish_reason == "stop" and last.usage.output_tokens == 7, last

# A throttling error frame after the 200 (injected through the mock's control endpoint).
import json, urllib.request
urllib.request.urlopen(urllib.request.Request(base + "/_mock/faults", method="POST",
    data=json.dumps({"next": [{"type": "error_event", "after_events": 2}]}).encode(),
    headers={"Content-Type": "application/json"}))
parts = list(Generation.call(model="qwen-plus", messages=messages, api_key=key, result_format="message",
                             stream=True, incremental_output=True))
assert [p.status_code for p in parts[:2]] == [200, 200], parts
assert parts[-1].status_code != 200 and parts[-1].code == "Throttling.AllocationQuota", parts[-1]

bad = Generation.call(model="qwen-plus", messages=messages, api_key="sk-wrong", result_format="message")
assert bad.status_code == 401 and bad.code == "InvalidApiKey", bad

client = openai.OpenAI(base_url=base + "/compatible-mode/v1", api_key=key, max_retries=0)
compat = client.chat.completions.create(model="qwen-plus", messages=messages)
assert compat.choices[0].message.content == want, compat
streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
    model="qwen-plus", messages=messages, stream=True) if c.choices)
assert streamed == want, streamed

print(f"dashscope SDK {dashscope.__version__} + openai SDK {openai.__version__}: native whole = streamed "
      f"({want!r}), in-stream error frame, wrong key -> InvalidApiKey, compatible mode whole = streamed: ok")
