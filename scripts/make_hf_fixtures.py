#!/usr/bin/env python3
"""Builds the tiny Hugging Face model folders under tests/fixtures/hf/ and their reference logits.

Each fixture is a randomly initialised model of one family, saved the way the hub publishes
that family (config.json, safetensors or a PyTorch .bin, tokenizer files), plus:

  expected.json  the token sequences run and where their logits are
  logits.f32     little-endian f32 logits, one row of vocab_size per position of every sequence

The logits come from transformers' own classes (LlamaForCausalLM, Qwen2ForCausalLM,
Qwen3ForCausalLM, GPT2LMHeadModel) run in float32 on the CPU, one forward pass over each whole sequence.

Needs torch, transformers (5.x), tokenizers and safetensors; CI does not run this (the fixtures are
committed). The Mistral, Mixtral, Qwen2/3-MoE, Phi-3 and Gemma 2/3 fixtures were made with
transformers 5.0.0 on torch 2.5.1 (later 5.x releases want torch 2.6; uninstall the `kernels`
package if transformers' import fails on it). Run from the repository root:

    python3 scripts/make_hf_fixtures.py            # all fixtures
    python3 scripts/make_hf_fixtures.py qwen3      # only some
"""

import json
import math
import os
import shutil
import struct
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GlmConfig,
    GlmForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")

# Text the tiny byte-level tokenizer is trained on: mixed Chinese, English, code and emoji.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5",
    "百模：一个程序，运行一百个模型。Hello, world! 你好，世界！🙂🚀",
    "for (int i = 0; i < n; ++i) { sum += x[i] * y[i]; }",
    "Large language models predict the next token. 大语言模型预测下一个词元。",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 320

# Sequences run through every model: short, one that crosses a 64-token batch, one long enough
# for the scaled-RoPE fixtures to pass their trained length.
LENGTHS = [5, 23, 80]


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens(SPECIALS)
    return tok


def save_tokenizer(tok, out, chat_template):
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = chat_template
    fast.save_pretrained(out)


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def common(vocab):
    return dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=VOCAB - 1,
        pad_token_id=VOCAB - 3,
    )


