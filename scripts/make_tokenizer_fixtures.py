#!/usr/bin/env python3
"""Builds tests/fixtures/tokenizers/: small tokenizers of every kind baimo reads from model
folders, and the ids their reference implementations give for a mixed corpus.

  spm-bpe.model           SentencePiece BPE (identity normaliser, byte fallback, spaces kept),
                          like LLaMA-1/2's and Baichuan's tokenizer.model
  spm-bpe-collapse.model  the same with remove_extra_whitespaces (SentencePiece's default)
  tiny.tiktoken           a tiktoken rank file in qwen.tiktoken's format, ranks taken from the
                          tiny byte-level BPE of tests/fixtures/hf/llama/tokenizer.json
  tokenizer.json          that byte-level BPE itself
  expected.json           {"corpus": [...], "<file>": {"plain": [[ids]...], "special": [[ids]...]}}

References: the sentencepiece library (encode), tiktoken (Encoding with Qwen v1's pattern and
special tokens: encode_ordinary / encode(allowed_special="all")), tokenizers (encode without
special tokens added). Needs sentencepiece, tiktoken, tokenizers (pip). Run from the repository
root: python3 scripts/make_tokenizer_fixtures.py
"""

import base64
import json
import os
import re
import shutil

import sentencepiece as spm
import tiktoken
from tokenizers import Tokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "tokenizers")

TRAIN = [
    "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5",
    "百模：一个程序，运行一百个模型。Hello, world! 你好，世界！",
    "for (int i = 0; i < n; ++i) { sum += x[i] * y[i]; }",
    "Large language models predict the next token. 大语言模型预测下一个词元。",
    "通义千问、百川、智谱清言和文心一言都是大模型。Transformers are sequence models.",
] * 20

# Mixed Chinese, English, code, emoji, odd whitespace, digits and special-token spellings.
CORPUS = [
    "Hello, world!",
    "你好，世界！今天天气很好。",
    "  leading and  double   spaces  ",
    "tabs\tand\nnewlines\n\n\nend",
    "def f(x):\n    return x ** 2  # square\n",
    "emoji 🙂🚀👨‍👩‍👧 and 漢字 mixed with English words",
    "numbers 1234567890 3.14159 1e-9 0x1F",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "unknown chars: ∮ ∂ ℵ ש ﷽ 🦀",
    "",
    " ",
    "a",
    "百川智能 Baichuan2-13B-Chat 的 ALiBi 位置编码",
    "fn main() { println!(\"{}\", 1 + 1); }",
]

QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]


