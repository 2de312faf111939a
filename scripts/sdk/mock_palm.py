"""Needs: pip install "google-generativeai==0.1.0" (the PaLM API; also passes with 0.3.2). Google's own PaLM SDK against baimo's mock PaLM server.

    python scripts/sdk/mock_palm.py <base_url> <key>

The mock is started with
`cargo run --release -p baimo-gateway --example mock_provider -- palm <port> <key>`.

google-generativeai dropped PaLM (`genai.chat`, `genai.generate_text`) in later releases (0.8.x
has neither), so an old one is pinned: 0.1.0 calls `v1beta2`, 0.3.2 calls `v1beta`; both send
the key in the `x-goog-api-key` header (through google-auth's API-key credentials), not `?key=`,
and ask for enums as numbers (`$alt=json;enum-encoding=int`). PaLM has no streaming, so there is
no streamed call to make: the script holds a conversation (context, examples, a reply), asks a
text model with an output limit and several candidates, sends a raw request with `?key=` (the
other form the API took), and checks the SDK's reading of a wrong key and of a 429. Exits
non-zero on any failure.
"""

import json
import sys
import urllib.request

import google.generativeai as genai
from google.api_core import exceptions


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as r:
        return json.loads(r.read())


def main() -> None:
    base, key = sys.argv[1], sys.argv[2]
    genai.configure(api_key=key, transport="rest", client_options={"api_endpoint": base})

    chat = genai.chat(
        model="models/chat-bison-001",
        context="Answer briefly.",
        examples=[("hi", "hello")],
        messages=["hello there"],
        temperature=0.2,
    )
    assert chat.last == "mock-palm chat-bison-001 heard: hello there", chat.last
    print("chat:", chat.last)
    chat = chat.reply("and once more")
    assert chat.last == "mock-palm chat-bison-001 heard: and once more", chat.last
    assert [m["author"] for m in chat.messages] == ["0", "1", "0", "1"], chat.messages
    print("reply:", chat.last)

    text = genai.generate_text(
        model="models/text-bison-001", prompt="hello there", max_output_tokens=2, candidate_count=2
    )
    assert text.result == "mock-palm text-bison-001 ", text.result
    assert len(text.candidates) == 2, text.candidates
    print("text:", repr(text.result))

    raw = post(
        f"{base}/v1beta2/models/chat-bison-001:generateMessage?key={key}",
        {"prompt": {"messages": [{"author": "0", "content": "by query key"}]}},
    )
    assert raw["candidates"][0]["content"] == "mock-palm chat-bison-001 heard: by query key", raw
    print("?key=:", raw["candidates"][0]["content"])

    genai.configure(api_key="AIzaSy-wrong", transport="rest", client_options={"api_endpoint": base})
    try:
        genai.chat(model="models/chat-bison-001", messages=["hi"])
        raise AssertionError("a wrong key was accepted")
    except exceptions.BadRequest as e:
        # The ErrorInfo detail (api_core's `reason` property fails on REST answers: read details).
        reasons = [d.get("reason") for d in e.details if isinstance(d, dict)]
        assert e.code == 400 and "API_KEY_INVALID" in reasons, (e.code, e.details)
    print("wrong key: 400 API_KEY_INVALID")

    genai.configure(api_key=key, transport="rest", client_options={"api_endpoint": base})
    post(f"{base}/_mock/faults", {"next": [{"type": "status", "status": 429}]})
    try:
        genai.chat(model="models/chat-bison-001", messages=["hi"])
        raise AssertionError("the 429 did not arrive")
    except (exceptions.TooManyRequests, exceptions.ResourceExhausted) as e:
        assert e.code == 429, e.code
        print("429:", type(e).__name__)
    print("ok")


if __name__ == "__main__":
    main()
