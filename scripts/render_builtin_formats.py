#!/usr/bin/env python3
"""Render baimo's built-in chat formats with each model family's own released code.

baimo's built-in formats (crates/chat/src/builtin.rs) are for models whose prompt is built in
Python rather than by a chat template. This script calls that Python (the original files,
unmodified, imported from a directory outside the repository) on the conversations of
crates/chat/tests/builtin_formats.rs and writes what it builds to
crates/chat/tests/fixtures/builtin_reference.json, which the test compares baimo with.

Usage (from the repository root; nothing here goes into the repository but the JSON):

    python3 -m venv /tmp/venv-builtin
    /tmp/venv-builtin/bin/pip install torch --index-url <the CPU wheel index>   # or any torch
    /tmp/venv-builtin/bin/pip install transformers==4.46.3 sentencepiece jinja2 numpy
    # save each file of SOURCES below as SOURCES_DIR/<name> (see "name"), then:
    /tmp/venv-builtin/bin/python scripts/render_builtin_formats.py SOURCES_DIR \\
        > crates/chat/tests/fixtures/builtin_reference.json

The script checks every file's sha256 against SOURCES and refuses a different file. To fill
SOURCES_DIR: for a GitHub source, `git -C <clone of repo> show <commit>:<path> > SOURCES_DIR/<name>`
(the Hugging Face model repositories are read from GitHub repositories that mirror their git
history, so the commit is the Hugging Face revision); for the PyPI ones,
`pip download --no-deps --only-binary :all: transformers==4.42.4` (the wheel itself is the
source) and `pip download --no-deps --no-binary :all: llama_cpp_python==0.3.36`, then take
`vendor/llama.cpp/tests/test-chat-template.cpp` out of the sdist. Keep them out of the repository.

How each format's reference is made (the shims are the smallest that let the original function
run without weights; each is described where it is defined):

* llama-2: Meta's `Llama.chat_completion` (llama/generation.py), called with a stub `self`
  whose tokenizer keeps text and whose `generate` records the prompt and stops.
* llama-3: Meta's `ChatFormat.encode_dialog_prompt` (llama3 llama/tokenizer.py) over a stub
  tokenizer that keeps text.
* chatml: transformers' ChatML template (`PreTrainedTokenizerBase.default_chat_template`,
  transformers 4.42.4), rendered by Jinja2 as transformers renders templates.
* chatml-qwen1: Qwen's `make_context` (qwen_generation_utils.py), which returns the prompt text
  itself; the default system message is the default of `QWenLMHeadModel.chat(system=...)`.
* baichuan: Baichuan 2's `build_chat_input` (generation_utils.py) with real torch and Baichuan 2's
  real SentencePiece model; the token ids are turned back into text (ids 195/196 spelled as the
  vocabulary spells them) and re-encoded to check the text gives the same ids.
* chatglm: ChatGLM-6B's `ChatGLMForConditionalGeneration.chat` (modeling_chatglm.py), stopped at
  the tokenizer call, then its tokenizer's `build_inputs_with_special_tokens` ([gMASK], <sop>).
* chatglm2: ChatGLM2-6B's tokenizer `build_prompt` and `build_inputs_with_special_tokens`
  ([gMASK]sop).
* chatglm3: ChatGLM3-6B's tokenizer `build_chat_input` (the role tokens, metadata line and
  message of each turn); the text spelling is checked against ChatGLM3's own chat template
  (THUDM/chatglm3-6b, as quoted in llama.cpp's test-chat-template.cpp).
* glm4: glm-4-9b-chat's chat template (as quoted from its tokenizer_config.json in the Berkeley
  function-calling leaderboard's GLM handler), rendered by Jinja2 as transformers does.
* plain: no model code defines it (GPT-2 and other base models have no chat format); the
  expected text is baimo's documented definition (the messages' text, one paragraph each),
  and the fixture also records, for comparison, transformers 4.42.4's GPT-2 default template.

A conversation the original code cannot express (a system message for ChatGLM-6B/ChatGLM2, a
conversation ending with the answer for code that always ends with the user's question) is
recorded as "unsupported", with the reason; the test compares only what has a reference.
"""

import argparse
import ast
import contextlib
import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
import types
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import render_chat_templates  # noqa: E402  (transformers' Jinja environment)

