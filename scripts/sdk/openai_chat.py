#!/usr/bin/env python3
"""The official `openai` Python SDK, unmodified, against `baimo serve`: a chat completion whole
and streamed (with include_usage), a legacy text completion whole and streamed, the model list,
and the SDK's errors for an unknown model and an over-long prompt. Exits non-zero on any
mismatch.

    python3 scripts/sdk/openai_chat.py http://127.0.0.1:8080/v1 MODEL
"""

import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)

assert any(m.id == model for m in client.models.list().data), "model listed"

whole = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0, seed=1
)
assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
assert whole.choices[0].finish_reason in ("stop", "length")
assert whole.usage.completion_tokens <= 8 and whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

pieces, usage, finish = [], None, None
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0, seed=1,
    stream=True, stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
streamed = "".join(pieces)
assert streamed == whole.choices[0].message.content, (streamed, whole.choices[0].message.content)
assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens and finish == whole.choices[0].finish_reason

legacy = client.completions.create(model=model, prompt="The GNU General Public License", max_tokens=6, temperature=0)
assert legacy.object == "text_completion" and legacy.usage.completion_tokens <= 6
legacy_streamed = "".join(
    c.choices[0].text for c in client.completions.create(
        model=model, prompt="The GNU General Public License", max_tokens=6, temperature=0, stream=True
    ) if c.choices
)
assert legacy_streamed == legacy.choices[0].text, (legacy_streamed, legacy.choices[0].text)

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.code == "model_not_found"

try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 100000}])
    raise SystemExit("over-long prompt accepted")
except openai.BadRequestError as e:
    assert e.code == "context_length_exceeded"

print(f"openai SDK {openai.__version__}: chat and legacy completions, whole = streamed ({streamed!r}), usage, errors: ok")
