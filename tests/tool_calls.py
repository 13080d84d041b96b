"""A tool-calling conversation SmolLM2-135M follows: three worked examples, then the question
(tests/test_chat.py and tests/test_server.py; the model is conftest's tool_model_path)."""

from __future__ import annotations

import json
from typing import Any

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
                                            "parameters": WEATHER_SCHEMA}}


def _shot(i: int, city: str) -> list[dict[str, Any]]:
    """One earlier exchange: a question, the assistant's tool call, its result, the answer. The
    calls leave out "unit", which the schema requires: only the grammar puts it in."""
    call = {"id": f"call_{i}", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
    return [{"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": '{"temperature": 14}'},
            {"role": "assistant", "content": f"It is 14 degrees in {city}."}]


# Three worked examples are what SmolLM2-135M needs to call the tool on its own.
HISTORY = [*_shot(1, "London"), *_shot(2, "Tokyo"), *_shot(3, "Rome"),
           {"role": "user", "content": "What is the weather in Paris?"}]