# Where each original file comes from. `name` is the file's name in SOURCES_DIR.
SOURCES = {
    "llama2_generation": {
        "name": "llama2.generation.py",
        "repo": "meta-llama/llama", "commit": "689c7f261b9c5514636ecc3c5fefefcbb3e6eed7",
        "path": "llama/generation.py",
        "sha256": "d01c98b1931eb197ed654767c54f8e77c52cb406e4339d92f9cf2dfe18ecc240",
    },
    "llama3_tokenizer": {
        "name": "llama3.tokenizer.py",
        "repo": "meta-llama/llama3", "commit": "a0940f9cf7065d45bb6675660f80d305c041a754",
        "path": "llama/tokenizer.py",
        "sha256": "e29045cbbae33e07bb1ad92bd8249032c4a802f7d9676f115c19aeebd114f9cd",
    },
    "transformers_wheel": {
        "name": "transformers-4.42.4-py3-none-any.whl",
        "repo": "PyPI transformers 4.42.4 (wheel)", "commit": "4.42.4",
        "path": "transformers/tokenization_utils_base.py, transformers/models/gpt2/tokenization_gpt2.py",
        "sha256": "6d59061392d0f1da312af29c962df9017ff3c0108c681a56d1bc981004d16d24",
    },
    "qwen_generation_utils": {
        "name": "qwen-7b-chat.qwen_generation_utils.py",
        "repo": "undefdev/Qwen-7B-Chat (git mirror of the Hugging Face repo Qwen/Qwen-7B-Chat)",
        "commit": "04df5dd57b94b9ed20498ee42063ea9e164f98b3",
        "path": "qwen_generation_utils.py",
        "sha256": "5e820b80d7e27ab2186f09d948c1993eb946aa98a2c8288d3d26f46db9f4ca80",
    },
    "qwen_modeling": {
        "name": "qwen-7b-chat.modeling_qwen.py",
        "repo": "undefdev/Qwen-7B-Chat (git mirror of the Hugging Face repo Qwen/Qwen-7B-Chat)",
        "commit": "04df5dd57b94b9ed20498ee42063ea9e164f98b3",
        "path": "modeling_qwen.py",
        "sha256": "a6db24b00c69bbc21a7eac8236b7349706888005edb0f3dd39e08c383f133194",
    },
    "baichuan2_generation_utils": {
        "name": "baichuan2-7b-chat.generation_utils.py",
        "repo": "haotian-liu/LLaVA (Baichuan2-7B-Chat's remote code, copied in unmodified)",
        "commit": "200398e224e8a4633a1a68fa49b0b8fa21db6c51",
        "path": "llava/model/language_model/baichuan/generation_utils.py",
        "sha256": "a4067a97fadd3a4be73c886cb9cd1ab9f3e028d500ff51ae48d2c82e745ea07c",
    },
    "baichuan2_tokenizer_model": {
        "name": "baichuan2-7b-chat.tokenizer.model",
        "repo": "haotian-liu/LLaVA (Baichuan2-7B-Chat's tokenizer.model)",
        "commit": "200398e224e8a4633a1a68fa49b0b8fa21db6c51",
        "path": "llava/model/language_model/baichuan/tokenizer.model",
        "sha256": "79452955be6b419a65984273a9f08af86042e1c2a75ee3ba989cbf620a133cc2",
    },
    "baichuan2_generation_config": {
        "name": "baichuan2.generation_config.json",
        "repo": "DSXiangLi/LongBaichuan (Baichuan2-7B-Chat's generation_config.json)",
        "commit": "f356a3ec9d0f7bd614f8ec916b8124d85bb8529b",
        "path": "generation_config.json",
        "sha256": "d2bdf28fd6ca8a9ee371c26af59ed11d7d66450bf163a8faec89695e0dbb520a",
    },
    "baichuan2_config": {
        "name": "baichuan2.config.json",
        "repo": "zhenhua32/Baichuan2 (a ModelScope copy of Baichuan 2's model files)",
        "commit": "c79b58ebd7e3f7aae4b46ecf509d94953d0ecd2f",
        "path": "model/config.json",
        "sha256": "19ee5a80e05e2303263e90fe49205077046c4fafa3f833f4817864876228d521",
    },
    "chatglm_modeling": {
        "name": "chatglm-6b.modeling_chatglm.py",
        "repo": "greensheng/chatglm-6b (git mirror of the Hugging Face repo THUDM/chatglm-6b)",
        "commit": "8b7d33596d18c5e83e2da052d05ca4db02e60620",
        "path": "modeling_chatglm.py",
        "sha256": "e77d33a0354ab0948d54f953708d09baa7345966f2fb73df749e8fe5352863eb",
    },
    "chatglm_configuration": {
        "name": "chatglm-6b.configuration_chatglm.py",
        "repo": "greensheng/chatglm-6b (git mirror of the Hugging Face repo THUDM/chatglm-6b)",
        "commit": "8b7d33596d18c5e83e2da052d05ca4db02e60620",
        "path": "configuration_chatglm.py",
        "sha256": "942977b9f878be607345860a88d2fc74a75256e91d0e14ef40391818352c359b",
    },
    "chatglm_tokenization": {
        "name": "chatglm-6b.tokenization_chatglm.py",
        "repo": "greensheng/chatglm-6b (git mirror of the Hugging Face repo THUDM/chatglm-6b)",
        "commit": "8b7d33596d18c5e83e2da052d05ca4db02e60620",
        "path": "tokenization_chatglm.py",
        "sha256": "b52a2d87f05cd3919ba6401e6be1a82b99cd91609fbc562fea407f000dc9f873",
    },
    "chatglm2_tokenization": {
        "name": "chatglm2-6b.tokenization_chatglm.py",
        "repo": "syjjhl/chatglm2-6b (git mirror of the Hugging Face repo THUDM/chatglm2-6b)",
        "commit": "8fd7fba285f7171d3ae7ea3b35c53b6340501ed1",
        "path": "tokenization_chatglm.py",
        "sha256": "b7441a9f557de4292720baec6dc4d1d55bdaca99d26f5501c27afe86825da67c",
    },
    "chatglm2_modeling": {
        "name": "chatglm2-6b.modeling_chatglm.py",
        "repo": "syjjhl/chatglm2-6b (git mirror of the Hugging Face repo THUDM/chatglm2-6b)",
        "commit": "8fd7fba285f7171d3ae7ea3b35c53b6340501ed1",
        "path": "modeling_chatglm.py",
        "sha256": "fe04c69d36dd1dba8370cc68e0ccf861e07d402af6fb039b500cd7d784cfc142",
        "role": "read only: shows build_inputs = tokenizer.build_prompt + tokenizer([prompt])",
    },
    "chatglm3_tokenization": {
        "name": "chatglm3-6b.tokenization_chatglm.py",
        "repo": "czk1997/chatglm3-copy (git mirror of the Hugging Face repo THUDM/chatglm3-6b)",
        "commit": "456aa875cf1f46623006edaa23103774ea9c0eae",
        "path": "tokenization_chatglm.py",
        "sha256": "f3e7e26af20b222d107f888a3db305a1a25ea74c16952d36257e0e606d1780f6",
    },
    "chatglm3_tool_demo": {
        "name": "chatglm3.cli_demo_tool.py",
        "repo": "THUDM/ChatGLM3", "commit": "732294f42e2625509000daa87a9c3748d0bbb957",
        "path": "tools_using_demo/cli_demo_tool.py",
        "sha256": "b8aeb8099aff13d7bce85d0cdbbafbfa7845310f6286ebc320ad1465db108f8b",
        "role": "the system message that carries the tools (read with ast, not run)",
    },
    "llama_cpp_chat_template_tests": {
        "name": "llama.cpp.test-chat-template.cpp",
        "repo": "PyPI llama_cpp_python 0.3.36 sdist (sha256 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e), "
                "its vendor/llama.cpp",
        "commit": "llama.cpp b11312 (0c1e57098)",
        "path": "vendor/llama.cpp/tests/test-chat-template.cpp",
        "sha256": "7a790605222858ca5d5a2de94de27115d693e2c293638c392b7726a44ad3451f",
        "role": "ChatGLM3's chat template (THUDM/chatglm3-6b), to check the chatglm3 text spelling",
    },
    "glm4_chat_template": {
        "name": "gorilla.glm.py",
        "repo": "ShishirPatil/gorilla", "commit": "6ea57973c7a6097fd7c5915698c54c17c5b1b6c8",
        "path": "berkeley-function-call-leaderboard/bfcl_eval/model_handler/local_inference/glm.py",
        "sha256": "a4a887f66c64325654545c4794215da65489578aec7466143a5f2ade4823e6cc",
        "role": "glm-4-9b-chat's tokenizer_config.json chat_template, quoted verbatim in a docstring",
    },
}

