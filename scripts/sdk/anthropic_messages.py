#!/usr/bin/env python3
"""The official `anthropic` Python SDK, unmodified, against `baimo serve`: a message whole and
streamed (the SDK checks the event sequence), a top-level system prompt, and the SDK's errors for
an unknown model and a missing max_tokens. Exits non-zero on any mismatch.

    python3 scripts/sdk/anthropic_messages.py http://127.0.0.1:8080 MODEL
"""

import sys

import anthropic

base_url, model = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=0)

whole = client.messages.create(
    model=model, max_tokens=8, system="Be brief.", messages=[{"role": "user", "content": "Hello"}],
    extra_body={"temperature": 0},  # SDK 2.x no longer names sampling parameters
)
assert whole.type == "message" and whole.role == "assistant" and whole.content[0].type == "text"
assert whole.stop_reason in ("end_turn", "max_tokens") and whole.usage.output_tokens <= 8

with client.messages.stream(
    model=model, max_tokens=8, system="Be brief.", messages=[{"role": "user", "content": "Hello"}],
    extra_body={"temperature": 0},  # SDK 2.x no longer names sampling parameters
) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
assert streamed == whole.content[0].text, (streamed, whole.content[0].text)
assert final.usage.output_tokens == whole.usage.output_tokens and final.stop_reason == whole.stop_reason

try:
    client.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    raise SystemExit("unknown model accepted")
except anthropic.NotFoundError as e:
    assert e.status_code == 404

print(f"anthropic SDK {anthropic.__version__}: whole and streamed answers equal ({streamed!r}), usage, errors: ok")
