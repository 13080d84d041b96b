"""Chat: messages rendered by a model's chat template, replies read back into messages.

Both directions run inside the backend, with llama.cpp's own chat code (common/chat.cpp and its
Jinja engine; in the sandbox on wasm): a chat template comes from the model file and is as
untrusted as the weights, and rendering one with the host's Jinja is how llama-cpp-python got
CVE-2024-34359. The host builds the request as JSON and reads the result.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .errors import ChatTemplateError, InvalidArgumentError
from .options import ChatOptions
from .shim import abi
from .shim.abi import SamplerStep

if TYPE_CHECKING:
    from .backend import Backend

_log = logging.getLogger("wasillama")


@dataclass(frozen=True)
class ToolCall:
    """A call the model made to one of the tools it was given."""

    name: str
    arguments: str  # JSON text, as the model wrote it
    id: str

    @cached_property
    def args(self) -> Any:
        """The arguments as Python values (InvalidArgumentError when they are not JSON)."""
        try:
            return json.loads(self.arguments)
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(f"the arguments of tool call {self.name!r} are not JSON: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ChatMessage:
    """A message as the chat template reads it; the reply of Context.chat (result.message).
    ``messages.append(result.message)`` continues the conversation (to_dict() gives the OpenAI
    form)."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning_content: str | None = None  # a thinking model's reasoning, apart from content

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.reasoning_content:
            out["reasoning_content"] = self.reasoning_content
        return out


Message = Mapping[str, Any] | ChatMessage  # {"role", "content", ...} in the OpenAI form, or a ChatMessage


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered conversation and what generating and reading its reply need."""

    prompt: str
    stops: tuple[str, ...]  # strings that end the reply, beyond end-of-generation tokens
    grammar: SamplerStep | None  # holds tool-call arguments to their schemas
    preserved_tokens: frozenset[int]  # control tokens the reply's text shows (tool-call markers)
    format: str  # the tool-call format llama.cpp recognised in the template
    parser: str = field(repr=False)  # opaque: what wl_chat_parse needs


def render(backend: Backend, model: int, messages: Sequence[Message], options: ChatOptions,
           add_generation_prompt: bool = True) -> ChatPrompt:
    request: dict[str, Any] = {
        "messages": [_message(m, i) for i, m in enumerate(messages)],
        "add_generation_prompt": add_generation_prompt,
        "now": time.time(),  # the date some templates print: the host's clock, not the guest's
    }
    if options.template is not None:
        if not options.template:
            raise InvalidArgumentError("the chat template is empty")
        request["template"] = options.template
    if options.tools:
        request["tools"] = [_tool(t, i) for i, t in enumerate(options.tools)]
        request["tool_choice"] = options.tool_choice
        request["parallel_tool_calls"] = options.parallel_tool_calls
    if not options.enable_thinking:
        request["enable_thinking"] = False
    if options.template_kwargs:
        request["template_kwargs"] = dict(options.template_kwargs)
    if not options.allow_control_tokens:
        _refuse_control_tokens(backend, model, request)
    try:
        text = json.dumps(request, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"the messages or tools are not JSON-serialisable: {e}") from e
    raw = json.loads(backend.chat_render(model, text))
    grammar = None
    if raw["grammar"]:
        grammar = abi.grammar_step(raw["grammar"], prefill=raw["grammar_prefill"], lazy=raw["grammar_lazy"],
                                   trigger_patterns=raw["trigger_patterns"], trigger_tokens=raw["trigger_tokens"])
    return ChatPrompt(raw["prompt"], tuple(s for s in raw["stops"] if s), grammar,
                      frozenset(int(t) for t in raw["preserved_tokens"]), raw["format"], raw["parser"])


def parse(backend: Backend, prompt: ChatPrompt, text: str) -> ChatMessage:
    """The reply `text` as a message: content, reasoning and tool calls as the template's format
    writes them. Text that does not follow the format stays content (with a warning)."""
    try:
        raw = json.loads(backend.chat_parse(prompt.parser, text, False))
    except ChatTemplateError as e:
        _log.warning("the reply does not follow the %s format (%s); it is kept as content", prompt.format, e)
        return ChatMessage("assistant", text)
    calls = tuple(ToolCall(c["function"]["name"], c["function"]["arguments"], c.get("id") or _call_id())
                  for c in raw.get("tool_calls", ()))
    content = raw.get("content") or ""
    if not isinstance(content, str):  # content parts
        content = "".join(p.get("text", "") for p in content)
    return ChatMessage("assistant", content, calls, raw.get("reasoning_content") or None)


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _message(m: Message, i: int) -> dict[str, Any]:
    if isinstance(m, ChatMessage):
        return m.to_dict()
    if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
        raise InvalidArgumentError(f"message {i} needs a 'role' (a string)")
    out = dict(m)
    if "content" not in out and not out.get("tool_calls"):
        raise InvalidArgumentError(f"message {i} needs 'content' (or, from the assistant, 'tool_calls')")
    calls = out.get("tool_calls")
    if calls:
        out["tool_calls"] = [c.to_dict() if isinstance(c, ToolCall) else c for c in calls]
    return out


def _texts(value: Any) -> Iterator[str]:
    """Every string inside a value (content parts, tool-call arguments, keys ...)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _texts(k)
            yield from _texts(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _texts(v)


def _refuse_control_tokens(backend: Backend, model: int, request: Mapping[str, Any]) -> None:
    """InvalidArgumentError when the text of a message (its role, content, parts, tool calls),
    a tool or a template variable spells a control token ("<|im_start|>"): the rendered prompt is
    tokenized with control tokens parsed (the template's own must be), so such text would let
    whoever wrote it forge turns the template never wrote. Each string is checked, keys too, and
    a message's content parts joined (as a template writes them)."""
    def spells(text: str) -> bool:
        raw = text.encode("utf-8", "surrogatepass")
        return list(backend.tokenize(model, raw, False, True)) != list(backend.tokenize(model, raw, False, False))

    items = [(f"message {i}", m) for i, m in enumerate(request["messages"])]
    items += [(f"tool {i}", t) for i, t in enumerate(request.get("tools", ()))]
    items += [(f"template variable {k!r}", v) for k, v in request.get("template_kwargs", {}).items()]
    for what, item in items:
        texts = [t for t in _texts(item) if t]
        parts = item.get("content") if isinstance(item, Mapping) else None
        if isinstance(parts, list):  # a template writes the parts' texts one after the other
            texts.append("".join(p["text"] for p in parts if isinstance(p, Mapping) and isinstance(p.get("text"), str)))
        if any(spells(t) for t in texts):
            raise InvalidArgumentError(f"{what} spells a control token of the model's vocabulary: it could forge "
                                       "chat turns (pass allow_control_tokens=True if the text is trusted)")


def _tool(t: Mapping[str, Any], i: int) -> dict[str, Any]:
    if not isinstance(t, Mapping):
        raise InvalidArgumentError(f"tool {i} must be a mapping")
    tool = dict(t) if "type" in t else {"type": "function", "function": dict(t)}
    fn = tool.get("function")
    if tool["type"] != "function" or not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise InvalidArgumentError(f"tool {i} must be {{'type': 'function', 'function': {{'name': ..., ...}}}}")
    return tool