# The conversations of crates/chat/tests/builtin_formats.rs (the test reads them from the
# fixture). All are rendered with add_generation_prompt.
CONVERSATIONS = {
    "system_and_two_turns": {
        "messages": [
            {"role": "system", "content": "You are terse. 请简短回答。"},
            {"role": "user", "content": "  What is 2+2? "},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "和 3+3 呢？🙂"},
        ]
    },
    # system_and_two_turns without its system message: the rounds of formats without one.
    "two_turns": {
        "messages": [
            {"role": "user", "content": "  What is 2+2? "},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "和 3+3 呢？🙂"},
        ]
    },
    "no_system": {"messages": [{"role": "user", "content": "Hello!"}]},
    "ends_with_answer": {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    },
}

# ChatGLM3's tools (builtin_formats.rs, chatglm3_tool_call_round_trip).
CHATGLM3_TOOL_ARGUMENTS = {"city": "北京", "days": 2, "metric": True, "note": "a, \"quoted\" b"}
CONVERSATIONS["chatglm3_tools"] = {
    "tools": [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "天气查询",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
        },
    }],
    "messages": [
        {"role": "user", "content": "北京后天天气怎么样？"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_0", "type": "function",
            "function": {"name": "get_weather", "arguments": CHATGLM3_TOOL_ARGUMENTS},
        }]},
        {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\": 21}"},
    ],
}
PLAIN_CONVERSATIONS = ["system_and_two_turns", "two_turns", "no_system", "ends_with_answer"]


