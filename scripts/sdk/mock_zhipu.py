#!/usr/bin/env python3
"""Needs: pip install zhipuai. The official `zhipuai` SDK, unmodified, against the mock Zhipu: it
signs its own JWT (HS256, sign_type SIGN, millisecond claims) from the `{id}.{secret}` key, which
the mock verifies; a v4 chat completion whole and streamed, a tool call, and the SDK's errors for a
key with the wrong secret (401, code 1002) and for arrears (429, code 1113). Exits non-zero on any
mismatch.

    cargo run --release -p baimo-gateway --example mock_provider -- zhipu 8992 myid.mysecret
    python3 scripts/sdk/mock_zhipu.py http://127.0.0.1:8992 myid.mysecret
"""

import json
import sys
import urllib.request

import zhipuai
from zhipuai import ZhipuAI

base, key = sys.argv[1].rstrip("/"), sys.argv[2]
client = ZhipuAI(api_key=key, base_url=base + "/api/paas/v4", max_retries=0)
messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello from the SDK"}]
want = "mock-zhipu glm-4 heard: hello from the SDK"

whole = client.chat.completions.create(model="glm-4", messages=messages, temperature=0.5)
assert whole.choices[0].message.content == want and whole.choices[0].finish_reason == "stop", whole
assert whole.usage.completion_tokens == 7, whole.usage

pieces, finish, usage = [], None, None
for chunk in client.chat.completions.create(model="glm-4", messages=messages, stream=True):
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
    usage = chunk.usage or usage
assert "".join(pieces) == want and finish == "stop", (pieces, finish)
assert usage is not None and usage.completion_tokens == 7, usage

tools = [{"type": "function", "function": {"name": "weather", "description": "w",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
called = client.chat.completions.create(model="glm-4", messages=messages, tools=tools, tool_choice="auto")
call = called.choices[0].message.tool_calls[0]
assert called.choices[0].finish_reason == "tool_calls" and call.function.name == "weather", called
assert json.loads(call.function.arguments) == {"query": "hello from the SDK"}, call

key_id = key.split(".")[0]
try:
    ZhipuAI(api_key=key_id + ".wrong-secret", base_url=base + "/api/paas/v4", max_retries=0).chat.completions.create(
        model="glm-4", messages=messages)
    raise SystemExit("a token signed with the wrong secret was accepted")
except zhipuai.APIAuthenticationError as e:
    assert e.status_code == 401 and e.response.json()["error"]["code"] == "1002", e

urllib.request.urlopen(urllib.request.Request(base + "/_mock/faults", method="POST",
    data=json.dumps({"next": [{"type": "status", "status": 429, "code": "1113"}]}).encode(),
    headers={"Content-Type": "application/json"}))
try:
    client.chat.completions.create(model="glm-4", messages=messages)
    raise SystemExit("arrears not reported")
except zhipuai.APIReachLimitError as e:
    assert e.status_code == 429 and e.response.json()["error"]["code"] == "1113", e

print(f"zhipuai SDK {zhipuai.__version__}: SDK-signed JWT accepted, whole = streamed ({want!r}), usage, "
      "tool call, wrong secret -> 401/1002, arrears -> 429/1113: ok")
