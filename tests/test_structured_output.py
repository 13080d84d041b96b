"""Structured output on every installed backend: JSON schemas become GBNF grammars through
llama.cpp's converter inside the backend (the sandbox, on wasm), and what SmolLM2 writes under
them parses and validates with `jsonschema` (an independent implementation) for 20 prompts and
schemas; hostile schemas and grammars are clear errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import wasillama
from helpers import load_model
from wasillama import InvalidArgumentError

INT = {"type": "integer", "minimum": 0, "maximum": 1000}


def text(n: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": n}


def obj(required: list[str] | None = None, **props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required}


CASES: list[tuple[str, dict[str, Any]]] = [
    ("Describe a famous scientist: name and age.", obj(name=text(24), age=INT)),
    ("List a few small numbers.", {"type": "array", "items": {"type": "integer", "minimum": -100, "maximum": 100},
                                   "minItems": 1, "maxItems": 5}),
    ("What colour is the sky?", {"type": "string", "enum": ["red", "green", "blue"]}),
    ("Is water wet? Answer true or false.", {"type": "boolean"}),
    ("Give a city, its country and population.",
     {**obj(["city", "country"], city=text(30), country=text(30), population=INT), "additionalProperties": False}),
    ("Rate this movie from 0 to 10.", {"type": "number"}),
    ("Write a blog post title and up to three tags.",
     obj(title=text(40), tags={"type": "array", "items": text(12), "maxItems": 3})),
    ("Make up a product code.", {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}),
    ("When did the first moon landing happen?", {"type": "string", "format": "date"}),
    ("Report an HTTP status.", obj(ok={"type": "boolean"}, code={"type": "integer", "minimum": 100, "maximum": 599})),
    ("Pick a digit, or say none.", {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                                              {"type": "string", "enum": ["none"]}]}),
    ("Say nothing at all.", {"type": "null"}),
    ("Repeat the word fixed.", {"const": "fixed"}),
    ("Give a point on a small grid.", obj(point=obj(x={"type": "integer", "minimum": -10, "maximum": 10},
                                                     y={"type": "integer", "minimum": -10, "maximum": 10}))),
    ("List up to three item ids.", {"$defs": {"item": obj(id={"type": "integer", "minimum": 1, "maximum": 999})},
                                    "type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 3}),
    ("A short word, please.", {"type": "string", "minLength": 2, "maxLength": 5}),
    ("Name a fruit and how many you have.",
     {"type": "array", "prefixItems": [text(10), {"type": "integer", "minimum": 0, "maximum": 50}],
      "minItems": 2, "maxItems": 2}),
    ("Will it rain tomorrow? Say how sure you are.",
     obj(answer={"type": "string", "enum": ["yes", "no", "maybe"]}, confidence={"type": "number"})),
    ("Invent an identifier.", {"type": "string", "format": "uuid"}),
    ("Describe a person with optional nickname.",
     obj(["first", "last"], first=text(16), last=text(16), nickname=text(12))),
]


@pytest.fixture(scope="module")
def ctx(backend_name: str, smollm2_path: Path) -> Iterator[wasillama.Context]:
    with load_model(smollm2_path, backend_name) as model, model.new_context(n_ctx=1024) as c:
        yield c


@pytest.mark.parametrize(("prompt", "schema"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_output_validates_against_the_schema(ctx: wasillama.Context, prompt: str, schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    messages = [{"role": "user", "content": prompt + " Answer in JSON."}]
    result = ctx.chat(messages, json_schema=schema, temperature=0, max_tokens=400)
    assert result.finish_reason == "eos", result  # the grammar was complete, so only an end token remained
    document = json.loads(result.text)
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator,
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_schema_and_sampling_seeds(ctx: wasillama.Context) -> None:
    schema = obj(name=text(24), age=INT)
    for seed in range(3):
        result = ctx.generate("Person:", json_schema=schema, temperature=1.0, seed=seed, max_tokens=200)
        assert result.finish_reason == "eos"
        jsonschema.validate(json.loads(result.text), schema)


@pytest.mark.parametrize(("schema", "message"), [
    ("{", "not valid JSON"),
    ('{"type": "nope"}', "unrecognized type nope"),
    ("[" * 100 + "]" * 100, "nests 100 levels deep"),
    ('{"$ref": "#/$defs/missing"}', "missing"),
])
def test_a_bad_schema_is_a_clear_error(ctx: wasillama.Context, schema: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        ctx.generate("x", json_schema=schema, max_tokens=4)
    assert len(ctx.generate("Hello", temperature=0, max_tokens=3).tokens) == 3  # nothing was poisoned


@pytest.mark.parametrize(("grammar", "message"), [
    ('root ::= "unclosed', "grammar does not parse"),
    ("root ::= root \"a\"", "grammar does not parse"),  # left recursion would never end
    ("root ::= undefined-rule", "grammar does not parse"),
    ("root ::= [", "grammar does not parse"),
])
def test_a_bad_grammar_is_a_clear_error(ctx: wasillama.Context, grammar: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        ctx.generate("x", grammar=grammar, max_tokens=4)


def test_grammar_and_schema_together_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="not both"):
        wasillama.Sampling(grammar='root ::= "a"', json_schema={"type": "null"})
