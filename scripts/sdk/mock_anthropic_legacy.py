#!/usr/bin/env python3
"""Needs: pip install 'anthropic<1' (0.125.0 is the last release with `client.completions`; 1.0
removed the legacy Text Completions resource and the HUMAN_PROMPT / AI_PROMPT constants). The
official SDK, unmodified, against the mock's `POST /v1/complete`: a completion whole and streamed
(same text), a system text before the first Human turn, stop-sequence and max-tokens finishes, the
API's 400 for a badly formed prompt, a wrong key, and an error event in the middle of a stream.
Exits non-zero on any mismatch.

    cargo run --release -p baimo-gateway --example mock_provider -- anthropic-legacy 8994 sk-test
    python3 scripts/sdk/mock_anthropic_legacy.py http://127.0.0.1:8994 sk-test
"""

import json
import sys
import urllib.request

import anthropic

base, key = sys.argv[1].rstrip("/"), sys.argv[2]
# The constants are exported by the 0.x SDK; the literal strings otherwise.
HUMAN = getattr(anthropic, "HUMAN_PROMPT", "\n\nHuman:")
AI = getattr(anthropic, "AI_PROMPT", "\n\nAssistant:")
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
prompt = f"Be brief.{HUMAN} hello from the SDK{AI}"
want = "mock-anthropic claude-2.1 heard: hello from the SDK"

whole = client.completions.create(model="claude-2.1", prompt=prompt, max_tokens_to_sample=100, temperature=0.3)
assert whole.type == "completion" and whole.completion == want, whole
assert whole.stop_reason == "stop_sequence", whole

pieces, stop_reason, events = [], None, 0
for event in client.completions.create(model="claude-2.1", prompt=prompt, max_tokens_to_sample=100, stream=True):
    assert event.type == "completion", event
    pieces.append(event.completion)
    stop_reason = event.stop_reason or stop_reason
    events += 1
assert "".join(pieces) == want and stop_reason == "stop_sequence" and events > 2, (pieces, stop_reason)

stopped = client.completions.create(model="claude-2.1", prompt=prompt, max_tokens_to_sample=100,
                                    stop_sequences=["heard"])
assert (stopped.completion, stopped.stop_reason) == ("mock-anthropic claude-2.1 ", "stop_sequence"), stopped
cut = client.completions.create(model="claude-2.1", prompt=prompt, max_tokens_to_sample=2)
assert (cut.completion, cut.stop_reason) == ("mock-anthropic claude-2.1 ", "max_tokens"), cut

try:
    client.completions.create(model="claude-2.1", prompt=f"{HUMAN} no assistant turn", max_tokens_to_sample=10)
    raise SystemExit("a prompt without an Assistant turn was accepted")
except anthropic.BadRequestError as e:
    assert e.status_code == 400 and e.body["error"]["message"] == r'prompt must end with "\n\nAssistant:" turn', e

try:
    anthropic.Anthropic(base_url=base, api_key="sk-wrong", max_retries=0).completions.create(
        model="claude-2.1", prompt=prompt, max_tokens_to_sample=10)
    raise SystemExit("a wrong key was accepted")
except anthropic.AuthenticationError as e:
    assert e.status_code == 401 and e.body["error"]["type"] == "authentication_error", e

faults = {"next": [{"type": "error_event", "after_events": 3}]}
request = urllib.request.Request(base + "/_mock/faults", data=json.dumps(faults).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
urllib.request.urlopen(request).read()
received = []
try:
    for event in client.completions.create(model="claude-2.1", prompt=prompt, max_tokens_to_sample=100,
                                           stream=True):
        received.append(event.completion)
    raise SystemExit("the error event was not raised")
except anthropic.APIStatusError as e:
    # The error event arrives after the 200: the SDK raises it with the stream's status.
    assert e.status_code == 200 and e.body["error"]["type"] == "overloaded_error", e
assert "".join(received) == "mock-anthropic claude-2.1 ", received

print(f"anthropic SDK {anthropic.__version__} (HUMAN_PROMPT from the SDK: {hasattr(anthropic, 'HUMAN_PROMPT')}): "
      f"completions whole = streamed ({want!r}), stop sequence, max_tokens, bad prompt -> 400, "
      f"wrong key -> 401, error event mid-stream raised: ok")
