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

Besides what transformers renders, the fixture holds, under "adjusted", what Jinja2 renders
with one of baimo's known differences removed at its cause (hf_reference.rs's
KNOWN_DIFFERENCES compares baimo's output for those with these):

* `none_iterates_as_empty` (NONE_IS_ITERABLE): every `{% for %}` iterates `none` as nothing,
  as minijinja does. The template's syntax tree is rewritten before compiling: each loop's
  iterable `x` becomes `x|__none_as_empty__`, a filter that turns None into `()` and returns
  anything else unchanged. Only loops change: `tools is none`, `tools|length`,
  `'a' in tools` and every other use of None keep Jinja2's behaviour (and still fail where
  Jinja2 fails). Undefined already iterates as empty in Jinja2, as in minijinja.
* `map_gives_a_list` (MAP_IS_A_LIST): the `map` filter returns a list (Jinja2's own `map`,
  its generator collected), as minijinja's does, so that `tojson` can serialize it.
* `safe_gives_a_str` (MARKUP_CONCAT_ESCAPES): the `safe` filter returns a plain `str` instead
  of `Markup`, so `"..."|safe + text` concatenates without HTML-escaping `text`, as minijinja's
  `+` does (autoescaping is off in transformers' environment, so `safe` changes nothing else).

An adjusted rendering is recorded wherever it differs from the plain one.

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
from jinja2.filters import sync_do_map
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_context

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


def none_as_empty(value):
    return () if value is None else value


def iterate_none_as_empty(env, source):
    """Compiles `source` with every for-loop's iterable passed through `none_as_empty`."""
    tree = env.parse(source)
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, "__none_as_empty__", [], [], None, None, lineno=loop.iter.lineno)
    return env.template_class.from_code(env, env.compile(tree), env.make_globals(None), None)


@pass_context
def map_as_list(context, value, *args, **kwargs):
    return list(sync_do_map(context, value, *args, **kwargs))


def safe_as_str(value):
    return str(value)


def make_adjusted_environments():
    """Each adjustment: (environment, how to compile a template in it)."""
    none_env = make_environment()
    none_env.filters["__none_as_empty__"] = none_as_empty
    map_env = make_environment()
    map_env.filters["map"] = map_as_list
    safe_env = make_environment()
    safe_env.filters["safe"] = safe_as_str
    return {
        "none_iterates_as_empty": (none_env, iterate_none_as_empty),
        "map_gives_a_list": (map_env, jinja2.Environment.from_string),
        "safe_gives_a_str": (safe_env, jinja2.Environment.from_string),
    }


def render(env, source, scenario, compile_template=jinja2.Environment.from_string):
    try:
        template = compile_template(env, source)
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
    adjusted_envs = make_adjusted_environments()
    results = {}
    adjusted = {name: {} for name in adjusted_envs}
    for directory in args.template_dirs:
        for path in sorted(directory.glob("*.jinja")):
            source = path.read_text(encoding="utf-8")
            results[path.stem] = {}
            for name, scenario in scenarios.items():
                if not scenario_applies(scenario, source):
                    continue
                plain = render(env, source, scenario)
                results[path.stem][name] = plain
                for adjustment, (adjusted_env, compile_template) in adjusted_envs.items():
                    other = render(adjusted_env, source, scenario, compile_template)
                    if other != plain:
                        adjusted[adjustment].setdefault(path.stem, {})[name] = other
    json.dump(
        {"jinja2_version": jinja2.__version__, "templates": results, "adjusted": adjusted},
        sys.stdout,
        ensure_ascii=False,
        indent=1,
        sort_keys=True,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
