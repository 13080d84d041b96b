"""Chat templates and tools, on every backend: llama.cpp's chat code and Jinja engine run inside
the backend; its renderings are checked against jinja2 (what transformers' apply_chat_template
runs), and a tool call makes the round trip on SmolLM2 carrying Qwen2.5's tool-calling template."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

import synthetic
import wasillama
from helpers import load_model
from tool_calls import HISTORY, WEATHER, WEATHER_SCHEMA
from wasillama import ChatMessage, ChatTemplateError, InvalidArgumentError, UnsupportedOptionError
from wasillama.chat import Message
from wasillama.shim import abi


def reference_render(template: str, messages: list[dict[str, Any]], **variables: Any) -> str:
    """The template rendered by jinja2 the way transformers' apply_chat_template does."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False, ensure_ascii=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=messages, **variables)


@pytest.fixture(scope="module")
def tool_model(backend_name: str, tool_model_path: Path) -> Iterator[wasillama.Model]:
    with load_model(tool_model_path, backend_name) as m:
        yield m


@pytest.fixture(scope="module")
def smollm2(backend_name: str, smollm2_path: Path) -> Iterator[wasillama.Model]:
    with load_model(smollm2_path, backend_name) as m:
        yield m


# ---- rendering -----------------------------------------------------------------------------------

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Ünïcödé? 日本語"}],
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_model_template_matches_jinja2(smollm2: wasillama.Model, conversation: int,
                                       add_generation_prompt: bool) -> None:
    messages = CONVERSATIONS[conversation]
    assert smollm2.chat_template is not None
    expected = reference_render(smollm2.chat_template, messages, add_generation_prompt=add_generation_prompt)
    assert smollm2.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_tools_render_as_jinja2_does(tool_model: wasillama.Model, qwen_template: str) -> None:
    """Tool definitions, an assistant's tool calls and a tool's result reach the template."""
    ours = tool_model.apply_chat_template(HISTORY, tools=[WEATHER])
    for m in HISTORY:  # transformers passes arguments as objects to templates that print them
        for c in m.get("tool_calls", ()):
            c["function"] = {**c["function"], "arguments": json.loads(c["function"]["arguments"])}
    try:
        expected = reference_render(qwen_template, HISTORY, tools=[WEATHER], add_generation_prompt=True)
    finally:
        for m in HISTORY:
            for c in m.get("tool_calls", ()):
                c["function"] = {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}
    assert ours == expected
    assert '"name": "get_weather"' in ours and "<tool_response>" in ours


