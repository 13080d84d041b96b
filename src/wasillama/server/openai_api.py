"""The OpenAI wire format: request bodies into what a pod runs, results into response bodies.

Only shapes live here; nothing runs a model. A body is checked field by field (400 naming the
field), sampling values through the library's own Sampling (its defaults apply to what a body
leaves out), so the server accepts exactly what the library does.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import __version__
from ..errors import InvalidArgumentError
from ..options import ChatOptions, Sampling
from ..results import GenerationResult, TokenLogprob
from .errors import ApiError, bad_request

FINGERPRINT = f"wasillama-{__version__}"
MAX_N = 16  # choices per request
MAX_STOPS = 16

# request fields passed to Sampling as they are: OpenAI's, then llama.cpp's (as llama-server names them)
_SAMPLING_FIELDS = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty", "top_k", "min_p",
                    "typical_p", "repeat_penalty", "repeat_last_n", "dry_multiplier", "dry_base",
                    "dry_allowed_length", "dry_last_n", "xtc_probability", "xtc_threshold", "mirostat",
                    "mirostat_tau", "mirostat_eta", "grammar", "ignore_eos")
_FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context_full": "length", "cancelled": "stop",
           "tool_calls": "tool_calls"}


@dataclass(frozen=True)
class Plan:
    """A chat or completion request, checked: what each choice runs, and how to answer."""

    kind: str  # "chat" or "complete"
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int
    choices: tuple[dict[str, Any], ...]  # per choice: Work args ({"messages" | "prompt", "options"})
    prompts: tuple[Any, ...] = ()  # completions: each choice's prompt (for echo)
    echo: bool = False
    logprobs: int | None = None  # completions' top alternatives; chat's top_logprobs
    tools: bool = False

    @property
    def planned_tokens(self) -> int:
        """The most completion tokens it may use, what a tenant's quota is checked against."""
        return self.max_tokens * len(self.choices)


def _field(body: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise bad_request(f"'{key}' has the wrong type", param=key)
    if not isinstance(value, kinds):
        raise bad_request(f"'{key}' has the wrong type", param=key)
    return value


def _model(body: Mapping[str, Any], default: str) -> str:
    model = _field(body, "model", str, default)
    return model or default


def _sampling(body: Mapping[str, Any]) -> Sampling:
    values: dict[str, Any] = {}
    for key in _SAMPLING_FIELDS:
        if body.get(key) is not None:
            values[key] = body[key]
    bias = _field(body, "logit_bias", dict)
    if bias:
        try:
            values["logit_bias"] = {int(k): float(v) for k, v in bias.items()}
        except (TypeError, ValueError):
            raise bad_request("logit_bias maps token ids to numbers", param="logit_bias") from None
        if any(not -100 <= v <= 100 for v in values["logit_bias"].values()):
            raise bad_request("logit_bias values are between -100 and 100", param="logit_bias")
    fmt = _field(body, "response_format", dict)
    if fmt:
        kind = fmt.get("type")
        if kind == "json_object":
            values["json_schema"] = {"type": "object"}
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise bad_request("response_format.json_schema needs a 'schema' object", param="response_format")
            values["json_schema"] = spec.get("schema") or {}
        elif kind != "text":
            raise bad_request(f"unknown response_format type {kind!r}", param="response_format")
    try:
        for key, value in values.items():
            if key in ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "frequency_penalty",
                       "presence_penalty") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise bad_request(f"'{key}' is a number", param=key)
        if "seed" in values and (isinstance(values["seed"], bool) or not isinstance(values["seed"], int)):
            raise bad_request("'seed' is an integer", param="seed")
        return Sampling(**values)
    except (InvalidArgumentError, TypeError) as e:
        raise bad_request(str(e)) from e


def _stops(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stops, list | tuple) or not all(isinstance(s, str) for s in stops):
        raise bad_request("'stop' is a string or a list of strings", param="stop")
    if len(stops) > MAX_STOPS:
        raise bad_request(f"at most {MAX_STOPS} stop strings", param="stop")
    return tuple(stops)


def _n(body: Mapping[str, Any]) -> int:
    n = _field(body, "n", int, 1)
    if not 1 <= n <= MAX_N:
        raise bad_request(f"'n' is between 1 and {MAX_N}", param="n")
    return int(n)


