#!/usr/bin/env python3
"""What agent clients send, through the official SDKs and LangChain, unmodified: tool calls whole
and streamed whose arguments parse and fit the tool's schema, the tool's result sent back and
answered, content-part arrays, and `with_structured_output(...)` (tool calling) on varied
prompts. The same code runs against a local model and against hosted channels (the OpenAI and
Anthropic mocks behind `baimo serve`). Exits non-zero on any mismatch.

    python3 scripts/sdk/agents.py BASE OPENAI_MODEL ANTHROPIC_MODEL [--prompts N]

BASE is baimo's address (http://127.0.0.1:PORT); OPENAI_MODEL is asked through /v1/chat/completions,
ANTHROPIC_MODEL through /v1/messages (the same local model for both, or the hosted channels').
"""

import argparse
import json
import sys

import anthropic
import openai
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

parser = argparse.ArgumentParser()
parser.add_argument("base")
parser.add_argument("openai_model")
parser.add_argument("anthropic_model")
parser.add_argument("--prompts", type=int, default=20)
args = parser.parse_args()

oa = openai.OpenAI(base_url=args.base + "/v1", api_key="unused", max_retries=0, timeout=300)
an = anthropic.Anthropic(base_url=args.base, api_key="unused", max_retries=0, timeout=300)
QUESTION = "What is the weather like in Paris right now?"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}
RESULT = '{"temperature_c": 18, "sky": "sunny"}'


def fits(arguments):
    """The arguments parse and fit the weather tool's schema."""
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert isinstance(args, dict) and isinstance(args.get("city"), str) and args["city"], args
    return args


# --- the openai SDK ---------------------------------------------------------------------------
whole = oa.chat.completions.create(
    model=args.openai_model, temperature=0, max_tokens=96, tools=[WEATHER],
    messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
)
choice = whole.choices[0]
assert choice.finish_reason == "tool_calls", whole
call = choice.message.tool_calls[0]
assert call.function.name == "get_weather", call
fits(call.function.arguments)

calls, finish = {}, None
for chunk in oa.chat.completions.create(
    model=args.openai_model, temperature=0, max_tokens=96, tools=[WEATHER], stream=True,
    messages=[{"role": "user", "content": QUESTION}],
):
    for c in chunk.choices:
        for d in c.delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"name": "", "arguments": ""})
            entry["name"] += (d.function.name or "") if d.function else ""
            entry["arguments"] += (d.function.arguments or "") if d.function else ""
        finish = c.finish_reason or finish
assert finish == "tool_calls" and calls[0]["name"] == "get_weather", (finish, calls)
fits(calls[0]["arguments"])

answer = oa.chat.completions.create(
    model=args.openai_model, temperature=0, max_tokens=96, tools=[WEATHER],
    messages=[
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": RESULT},
    ],
)
assert answer.choices[0].finish_reason == "stop" and "18" in answer.choices[0].message.content, answer
print("openai SDK: tool call whole and streamed, result answered")

# --- the anthropic SDK ------------------------------------------------------------------------
schema = WEATHER["function"]["parameters"]
msg = an.messages.create(
    model=args.anthropic_model, max_tokens=96, extra_body={"temperature": 0},
    tools=[{"name": "get_weather", "description": "Get the current weather in a city", "input_schema": schema}],
    messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
)
assert msg.stop_reason == "tool_use", msg
use = next(b for b in msg.content if b.type == "tool_use")
assert use.name == "get_weather"
fits(use.input)
with an.messages.stream(
    model=args.anthropic_model, max_tokens=96, extra_body={"temperature": 0},
    tools=[{"name": "get_weather", "description": "Get the current weather in a city", "input_schema": schema}],
    messages=[{"role": "user", "content": QUESTION}],
) as s:
    final = s.get_final_message()
assert final.stop_reason == "tool_use", final
fits(next(b for b in final.content if b.type == "tool_use").input)
followed = an.messages.create(
    model=args.anthropic_model, max_tokens=96, extra_body={"temperature": 0},
    tools=[{"name": "get_weather", "description": "Get the current weather in a city", "input_schema": schema}],
    messages=[
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": RESULT}]},
    ],
)
assert followed.stop_reason == "end_turn" and "18" in followed.content[0].text, followed
print("anthropic SDK: tool_use whole and streamed, tool_result answered")