class Unsupported(Exception):
    """The original code cannot express this conversation."""


class Captured(Exception):
    """Raised by a stub to stop an original function once it has built the prompt."""

    def __init__(self, value):
        super().__init__("captured")
        self.value = value


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def stub_modules(stubs):
    """Empty modules, while a file is imported, for imports the called function never uses
    (they run the model); taken away again afterwards."""
    saved = {name: sys.modules.get(name) for name in stubs}
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def turns(messages):
    """(system or None, [(user, answer)], last user message) for code that takes a question and
    a history of pairs; Unsupported otherwise."""
    system = None
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    roles = [m["role"] for m in messages]
    if not messages or roles[-1] != "user":
        raise Unsupported("the code always ends with the user's question (a history of pairs, then the query)")
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        raise Unsupported("the code takes alternating user/assistant pairs")
    history = [(messages[i]["content"], messages[i + 1]["content"]) for i in range(0, len(messages) - 1, 2)]
    return system, history, messages[-1]["content"]


# --- Llama 2 --------------------------------------------------------------------------------

def llama2(sources):
    """Meta's Llama.chat_completion. Shims: generation.py imports fairscale and the llama package
    (model, tokenizer) at the top for running the model; empty stand-ins are put in their place
    (chat_completion uses none of them). `self` is a stub: `model.params.max_seq_len` (read before
    the prompt is built), a tokenizer whose encode(s, bos, eos) returns [BOS?, s, EOS?] with BOS
    and EOS spelled "<s>" and "</s>" (the SentencePiece vocabulary's pieces 1 and 2), and a
    `generate` that records the prompt tokens and stops."""
    stubs = {
        "fairscale": {}, "fairscale.nn": {}, "fairscale.nn.model_parallel": {},
        "fairscale.nn.model_parallel.initialize": {
            "get_model_parallel_rank": None, "initialize_model_parallel": None,
            "model_parallel_is_initialized": None},
        "llama": {"__path__": []},
        "llama.model": {"ModelArgs": object, "Transformer": object},
        "llama.tokenizer": {"Tokenizer": object},
    }
    with stub_modules(stubs):
        generation = load_module("llama.generation", sources["llama2_generation"])

    class Tokenizer:
        def encode(self, s, bos, eos):
            return (["<s>"] if bos else []) + [s] + (["</s>"] if eos else [])

    class Llama:
        tokenizer = Tokenizer()
        model = types.SimpleNamespace(params=types.SimpleNamespace(max_seq_len=4096))

        def generate(self, prompt_tokens, **kwargs):
            raise Captured(prompt_tokens)

    def render(conversation):
        try:
            generation.Llama.chat_completion(Llama(), [conversation["messages"]])
        except Captured as captured:
            return "".join(captured.value[0])
        except AssertionError as error:
            raise Unsupported(f"chat_completion asserts: {error}") from None
        raise RuntimeError("chat_completion did not reach generate")

    return {"bos_token": "<s>", "eos_token": "</s>"}, render


# --- Llama 3 --------------------------------------------------------------------------------

