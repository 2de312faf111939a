#!/usr/bin/env python3
"""Render chat templates the way Hugging Face `transformers` `apply_chat_template` does.

This is the reference that `crates/chat` (baimo-chat) is checked against byte for byte. It
needs only `jinja2` (no torch, no transformers): it rebuilds the Jinja environment that
`transformers.utils.chat_template_utils._compile_jinja_template` sets up and the keyword
arguments that `render_jinja_template` passes to it:

* `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
  `loopcontrols` extension and the `{% generation %}` tag (assistant-token tracking is off
  outside training, so the tag just renders its body);
* a `tojson` filter that is `json.dumps(x, ensure_ascii=False, indent=None,
  separators=None, sort_keys=False)` (no HTML escaping, unlike Jinja's own);
* the globals `raise_exception(message)` and `strftime_now(format)`;
* render variables `messages`, `tools` (None without tools), `documents` (None),
  `add_generation_prompt`, the special tokens, and any extra keyword arguments.

`strftime_now` is pinned to a fixed moment so that the output is reproducible.

Usage (from the repository root):

    python3 -m venv /tmp/chatvenv && /tmp/chatvenv/bin/pip install jinja2
    /tmp/chatvenv/bin/python scripts/render_chat_templates.py > crates/chat/tests/fixtures/hf_reference.json

The conversations come from crates/chat/tests/fixtures/conversations.json, the templates from
shared/reference/templates/*.jinja (beside the repository) and crates/chat/tests/templates/.
"""

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

REPO_ROOT = Path(__file__).resolve().parent.parent
CHAT_TESTS = REPO_ROOT / "crates" / "chat" / "tests"
DEFAULT_TEMPLATE_DIRS = [
    REPO_ROOT.parent / "shared" / "reference" / "templates",
    CHAT_TESTS / "templates",
]
DEFAULT_CONVERSATIONS = CHAT_TESTS / "fixtures" / "conversations.json"

# The special tokens every rendering sees; the Rust test passes the same strings.
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
# The moment strftime_now formats; the Rust test pins the same one (2025-03-14T09:26:53Z).
FIXED_NOW = datetime(2025, 3, 14, 9, 26, 53)


class RaisedByTemplate(jinja2.exceptions.TemplateError):
    """What transformers' raise_exception raises (it uses TemplateError itself); a subclass
    here only so that the fixture can tell a template's own error from engine errors."""


class GenerationTag(Extension):
    """transformers' AssistantTracker without tracking: `{% generation %}` renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def raise_exception(message):
    raise RaisedByTemplate(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return FIXED_NOW.strftime(format)


def make_environment():
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, source, scenario):
    try:
        template = env.from_string(source)
        text = template.render(
            messages=scenario["messages"],
            tools=scenario.get("tools"),
            documents=None,
            add_generation_prompt=scenario.get("add_generation_prompt", False),
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            **scenario.get("extra_context", {}),
        )
        return {"output": text}
    except RaisedByTemplate as error:
        return {"error": {"kind": "raise_exception", "message": error.message}}
    except Exception as error:  # noqa: BLE001 - any engine error is a recorded outcome
        return {"error": {"kind": "other", "message": f"{type(error).__name__}: {error}"}}


def scenario_applies(scenario, source):
    needle = scenario.get("only_if_template_mentions")
    return needle is None or needle in source


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=Path, default=DEFAULT_CONVERSATIONS)
    parser.add_argument("template_dirs", nargs="*", type=Path, default=DEFAULT_TEMPLATE_DIRS)
    args = parser.parse_args()

    scenarios = json.loads(args.conversations.read_text(encoding="utf-8"))
    env = make_environment()
    results = {}
    for directory in args.template_dirs:
        for path in sorted(directory.glob("*.jinja")):
            source = path.read_text(encoding="utf-8")
            results[path.stem] = {
                name: render(env, source, scenario)
                for name, scenario in scenarios.items()
                if scenario_applies(scenario, source)
            }
    json.dump(
        {"jinja2_version": jinja2.__version__, "templates": results},
        sys.stdout,
        ensure_ascii=False,
        indent=1,
        sort_keys=True,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
