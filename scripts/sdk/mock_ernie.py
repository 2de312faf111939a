"""Needs: pip install qianfan  (Baidu's official Qianfan SDK; tested with 0.4.12.3)

Runs the official SDK against the mock ERNIE v1 (Qianfan) server:

    cargo run --release -p baimo-gateway --example mock_provider -- ernie 8991 <api-key> <secret-key>
    python scripts/sdk/mock_ernie.py http://127.0.0.1:8991 <api-key> <secret-key>

The SDK is pointed at the mock with its own settings: QIANFAN_AK / QIANFAN_SK (the app's API key and
secret key) and QIANFAN_BASE_URL, which it uses for both the OAuth token endpoint
(/oauth/2.0/token) and the chat endpoints (/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/...).
Checks a whole answer, a stream, and that a wrong secret key is refused. Exits non-zero on any
failure.
"""

import os
import sys


def main() -> int:
    if len(sys.argv) < 4:
        print(__doc__)
        return 2
    base_url, key, secret = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    os.environ["QIANFAN_AK"] = key
    os.environ["QIANFAN_SK"] = secret
    os.environ["QIANFAN_BASE_URL"] = base_url
    # No retries on the SDK's side: a failure should show, not be hidden by a second try.
    os.environ["QIANFAN_LLM_API_RETRY_COUNT"] = "1"
    import qianfan  # after the environment is set: the SDK reads it on import
    from qianfan.errors import AuthError

    messages = [{"role": "user", "content": "hello from the qianfan sdk"}]
    # ERNIE-4.0-8K is served at the `completions_pro` endpoint; the mock names the endpoint.
    expected = "mock-ernie completions_pro heard: hello from the qianfan sdk"

    chat = qianfan.ChatCompletion(model="ERNIE-4.0-8K")
    resp = chat.do(messages=messages, system="be brief")
    text = resp["result"]
    assert text == expected, f"non-stream: {text!r}"
    usage = resp["usage"]
    assert usage["completion_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
    print(f"non-stream ok: {text!r} usage={usage}")

    pieces, last = [], None
    for chunk in chat.do(messages=messages, stream=True):
        pieces.append(chunk["result"])
        last = chunk
    streamed = "".join(pieces)
    assert streamed == expected, f"stream: {streamed!r}"
    assert last is not None and last["is_end"] is True, last
    assert last["usage"]["completion_tokens"] == usage["completion_tokens"], last["usage"]
    print(f"stream ok: {len(pieces)} chunks, {streamed!r}")

    # A wrong secret key: the token endpoint refuses it and the SDK raises.
    os.environ["QIANFAN_SK"] = "wrong-" + secret
    try:
        qianfan.ChatCompletion(model="ERNIE-4.0-8K", ak=key, sk="wrong-" + secret).do(messages=messages)
    except AuthError as e:
        # The SDK raises AuthError for the token endpoint's `invalid_client` only, and words the
        # "Client authentication failed" description as "SK(...) is not correct" (a wrong AK
        # would read "AK(...)"): anything else (a crash, a connection error) is not a refusal.
        assert str(e).startswith("SK(") and "is not correct" in str(e), e
        print(f"wrong secret refused: {type(e).__name__}: {str(e)[:100]}")
    else:
        raise AssertionError("a wrong secret key was accepted")
    print("ernie sdk: all ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
