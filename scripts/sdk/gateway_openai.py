#!/usr/bin/env python3
"""Needs: pip install openai anthropic. The official OpenAI and Anthropic SDKs, unmodified, against
`baimo serve` with one channel per hosted provider (each a `baimo mock-provider`): for every model
name, a chat completion whole and streamed and a tool call through the OpenAI SDK, and a message
through the Anthropic SDK. Whichever provider is behind a name, the SDK must read the same answer:
the same text after the mock's own label, the same finish reason, the same tool call. Exits
non-zero on any mismatch.
    python3 scripts/sdk/gateway_openai.py http://127.0.0.1:8080 via-openai via-gemini ... [--no-tools NAME ...]
"""
import json
import sys

import anthropic
import openai


def heard(text):
    """What the mock heard: the part after its label ("mock-x model heard: ...")."""
    assert "heard: " in text, text
    return text.split("heard: ", 1)[1]


def main():
    base, *rest = sys.argv[1:]
    no_tools = set()
    models = []
    it = iter(rest)
    for arg in it:
        if arg == "--no-tools":
            no_tools.add(next(it))
        else:
            models.append(arg)
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    claude = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0)
    tools = [{"type": "function", "function": {"name": "weather", "description": "The weather in a city",
              "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
    seen = {}
    for model in models + sorted(no_tools):
        messages = [{"role": "user", "content": "hello there"}]
        whole = client.chat.completions.create(model=model, messages=messages, max_tokens=50)
        text = whole.choices[0].message.content
        assert whole.choices[0].finish_reason == "stop", (model, whole)
        assert whole.usage.completion_tokens > 0, (model, whole.usage)
        pieces = []
        usage = None
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=50, stream=True,
                                                stream_options={"include_usage": True})
        finish = None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        assert "".join(pieces) == text and finish == "stop", (model, pieces, finish)
        assert usage is not None and usage.completion_tokens > 0, (model, usage)
        call = None
        if model not in no_tools:
            r = client.chat.completions.create(model=model, messages=messages, tools=tools)
            assert r.choices[0].finish_reason == "tool_calls", (model, r)
            c = r.choices[0].message.tool_calls[0]
            call = (c.function.name, json.loads(c.function.arguments))
            follow = messages + [r.choices[0].message.model_dump(exclude_none=True),
                                 {"role": "tool", "tool_call_id": c.id, "content": "sunny"}]
            r2 = client.chat.completions.create(model=model, messages=follow, tools=tools)
            assert "sunny" in (r2.choices[0].message.content or ""), (model, r2)
        else:
            try:
                client.chat.completions.create(model=model, messages=messages, tools=tools)
                raise AssertionError(f"{model}: tools accepted by an API without them")
            except openai.BadRequestError as e:  # the gateway's refusal, not any 400
                assert e.status_code == 400 and e.code == "invalid_request" and "cannot call tools" in str(e), (model, e)
        m = claude.messages.create(model=model, max_tokens=50, messages=messages)
        assert m.content[0].text == text and m.stop_reason == "end_turn", (model, m)
        seen[model] = (heard(text), call)
        print(f"{model}: {text!r}, tool call {call}")
    answers = {v[0] for v in seen.values()}
    calls = {json.dumps(v[1]) for v in seen.values() if v[1]}
    assert answers == {"hello there"}, answers
    assert len(calls) == 1, calls
    print(f"gateway via the openai and anthropic SDKs: {len(seen)} models, identical answers: ok")


if __name__ == "__main__":
    main()
