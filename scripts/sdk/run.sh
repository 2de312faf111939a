#!/usr/bin/env bash
# Runs the official Python SDKs (openai, anthropic; installed from PyPI into .venv-sdk) against
# `baimo serve` on a tiny fixture model, over loopback. Used by .ci/run; about 30 s the first
# time (the install), a few seconds after.
#
#   scripts/sdk/run.sh [path/to/baimo]
set -euo pipefail
cd "$(dirname "$0")/../.."
baimo=${1:-target/release/baimo}
venv=.venv-sdk
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check openai anthropic
model=tests/fixtures/hf/llama-trained
log=$(mktemp)
"$baimo" serve "$model" --port 0 -q 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
    grep -q "listening on" "$log" && break
    sleep 0.1
done
base=$(sed -n 's/^listening on //p' "$log" | head -1)
[ -n "$base" ] || { echo "baimo serve did not start:"; cat "$log"; exit 1; }
"$venv/bin/python" scripts/sdk/openai_chat.py "$base/v1" llama-trained
"$venv/bin/python" scripts/sdk/anthropic_messages.py "$base" llama-trained
