#!/usr/bin/env python3
"""Perplexity of a Hugging Face model folder over a text file, computed with PyTorch +
transformers by llama.cpp's `llama-perplexity` procedure, the one `baimo perplexity` follows
(crates/engine/src/perplexity.rs):

  * tokenize the whole file once, without special tokens; a BOS first only if the folder's
    tokenizer adds one (tokenizer.json's post-processor puts it before the text);
  * cut the ids into floor(n_tokens / ctx) chunks of ctx tokens (the tail is dropped); when there
    is a BOS, the first id of every chunk is replaced by it;
  * run each chunk on its own (fresh context, one forward pass, float32) and score only its
    second half: for p = ctx/2 .. ctx-2, the negative log-likelihood of id p+1 from the logits at p;
  * PPL = exp(mean NLL); the "±" is llama.cpp's: PPL * sqrt(var(NLL) / (count - 1)).

The model is transformers' LlamaForCausalLM loaded from the folder in float32 (bf16 weights are
widened exactly), eager attention; the tokenizer is the folder's tokenizer.json read by the
`tokenizers` library (and checked against transformers' PreTrainedTokenizerFast).

It writes the figures, the command line and the library versions to a small JSON file that the
Rust tests read (tests/cli.rs compares `baimo perplexity` with it). Needs torch, transformers
(tested with torch 2.5.1, transformers 4.46.3) and tokenizers. Run from the repository root:

    python3 scripts/reference_perplexity.py
    python3 scripts/reference_perplexity.py --model tests/fixtures/hf/llama-trained \
        --text tests/fixtures/hf/llama-trained/heldout.txt --ctx 128 \
        --out tests/fixtures/hf/llama-trained/perplexity.json
"""

import argparse
import hashlib
import json
import math
import os
import platform
import sys

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, ".."))
DEFAULT_MODEL = os.path.join(REPO, "tests", "fixtures", "hf", "llama-trained")


def rel(path):
    """A path as written in the JSON: relative to the repository root when inside it."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def tokenize(folder, text):
    """The ids `baimo perplexity` scores: [BOS if the tokenizer adds one] + encode(text)."""
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    plain = tok.encode(text, add_special_tokens=False).ids
    with_specials = tok.encode(text, add_special_tokens=True).ids
    if with_specials == plain:
        bos = None
    elif with_specials[1:] == plain:
        bos = with_specials[0]
    else:
        sys.exit("the tokenizer adds more than a leading BOS; this script does not handle that")
    # transformers' own wrapper of the same file must agree.
    fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
    assert fast(text, add_special_tokens=False)["input_ids"] == plain, "tokenizers and transformers disagree"
    return ([bos] if bos is not None else []) + plain, bos


def perplexity(model, ids, bos, ctx):
    n_chunks = len(ids) // ctx
    if n_chunks == 0:
        sys.exit(f"the text has {len(ids)} tokens, fewer than one context of {ctx}")
    first = ctx // 2
    nll_sum, nll2_sum, count, running = 0.0, 0.0, 0, []
    for c in range(n_chunks):
        window = list(ids[c * ctx : (c + 1) * ctx])
        if bos is not None:
            window[0] = bos
        with torch.no_grad():
            logits = model(torch.tensor([window])).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        for p in range(first, ctx - 1):
            v = -logp[p, window[p + 1]].item()
            nll_sum += v
            nll2_sum += v * v
            count += 1
        running.append(math.exp(nll_sum / count))
    mean = nll_sum / count
    variance = nll2_sum / count - mean * mean
    ppl = math.exp(mean)
    error = math.sqrt(variance / (count - 1)) * ppl if variance > 0 and count > 1 else 0.0
    return {
        "ppl": ppl,
        "error": error,
        "mean_nll": mean,
        "n_tokens": len(ids),
        "n_chunks": n_chunks,
        "n_scored": count,
        "ppl_after_chunk": running,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face model folder (LLaMA)")
    ap.add_argument("--text", help="text file to score (default: MODEL/heldout.txt)")
    ap.add_argument("--ctx", type=int, default=128, help="chunk size in tokens (default 128)")
    ap.add_argument("--out", help="JSON file to write (default: MODEL/perplexity.json); '-' prints only")
    args = ap.parse_args()
    text_path = args.text or os.path.join(args.model, "heldout.txt")
    out = args.out or os.path.join(args.model, "perplexity.json")

    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic summation order, and light on a shared machine
    raw = open(text_path, "rb").read()
    text = raw.decode("utf-8", errors="replace")  # as baimo: String::from_utf8_lossy
    ids, bos = tokenize(args.model, text)
    model = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32, attn_implementation="eager").eval()
    result = perplexity(model, ids, bos, args.ctx)

    record = {
        "generator": "scripts/reference_perplexity.py",
        "command": "python3 scripts/reference_perplexity.py --model {} --text {} --ctx {} --out {}".format(
            rel(args.model), rel(text_path), args.ctx, rel(out) if out != "-" else "-"
        ),
        "reference": "transformers LlamaForCausalLM (float32, eager attention) + tokenizers, "
        "llama-perplexity's chunking: ctx-token chunks, second half scored",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "text": rel(text_path),
        "text_sha256": hashlib.sha256(raw).hexdigest(),
        "ctx": args.ctx,
        "bos": bos,
        **result,
    }
    print(f"{result['n_tokens']} tokens, {result['n_chunks']} chunks of {args.ctx}, {result['n_scored']} scored")
    print(f"± {result['error']:.5f}")
    print(f"PPL = {result['ppl']!r}")
    if out != "-":
        with open(out, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        print(f"wrote {rel(out)}")


if __name__ == "__main__":
    main()