# --- LangChain --------------------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return RESULT


for name, llm in [
    ("ChatOpenAI", ChatOpenAI(model=args.openai_model, base_url=args.base + "/v1", api_key="unused",
                              temperature=0, max_tokens=96, max_retries=0)),
    ("ChatAnthropic", ChatAnthropic(model=args.anthropic_model, base_url=args.base, api_key="unused",
                                    temperature=0, max_tokens=96, max_retries=0)),
]:
    bound = llm.bind_tools([get_weather])
    ai = bound.invoke([HumanMessage(QUESTION)])
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather", (name, ai)
    fits(ai.tool_calls[0]["args"])
    streamed = None
    for piece in bound.stream([HumanMessage(QUESTION)]):
        streamed = piece if streamed is None else streamed + piece
    assert streamed.tool_calls and streamed.tool_calls[0]["name"] == "get_weather", (name, streamed)
    fits(streamed.tool_calls[0]["args"])
    result = get_weather.invoke(ai.tool_calls[0])
    final = bound.invoke([HumanMessage(QUESTION), ai, result])
    assert "18" in str(final.content), (name, final)
    parts = llm.invoke([HumanMessage(content=[{"type": "text", "text": "Say hi."}])])
    assert isinstance(parts.content, (str, list)), (name, parts)
    print(f"LangChain {name}: bind_tools whole and streamed, tool result answered, content parts")


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(description="The person's name")
    age: int = Field(description="The person's age in years")
    city: str = Field(description="Where the person lives")


PEOPLE = [
    ("Alice", 30, "Paris"), ("Bob", 45, "Berlin"), ("Chen Wei", 28, "Shanghai"), ("Dmitri", 52, "Moscow"),
    ("Emma", 19, "London"), ("Farid", 37, "Cairo"), ("Greta", 64, "Stockholm"), ("Hiro", 41, "Tokyo"),
    ("Isabel", 23, "Madrid"), ("Jonas", 33, "Oslo"), ("Kofi", 58, "Accra"), ("Lena", 26, "Vienna"),
    ("Mateo", 71, "Lima"), ("Nadia", 35, "Warsaw"), ("Omar", 48, "Dubai"), ("Priya", 31, "Mumbai"),
    ("Quinn", 22, "Dublin"), ("Rosa", 55, "Rome"), ("Sven", 39, "Copenhagen"), ("Tara", 44, "Sydney"),
]
TEMPLATES = [
    "{n} is {a} years old and lives in {c}.",
    "Meet {n}, a {a}-year-old from {c}.",
    "Living in {c}, {n} turned {a} this year.",
    "Our new colleague {n} ({a}) has moved here from {c}.",
]
openai_llm = ChatOpenAI(model=args.openai_model, base_url=args.base + "/v1", api_key="unused",
                        temperature=0, max_tokens=96, max_retries=0)
anthropic_llm = ChatAnthropic(model=args.anthropic_model, base_url=args.base, api_key="unused",
                              temperature=0, max_tokens=96, max_retries=0)
for name, structured in [
    # json_schema: response_format with the model's schema, strict (constrained decoding).
    ("ChatOpenAI json_schema", openai_llm.with_structured_output(Person, method="json_schema", strict=True)),
    # function_calling: a forced call of a tool named after the model.
    ("ChatOpenAI function_calling", openai_llm.with_structured_output(Person, method="function_calling")),
    # Anthropic: a forced tool_use.
    ("ChatAnthropic", anthropic_llm.with_structured_output(Person)),
]:
    good = 0
    for i, (n, a, c) in enumerate(PEOPLE[: args.prompts]):
        text = TEMPLATES[i % len(TEMPLATES)].format(n=n, a=a, c=c)
        person = structured.invoke(f"Extract the person from this text: {text}")
        assert isinstance(person, Person), (name, text, person)
        good += 1
    print(f"LangChain {name}.with_structured_output(Person): {good}/{args.prompts} valid")

# response_format json_object through the openai SDK: the answer is a JSON object.
obj = oa.chat.completions.create(
    model=args.openai_model, temperature=0, max_tokens=64, response_format={"type": "json_object"},
    messages=[{"role": "user", "content": "Give the capital of France as JSON with the key capital."}],
)
assert isinstance(json.loads(obj.choices[0].message.content), dict), obj
print("openai SDK: response_format json_object parses")
sys.exit(0)