def fixtures(vocab):
    """name → (model class, config) for every fixture."""
    c = common(vocab)
    return {
        # LLaMA: plain multi-head attention, untied head.
        "llama": (LlamaForCausalLM, LlamaConfig(**{**c, "num_key_value_heads": 4, "tie_word_embeddings": False})),
        # Llama 3: GQA, large base, llama3 frequency scaling.
        "llama3": (
            LlamaForCausalLM,
            LlamaConfig(
                **c,
                tie_word_embeddings=False,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 16,
                },
            ),
        ),
        # Linear position interpolation.
        "llama-linear": (
            LlamaForCausalLM,
            LlamaConfig(**c, tie_word_embeddings=False, rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),
        ),
        # Dynamic NTK: the last sequence (80 tokens) runs past max_position_embeddings (32).
        "llama-dynamic": (
            LlamaForCausalLM,
            LlamaConfig(
                **{**c, "max_position_embeddings": 32},
                tie_word_embeddings=False,
                rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
            ),
        ),
        # Qwen2: q/k/v biases, GQA, tied embeddings, base 1e6.
        "qwen2": (
            Qwen2ForCausalLM,
            Qwen2Config(**c, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        ),
        # Qwen3: per-head q/k RMSNorm, head_dim (16) unrelated to hidden / heads (8), no biases.
        "qwen3": (
            Qwen3ForCausalLM,
            Qwen3Config(**c, head_dim=16, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        ),
        # GPT-2: LayerNorm, learned positions, GELU, Conv1D weights, tied head.
        "gpt2": (
            GPT2LMHeadModel,
            GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=None, eos_token_id=VOCAB - 3),
        ),
        # Mistral: a sliding window of 16 positions, shorter than two of the sequences.
        "mistral": (
            MistralForCausalLM,
            MistralConfig(**c, sliding_window=16, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        ),
        # Mixtral: 4 SwiGLU experts of 64, 2 per token, renormalized.
        "mixtral": (
            MixtralForCausalLM,
            MixtralConfig(**c, num_local_experts=4, num_experts_per_tok=2, sliding_window=None, tie_word_embeddings=False),
        ),
        # Qwen3-MoE: 8 experts of 16, 2 per token, norm_topk_prob; q/k norms, head_dim 16.
        "qwen3-moe": (
            Qwen3MoeForCausalLM,
            Qwen3MoeConfig(**c, head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                           norm_topk_prob=True, tie_word_embeddings=False),
        ),
        # Qwen2-MoE: q/k/v biases, a gated shared expert of 48, routing weights not renormalized,
        # the second layer dense (mlp_only_layers).
        "qwen2-moe": (
            Qwen2MoeForCausalLM,
            Qwen2MoeConfig(**c, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                           shared_expert_intermediate_size=48, norm_topk_prob=False, mlp_only_layers=[1],
                           tie_word_embeddings=False),
        ),
        # Phi-3: fused qkv_proj and gate_up_proj, half of each head rotated, LongRoPE (short
        # factors up to 32 positions, long ones past them: the 80-token sequence).
        "phi3": (
            Phi3ForCausalLM,
            Phi3Config(**c, partial_rotary_factor=0.5, original_max_position_embeddings=32, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                        "short_factor": [1.0, 1.3], "long_factor": [2.5, 7.0]}),
        ),
        # Gemma 2: GeGLU, scaled embeddings, four norms per layer, a window of 8 on layer 0,
        # scores and logits soft-capped (caps small enough to bite on these logits), and a
        # query_pre_attn_scalar other than the head size.
        "gemma2": (
            Gemma2ForCausalLM,
            Gemma2Config(**c, head_dim=16, sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                         final_logit_softcapping=3.0, tie_word_embeddings=True),
        ),
        # Gemma 3: six layers (five local with window 8, one global), q/k norms, the local
        # layers' RoPE base 10⁴ and the global one 10⁶ linearly scaled by 2.
        "gemma3": (
            Gemma3ForCausalLM,
            Gemma3TextConfig(**{**c, "num_hidden_layers": 6}, head_dim=16, sliding_window=8, query_pre_attn_scalar=20,
                             tie_word_embeddings=True,
                             rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                                              "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
        ),
    }


def randomise(model, seed):
    """Weights larger than transformers' 0.02-std init, so logits spread over several units and
    a wrong detail shows; norms away from 1 so a missing norm weight shows too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or ".ln_" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    model.tie_weights()


def sequences(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in LENGTHS]


# Fixtures whose expected.json also holds a greedy continuation (GREEDY_TOKENS tokens after
# the first sequence's first 5 tokens, transformers' `generate` without sampling).
GREEDY = {"mistral", "mixtral", "qwen3-moe", "qwen2-moe", "phi3", "gemma2", "gemma3"}
GREEDY_TOKENS = 24


def write_expected(out, model, seqs, greedy=False):
    vocab = model.config.vocab_size
    rows = []
    with torch.no_grad():
        for ids in seqs:
            logits = model(torch.tensor([ids])).logits[0].float()
            assert logits.shape == (len(ids), vocab)
            rows.append(logits)
    flat = torch.cat(rows).flatten().tolist()
    with open(os.path.join(out, "logits.f32"), "wb") as f:
        f.write(struct.pack(f"<{len(flat)}f", *flat))
    expected = {"vocab_size": vocab, "sequences": seqs, "logits": "logits.f32"}
    if greedy:
        prompt = seqs[0][:5]
        with torch.no_grad():
            ids = model.generate(
                torch.tensor([prompt]), max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, do_sample=False,
                eos_token_id=None, pad_token_id=0,
            )[0].tolist()
        expected["greedy"] = {"prompt": prompt, "tokens": ids[len(prompt):]}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


def build(name, cls, config, tok, seed):
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(seed)
    # Gemma 2's attention soft-capping exists only in the eager implementation (SDPA skips it).
    if name == "gemma2":
        config._attn_implementation = "eager"
    model = cls(config).float().eval()
    randomise(model, seed)
    model.save_pretrained(out)
    save_tokenizer(tok, out, CHATML)
    seqs = sequences(config.vocab_size, seed)
    write_expected(out, model, seqs, greedy=name in GREEDY)
    return model, seqs


# ---------------------------------------------------------------------------------------------
# Baichuan: no transformers class. The 7B models are LLaMA with q, k, v fused into W_pack (and
# Baichuan2's NormHead); the 13B models replace RoPE by ALiBi, computed below from the released
# modeling code's equations with bloom's ALiBi builder (the same slopes, notes §1.4).

BAICHUAN = {
    # name: (class in config.json, ALiBi?, NormHead?, explicit keys written to config.json)
    "baichuan-7b": ("BaiChuanForCausalLM", False, False, {}),
    "baichuan2-7b": ("BaichuanForCausalLM", False, True, {"position_embedding": "rope", "norm_head": True}),
    "baichuan-13b": ("BaichuanForCausalLM", True, False, {}),
    "baichuan2-13b": ("BaichuanForCausalLM", True, True, {"norm_head": True}),
}


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def baichuan_alibi_logits(sd, cfg, ids, norm_head):
    """Baichuan-13B / Baichuan2-13B forward pass (modeling_baichuan.py), float32."""
    h, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["rms_norm_eps"]
    hd, t = h // nh, len(ids)
    x = sd["model.embed_tokens.weight"][torch.tensor(ids)]
    # bloom's builder gives slope_h · j for key position j, shape [heads, 1, t].
    alibi = build_alibi_tensor(torch.ones(1, t), nh, torch.float32).view(nh, 1, t)
    mask = torch.full((t, t), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = rms_norm(x, sd[p + "input_layernorm.weight"], eps)
        q, k, v = (a @ sd[p + "self_attn.W_pack.weight"].T).split(h, dim=-1)
        q, k, v = (m.view(t, nh, hd).transpose(0, 1) for m in (q, k, v))
        scores = q @ k.transpose(1, 2) / hd**0.5 + alibi + mask
        o = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(t, h)
        x = x + o @ sd[p + "self_attn.o_proj.weight"].T
        m = rms_norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        gate, up = m @ sd[p + "mlp.gate_proj.weight"].T, m @ sd[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, sd["model.norm.weight"], eps)
    head = sd["lm_head.weight"]
    if norm_head:
        head = F.normalize(head, dim=1)
    return x @ head.T


def build_baichuan(name, tok, vocab, seed):
    cls_name, alibi, norm_head, extra = BAICHUAN[name]
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    c = {**common(vocab), "num_key_value_heads": 4, "tie_word_embeddings": False}
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(LlamaConfig(**c, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})).float().eval()
    randomise(llama, seed)
    sd = {}
    for key, value in llama.state_dict().items():
        if ".self_attn.k_proj" in key or ".self_attn.v_proj" in key:
            continue
        if ".self_attn.q_proj" in key:
            p = key.split("self_attn.")[0] + "self_attn."
            value = torch.cat([llama.state_dict()[p + f"{n}_proj.weight"] for n in "qkv"])
            key = p + "W_pack.weight"
        sd[key] = value.contiguous().clone()
    config = {
        "architectures": [cls_name],
        "model_type": "baichuan",
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "vocab_size": vocab,
        "rms_norm_eps": c["rms_norm_eps"],
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        ("model_max_length" if alibi else "max_position_embeddings"): 128,
        **extra,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    save_file(sd, os.path.join(out, "model.safetensors"))
    save_tokenizer(tok, out, CHATML)
    seqs = sequences(vocab, seed)
    rows = []
    with torch.no_grad():
        if alibi:
            rows = [baichuan_alibi_logits(sd, config, ids, norm_head) for ids in seqs]
        else:
            if norm_head:
                llama.lm_head.weight.copy_(F.normalize(llama.lm_head.weight, dim=1))
            rows = [llama(torch.tensor([ids])).logits[0] for ids in seqs]
    flat = torch.cat(rows).flatten().tolist()
    with open(os.path.join(out, "logits.f32"), "wb") as f:
        f.write(struct.pack(f"<{len(flat)}f", *flat))
    expected = {"vocab_size": vocab, "sequences": seqs, "logits": "logits.f32"}
    if greedy:
        prompt = seqs[0][:5]
        with torch.no_grad():
            ids = model.generate(
                torch.tensor([prompt]), max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, do_sample=False,
                eos_token_id=None, pad_token_id=0,
            )[0].tolist()
        expected["greedy"] = {"prompt": prompt, "tokens": ids[len(prompt):]}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"{name}: {sum(v.numel() for v in sd.values())} parameters")


# ---------------------------------------------------------------------------------------------
# Qwen v1 (QWenLMHeadModel, trust_remote_code): the forward pass written from modeling_qwen.py,
# with its dynamic NTK base and logn query scaling past seq_length. Checked against
# Qwen2ForCausalLM (the same computation within seq_length) before it is used.

QWEN1_SEQ_LENGTH = 16


def qwen1_logits(sd, cfg, ids):
    h, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_epsilon"]
    hd, t, seq_length = cfg["kv_channels"], len(ids), cfg["seq_length"]
    # Dynamic NTK, as at prefill (no cache): alpha from the prompt length.
    context_value = math.log(t / seq_length, 2) + 1
    alpha = max(2 ** math.ceil(context_value) - 1, 1)
    base = cfg["rotary_emb_base"] * alpha ** (hd / (hd - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(t).float(), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rotate(x):  # x: [heads, t, hd], rotate_half
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    logn = torch.tensor([math.log(i, seq_length) if i > seq_length else 1.0 for i in range(1, t + 1)])
    mask = torch.full((t, t), float("-inf")).triu(1)
    x = sd["transformer.wte.weight"][torch.tensor(ids)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        a = rms_norm(x, sd[p + "ln_1.weight"], eps)
        qkv = a @ sd[p + "attn.c_attn.weight"].T + sd[p + "attn.c_attn.bias"]
        q, k, v = (m.view(t, nh, hd).transpose(0, 1) for m in qkv.split(h, dim=-1))
        q, k = rotate(q), rotate(k)
        q = q * logn.view(1, t, 1)
        scores = q @ k.transpose(1, 2) / hd**0.5 + mask
        o = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(t, h)
        x = x + o @ sd[p + "attn.c_proj.weight"].T
        m = rms_norm(x, sd[p + "ln_2.weight"], eps)
        x = x + ((m @ sd[p + "mlp.w1.weight"].T) * F.silu(m @ sd[p + "mlp.w2.weight"].T)) @ sd[p + "mlp.c_proj.weight"].T
    x = rms_norm(x, sd["transformer.ln_f.weight"], eps)
    return x @ sd["lm_head.weight"].T


def build_qwen1(tok, vocab, seed):
    out = os.path.join(ROOT, "qwen1")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    c = common(vocab)
    # Qwen2 with full multi-head attention is Qwen v1 within seq_length.
    qwen2 = Qwen2ForCausalLM(
        Qwen2Config(**{**c, "num_key_value_heads": 4}, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    ).float().eval()
    randomise(qwen2, seed)
    q2 = qwen2.state_dict()
    sd = {"transformer.wte.weight": q2["model.embed_tokens.weight"], "transformer.ln_f.weight": q2["model.norm.weight"], "lm_head.weight": q2["lm_head.weight"]}
    for i in range(c["num_hidden_layers"]):
        a, b = f"model.layers.{i}.", f"transformer.h.{i}."
        sd[b + "ln_1.weight"] = q2[a + "input_layernorm.weight"]
        sd[b + "attn.c_attn.weight"] = torch.cat([q2[a + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        sd[b + "attn.c_attn.bias"] = torch.cat([q2[a + f"self_attn.{n}_proj.bias"] for n in "qkv"])
        sd[b + "attn.c_proj.weight"] = q2[a + "self_attn.o_proj.weight"]
        sd[b + "ln_2.weight"] = q2[a + "post_attention_layernorm.weight"]
        sd[b + "mlp.w2.weight"] = q2[a + "mlp.gate_proj.weight"]
        sd[b + "mlp.w1.weight"] = q2[a + "mlp.up_proj.weight"]
        sd[b + "mlp.c_proj.weight"] = q2[a + "mlp.down_proj.weight"]
    sd = {k: v.contiguous().clone() for k, v in sd.items()}
    config = {
        "architectures": ["QWenLMHeadModel"],
        "model_type": "qwen",
        "hidden_size": c["hidden_size"],
        "intermediate_size": 2 * c["intermediate_size"],
        "num_attention_heads": c["num_attention_heads"],
        "num_hidden_layers": c["num_hidden_layers"],
        "kv_channels": c["hidden_size"] // c["num_attention_heads"],
        "layer_norm_epsilon": c["rms_norm_eps"],
        "max_position_embeddings": 128,
        "seq_length": QWEN1_SEQ_LENGTH,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "use_dynamic_ntk": True,
        "use_logn_attn": True,
        "no_bias": True,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }
    seqs = sequences(vocab, seed)
    with torch.no_grad():
        # Within seq_length the two must agree.
        short = seqs[0][:QWEN1_SEQ_LENGTH]
        diff = (qwen1_logits(sd, config, short) - qwen2(torch.tensor([short])).logits[0]).abs().max().item()
        assert diff < 1e-5, f"Qwen v1 reference differs from Qwen2 within seq_length by {diff}"
        rows = [qwen1_logits(sd, config, ids) for ids in seqs]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    save_file(sd, os.path.join(out, "model.safetensors"))
    save_tokenizer(tok, out, CHATML)
    flat = torch.cat(rows).flatten().tolist()
    with open(os.path.join(out, "logits.f32"), "wb") as f:
        f.write(struct.pack(f"<{len(flat)}f", *flat))
    expected = {"vocab_size": vocab, "sequences": seqs, "logits": "logits.f32"}
    if greedy:
        prompt = seqs[0][:5]
        with torch.no_grad():
            ids = model.generate(
                torch.tensor([prompt]), max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, do_sample=False,
                eos_token_id=None, pad_token_id=0,
            )[0].tolist()
        expected["greedy"] = {"prompt": prompt, "tokens": ids[len(prompt):]}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(f"qwen1: {sum(v.numel() for v in sd.values())} parameters (reference = Qwen2 within seq_length: {diff:.1e})")


# ---------------------------------------------------------------------------------------------
# A small LLaMA trained briefly on the GPL-3 text (first 80%), so that perplexity on the held-out
# rest means something and quantization can be judged by it. Rows of 256 and 512 values let
# Q4_K quantize every matrix. Stored in bf16 (half the size); the reference logits are computed
# in float32 from those bf16 weights.

TRAIN_TEXT = "/usr/share/common-licenses/GPL-3"


def build_trained(tok, vocab, seed):
    out = os.path.join(ROOT, "llama-trained")
    shutil.rmtree(out, ignore_errors=True)
    text = open(TRAIN_TEXT).read()
    cut = int(len(text) * 0.8)
    train_ids = tok.encode(text[:cut]).ids
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 3,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    data = torch.tensor(train_ids)
    g = torch.Generator().manual_seed(seed)
    ctx, batch = 128, 16
    for step in range(400):
        starts = torch.randint(0, len(data) - ctx - 1, (batch,), generator=g)
        x = torch.stack([data[i : i + ctx] for i in starts])
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = model.to(torch.bfloat16).eval()
    model.save_pretrained(out)
    save_tokenizer(tok, out, CHATML)
    with open(os.path.join(out, "heldout.txt"), "w") as f:
        f.write(text[cut:])
    # The reference reloads the saved bf16 weights as float32: converting the trained module
    # back and forth would also round its RoPE frequency buffer to bf16.
    model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    seqs = sequences(vocab, seed)
    write_expected(out, model, seqs)
    print(f"llama-trained: {sum(p.numel() for p in model.parameters())} parameters, final training loss {loss.item():.3f}")


# ---------------------------------------------------------------------------------------------
# ChatGLM2/3 and GLM-4 (THUDM's ChatGLMModel v2): transformers' GlmForCausalLM computes the same
# thing (notes §5); the fixtures are saved under THUDM's names and config keys, the reference
# comes from the Glm model. The INT8/INT4 variants are quantized the ChatGLM way
# (quantization.py: one f16 scale per output row, int8 values, INT4 as nibbles with the even
# element high) and their reference uses the dequantized weights.

GLM = {
    # name: (rope_ratio, quantization_bit, saved with transformers' own names?)
    "chatglm2": (1.0, 0, False),
    "glm4": (500.0, 0, False),
    "glm-hf": (1.0, 0, True),
    "chatglm2-int8": (1.0, 8, False),
    "chatglm2-int4": (1.0, 4, False),
    # ChatGLM3-6B: ChatGLM2's architecture (its tokenizer and chat format differ).
    "chatglm3": (1.0, 0, False),
}


def chatglm_quantize(w, bits):
    """(int8 tensor as stored, f16 scales, dequantized f32 weight)."""
    top = 2 ** (bits - 1) - 1
    scale = (w.abs().max(dim=1).values / top).half()
    q = torch.round(w / scale.float()[:, None]).clamp(-top, top).to(torch.int8)
    deq = q.float() * scale.float()[:, None]
    if bits == 4:
        q = ((q[:, 0::2] << 4) | (q[:, 1::2] & 0xF)).to(torch.int8)
    return q, scale, deq


def build_glm(name, tok, vocab, seed):
    rope_ratio, bits, native = GLM[name]
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    h, nh, groups, hd, ffn = 32, 8, 2, 4, 48
    config = GlmConfig(
        vocab_size=vocab, hidden_size=h, intermediate_size=ffn, num_hidden_layers=2, num_attention_heads=nh,
        num_key_value_heads=groups, head_dim=hd, max_position_embeddings=128, rms_norm_eps=1e-5,
        attention_bias=True, tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=VOCAB - 1,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * rope_ratio, "partial_rotary_factor": 0.5},
    )
    torch.manual_seed(seed)
    model = GlmForCausalLM(config).float().eval()
    randomise(model, seed)
    seqs = sequences(vocab, seed)
    if native:
        model.save_pretrained(out)
        save_tokenizer(tok, out, CHATML)
        write_expected(out, model, seqs)
        print(f"{name}: transformers names")
        return
    os.makedirs(out)
    g = model.state_dict()
    sd = {
        "transformer.embedding.word_embeddings.weight": g["model.embed_tokens.weight"],
        "transformer.encoder.final_layernorm.weight": g["model.norm.weight"],
        "transformer.output_layer.weight": g["lm_head.weight"],
    }
    for i in range(config.num_hidden_layers):
        a, b = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        sd[b + "input_layernorm.weight"] = g[a + "input_layernorm.weight"]
        sd[b + "post_attention_layernorm.weight"] = g[a + "post_attention_layernorm.weight"]
        sd[b + "self_attention.query_key_value.weight"] = torch.cat([g[a + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        sd[b + "self_attention.query_key_value.bias"] = torch.cat([g[a + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        sd[b + "self_attention.dense.weight"] = g[a + "self_attn.o_proj.weight"]
        sd[b + "mlp.dense_h_to_4h.weight"] = g[a + "mlp.gate_up_proj.weight"]
        sd[b + "mlp.dense_4h_to_h.weight"] = g[a + "mlp.down_proj.weight"]
    if bits:
        for i in range(config.num_hidden_layers):
            a, b = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
            for key, targets in [
                ("self_attention.query_key_value", ["q_proj", "k_proj", "v_proj"]),
                ("self_attention.dense", ["o_proj"]),
                ("mlp.dense_h_to_4h", None),
                ("mlp.dense_4h_to_h", None),
            ]:
                q, scale, deq = chatglm_quantize(sd[b + key + ".weight"], bits)
                sd[b + key + ".weight"], sd[b + key + ".weight_scale"] = q, scale
                # The reference runs on the dequantized weights.
                with torch.no_grad():
                    if key == "self_attention.query_key_value":
                        sizes = [nh * hd, groups * hd, groups * hd]
                        for t, part in zip(targets, deq.split(sizes)):
                            model.model.layers[i].self_attn.get_submodule(t).weight.copy_(part)
                    elif key == "self_attention.dense":
                        model.model.layers[i].self_attn.o_proj.weight.copy_(deq)
                    elif key == "mlp.dense_h_to_4h":
                        model.model.layers[i].mlp.gate_up_proj.weight.copy_(deq)
                    else:
                        model.model.layers[i].mlp.down_proj.weight.copy_(deq)
    cfg = {
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "hidden_size": h,
        "num_layers": config.num_hidden_layers,
        "num_attention_heads": nh,
        "kv_channels": hd,
        "multi_query_attention": True,
        "multi_query_group_num": groups,
        "ffn_hidden_size": ffn,
        "padded_vocab_size": vocab,
        "layernorm_epsilon": 1e-5,
        "rmsnorm": True,
        "add_qkv_bias": True,
        "add_bias_linear": False,
        "apply_residual_connection_post_layernorm": False,
        "post_layer_norm": True,
        "original_rope": True,
        "seq_length": 128,
        "rope_ratio": rope_ratio,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    if bits:
        cfg["quantization_bit"] = bits
    if name == "chatglm3":
        cfg["_name_or_path"] = "THUDM/chatglm3-6b"
        cfg["seq_length"] = 8192
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, os.path.join(out, "model.safetensors"))
    save_tokenizer(tok, out, CHATML)
    write_expected(out, model, seqs)
    print(f"{name}: THUDM names" + (f", INT{bits}" if bits else ""))


# ---------------------------------------------------------------------------------------------
# ChatGLM-6B (the first GLM architecture): no transformers class; the forward pass below is
# written from THUDM's modeling_chatglm.py (notes §4): head-interleaved QKV, 2-D rotary on the
# halves of each head (position ids, block ids), prefix-LM mask, α-scaled residuals over the
# normalised input, GELU. Rotary tables in float32 (the released code builds them in fp16).
# The fixture's own tokenizer has GLM's special tokens.
# Checked against THUDM's released code by scripts/check_chatglm6b_reference.py: 1.2e-6 once two
# choices of this reference are applied to it, α = √(2·num_layers) from the config (THUDM's
# GLMBlock never receives num_layers and always uses √56, the same for the real 28-layer model)
# and float32 rotary frequencies; the released code as is differs by 2.5 here (α) and by 4e-5
# with α alone adjusted (fp16 frequencies).

GLM_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"]


def glm_layout(ids, mask_id, gmask_id, sop_id):
    sop = ids.index(sop_id) if sop_id in ids else None
    context = ids if sop is None else ids[:sop]
    mask_pos = context.index(mask_id) if mask_id in context else (context.index(gmask_id) if gmask_id in context else sop)
    pos = [t if sop is None or t < sop else mask_pos for t in range(len(ids))]
    block = [0 if sop is None or t < sop else t - sop + 1 for t in range(len(ids))]
    return sop or 0, pos, block


def glm_logits(sd, cfg, ids):
    h, nh, layers, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_layers"], cfg["layernorm_epsilon"]
    hd, t = h // nh, len(ids)
    alpha = (2 * layers) ** 0.5
    prefix, pos, block = glm_layout(ids, cfg["mask_token_id"], cfg["gmask_token_id"], cfg["bos_token_id"])
    dim = hd // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))

    def rot(x, p):  # x: [heads, t, dim], rotate_half with angles p·inv_freq
        f = torch.outer(torch.tensor(p).float(), inv_freq)
        emb = torch.cat([f, f], dim=-1)
        x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
        return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()

    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    visible = (j <= i) | (j < prefix)
    x = sd["transformer.word_embeddings.weight"][torch.tensor(ids)]
    ln = lambda v, n: F.layer_norm(v, (h,), sd[n + ".weight"], sd[n + ".bias"], eps)
    for l in range(layers):
        p = f"transformer.layers.{l}."
        a = ln(x, p + "input_layernorm")
        qkv = (a @ sd[p + "attention.query_key_value.weight"].T + sd[p + "attention.query_key_value.bias"]).view(t, nh, 3 * hd)
        q, k, v = (m.transpose(0, 1) for m in qkv.split(hd, dim=-1))
        q = torch.cat([rot(q[..., :dim], pos), rot(q[..., dim:], block)], dim=-1)
        k = torch.cat([rot(k[..., :dim], pos), rot(k[..., dim:], block)], dim=-1)
        scores = (q @ k.transpose(1, 2) / hd**0.5).masked_fill(~visible, -10000.0)
        o = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(t, h)
        o = o @ sd[p + "attention.dense.weight"].T + sd[p + "attention.dense.bias"]
        h1 = a * alpha + o
        m = ln(h1, p + "post_attention_layernorm")
        up = F.gelu(m @ sd[p + "mlp.dense_h_to_4h.weight"].T + sd[p + "mlp.dense_h_to_4h.bias"], approximate="tanh")
        x = m * alpha + up @ sd[p + "mlp.dense_4h_to_h.weight"].T + sd[p + "mlp.dense_4h_to_h.bias"]
    x = ln(x, "transformer.final_layernorm")
    return x @ sd["transformer.word_embeddings.weight"].T


def glm_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(GLM_SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens(GLM_SPECIALS)
    return tok


def build_chatglm6b(seed):
    out = os.path.join(ROOT, "chatglm-6b")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tok = glm_tokenizer()
    vocab = tok.get_vocab_size()
    ids = {s: tok.token_to_id(s) for s in GLM_SPECIALS}
    cfg = {
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "hidden_size": 32,
        "inner_hidden_size": 128,
        "num_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": vocab,
        "layernorm_epsilon": 1e-5,
        "max_sequence_length": 128,
        "position_encoding_2d": True,
        "mask_token_id": ids["[MASK]"],
        "gmask_token_id": ids["[gMASK]"],
        "bos_token_id": ids["<sop>"],
        "eos_token_id": ids["<eop>"],
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }
    g = torch.Generator().manual_seed(seed)
    h, inner = cfg["hidden_size"], cfg["inner_hidden_size"]
    shapes = {"transformer.word_embeddings.weight": (vocab, h), "transformer.final_layernorm.weight": (h,), "transformer.final_layernorm.bias": (h,)}
    for l in range(cfg["num_layers"]):
        p = f"transformer.layers.{l}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "input_layernorm.bias": (h,),
            p + "attention.query_key_value.weight": (3 * h, h), p + "attention.query_key_value.bias": (3 * h,),
            p + "attention.dense.weight": (h, h), p + "attention.dense.bias": (h,),
            p + "post_attention_layernorm.weight": (h,), p + "post_attention_layernorm.bias": (h,),
            p + "mlp.dense_h_to_4h.weight": (inner, h), p + "mlp.dense_h_to_4h.bias": (inner,),
            p + "mlp.dense_4h_to_h.weight": (h, inner), p + "mlp.dense_4h_to_h.bias": (h,),
        })
    sd = {}
    for name, shape in shapes.items():
        if len(shape) == 2:
            sd[name] = torch.randn(shape, generator=g) / shape[1] ** 0.5
        elif "layernorm" in name and name.endswith("weight"):
            sd[name] = 1.0 + 0.3 * torch.randn(shape, generator=g)
        else:
            sd[name] = 0.3 * torch.randn(shape, generator=g)
    # Prompts as GLM lays them out: context with [gMASK] (long generation) or [MASK] (a span in
    # the middle), then <sop> and the span; one whose context exceeds a 64-token batch.
    r = lambda n: torch.randint(0, vocab - len(GLM_SPECIALS), (n,), generator=g).tolist()
    seqs = [
        r(10) + [ids["[gMASK]"], ids["<sop>"]] + r(6),
        r(5) + [ids["[MASK]"]] + r(6) + [ids["<sop>"]] + r(5),
        r(70) + [ids["[gMASK]"], ids["<sop>"]] + r(8),
        r(9),  # no GLM tokens at all: plain causal text
    ]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    save_file(sd, os.path.join(out, "model.safetensors"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<sop>", eos_token="<eop>", mask_token="[MASK]")
    fast.save_pretrained(out)
    with torch.no_grad():
        rows = [glm_logits(sd, cfg, s) for s in seqs]
    flat = torch.cat(rows).flatten().tolist()
    with open(os.path.join(out, "logits.f32"), "wb") as f:
        f.write(struct.pack(f"<{len(flat)}f", *flat))
    # Greedy blank infilling, as ChatGLM-6B's generate runs it: the text's tokens, then [gMASK]
    # and <sop>; next tokens by argmax until <eop> or the limit. One difference: with both [MASK]
    # and [gMASK] in the ids, glm_layout takes [MASK]'s position (THUDM's code before its commit
    # 9324de7 "Use gmask in first place"); THUDM's released code takes [gMASK]'s, and gives other
    # tokens for the first case (scripts/check_chatglm6b_reference.py shows both).
    infill = []
    for text in ["The quick brown [MASK] jumps over the lazy dog.", "百模：一个程序，运行一百个模型。"]:
        prompt = tok.encode(text).ids + [ids["[gMASK]"], ids["<sop>"]]
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(8):
                nxt = int(glm_logits(sd, cfg, seq)[-1].argmax())
                seq.append(nxt)
                if nxt == ids["<eop>"]:
                    break
        infill.append({"text": text, "prompt": prompt, "generated": seq[len(prompt):]})
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"vocab_size": vocab, "sequences": seqs, "logits": "logits.f32", "infill": infill}, f, ensure_ascii=False, indent=1)
    print(f"chatglm-6b: {sum(v.numel() for v in sd.values())} parameters")


def main(only):
    tok = train_tokenizer()
    vocab = tok.get_vocab_size()
    os.makedirs(ROOT, exist_ok=True)
    for i, (name, (cls, config)) in enumerate(fixtures(vocab).items()):
        if only and name not in only:
            continue
        model, seqs = build(name, cls, config, tok, seed=1000 + i)
        if name == "llama":
            # The same weights as a PyTorch checkpoint (what older hub repos ship), and as two
            # safetensors shards with an index.
            # Half precision: the weights rounded to f16 and saved so; the reference reloads
            # them as float32.
            out = os.path.join(ROOT, "llama-f16")
            shutil.rmtree(out, ignore_errors=True)
            LlamaForCausalLM.from_pretrained(os.path.join(ROOT, "llama"), dtype=torch.float32).half().save_pretrained(out)
            save_tokenizer(tok, out, CHATML)
            write_expected(out, LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), seqs)
            for variant in ("llama-bin", "llama-sharded"):
                out = os.path.join(ROOT, variant)
                shutil.rmtree(out, ignore_errors=True)
                if variant == "llama-bin":
                    os.makedirs(out)
                    model.config.save_pretrained(out)
                    torch.save(model.state_dict(), os.path.join(out, "pytorch_model.bin"))
                else:
                    model.save_pretrained(out, max_shard_size="60KB")
                save_tokenizer(tok, out, CHATML)
                write_expected(out, model, seqs)
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters")
    for i, name in enumerate(BAICHUAN):
        if not only or name in only:
            build_baichuan(name, tok, vocab, seed=2000 + i)
    if not only or "qwen1" in only:
        build_qwen1(tok, vocab, seed=3000)
    for i, name in enumerate(GLM):
        if not only or name in only:
            build_glm(name, tok, vocab, seed=5000 + i)
    if not only or "chatglm-6b" in only:
        build_chatglm6b(seed=6000)
    if not only or "llama-trained" in only:
        build_trained(tok, vocab, seed=4000)


if __name__ == "__main__":
    main(set(sys.argv[1:]))