def _max_tokens(body: Mapping[str, Any], default: int, limit: int) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return min(default, limit)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request("'max_tokens' is a non-negative integer", param="max_tokens")
    return value


def _per_choice(sampling: Sampling, n: int) -> list[Sampling]:
    """n choices differ: with a seed, choice i samples with seed + i (the same request gives the same choices)."""
    if n == 1 or sampling.seed is None:
        return [sampling] * n
    return [dataclasses.replace(sampling, seed=(sampling.seed + i) % 2**32) for i in range(n)]


def chat_plan(body: Mapping[str, Any], default_model: str, default_max_tokens: int, limit: int) -> Plan:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise bad_request("'messages' is a non-empty list of message objects", param="messages")
    for i, m in enumerate(messages):
        if m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise bad_request(f"messages[{i}] has an unknown role {m.get('role')!r}", param=f"messages[{i}].role")
    messages = [{**m, "role": "system"} if m.get("role") == "developer" else m for m in messages]
    sampling = _sampling(body)
    n = _n(body)
    logprobs = bool(_field(body, "logprobs", bool, False))
    top = _field(body, "top_logprobs", int, 0)
    if top and not logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    chat = _chat_options(body)
    max_tokens = _max_tokens(body, default_max_tokens, limit)
    options = {"stop": _stops(body), "max_tokens": max_tokens, "logprobs": logprobs, "top_logprobs": top}
    stream_options = _field(body, "stream_options", dict, {})
    return Plan("chat", _model(body, default_model), bool(_field(body, "stream", bool, False)),
                bool(stream_options.get("include_usage")), max_tokens,
                tuple({"messages": messages, "options": {**options, "sampling": s, "chat": chat}}
                      for s in _per_choice(sampling, n)),
                logprobs=top if logprobs else None, tools=bool(chat.tools))


def _chat_options(body: Mapping[str, Any]) -> ChatOptions:
    tools = _field(body, "tools", list, [])
    choice = body.get("tool_choice", "auto" if tools else "none")
    if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}}: that tool, required
        name = (choice.get("function") or {}).get("name")
        chosen = [t for t in tools if isinstance(t, dict) and (t.get("function") or t).get("name") == name]
        if not chosen:
            raise bad_request(f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
        tools, choice = chosen, "required"
    if choice not in ("auto", "none", "required"):
        raise bad_request("tool_choice is 'auto', 'none', 'required' or a function", param="tool_choice")
    extra = {k: v for k, v in body.get("chat_template_kwargs", {}).items()} if isinstance(
        body.get("chat_template_kwargs"), dict) else {}
    try:
        return ChatOptions(tools=tuple(tools) if choice != "none" else (), tool_choice=choice if tools else "auto",
                           parallel_tool_calls=bool(body.get("parallel_tool_calls", False)), template_kwargs=extra)
    except InvalidArgumentError as e:
        raise bad_request(str(e), param="tools") from e


def _prompts(body: Mapping[str, Any]) -> list[str | list[int]]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise bad_request("'prompt' is a string, a list of strings, or token ids", param="prompt")


def completion_plan(body: Mapping[str, Any], default_model: str, limit: int) -> Plan:
    for key in ("suffix",):
        if body.get(key) is not None:
            raise bad_request(f"'{key}' is not supported", param=key)
    n = _n(body)
    best_of = _field(body, "best_of", int, n)
    if best_of != n:
        raise bad_request("best_of other than n is not supported", param="best_of")
    prompts = _prompts(body)
    if len(prompts) * n > MAX_N:
        raise bad_request(f"at most {MAX_N} prompts times n", param="prompt")
    logprobs = _field(body, "logprobs", int, None)
    if logprobs is not None and not 0 <= logprobs <= 20:
        raise bad_request("'logprobs' is between 0 and 20", param="logprobs")
    sampling = _sampling(body)
    max_tokens = _max_tokens(body, 16, limit)  # OpenAI's default for completions
    options = {"stop": _stops(body), "max_tokens": max_tokens, "logprobs": logprobs is not None,
               "top_logprobs": logprobs or 0}
    choices = []
    for p in prompts:
        for s in _per_choice(sampling, n):
            choices.append({"prompt": p, "options": {**options, "sampling": s}})
    stream_options = _field(body, "stream_options", dict, {})
    return Plan("complete", _model(body, default_model), bool(_field(body, "stream", bool, False)),
                bool(stream_options.get("include_usage")), max_tokens, tuple(choices),
                prompts=tuple(p for p in prompts for _ in range(n)), echo=bool(_field(body, "echo", bool, False)),
                logprobs=logprobs)


def embedding_inputs(body: Mapping[str, Any]) -> tuple[list[str | list[int]], str]:
    """The texts (or token lists) of an embeddings request, and its encoding_format."""
    raw = body.get("input")
    if isinstance(raw, str):
        texts: list[str | list[int]] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        texts = list(raw)
    elif isinstance(raw, list) and raw and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        texts = [list(raw)]
    elif isinstance(raw, list) and raw and all(
            isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x) for x in raw):
        texts = [list(x) for x in raw]
    else:
        raise bad_request("'input' is a string, a list of strings, or token ids", param="input")
    if any(isinstance(t, str) and not t for t in texts):
        raise bad_request("an input is empty", param="input")
    if len(texts) > 2048:
        raise bad_request("at most 2048 inputs", param="input")
    fmt = _field(body, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise bad_request("encoding_format is 'float' or 'base64'", param="encoding_format")
    return texts, fmt


# ---- responses -------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(results: Sequence[GenerationResult], prompts_counted: int | None = None) -> dict[str, int]:
    prompt = prompts_counted if prompts_counted is not None else sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(result: GenerationResult) -> str:
    return _FINISH.get(result.finish_reason, "stop")


def chat_logprobs(scores: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if scores is None:
        return None

    def entry(text: str, lp: float) -> dict[str, Any]:
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(t.text, t.logprob), "top_logprobs": [entry(a.text, a.logprob) for a in t.top]}
                        for t in scores], "refusal": None}


