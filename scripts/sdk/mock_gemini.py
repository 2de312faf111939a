"""Needs: pip install google-genai (tested with 3.6.1). Google's own Gemini SDK against baimo's mock Gemini server.

    python scripts/sdk/mock_gemini.py <base_url> <key>

The mock is started with
`cargo run --release -p baimo-gateway --example mock_provider -- gemini <port> <key>`.
Checks a whole answer with a system instruction and an output limit, a streamed answer (in
pieces, usage cumulative), a function call and its answer, a chat session, and the SDK's
reading of a wrong key and of a 429 whose retry delay is in the body. Exits non-zero on any
failure.
"""

import json
import sys
import urllib.request

from google import genai
from google.genai import errors, types


def main() -> None:
    base, key = sys.argv[1], sys.argv[2]
    # No SDK-side retries: the 429 below must reach this script.
    options = types.HttpOptions(base_url=base, retry_options=types.HttpRetryOptions(attempts=1))
    client = genai.Client(api_key=key, http_options=options)
    model = "gemini-1.5-flash"
    expected = f"mock-gemini {model} heard: hello there"

    r = client.models.generate_content(
        model=model,
        contents="hello there",
        config=types.GenerateContentConfig(system_instruction="be brief", temperature=0.2, max_output_tokens=64),
    )
    assert r.text == expected, r.text
    assert r.candidates[0].finish_reason == types.FinishReason.STOP, r.candidates[0].finish_reason
    # "be brief" + "hello there": the system instruction was sent and counted.
    assert r.usage_metadata.prompt_token_count == 4, r.usage_metadata
    assert r.usage_metadata.candidates_token_count == 5, r.usage_metadata
    print("whole:", r.text)

    short = client.models.generate_content(
        model=model, contents="hello there", config=types.GenerateContentConfig(max_output_tokens=2)
    )
    assert short.text == f"mock-gemini {model} ", short.text
    assert short.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS

    pieces, counts = [], []
    for chunk in client.models.generate_content_stream(model=model, contents="hello there"):
        pieces.append(chunk.text or "")
        counts.append(chunk.usage_metadata.candidates_token_count)
    assert "".join(pieces) == expected, pieces
    assert len(pieces) > 1, pieces
    assert counts == sorted(counts) and counts[-1] == 5, counts  # cumulative, not per chunk
    print("stream:", pieces)

    weather = types.FunctionDeclaration(
        name="weather",
        description="The weather of a city",
        parameters=types.Schema(type="OBJECT", properties={"query": types.Schema(type="STRING")}),
    )
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[weather])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    asked = types.Content(role="user", parts=[types.Part(text="weather in Paris")])
    r = client.models.generate_content(model=model, contents=[asked], config=config)
    call = r.function_calls[0]
    assert call.name == "weather" and call.args == {"query": "weather in Paris"}, call
    answered = types.Part.from_function_response(name="weather", response={"output": "sunny"})
    r = client.models.generate_content(
        model=model,
        contents=[asked, r.candidates[0].content, types.Content(role="user", parts=[answered])],
        config=config,
    )
    assert r.text == "The tool answered: sunny", r.text
    print("function call:", call.name, call.args, "->", r.text)

    chat = client.chats.create(model=model)
    assert chat.send_message("first").text == f"mock-gemini {model} heard: first"
    assert chat.send_message("second").text == f"mock-gemini {model} heard: second"

    bad = genai.Client(api_key="AIzaSy-wrong", http_options=options)
    try:
        bad.models.generate_content(model=model, contents="hi")
        raise AssertionError("a wrong key was accepted")
    except errors.ClientError as e:
        assert e.code == 400 and e.status == "INVALID_ARGUMENT", (e.code, e.status)
        assert e.details["error"]["details"][0]["reason"] == "API_KEY_INVALID", e.details
    print("wrong key: 400 API_KEY_INVALID")

    fault = {"next": [{"type": "status", "status": 429, "retry_after_ms": 1500}]}
    urllib.request.urlopen(
        urllib.request.Request(
            f"{base}/_mock/faults", data=json.dumps(fault).encode(), headers={"content-type": "application/json"}
        )
    ).read()
    try:
        client.models.generate_content(model=model, contents="hi")
        raise AssertionError("the 429 did not arrive")
    except errors.ClientError as e:
        assert e.code == 429 and e.status == "RESOURCE_EXHAUSTED", (e.code, e.status)
        delays = [d.get("retryDelay") for d in e.details["error"]["details"]]
        assert "1.5s" in delays, e.details
    print("429: RESOURCE_EXHAUSTED, retryDelay 1.5s")
    print("ok")


if __name__ == "__main__":
    main()