def llama3(sources):
    """Meta's ChatFormat.encode_dialog_prompt. Shims: tokenizer.py imports tiktoken at the top for
    its Tokenizer class; an empty stand-in is put in its place (ChatFormat does not use it). The
    tokenizer given to ChatFormat keeps text: special_tokens maps each special token's name to
    itself, encode(s) returns [s]. ChatFormat always ends with the assistant's header, which is
    add_generation_prompt."""
    with stub_modules({"tiktoken": {}, "tiktoken.load": {"load_tiktoken_bpe": None}}):
        tokenizer_module = load_module("llama3_tokenizer", sources["llama3_tokenizer"])

    class Tokenizer:
        special_tokens = {name: name for name in [
            "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}

        def encode(self, s, bos, eos):
            assert not bos and not eos
            return [s]

    chat_format = tokenizer_module.ChatFormat(Tokenizer())

    def render(conversation):
        return "".join(chat_format.encode_dialog_prompt(conversation["messages"]))

    return {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, render


# --- templates (ChatML, GLM-4, GPT-2) ---------------------------------------------------------

def wheel_template(wheel, member, function):
    """The string a `default_chat_template` property returns, read from the transformers wheel's
    source with ast (not imported: transformers 4.42.4 is not the installed version)."""
    source = zipfile.ZipFile(wheel).read(member).decode("utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            returns = [n for n in ast.walk(node) if isinstance(n, ast.Return)]
            assert len(returns) == 1
            return ast.literal_eval(returns[0].value)
    raise ValueError(f"{function} not in {member}")


def template_renderer(source, bos, eos):
    env = render_chat_templates.make_environment()
    compiled = env.from_string(source)

    def render(conversation):
        return compiled.render(
            messages=conversation["messages"], tools=conversation.get("tools"), documents=None,
            add_generation_prompt=True, bos_token=bos, eos_token=eos)

    return render


def chatml(sources):
    source = wheel_template(sources["transformers_wheel"], "transformers/tokenization_utils_base.py",
                            "default_chat_template")
    return {"bos_token": "", "eos_token": "<|im_end|>", "template": source}, template_renderer(source, "", "<|im_end|>")


def glm4(sources):
    """glm-4-9b-chat's chat template, read from the JSON line `"chat_template": "...",` that the
    GLM handler of the function-calling leaderboard quotes from glm-4-9b-chat's
    tokenizer_config.json."""
    text = sources["glm4_chat_template"].read_text(encoding="utf-8")
    (line,) = [line.strip() for line in text.splitlines() if line.strip().startswith('"chat_template": ')]
    source = json.loads("{" + line.rstrip(",") + "}")["chat_template"]
    assert source.startswith("[gMASK]<sop>") and source.endswith("{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return {"bos_token": "", "eos_token": "<|endoftext|>", "template": source}, template_renderer(source, "", "<|endoftext|>")


# --- Qwen (v1) ------------------------------------------------------------------------------

def qwen1(sources):
    """Qwen's make_context (chat_format "chatml"), which returns the prompt text itself
    (raw_text) beside its tokens. Shim: a tokenizer stub with im_start_id/im_end_id and an
    encode() that gives one item per character: make_context uses the tokens only to count
    them against max_window_size (6144, far above these conversations)."""
    utils = load_module("qwen_generation_utils", sources["qwen_generation_utils"])
    default_system = None
    for node in ast.walk(ast.parse(sources["qwen_modeling"].read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef) and node.name == "chat":
            args = node.args.args[-len(node.args.defaults):]
            default_system = ast.literal_eval(node.args.defaults[[a.arg for a in args].index("system")])
    assert default_system == "You are a helpful assistant."

    class Tokenizer:
        im_start_id, im_end_id = "<|im_start|>", "<|im_end|>"

        def encode(self, text, **kwargs):
            return list(text)

    def render(conversation):
        system, history, query = turns(conversation["messages"])
        raw_text, _ = utils.make_context(
            Tokenizer(), query, history=history, system=default_system if system is None else system,
            chat_format="chatml")
        return raw_text

    return {"bos_token": "", "eos_token": "<|endoftext|>", "default_system": default_system}, render


# --- Baichuan 2 -----------------------------------------------------------------------------

def baichuan(sources):
    """Baichuan 2's build_chat_input, with real torch. Shims: `model` is a stub carrying what the
    function reads: generation_config (user_token_id, assistant_token_id, max_new_tokens from
    generation_config.json), config.model_max_length (config.json) and device "cpu"; the
    tokenizer is Baichuan 2's SentencePiece model itself, encoding without BOS/EOS as Baichuan 2's
    tokenizer (add_bos_token false in its tokenizer_config.json; LLaVA's test_baichuan.py at the
    same commit shows such token lists). The ids become text: 195 and 196 as the vocabulary spells
    them, every other run decoded by SentencePiece and checked to encode back to the same ids."""
    import sentencepiece
    import torch  # noqa: F401  (build_chat_input returns a tensor)

    utils = load_module("baichuan_generation_utils", sources["baichuan2_generation_utils"])
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sources["baichuan2_tokenizer_model"]))
    generation_config = json.loads(sources["baichuan2_generation_config"].read_text())
    config = json.loads(sources["baichuan2_config"].read_text())
    model = types.SimpleNamespace(
        generation_config=types.SimpleNamespace(**generation_config),
        config=types.SimpleNamespace(model_max_length=config["model_max_length"]),
        device="cpu")
    roles = {generation_config["user_token_id"], generation_config["assistant_token_id"]}

    class Tokenizer:
        def encode(self, text):
            return sp.encode(text)

    def render(conversation):
        ids = utils.build_chat_input(model, Tokenizer(), conversation["messages"]).tolist()[0]
        text, run = "", []
        for i in ids + [None]:
            if i in roles or i is None:
                if run:
                    piece = sp.decode(run)
                    assert sp.encode(piece) == run, (piece, run)
                    text += piece
                    run = []
                if i is not None:
                    text += sp.id_to_piece(i)
            else:
                run.append(i)
        return text

    params = {
        "bos_token": "<s>", "eos_token": "</s>",
        "user_token": sp.id_to_piece(generation_config["user_token_id"]),
        "assistant_token": sp.id_to_piece(generation_config["assistant_token_id"]),
    }
    return params, render


# --- ChatGLM-6B -----------------------------------------------------------------------------

def chatglm(sources):
    """ChatGLM-6B's chat() builds the prompt text and hands it to the tokenizer, which appends
    [gMASK] and <sop> (build_inputs_with_special_tokens). Shims: modeling_chatglm.py is imported
    as a package with its configuration_chatglm.py (real torch and transformers); chat() is called
    with a stub `self` and a tokenizer stub that records the text it is asked to encode and stops.
    The special tokens come from the real build_inputs_with_special_tokens, called with a stub
    whose sp_tokenizer maps each token to its own spelling and whose token attributes are the
    defaults of ChatGLMTokenizer.__init__."""
    import inspect

    with tempfile.TemporaryDirectory(prefix="chatglm6b_") as package:
        (Path(package) / "chatglm6b").mkdir()
        (Path(package) / "chatglm6b" / "__init__.py").write_text("")
        shutil.copy(sources["chatglm_modeling"], Path(package) / "chatglm6b" / "modeling_chatglm.py")
        shutil.copy(sources["chatglm_configuration"], Path(package) / "chatglm6b" / "configuration_chatglm.py")
        sys.path.insert(0, package)
        try:
            modeling = importlib.import_module("chatglm6b.modeling_chatglm")
        finally:
            sys.path.remove(package)
    tokenization = load_module("chatglm6b_tokenization", sources["chatglm_tokenization"])
    defaults = {name: p.default for name, p in inspect.signature(tokenization.ChatGLMTokenizer.__init__).parameters.items()}

    class Spelling(dict):
        def __missing__(self, token):
            return token

    special = types.SimpleNamespace(sp_tokenizer=Spelling(), gmask_token=defaults["gmask_token"],
                                    bos_token=defaults["bos_token"], eos_token=defaults["eos_token"])

    class Tokenizer:
        def __call__(self, texts, **kwargs):
            raise Captured(texts)

    def render(conversation):
        system, history, query = turns(conversation["messages"])
        if system is not None:
            raise Unsupported("ChatGLM-6B's chat() takes no system message")
        try:
            modeling.ChatGLMForConditionalGeneration.chat(types.SimpleNamespace(device="cpu"), Tokenizer(), query, history)
        except Captured as captured:
            (prompt,) = captured.value
            return "".join(tokenization.ChatGLMTokenizer.build_inputs_with_special_tokens(special, [prompt]))
        raise RuntimeError("chat() did not reach the tokenizer")

    return {"bos_token": "<sop>", "eos_token": "<eop>"}, render


# --- ChatGLM2-6B ----------------------------------------------------------------------------

def chatglm2(sources):
    """ChatGLM2-6B's build_inputs is `tokenizer([tokenizer.build_prompt(query, history)])`, and the
    tokenizer puts its prefix tokens ([gMASK], sop) first (build_inputs_with_special_tokens).
    Both tokenizer methods are the real ones, called with a stub `self` whose get_command returns
    each special token's spelling."""
    modeling = sources["chatglm2_modeling"].read_text(encoding="utf-8")
    assert "prompt = tokenizer.build_prompt(query, history=history)\n        inputs = tokenizer([prompt]" in modeling
    tokenization = load_module("chatglm2_tokenization", sources["chatglm2_tokenization"])
    Tok = tokenization.ChatGLMTokenizer

    class Stub:
        def get_command(self, token):
            return token

        def get_prefix_tokens(self):
            return Tok.get_prefix_tokens(self)

    def render(conversation):
        system, history, query = turns(conversation["messages"])
        if system is not None:
            raise Unsupported("ChatGLM2-6B's build_prompt takes no system message")
        prompt = Tok.build_prompt(Stub(), query, history=history)
        return "".join(Tok.build_inputs_with_special_tokens(Stub(), [prompt]))

    return {"bos_token": "", "eos_token": "</s>"}, render


# --- ChatGLM3-6B ----------------------------------------------------------------------------

def c_string_after(text, marker):
    """The C string literal that follows `marker` in llama.cpp's test file, unescaped."""
    start = text.index(marker) + len(marker)
    start = text.index('"', start)
    end = start + 1
    while text[end] != '"':
        end += 2 if text[end] == "\\" else 1
    return json.loads(text[start:end + 1])


def chatglm3(sources):
    """ChatGLM3-6B's build_chat_input(query, history, role): per message the role token, then
    encode(metadata + "\\n"), then encode(content); the tools of a system message appended as
    indented JSON; then <|assistant|>; batch_encode_plus adds the prefix [gMASK] sop. The real
    methods are called with a stub `self`: get_command returns each special token's spelling,
    the SentencePiece tokenizer is replaced by one that keeps each encoded text as a piece, and
    batch_encode_plus applies the real build_inputs_with_special_tokens (what transformers'
    batch_encode_plus does with pre-tokenized ids).

    Text spelling: SentencePiece (add_dummy_prefix) starts every encoded text with a space
    piece. Re-encoding text after a special token adds that first space again, so it is not
    written; every further encoded text in the same span keeps its space written out. That is
    how ChatGLM3's own chat template spells a message ("<|role|>\\n content"), and the script
    checks it renders the same text for every conversation that template can express.

    A tool call is an assistant message whose metadata is the tool's name; its content (the
    ```python fence with tool_call(...)) is what the model wrote, so the reference takes baimo's
    spelling of the arguments (key=<JSON value>) as given: only the framing is checked."""
    tokenization = load_module("chatglm3_tokenization", sources["chatglm3_tokenization"])
    Tok = tokenization.ChatGLMTokenizer

    class Text:
        def __init__(self, text):
            self.text = text

    class SentencePiece:
        def encode(self, s, bos=False, eos=False):
            assert not bos and not eos
            return [Text(s)] if s else []

    class Stub:
        tokenizer = SentencePiece()

        def get_command(self, token):
            return token

        def get_prefix_tokens(self):
            return Tok.get_prefix_tokens(self)

        def build_single_message(self, role, metadata, message):
            return Tok.build_single_message(self, role, metadata, message)

        def build_inputs_with_special_tokens(self, ids):
            return Tok.build_inputs_with_special_tokens(self, ids)

        def batch_encode_plus(self, batch, **kwargs):
            return [self.build_inputs_with_special_tokens(ids) for ids in batch]

    def spell(tokens):
        text, span_start = "", True
        for token in tokens:
            if isinstance(token, str):
                text, span_start = text + token, True
            else:
                text, span_start = text + ("" if span_start else " ") + token.text, False
        return text

    tool_demo = ast.parse(sources["chatglm3_tool_demo"].read_text(encoding="utf-8"))
    (system_item,) = [n.value for n in ast.walk(tool_demo) if isinstance(n, ast.Assign)
                      and any(getattr(t, "id", None) == "system_item" for t in n.targets)]
    tools_system = ast.literal_eval(system_item.values[[k.value for k in system_item.keys].index("content")])

    def history_item(message):
        if message["role"] == "assistant" and message.get("tool_calls"):
            (call,) = message["tool_calls"]
            arguments = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in call["function"]["arguments"].items())
            return {"role": "assistant", "metadata": call["function"]["name"],
                    "content": f"```python\ntool_call({arguments})\n```"}
        role = "observation" if message["role"] == "tool" else message["role"]
        return {"role": role, "content": message["content"]}

    def render(conversation):
        history = [history_item(m) for m in conversation["messages"]]
        if conversation.get("tools"):
            history.insert(0, {"role": "system", "content": tools_system, "tools": conversation["tools"]})
        last = history.pop()
        assert "metadata" not in last
        (tokens,) = Tok.build_chat_input(Stub(), last["content"], history=history, role=last["role"])
        return spell(tokens)

    template_tests = sources["llama_cpp_chat_template_tests"].read_text(encoding="utf-8")
    thudm_template = c_string_after(template_tests, '/* .name= */ "ChatGLM3",\n            /* .template_str= */')
    check = template_renderer(thudm_template, "", "</s>")

    def checked_render(conversation):
        text = render(conversation)
        if not conversation.get("tools"):
            assert text == check(conversation), (text, check(conversation))
        return text

    return {"bos_token": "", "eos_token": "</s>", "spelling_checked_with_template": thudm_template}, checked_render


# --- Plain ----------------------------------------------------------------------------------

def plain(sources):
    gpt2 = wheel_template(sources["transformers_wheel"], "transformers/models/gpt2/tokenization_gpt2.py",
                          "default_chat_template")
    nearest = template_renderer(gpt2, "", "<|endoftext|>")

    def render(conversation):
        return "\n\n".join(m["content"] for m in conversation["messages"])

    params = {
        "bos_token": "", "eos_token": "<|endoftext|>",
        "no_model_reference": "no model code defines a chat format for base models: the expected text is "
                              "baimo's documented definition (builtin.rs: the messages' text, one paragraph "
                              "each), not an outside reference",
        "nearest_outside_reference": {
            "what": "transformers 4.42.4 GPT2Tokenizer.default_chat_template (content + eos_token per message)",
            "template": gpt2,
            "renders": {name: nearest(CONVERSATIONS[name]) for name in PLAIN_CONVERSATIONS},
        },
    }
    return params, render


FORMATS = {
    "llama-2": (llama2, "Meta llama/generation.py Llama.chat_completion"),
    "llama-3": (llama3, "Meta llama3 llama/tokenizer.py ChatFormat.encode_dialog_prompt"),
    "chatml": (chatml, "transformers 4.42.4 PreTrainedTokenizerBase.default_chat_template (ChatML)"),
    "chatml-qwen1": (qwen1, "Qwen-7B-Chat qwen_generation_utils.make_context (raw_text)"),
    "baichuan": (baichuan, "Baichuan2-7B-Chat generation_utils.build_chat_input"),
    "chatglm": (chatglm, "ChatGLM-6B modeling_chatglm.chat + tokenizer build_inputs_with_special_tokens"),
    "chatglm2": (chatglm2, "ChatGLM2-6B tokenizer build_prompt + build_inputs_with_special_tokens"),
    "chatglm3": (chatglm3, "ChatGLM3-6B tokenizer build_chat_input"),
    "glm4": (glm4, "glm-4-9b-chat chat template"),
    "plain": (plain, None),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources_dir", type=Path, help="directory holding the files of SOURCES")
    args = parser.parse_args()

    sources = {}
    for key, source in SOURCES.items():
        path = args.sources_dir / source["name"]
        digest = sha256(path)
        if digest != source["sha256"]:
            sys.exit(f"{path}: sha256 {digest}, expected {source['sha256']} ({source['repo']} {source['path']})")
        sources[key] = path

    formats = {}
    for name, (make, reference) in FORMATS.items():
        params, render = make(sources)
        cases = {}
        for conversation_name, conversation in CONVERSATIONS.items():
            if conversation.get("tools") and name != "chatglm3":
                continue
            try:
                cases[conversation_name] = {"expected": render(conversation)}
            except Unsupported as why:
                cases[conversation_name] = {"unsupported": str(why)}
        formats[name] = {"reference": reference, **params, "cases": cases}

    import jinja2
    import sentencepiece
    import torch
    import transformers

    json.dump(
        {
            "generator": "scripts/render_builtin_formats.py",
            "regenerate": "python scripts/render_builtin_formats.py SOURCES_DIR > crates/chat/tests/fixtures/builtin_reference.json",
            "environment": {
                "python": sys.version.split()[0], "torch": torch.__version__,
                "transformers": transformers.__version__, "sentencepiece": sentencepiece.__version__,
                "jinja2": jinja2.__version__,
            },
            "sources": {key: {k: v for k, v in source.items()} for key, source in SOURCES.items()},
            "conversations": CONVERSATIONS,
            "formats": formats,
        },
        sys.stdout, ensure_ascii=False, indent=1)  # not sorted: the order of a tool's keys is rendered
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
