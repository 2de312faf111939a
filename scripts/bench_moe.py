#!/usr/bin/env python3
"""Mixture-of-experts decoding reads only the routed experts: a benchmark, not a test.

Writes three synthetic GGUFs with random Q8_0 weights and SmolLM2's tokenizer (so every tool
can read them), all with the same attention (hidden 1024, 8 layers, 16 query / 4 key-value heads
of 64, q/k norms):

  moe          qwen3moe: 64 experts of 256 per layer, 8 routed per token (Qwen3-30B-A3B's
               shape, scaled down), ~0.5 GB
  dense-total  qwen3 with one feed-forward of 64·256 = 16384: the same total parameters
  dense-active qwen3 with one feed-forward of 8·256 = 2048: the parameters a token of `moe` uses

then runs `baimo bench -p 0 -n 64` on each. If decoding `moe` read every expert it would run at
dense-total's speed; reading only the routed ones it runs near dense-active's. The table's
"weights read" column is baimo's count of bytes a step reads times the steps per second.
With --llama-venv (a venv holding llama-cpp-python 0.3.36), scripts/bench_vs_llamacpp.py then
measures llama.cpp on the same files for the ratios.

Needs gguf and numpy (pip). Files go to ~/.cache/baimo/bench-moe (made once, ~1.3 GB in all).

    python3 scripts/bench_moe.py [--llama-venv /tmp/venv-llama] [--threads 2]
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = Path.home() / ".cache" / "baimo" / "bench-moe"
SMOLLM2 = Path.home() / ".cache" / "baimo" / "models" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 1024, 8, 16, 4, 64
EXPERTS, USED, EXPERT_FF = 64, 8, 256


def copy_tokenizer(w: gguf.GGUFWriter, src: Path) -> int:
    r = gguf.GGUFReader(src)
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    w.add_tokenizer_model(f["tokenizer.ggml.model"].contents())
    w.add_tokenizer_pre(f["tokenizer.ggml.pre"].contents())
    w.add_token_list(tokens)
    w.add_token_types(f["tokenizer.ggml.token_type"].contents())
    w.add_token_merges(f["tokenizer.ggml.merges"].contents())
    w.add_bos_token_id(f["tokenizer.ggml.bos_token_id"].contents())
    w.add_eos_token_id(f["tokenizer.ggml.eos_token_id"].contents())
    w.add_add_bos_token(False)
    w.add_chat_template(f["tokenizer.chat_template"].contents())
    return len(tokens)


def q8(rng, *shape) -> np.ndarray:
    x = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[-1])).astype(np.float32)
    return gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)


def write(name: str, arch: str, ff: int, experts: bool) -> Path:
    path = OUT / f"{name}.gguf"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    tmp = path.with_suffix(".part")
    w = gguf.GGUFWriter(tmp, arch)
    w.add_name(f"synthetic {name}")
    vocab = copy_tokenizer(w, SMOLLM2)
    w.add_context_length(4096)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(ff)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    if experts:
        w.add_expert_count(EXPERTS)
        w.add_expert_used_count(USED)
        w.add_expert_feed_forward_length(EXPERT_FF)
    Q8 = gguf.GGMLQuantizationType.Q8_0
    ones = np.ones(HIDDEN, dtype=np.float32)
    w.add_tensor("token_embd.weight", q8(rng, vocab, HIDDEN), raw_dtype=Q8)
    for i in range(LAYERS):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", ones)
        w.add_tensor(b + "ffn_norm.weight", ones)
        w.add_tensor(b + "attn_q_norm.weight", np.ones(HEAD_DIM, dtype=np.float32))
        w.add_tensor(b + "attn_k_norm.weight", np.ones(HEAD_DIM, dtype=np.float32))
        w.add_tensor(b + "attn_q.weight", q8(rng, HEADS * HEAD_DIM, HIDDEN), raw_dtype=Q8)
        w.add_tensor(b + "attn_k.weight", q8(rng, KV_HEADS * HEAD_DIM, HIDDEN), raw_dtype=Q8)
        w.add_tensor(b + "attn_v.weight", q8(rng, KV_HEADS * HEAD_DIM, HIDDEN), raw_dtype=Q8)
        w.add_tensor(b + "attn_output.weight", q8(rng, HIDDEN, HEADS * HEAD_DIM), raw_dtype=Q8)
        if experts:
            # The router stays f32, as llama.cpp's converter writes it.
            w.add_tensor(b + "ffn_gate_inp.weight", rng.standard_normal((EXPERTS, HIDDEN), dtype=np.float32))
            w.add_tensor(b + "ffn_gate_exps.weight", q8(rng, EXPERTS, EXPERT_FF, HIDDEN), raw_dtype=Q8)
            w.add_tensor(b + "ffn_up_exps.weight", q8(rng, EXPERTS, EXPERT_FF, HIDDEN), raw_dtype=Q8)
            w.add_tensor(b + "ffn_down_exps.weight", q8(rng, EXPERTS, HIDDEN, EXPERT_FF), raw_dtype=Q8)
        else:
            w.add_tensor(b + "ffn_gate.weight", q8(rng, ff, HIDDEN), raw_dtype=Q8)
            w.add_tensor(b + "ffn_up.weight", q8(rng, ff, HIDDEN), raw_dtype=Q8)
            w.add_tensor(b + "ffn_down.weight", q8(rng, HIDDEN, ff), raw_dtype=Q8)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", q8(rng, vocab, HIDDEN), raw_dtype=Q8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(path)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baimo", type=Path, default=REPO / "target" / "release" / "baimo")
    p.add_argument("--llama-venv", type=Path, help="also run llama.cpp (scripts/bench_vs_llamacpp.py --venv)")
    args = p.parse_args()
    files = [
        write("moe", "qwen3moe", 2048, True),
        write("dense-total", "qwen3", EXPERTS * EXPERT_FF, False),
        write("dense-active", "qwen3", USED * EXPERT_FF, False),
    ]
    for f in files:
        print(f"{f.name}: {f.stat().st_size / 1e6:.0f} MB", flush=True)
    for f in files:
        subprocess.run([str(args.baimo), "bench", str(f), "-p", "0,64", "-n", "64", "-r", "3", "-t",
                        str(args.threads), "-q"], check=True)
    if args.llama_venv:
        subprocess.run([sys.executable, str(REPO / "scripts" / "bench_vs_llamacpp.py"), "--models",
                        *map(str, files), "--rounds", "1", "--reps", "3", "--ttft-runs", "1",
                        "--threads", str(args.threads), "--venv", str(args.llama_venv)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
