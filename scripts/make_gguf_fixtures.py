#!/usr/bin/env python3
"""Writes tests/fixtures/gguf/*.gguf: tiny GGUF files of the architectures llama.cpp defines
for the seed families, converted from the Hugging Face fixtures of make_hf_fixtures.py the way
llama.cpp's convert_hf_to_gguf.py converts them (same tensor names, the same q/k row
permutation for interleaved RoPE, GPT-2's Conv1D weights transposed and `wte` copied as
`output`, Qwen v1's feed_forward_length counting both MLP halves). Weights stay f32, so the
GGUF model must give the folder's logits (where llama.cpp computes the same thing).

Needs gguf, numpy, safetensors (pip). Run from the repository root after make_hf_fixtures.py.
"""

import json
import math
import os

import gguf
import numpy as np
from safetensors.numpy import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def load(name):
    folder = os.path.join(ROOT, "hf", name)
    return json.load(open(os.path.join(folder, "config.json"))), load_file(os.path.join(folder, "model.safetensors"))


def permute(w, n_head):
    """llama.cpp's LlamaModel.permute: rotate-half rows → interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def writer(name, arch):
    os.makedirs(os.path.join(ROOT, "gguf"), exist_ok=True)
    return gguf.GGUFWriter(os.path.join(ROOT, "gguf", f"{name}.gguf"), arch)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def common_keys(w, cfg, n_ff, context, eps_key="rms_norm_eps"):
    w.add_context_length(context)
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(n_ff)
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_rms_eps(cfg.get(eps_key, 1e-6))


def qwen3():
    cfg, t = load("qwen3")
    w = writer("qwen3", "qwen3")
    common_keys(w, cfg, cfg["intermediate_size"], cfg["max_position_embeddings"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    names = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        for hf, g in names.items():
            w.add_tensor(f"blk.{i}.{g}.weight", t[f"model.layers.{i}.{hf}.weight"])
    w.add_tensor("output_norm.weight", t["model.norm.weight"])
    w.add_tensor("output.weight", t["lm_head.weight"])
    finish(w)


def gpt2():
    cfg, t = load("gpt2")
    w = writer("gpt2", "gpt2")
    h = cfg["n_embd"]
    w.add_context_length(cfg["n_positions"])
    w.add_embedding_length(h)
    w.add_block_count(cfg["n_layer"])
    w.add_feed_forward_length(4 * h)
    w.add_head_count(cfg["n_head"])
    w.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    p = "transformer."
    w.add_tensor("token_embd.weight", t[p + "wte.weight"])
    w.add_tensor("position_embd.weight", t[p + "wpe.weight"])
    for i in range(cfg["n_layer"]):
        b = f"{p}h.{i}."
        for hf, g in [("ln_1", "attn_norm"), ("ln_2", "ffn_norm")]:
            w.add_tensor(f"blk.{i}.{g}.weight", t[b + hf + ".weight"])
            w.add_tensor(f"blk.{i}.{g}.bias", t[b + hf + ".bias"])
        for hf, g in [("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"), ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down")]:
            w.add_tensor(f"blk.{i}.{g}.weight", np.ascontiguousarray(t[b + hf + ".weight"].T))
            w.add_tensor(f"blk.{i}.{g}.bias", t[b + hf + ".bias"])
    w.add_tensor("output_norm.weight", t[p + "ln_f.weight"])
    w.add_tensor("output_norm.bias", t[p + "ln_f.bias"])
    w.add_tensor("output.weight", t[p + "wte.weight"].copy())
    finish(w)


def baichuan7b():
    cfg, t = load("baichuan-7b")
    w = writer("baichuan-7b", "baichuan")
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    common_keys(w, cfg, cfg["intermediate_size"], cfg["max_position_embeddings"])
    w.add_head_count_kv(nh)
    w.add_rope_dimension_count(h // nh)
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        b = f"model.layers.{i}."
        q, k, v = np.split(t[b + "self_attn.W_pack.weight"], 3)
        w.add_tensor(f"blk.{i}.attn_q.weight", np.ascontiguousarray(permute(q, nh)))
        w.add_tensor(f"blk.{i}.attn_k.weight", np.ascontiguousarray(permute(k, nh)))
        w.add_tensor(f"blk.{i}.attn_v.weight", np.ascontiguousarray(v))
        for hf, g in [("input_layernorm", "attn_norm"), ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
                      ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")]:
            w.add_tensor(f"blk.{i}.{g}.weight", t[b + hf + ".weight"])
    w.add_tensor("output_norm.weight", t["model.norm.weight"])
    w.add_tensor("output.weight", t["lm_head.weight"])
    finish(w)


def qwen1():
    cfg, t = load("qwen1")
    w = writer("qwen1", "qwen")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])  # both halves, as the converter writes it
    w.add_head_count(cfg["num_attention_heads"])
    w.add_rope_dimension_count(cfg["kv_channels"])
    w.add_rope_freq_base(cfg["rotary_emb_base"])
    w.add_layer_norm_rms_eps(cfg["layer_norm_epsilon"])
    w.add_tensor("token_embd.weight", t["transformer.wte.weight"])
    for i in range(cfg["num_hidden_layers"]):
        b = f"transformer.h.{i}."
        for hf, g in [("ln_1.weight", "attn_norm.weight"), ("attn.c_attn.weight", "attn_qkv.weight"), ("attn.c_attn.bias", "attn_qkv.bias"),
                      ("attn.c_proj.weight", "attn_output.weight"), ("ln_2.weight", "ffn_norm.weight"), ("mlp.w1.weight", "ffn_up.weight"),
                      ("mlp.w2.weight", "ffn_gate.weight"), ("mlp.c_proj.weight", "ffn_down.weight")]:
            w.add_tensor(f"blk.{i}.{g}", t[b + hf])
    w.add_tensor("output_norm.weight", t["transformer.ln_f.weight"])
    w.add_tensor("output.weight", t["lm_head.weight"])
    finish(w)


def chatglm2():
    cfg, t = load("chatglm2")
    w = writer("chatglm2", "chatglm")
    hd = cfg["kv_channels"]
    w.add_context_length(cfg["seq_length"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_layers"])
    w.add_feed_forward_length(cfg["ffn_hidden_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["multi_query_group_num"])
    w.add_rope_dimension_count(hd // 2)
    w.add_rope_freq_base(10000.0 * cfg["rope_ratio"])
    w.add_layer_norm_rms_eps(cfg["layernorm_epsilon"])
    p = "transformer."
    w.add_tensor("token_embd.weight", t[p + "embedding.word_embeddings.weight"])
    for i in range(cfg["num_layers"]):
        b = f"{p}encoder.layers.{i}."
        for hf, g in [("input_layernorm.weight", "attn_norm.weight"), ("self_attention.query_key_value.weight", "attn_qkv.weight"),
                      ("self_attention.query_key_value.bias", "attn_qkv.bias"), ("self_attention.dense.weight", "attn_output.weight"),
                      ("post_attention_layernorm.weight", "ffn_norm.weight"), ("mlp.dense_h_to_4h.weight", "ffn_up.weight"),
                      ("mlp.dense_4h_to_h.weight", "ffn_down.weight")]:
            w.add_tensor(f"blk.{i}.{g}", t[b + hf])
    w.add_tensor("output_norm.weight", t[p + "encoder.final_layernorm.weight"])
    w.add_tensor("output.weight", t[p + "output_layer.weight"])
    finish(w)


ATTENTION = {
    "input_layernorm": "attn_norm", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
}


def layers_common(w, t, cfg, i, permute_heads=None):
    """A layer's attention tensors (q/k permuted for interleaved RoPE when `permute_heads`)."""
    b = f"model.layers.{i}."
    for part, g in [("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v")]:
        x = t[b + f"self_attn.{part}_proj.weight"]
        if permute_heads and part != "v":
            x = np.ascontiguousarray(permute(x, permute_heads[part]))
        w.add_tensor(f"blk.{i}.{g}.weight", x)
        if b + f"self_attn.{part}_proj.bias" in t:
            w.add_tensor(f"blk.{i}.{g}.bias", t[b + f"self_attn.{part}_proj.bias"])
    for hf, g in ATTENTION.items():
        if b + hf + ".weight" in t:
            w.add_tensor(f"blk.{i}.{g}.weight", t[b + hf + ".weight"])