def test_template_override(smollm2: wasillama.Model) -> None:
    template = ("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                "{% if add_generation_prompt %}>{% endif %}")
    assert smollm2.apply_chat_template(CONVERSATIONS[0], template=template) == "[user] Hi\n>"
    with smollm2.new_context(n_ctx=256) as ctx:
        result = ctx.chat(CONVERSATIONS[0], template=template, max_tokens=4, temperature=0)
    assert result.prompt_tokens == len(smollm2.tokenize("[user] Hi\n>", parse_special=True))


def test_template_errors(smollm2: wasillama.Model, model: wasillama.Model, tool_model: wasillama.Model) -> None:
    with pytest.raises(ChatTemplateError, match="does not parse"):
        smollm2.apply_chat_template(CONVERSATIONS[0], template="{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="failed"):
        smollm2.apply_chat_template(CONVERSATIONS[0], template="{{ raise_exception('no system role') }}")
    with pytest.raises(ChatTemplateError, match="no chat template"):
        model.apply_chat_template(CONVERSATIONS[0])  # the synthetic model has none
    with pytest.raises(InvalidArgumentError, match="role"):
        smollm2.apply_chat_template([{"content": "Hi"}])
    with pytest.raises(InvalidArgumentError, match="tool 0"):
        smollm2.apply_chat_template(CONVERSATIONS[0], tools=[{"description": "no name"}])
    with pytest.raises(InvalidArgumentError, match="tool_choice"):
        smollm2.apply_chat_template(CONVERSATIONS[0], tools=[WEATHER], tool_choice="always")
    with pytest.raises(InvalidArgumentError, match="JSON"):
        smollm2.apply_chat_template([{"role": "user", "content": object()}])
    with tool_model.new_context(n_ctx=1024) as ctx, pytest.raises(UnsupportedOptionError, match="tools"):
        ctx.chat(CONVERSATIONS[0], tools=[WEATHER], grammar='root ::= "x"')


def test_hostile_nesting_is_refused(smollm2: wasillama.Model) -> None:
    """The template comes with the model file: nesting that would run the Jinja engine's stack out
    is refused before it runs, and the deepest accepted nesting renders (on wasm: without a trap)."""
    depth = abi.CHAT_TEMPLATE_MAX_DEPTH
    hi = CONVERSATIONS[0]
    for n, template in [(depth + 1, "{% if true %}" * (depth + 1) + "x" + "{% endif %}" * (depth + 1)),
                        (depth + 1, "{{ " + "(" * (depth + 1) + "1" + ")" * (depth + 1) + " }}"),
                        (5000, "{% for x in messages %}" * 5000 + "{% endfor %}" * 5000)]:
        with pytest.raises(ChatTemplateError, match=f"nests {n} levels"):
            smollm2.apply_chat_template(hi, template=template)
    deepest = "{% if true %}" * depth + "{{ " + "(" * depth + "1" + ")" * depth + " }}" + "{% endif %}" * depth
    assert smollm2.apply_chat_template(hi, template=deepest) == "1"
    assert smollm2.apply_chat_template(hi) == reference_render(smollm2.chat_template or "", hi,
                                                                add_generation_prompt=True)  # still usable


# ---- tool calls ----------------------------------------------------------------------------------


def test_tool_call_round_trip(tool_model: wasillama.Model) -> None:
    with tool_model.new_context(n_ctx=4096) as ctx:
        first = ctx.chat(HISTORY, tools=[WEATHER], max_tokens=64, temperature=0)
        assert first.finish_reason == "tool_calls"
        assert first.message is not None and len(first.message.tool_calls) == 1
        call = first.message.tool_calls[0]
        assert call.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(call.args, WEATHER_SCHEMA)  # "unit" too, which no example shows
        assert call.args["city"] == "Paris"
        assert "<tool_call>" not in first.message.content

        answer = json.dumps({"temperature": 22, "unit": call.args["unit"]})
        follow_up: list[Message] = [*HISTORY, first.message,
                                    {"role": "tool", "tool_call_id": call.id, "content": answer}]
        assert answer in tool_model.apply_chat_template(follow_up, tools=[WEATHER])
        second = ctx.chat(follow_up, tools=[WEATHER], max_tokens=32, temperature=0)
    assert second.cached_prompt_tokens >= first.prompt_tokens - 1  # the conversation so far is reused
    assert second.message is not None and second.message.tool_calls == ()
    assert "22" in second.message.content


def test_without_the_grammar_the_arguments_break_the_schema(tool_model: wasillama.Model) -> None:
    """The same greedy reply, unconstrained: the examples' habit (no "unit") shows through, so
    the schema holds above because of the grammar."""
    rendered = tool_model.render_chat(HISTORY, tools=[WEATHER])
    with tool_model.new_context(n_ctx=4096) as ctx:
        free = ctx.generate(rendered.prompt, parse_special=True, max_tokens=64, temperature=0, stop=rendered.stops)
    reply = tool_model.parse_reply(rendered, free.text)
    assert [c.name for c in reply.tool_calls] == ["get_weather"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(reply.tool_calls[0].args, WEATHER_SCHEMA)


def test_grammar_is_lazy_unless_a_call_is_required(tool_model: wasillama.Model) -> None:
    auto = tool_model.render_chat(HISTORY, tools=[WEATHER])
    assert auto.grammar is not None and auto.grammar.type == abi.SAMPLER_GRAMMAR_LAZY
    assert b"\0<tool_call>" in auto.grammar.text  # the trigger: where a call begins
    required = tool_model.render_chat(HISTORY, tools=[WEATHER], tool_choice="required")
    assert required.grammar is not None and required.grammar.type == abi.SAMPLER_GRAMMAR
    # the grammar covers the generation prompt the template ends with; it has seen those tokens
    assert list(required.grammar.ints) == tool_model.tokenize("<|im_start|>assistant\n", add_special=False,
                                                               parse_special=True)
    none = tool_model.render_chat(HISTORY, tools=[WEATHER], tool_choice="none")
    assert none.grammar is None


def test_single_token_markers(llama_cpp_dir: Path, backend_name: str, tmp_path: Path) -> None:
    """Gemma 4 begins a call with one token, <|tool_call>: it triggers the grammar as a token; the
    control tokens of its format are preserved: the reply's text shows them."""
    models = llama_cpp_dir / "models"
    path = synthetic.write_llama(tmp_path / "gemma4-vocab.gguf", vocab=models / "ggml-vocab-gemma-4.gguf", seed=3,
                                 n_layer=1, n_embd=64)
    template = (models / "templates" / "google-gemma-4-31B-it.jinja").read_text()
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    with load_model(path, backend_name) as m:
        marker = m.tokenize("<|tool_call>", add_special=False, parse_special=True)
        assert len(marker) == 1
        rendered = m.render_chat(question, template=template, tools=[WEATHER])
        assert rendered.grammar is not None and rendered.grammar.type == abi.SAMPLER_GRAMMAR_LAZY
        assert list(rendered.grammar.ints) == marker and marker[0] in rendered.preserved_tokens
        # control tokens the format uses (here <|turn>) show in the reply, though text never shows them
        hidden = [t for t in sorted(rendered.preserved_tokens) if m.detokenize([t]) == ""]
        assert hidden
        with m.new_context(n_ctx=1024) as ctx:
            result = ctx.chat(question, template=template, tools=[WEATHER], logit_bias={hidden[0]: 100.0},
                              max_tokens=1, temperature=0)
        assert result.tokens == hidden[:1]
        assert result.text == m.detokenize(hidden[:1], render_special=True) != ""


def test_parse_reply(tool_model: wasillama.Model) -> None:
    rendered = tool_model.render_chat(HISTORY, tools=[WEATHER])
    two = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n'
           '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bergen", "unit": "celsius"}}\n'
           '</tool_call>')
    reply = tool_model.parse_reply(rendered, two)
    assert [c.args["city"] for c in reply.tool_calls] == ["Oslo", "Bergen"]
    assert reply.content.strip() == "Let me check."
    assert len({c.id for c in reply.tool_calls}) == 2
    assert tool_model.parse_reply(rendered, "Just text.") == ChatMessage("assistant", "Just text.")
    # a reply cut short (max_tokens) inside a call: the call as far as it goes
    cut = tool_model.parse_reply(rendered, '<tool_call>\n{"name": "get_weather", "arguments": {"ci')
    assert [c.name for c in cut.tool_calls] == ["get_weather"]
    with pytest.raises(InvalidArgumentError, match="not JSON"):
        _ = cut.tool_calls[0].args


def test_chat_stream_and_achat_parse_the_reply(tool_model: wasillama.Model) -> None:
    with tool_model.new_context(n_ctx=4096) as ctx:
        with ctx.chat_stream(HISTORY, tools=[WEATHER], max_tokens=64, temperature=0) as stream:
            text = "".join(stream)
        assert stream.result is not None and stream.result.message is not None
        assert text == stream.result.text
        assert [c.name for c in stream.result.message.tool_calls] == ["get_weather"]
        result = asyncio.run(ctx.achat(HISTORY, tools=[WEATHER], max_tokens=64, temperature=0))
    assert result.message is not None
    assert result.message.tool_calls[0].args == stream.result.message.tool_calls[0].args
