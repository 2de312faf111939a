#!/usr/bin/env bash
# Runs the official Python SDKs (openai, anthropic; installed from PyPI into .venv-sdk) against
# `baimo serve` on a tiny fixture model, over loopback, then the agent checks (the SDKs and
# LangChain with tools and structured output, scripts/sdk/agents.py) on Qwen2.5-Coder-0.5B.
# Used by .ci/run; about a minute the first time (the install), 30 s after.
#
#   scripts/sdk/run.sh [path/to/baimo]
set -euo pipefail
cd "$(dirname "$0")/../.."
baimo=${1:-target/release/baimo}
venv=.venv-sdk
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check openai==3.63.0 anthropic==2.17.0 \
    langchain-openai==1.8.1 langchain-anthropic==1.7.10
pids=()
logs=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$logs"' EXIT

# serve MODEL: runs `baimo serve MODEL` in the background and sets $base to where it listens.
serve() {
    local log=$logs/$(basename "$1")
    "$baimo" serve "$1" --port 0 -q 2>"$log" &
    pids+=($!)
    for _ in $(seq 300); do
        grep -q "listening on" "$log" && break
        sleep 0.1
    done
    base=$(sed -n 's/^listening on //p' "$log" | head -1)
    [ -n "$base" ] || { echo "baimo serve $1 did not start:"; cat "$log"; exit 1; }
}

serve tests/fixtures/hf/llama-trained
"$venv/bin/python" scripts/sdk/openai_chat.py "$base/v1" llama-trained
"$venv/bin/python" scripts/sdk/anthropic_messages.py "$base" llama-trained

# Agent clients (tools, results, content parts, structured output) on a real model whose template
# teaches tool calls; the cargo tests fetched it into the cache.
serve qwen2.5-coder-0.5b
"$venv/bin/python" scripts/sdk/agents.py "$base" qwen2.5-coder-0.5b qwen2.5-coder-0.5b --prompts 20