def experts(w, t, i, prefix, names, n):
    """The experts stacked as llama.cpp's converter writes them: ffn_{gate,up,down}_exps of
    shape (n_expert, rows, cols)."""
    for hf, g in names:
        w.add_tensor(f"blk.{i}.ffn_{g}_exps.weight", np.stack([t[f"{prefix}.experts.{e}.{hf}.weight"] for e in range(n)]))


def moe_model(name, arch, permute_rope=False):
    """Mistral, Mixtral, Qwen2-MoE and Qwen3-MoE: LLaMA-style layers, the mixtures' experts
    stacked (llama.cpp's current layout; Mixtral as `llama` with q/k permuted)."""
    cfg, t = load(name)
    w = writer(name, arch)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    common_keys(w, cfg, cfg["intermediate_size"], cfg["max_position_embeddings"])
    w.add_head_count_kv(nkv)
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    if cfg.get("sliding_window"):
        w.add_sliding_window(cfg["sliding_window"])
    n_expert = cfg.get("num_local_experts") or cfg.get("num_experts")
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(cfg["num_experts_per_tok"])
    if "moe_intermediate_size" in cfg:
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if cfg.get("shared_expert_intermediate_size"):
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        layers_common(w, t, cfg, i, {"q": nh, "k": nkv} if permute_rope else None)
        b = f"model.layers.{i}."
        if b + "block_sparse_moe.gate.weight" in t:
            w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", t[b + "block_sparse_moe.gate.weight"])
            experts(w, t, i, b + "block_sparse_moe", [("w1", "gate"), ("w3", "up"), ("w2", "down")], n_expert)
        elif b + "mlp.gate.weight" in t:
            w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", t[b + "mlp.gate.weight"])
            experts(w, t, i, b + "mlp", [("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")], n_expert)
            if b + "mlp.shared_expert.gate_proj.weight" in t:
                for part in ("gate", "up", "down"):
                    w.add_tensor(f"blk.{i}.ffn_{part}_shexp.weight", t[b + f"mlp.shared_expert.{part}_proj.weight"])
                w.add_tensor(f"blk.{i}.ffn_gate_inp_shexp.weight", t[b + "mlp.shared_expert_gate.weight"])
        else:
            for part in ("gate", "up", "down"):
                w.add_tensor(f"blk.{i}.ffn_{part}.weight", t[b + f"mlp.{part}_proj.weight"])
    w.add_tensor("output_norm.weight", t["model.norm.weight"])
    w.add_tensor("output.weight", t["lm_head.weight"])
    finish(w)


