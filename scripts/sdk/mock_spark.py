"""Needs: pip install spark-ai-python  (iFlytek's official Spark SDK, module `sparkai`; tested with 0.4.5)

Runs the official SDK against the mock Spark WebSocket server:

    cargo run --release -p baimo-gateway --example mock_provider -- spark 8992 <api-key> <api-secret> <app-id>
    python scripts/sdk/mock_spark.py http://127.0.0.1:8992 <api-key> <api-secret> <app-id>

The SDK takes the WebSocket URL as `spark_api_url` (it signs whatever host and path it is given, so
`ws://127.0.0.1:PORT/v3.5/chat` works as is; it only logs a warning that the URL is not its
default). The base URL may be given as http:// or ws://. Checks a whole answer, a stream with
usage at the end, and that a wrong API secret is refused at the handshake. Exits non-zero on any
failure.
"""

import sys


def main() -> int:
    if len(sys.argv) < 5:
        print(__doc__)
        return 2
    base, key, secret, app_id = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3], sys.argv[4]
    base = "ws://" + base.split("://", 1)[-1]
    import json

    import websocket  # websocket-client, the SDK's own WebSocket dependency
    from sparkai.core.messages import ChatMessage
    from sparkai.errors import SparkAIConnectionError
    from sparkai.llm.llm import ChatSparkLLM

    url = f"{base}/v3.5/chat"
    expected = "mock-spark generalv3.5 heard: hello from the sparkai sdk"
    messages = [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hello from the sparkai sdk"),
    ]

    def client(api_secret: str, streaming: bool) -> ChatSparkLLM:
        return ChatSparkLLM(
            spark_api_url=url,
            spark_app_id=app_id,
            spark_api_key=key,
            spark_api_secret=api_secret,
            spark_llm_domain="generalv3.5",
            streaming=streaming,
            request_timeout=10,
        )

    result = client(secret, False).generate([messages])
    text = result.generations[0][0].text
    assert text == expected, f"non-stream: {text!r}"
    usage = (result.llm_output or {}).get("token_usage", {})
    assert usage.get("completion_tokens", 0) > 0, result.llm_output
    print(f"non-stream ok: {text!r} usage={usage}")

    pieces = [chunk.content for chunk in client(secret, True).stream(messages)]
    streamed = "".join(pieces)
    assert streamed == expected, f"stream: {streamed!r} from {pieces!r}"
    assert len(pieces) > 2, pieces
    print(f"stream ok: {len(pieces)} chunks, {streamed!r}")

    try:
        client("wrong-" + secret, False).generate([messages])
    except SparkAIConnectionError as e:  # the SDK reports the refused handshake as its connection error
        # ... with code -1 and websocket-client's exception for the handshake's HTTP status as the
        # message; a refused connection or a timeout would carry another exception, a frame's error
        # its own code: only a 401 for the signature is the refusal.
        bad = e.message
        assert e.error_code == -1 and isinstance(bad, websocket.WebSocketBadStatusException), (e.error_code, bad)
        assert bad.status_code == 401, (bad.status_code, bad.resp_body)
        assert json.loads(bad.resp_body)["message"] == "HMAC signature does not match", bad.resp_body
        print(f"wrong secret refused: {type(e).__name__}: {str(e)[:120]}")
    else:
        raise AssertionError("a wrong API secret was accepted")
    print("spark sdk: all ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