def train_spm(name, remove_extra_whitespaces, user_defined=("<|im_start|>", "<|im_end|>"), vocab_size=600):
    text = os.path.join(OUT, "train.txt")
    with open(text, "w") as f:
        f.write("\n".join(TRAIN))
    spm.SentencePieceTrainer.train(
        input=text,
        model_prefix=os.path.join(OUT, name),
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=remove_extra_whitespaces,
        character_coverage=1.0,
        split_digits=True,
        user_defined_symbols=list(user_defined),
        minloglevel=2,
    )
    os.remove(text)
    os.remove(os.path.join(OUT, name + ".vocab"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(OUT, name + ".model"))
    # SentencePiece matches user-defined symbols in text always and control tokens never.
    ids = [sp.encode(t) for t in CORPUS]
    return {"plain": ids, "special": ids}


def bytes_of(token):
    """GPT-2's byte-level alphabet back to bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    decode = {chr(c): b for b, c in zip(bs, cs)}
    return bytes(decode[c] for c in token)


def make_tiktoken():
    tok = json.load(open(os.path.join(ROOT, "hf", "llama", "tokenizer.json")))
    vocab = tok["model"]["vocab"]
    ranks = {bytes_of(t): i for t, i in sorted(vocab.items(), key=lambda kv: kv[1])}
    with open(os.path.join(OUT, "tiny.tiktoken"), "w") as f:
        for b, r in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(b).decode()} {r}\n")
    enc = tiktoken.Encoding(
        "qwen-tiny",
        pat_str=QWEN_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={s: len(ranks) + i for i, s in enumerate(QWEN_SPECIALS)},
    )
    return {
        "plain": [enc.encode_ordinary(t) for t in CORPUS],
        "special": [enc.encode(t, allowed_special="all") for t in CORPUS],
    }


def tokenizer_json():
    shutil.copy(os.path.join(ROOT, "hf", "llama", "tokenizer.json"), os.path.join(OUT, "tokenizer.json"))
    tok = Tokenizer.from_file(os.path.join(OUT, "tokenizer.json"))
    special = [tok.encode(t, add_special_tokens=False).ids for t in CORPUS]
    tok.encode_special_tokens = True
    plain = [tok.encode(t, add_special_tokens=False).ids for t in CORPUS]
    return {"plain": plain, "special": special}


CHATGLM3_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
                 "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"]
LLAMA3_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
GLM_CORPUS_EXTRA = ["[gMASK]sop<|user|>\n 你好<|assistant|>", "[gMASK]<sop><|user|>\n你好<|assistant|>", "sop and eop are words"]


def chatglm_spm():
    """ChatGLM3's tokenizer (tokenization_chatglm.py): the SentencePiece model's pieces, then
    its special tokens; text is cut at the special tokens (when they are parsed) and every other
    piece encoded by SentencePiece on its own."""
    name = "chatglm-spm"
    train_spm(name, False)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(OUT, name + ".model"))
    n = sp.get_piece_size()
    ids = {t: n + i for i, t in enumerate(CHATGLM3_SPECIALS)}
    pattern = re.compile("|".join(re.escape(t) for t in sorted(CHATGLM3_SPECIALS, key=len, reverse=True)))

    def encode(text, special):
        if not special:
            return sp.encode(text) if text else []
        out, last = [], 0
        for m in pattern.finditer(text):
            if m.start() > last:
                out += sp.encode(text[last : m.start()])
            out.append(ids[m.group()])
            last = m.end()
        if last < len(text):
            out += sp.encode(text[last:])
        return out

    corpus = CORPUS + GLM_CORPUS_EXTRA
    return {"plain": [encode(t, False) for t in corpus], "special": [encode(t, True) for t in corpus]}


def glm4_tiktoken():
    ranks = {}
    for line in open(os.path.join(OUT, "tiny.tiktoken")):
        b, r = line.split()
        ranks[base64.b64decode(b)] = int(r)
    enc = tiktoken.Encoding("glm4-tiny", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens={s: len(ranks) + i for i, s in enumerate(GLM4_SPECIALS)})
    corpus = CORPUS + GLM_CORPUS_EXTRA
    return {"plain": [enc.encode_ordinary(t) for t in corpus], "special": [enc.encode(t, allowed_special="all") for t in corpus]}


GLM_V1_SYMBOLS = ["<n>", "<|tab|>"] + [f"<|blank_{i}|>" for i in range(2, 81)] + ["[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"]


def glm_preprocess(text):
    """ChatGLM-6B's tokenization_chatglm.py _preprocess."""
    text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
    for i in range(80, 1, -1):
        text = text.replace(" " * i, f"<|blank_{i}|>")
    return text


def ice_text():
    """ChatGLM-6B's ice_text.model kind: its symbols are pieces of the SentencePiece model."""
    train_spm("ice_text", False, GLM_V1_SYMBOLS, 700)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(OUT, "ice_text.model"))
    corpus = CORPUS + GLM_CORPUS_EXTRA
    ids = [sp.encode(glm_preprocess(t)) if t else [] for t in corpus]
    return {"plain": ids, "special": ids}


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {"corpus": CORPUS}
    expected["spm-bpe.model"] = train_spm("spm-bpe", False)
    expected["spm-bpe-collapse.model"] = train_spm("spm-bpe-collapse", True)
    expected["tiny.tiktoken"] = make_tiktoken()
    expected["tokenizer.json"] = tokenizer_json()
    expected["glm_corpus"] = CORPUS + GLM_CORPUS_EXTRA
    expected["chatglm-spm.model"] = chatglm_spm()
    expected["tiny.tiktoken (GLM-4)"] = glm4_tiktoken()
    expected["ice_text.model"] = ice_text()
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
    for k, v in expected.items():
        if k not in ("corpus", "glm_corpus"):
            print(k, sum(len(x) for x in v["plain"]), "ids")


if __name__ == "__main__":
    main()