def mistral():
    moe_model("mistral", "llama", permute_rope=True)


def mixtral():
    moe_model("mixtral", "llama", permute_rope=True)


def qwen3moe():
    moe_model("qwen3-moe", "qwen3moe")


def qwen2moe():
    moe_model("qwen2-moe", "qwen2moe")


def phi3():
    """Phi-3 as llama.cpp's converter writes it: qkv and gate_up kept fused (attn_qkv, ffn_up),
    LongRoPE's factors as tensors and its attention factor as a key."""
    cfg, t = load("phi3")
    w = writer("phi3", "phi3")
    nh = cfg["num_attention_heads"]
    hd = cfg["hidden_size"] // nh
    rope = cfg["rope_parameters"]
    common_keys(w, cfg, cfg["intermediate_size"], cfg["max_position_embeddings"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_dimension_count(int(hd * cfg["partial_rotary_factor"]))
    w.add_rope_freq_base(rope["rope_theta"])
    orig = cfg["original_max_position_embeddings"]
    w.add_rope_scaling_orig_ctx_len(orig)
    scale = cfg["max_position_embeddings"] / orig
    w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)))
    w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
    w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        b = f"model.layers.{i}."
        for hf, g in [("input_layernorm", "attn_norm"), ("self_attn.qkv_proj", "attn_qkv"), ("self_attn.o_proj", "attn_output"),
                      ("post_attention_layernorm", "ffn_norm"), ("mlp.gate_up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")]:
            w.add_tensor(f"blk.{i}.{g}.weight", t[b + hf + ".weight"])
    w.add_tensor("output_norm.weight", t["model.norm.weight"])
    w.add_tensor("output.weight", t["lm_head.weight"])
    finish(w)


def gemma(name, arch):
    """Gemma 2 and 3 as llama.cpp's converter writes them: every norm weight stored as 1 + w,
    the output tied to the embeddings. `attention.scale` carries the fixtures'
    query_pre_attn_scalar (llama.cpp derives it from the head size)."""
    cfg, t = load(name)
    w = writer(name, arch)
    hd = cfg["head_dim"]
    common_keys(w, cfg, cfg["intermediate_size"], cfg["max_position_embeddings"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_sliding_window(cfg["sliding_window"])
    w.add_attention_scale(cfg["query_pre_attn_scalar"] ** -0.5)
    rope = cfg["rope_parameters"]
    full = rope.get("full_attention", rope)
    w.add_rope_freq_base(full["rope_theta"])
    if full.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full["factor"])
    if cfg.get("attn_logit_softcapping"):
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
    if cfg.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    names = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }
    for i in range(cfg["num_hidden_layers"]):
        for hf, g in names.items():
            key = f"model.layers.{i}.{hf}.weight"
            if key in t:
                x = t[key]
                w.add_tensor(f"blk.{i}.{g}.weight", x + 1 if g.endswith("norm") else x)
    w.add_tensor("output_norm.weight", t["model.norm.weight"] + 1)
    finish(w)


def gemma2():
    gemma("gemma2", "gemma2")


def gemma3():
    gemma("gemma3", "gemma3")


if __name__ == "__main__":
    for make in (qwen3, gpt2, baichuan7b, qwen1, chatglm2, mistral, mixtral, qwen3moe, qwen2moe, phi3, gemma2, gemma3):
        make()
    print(sorted(os.listdir(os.path.join(ROOT, "gguf"))))
