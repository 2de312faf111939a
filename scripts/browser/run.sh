#!/usr/bin/env bash
# The chat page in headless Chromium against `baimo serve` on a tiny fixture (loopback).
# Installs Debian's chromium if it is missing (needs root and apt) and playwright-core from npm.
#
#   scripts/browser/run.sh [path/to/baimo] [screenshot.png]
set -euo pipefail
cd "$(dirname "$0")/../.."
baimo=${1:-target/release/baimo}
shot=${2:-}
if ! command -v chromium >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
(cd scripts/browser && npm ci --silent --no-audit --no-fund)
log=$(mktemp)
"$baimo" serve tests/fixtures/hf/llama-trained --port 0 -q 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
    grep -q "listening on" "$log" && break
    sleep 0.1
done
base=$(sed -n 's/^listening on //p' "$log" | head -1)
[ -n "$base" ] || { echo "baimo serve did not start:"; cat "$log"; exit 1; }
CHROMIUM=$(command -v chromium) node scripts/browser/chat_page.mjs "$base" $shot
