#!/usr/bin/env python3
"""Needs: pip install openai anthropic. The official OpenAI and Anthropic SDKs with their default
retry settings (two retries) against `baimo serve`: a permanent failure is tried once. Behind
`bad-openai` is a channel with a wrong upstream key, behind `broke-openai` one whose provider
answers 429 insufficient_quota (an exhausted account); the mock provider counts what reaches it.
Exits non-zero when an SDK retried what cannot mend.
    python3 scripts/sdk/sdk_retries.py BAIMO_URL bad-openai=MOCK_URL broke-openai=MOCK_URL
"""
import json
import sys
import urllib.request

import anthropic
import openai


def mock_requests(mock):
    with urllib.request.urlopen(mock + "/_mock/stats") as r:
        return json.load(r)["requests"]


def main():
    base = sys.argv[1]
    mocks = dict(arg.split("=", 1) for arg in sys.argv[2:])
    oa = openai.OpenAI(base_url=base + "/v1", api_key="unused")  # max_retries: the default
    an = anthropic.Anthropic(base_url=base, api_key="unused")
    assert oa.max_retries == 2 and an.max_retries == 2, (oa.max_retries, an.max_retries)
    messages = [{"role": "user", "content": "hello"}]
    calls = [
        ("openai", lambda m: oa.chat.completions.create(model=m, messages=messages, max_tokens=5),
         {"bad-openai": openai.APIStatusError, "broke-openai": openai.RateLimitError}),
        ("anthropic", lambda m: an.messages.create(model=m, messages=messages, max_tokens=5),
         {"bad-openai": anthropic.APIStatusError, "broke-openai": anthropic.RateLimitError}),
    ]
    for sdk, call, expected in calls:
        for model, error in expected.items():
            mock = mocks[model]
            before = mock_requests(mock)
            try:
                call(model)
            except error as e:
                status = e.status_code
            else:
                raise AssertionError(f"{sdk} {model}: no error")
            tries = mock_requests(mock) - before
            assert tries == 1, f"{sdk} {model}: HTTP {status}, the provider was asked {tries} times"
            print(f"{sdk:9} {model:12} HTTP {status}: one try")


if __name__ == "__main__":
    main()
