#!/usr/bin/env bash
# Fuzzes the GGUF reader (cargo-fuzz target `gguf_parse` in fuzz/) and the Hugging Face
# checkpoint readers (`checkpoint_parse`), tokenizer files (`tokenizer_files`), hosted
# providers' answers and streams (`provider_bytes`) and what clients send (`client_requests`:
# request bodies, tool-call text, GBNF) for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [extra libFuzzer flags...]     (default: 60 seconds)
#
# Needs the nightly toolchain; installs cargo-fuzz 0.13.2 if it is missing (`cargo install cargo-fuzz
# --version 0.13.2 --locked`, about 30 s of build on 2 cores). The first run also builds the target (~40 s).
# New inputs go to fuzz/corpus/gguf_parse (kept between runs), starting from fuzz/seeds. A crash,
# a panic, an input slower than 10 s or a single allocation over 64 MiB fails the run with a
# non-zero exit; the input is saved under fuzz/artifacts/gguf_parse/ and can be replayed with
#   cargo +nightly fuzz run gguf_parse fuzz/artifacts/gguf_parse/<file>
set -euo pipefail

seconds=${1:-60}
shift || true
case $seconds in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS] [libFuzzer flags...]" >&2
    exit 2
    ;;
esac

cd "$(dirname "$0")/../fuzz"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 2
fi
# A pinned cargo-fuzz, installed once (from crates.io) and kept.
if [ "$(cargo +nightly fuzz --version 2>/dev/null)" != "cargo-fuzz 0.13.2" ]; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

# fuzz TARGET SEEDS SECONDS [flags]: runs one target from its corpus (kept between runs) and seeds.
fuzz() {
    local target=$1 seeds=$2 time=$3
    shift 3
    mkdir -p "corpus/$target"
    cargo +nightly fuzz run "$target" "corpus/$target" "$seeds" -- \
        -max_total_time="$time" \
        -max_len=16384 \
        -timeout=10 \
        -malloc_limit_mb=64 \
        -rss_limit_mb=2048 \
        -print_final_stats=1 \
        "$@"
}

# The checkpoint readers (safetensors, torch.save zip + pickle), tokenizer files (SentencePiece
# protobuf, tiktoken ranks), what hosted providers send back (answers, errors, streams) and what
# clients send (request bodies, tool-call text, GBNF) get a third of the time each.
part=$((seconds / 3 + 1))
fuzz checkpoint_parse seeds_checkpoint "$part" "$@"
fuzz tokenizer_files seeds_tokenizer "$part" "$@"
fuzz provider_bytes seeds_provider "$part" "$@"
fuzz client_requests seeds_client "$part" "$@"
fuzz gguf_parse seeds "$seconds" "$@"