def completion_logprobs(scores: list[TokenLogprob] | None, offset: int) -> dict[str, Any] | None:
    if scores is None:
        return None
    offsets, at = [], offset
    for t in scores:
        offsets.append(at)
        at += len(t.text)
    return {"tokens": [t.text for t in scores], "token_logprobs": [t.logprob for t in scores],
            "top_logprobs": [{a.text: a.logprob for a in t.top} for t in scores], "text_offset": offsets}


def chat_message(result: GenerationResult) -> dict[str, Any]:
    msg = result.message
    out: dict[str, Any] = {"role": "assistant", "content": result.text}
    if msg is not None:
        out["content"] = msg.content if msg.content or not msg.tool_calls else None
        if msg.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in msg.tool_calls]
        if msg.reasoning_content:
            out["reasoning_content"] = msg.reasoning_content
    return out


def chat_response(rid: str, model: str, results: Sequence[GenerationResult]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": i, "message": chat_message(r), "logprobs": chat_logprobs(r.logprobs),
                         "finish_reason": finish_reason(r)} for i, r in enumerate(results)],
            "usage": usage(results)}


def chat_chunk(rid: str, model: str, index: int, delta: dict[str, Any], finish: str | None = None,
               logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def completion_response(rid: str, plan: Plan, results: Sequence[GenerationResult],
                        prompt_texts: Sequence[str]) -> dict[str, Any]:
    choices = []
    for i, r in enumerate(results):
        head = prompt_texts[i] if plan.echo else ""
        choices.append({"index": i, "text": head + r.text, "finish_reason": finish_reason(r),
                        "logprobs": completion_logprobs(r.logprobs, len(head))})
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": plan.model,
            "system_fingerprint": FINGERPRINT, "choices": choices, "usage": usage(results)}


def completion_chunk(rid: str, model: str, index: int, text: str, finish: str | None = None,
                     logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}]}


def usage_chunk(rid: str, model: str, kind: str, results: Sequence[GenerationResult]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT, "choices": [],
            "usage": usage(results)}


def embeddings_response(model: str, vectors: npt.NDArray[np.float32], tokens: int, fmt: str) -> dict[str, Any]:
    def encode(v: npt.NDArray[np.float32]) -> Any:
        if fmt == "base64":
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        return [float(x) for x in v]

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def model_entry(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "wasillama"}


def sse(data: Mapping[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def error_event(e: ApiError) -> bytes:
    return sse(e.body())

