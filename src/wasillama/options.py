"""Option groups: what loading, a context and sampling take, each a frozen dataclass whose field
defaults are the library's defaults (the only place they are written: `generate`, `stream`,
`chat`, `generate_batch`, the CLI and the server read them from here).

Keyword arguments still work everywhere; they override the group's fields::

    ctx.generate("Hi", sampling=Sampling(temperature=0.2, seed=7))
    ctx.generate("Hi", temperature=0.2, seed=7)          # the same
    ctx.generate("Hi", sampling=creative, max_tokens=32, top_k=0)
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

from .errors import InvalidArgumentError

T = TypeVar("T")

Pooling = Literal["none", "mean", "cls", "last", "rank"]
# "fast": the backend's fastest kernels. "x86": round as llama.cpp's native x86 CPU builds do
# (AVX2 and AVX-512 machines alike), at some cost in wasm (docs/parity.md).
Numerics = Literal["fast", "x86"]

MAX_TOKENS = 256  # tokens generate() produces at most unless told otherwise

OnTrap = Literal["raise", "rebuild"]

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(value: int | str, what: str) -> int:
    """Bytes from an int or a string such as "512MiB", "2 GiB", "1.5GB" (or InvalidArgumentError)."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be a number of bytes, not {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _SIZE_UNITS:
            raise InvalidArgumentError(f"{what} must be bytes or a size such as '2GiB', not {value!r}")
        n = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if n <= 0:
        raise InvalidArgumentError(f"{what} must be positive, not {value!r}")
    return n


@dataclass(frozen=True)
class SandboxOptions:
    """The sandbox a Model runs in (Model.load; the wasm backend's own).

    max_memory: the most guest memory the sandbox may hold, in bytes or as "2GiB"; loading or
    decoding past it raises OutOfMemoryError, and the process and other Models never notice.
    default_timeout: the `timeout=` (seconds) of every call on this Model and its Contexts that
    takes one (load, load_lora, eval, generate and its variants, chat, embed, apply_chat_template),
    when the call names none.
    on_trap: after the guest traps (a hostile file's assert, a hard stop at a deadline) the
    sandbox is unusable; "raise" makes every later call say so, "rebuild" makes the next call
    build a fresh sandbox from the compiled module and load the model into it again (its
    Contexts start with empty caches). Nothing of the trapped instance is reused; the rebuild is
    not under the call's deadline (it loads a file that loaded before).
    """

    max_memory: int | str | None = None
    default_timeout: float | None = None
    on_trap: OnTrap = "raise"

    def __post_init__(self) -> None:
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", parse_size(self.max_memory, "max_memory"))
        if self.default_timeout is not None and not self.default_timeout > 0:
            raise InvalidArgumentError(f"default_timeout must be a positive number of seconds, not "
                                       f"{self.default_timeout!r}")
        if self.on_trap not in ("raise", "rebuild"):
            raise InvalidArgumentError(f"on_trap must be 'raise' or 'rebuild', not {self.on_trap!r}")

    @property
    def memory_cap(self) -> int | None:
        """max_memory in bytes."""
        return None if self.max_memory is None else int(self.max_memory)


@dataclass(frozen=True)
class LoadOptions:
    """How a model is loaded (Model.load). GPU fields need the native backend."""

    gpu_layers: int = 0  # layers to offload to the GPU; -1 = all
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()  # share of each GPU
    mmap: bool = True  # native path loads only
    mlock: bool = False
    vocab_only: bool = False  # the vocabulary alone: tokenize, no contexts
    check_tensors: bool = False  # validate tensor data while loading

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensor_split", tuple(float(x) for x in self.tensor_split))


@dataclass(frozen=True)
class ContextOptions:
    """A context's KV cache and compute (Model.new_context)."""

    n_ctx: int = 4096  # cache cells; 0 = the model's training length
    n_batch: int = 512  # most tokens one decode takes (longer prompts go in chunks of this)
    n_ubatch: int = 512  # physical batch inside a decode
    n_seq_max: int = 1  # sequences (parallel prompts, generate_batch); each gets n_ctx / n_seq_max
    n_threads: int = 0  # 0 = the backend's choice
    n_threads_batch: int = 0
    flash_attn: bool | None = None  # None = llama.cpp decides
    type_k: int = -1  # ggml type of the K cache; -1 = default (f16)
    type_v: int = -1
    offload_kqv: bool = True  # native GPU builds
    kv_unified: bool = False  # one buffer for all sequences (a token may belong to several)
    embeddings: bool = False  # compute embeddings (Context.embed) instead of logits
    pooling: Pooling | None = None  # how embeddings pool; None = as the model says
    # "x86": the same logits as native llama.cpp on x86 (wasm: Q8_0, Q4_0 and Q4_1 weights through
    # kernels that round as x86's do, about half as fast on those types; the native backend on
    # x86 always does). Both are deterministic in wasm. See docs/parity.md.
    numerics: Numerics = "fast"

    def __post_init__(self) -> None:
        if self.numerics not in get_args(Numerics):
            raise InvalidArgumentError(f"numerics must be 'fast' or 'x86', not {self.numerics!r}")
        if self.pooling is not None and self.pooling not in ("none", "mean", "cls", "last", "rank"):
            raise InvalidArgumentError(f"unknown pooling {self.pooling!r}: use none, mean, cls, last or rank")
        if self.n_ctx < 0 or self.n_batch <= 0 or self.n_ubatch <= 0:
            raise InvalidArgumentError("n_ctx must be >= 0, n_batch and n_ubatch > 0")
        if not 1 <= self.n_seq_max <= 256:
            raise InvalidArgumentError("n_seq_max must be between 1 and 256")
        if not (0 <= self.n_threads <= MAX_THREADS and 0 <= self.n_threads_batch <= MAX_THREADS):
            raise InvalidArgumentError(f"n_threads and n_threads_batch must be between 0 (all cores) and {MAX_THREADS}")


MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS: more would fail an assertion inside ggml
DRY_BREAKERS = ("\n", ":", '"', "*")  # llama.cpp's default sequence breakers


@dataclass(frozen=True)
class Sampling:
    """How each next token is chosen: llama.cpp's sampler chain, run inside the backend, in
    llama.cpp's order (logit bias, penalties, DRY, top-k, typical, top-p, min-p, XTC,
    temperature, then a draw; or temperature and mirostat). temperature <= 0 is greedy."""

    temperature: float = 0.8
    top_k: int = 40  # 0 = off
    top_p: float = 0.95  # 1 = off
    min_p: float = 0.05  # 0 = off
    typical_p: float = 1.0  # 1 = off
    repeat_penalty: float = 1.0  # 1 = off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_last_n: int = 64  # tokens the penalties look back over
    dry_multiplier: float = 0.0  # 0 = off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_last_n: int = 64  # tokens DRY scans for repetitions
    dry_sequence_breakers: tuple[str, ...] = DRY_BREAKERS
    xtc_probability: float = 0.0  # 0 = off
    xtc_threshold: float = 0.1
    mirostat: int = 0  # 0 = off, 1 = v1, 2 = v2 (replaces top-k ... min-p)
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # token id -> added to its logit
    seed: int | None = None  # None = a random seed per call; the same seed gives the same text
    grammar: str | None = None  # GBNF; the output follows its "root" rule
    json_schema: str | Mapping[str, Any] | None = None  # the output is a JSON document this schema accepts
    ignore_eos: bool = False  # never end on an end-of-generation token

    def __post_init__(self) -> None:
        bias = {int(k): float(v) for k, v in dict(self.logit_bias).items()}
        object.__setattr__(self, "logit_bias", _FrozenMap(bias))
        object.__setattr__(self, "dry_sequence_breakers", tuple(self.dry_sequence_breakers))
        if self.json_schema is not None and not isinstance(self.json_schema, str):
            object.__setattr__(self, "json_schema", json.dumps(self.json_schema, sort_keys=True))
        if self.json_schema is not None and self.grammar is not None:
            raise InvalidArgumentError("give a grammar or a json_schema, not both")
        checks = [
            (self.top_k >= 0, "top_k must be >= 0"),
            (0.0 <= self.top_p <= 1.0, "top_p must be in [0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (0.0 < self.typical_p <= 1.0, "typical_p must be in (0, 1]"),
            (self.repeat_penalty > 0.0, "repeat_penalty must be > 0"),
            (self.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
            (self.dry_multiplier >= 0.0 and self.dry_base >= 0.0, "dry_multiplier and dry_base must be >= 0"),
            (self.dry_allowed_length >= 0 and self.dry_last_n >= 0, "DRY lengths must be >= 0"),
            (0.0 <= self.xtc_probability <= 1.0, "xtc_probability must be in [0, 1]"),
            (self.mirostat in (0, 1, 2), "mirostat must be 0, 1 or 2"),
            (self.mirostat_tau >= 0.0 and self.mirostat_eta >= 0.0, "mirostat_tau and _eta must be >= 0"),
            (all(not math.isnan(v) for v in bias.values()), "a logit bias is NaN"),
            (all(math.isfinite(x) for x in (self.temperature, self.top_p, self.min_p, self.typical_p,
                                            self.repeat_penalty, self.frequency_penalty, self.presence_penalty)),
             "sampling parameters must be finite numbers"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 and self.mirostat == 0

    @property
    def penalised(self) -> bool:
        """Whether the chain needs the prompt as history (penalties or DRY)."""
        return (self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
                or self.dry_multiplier > 0.0)


ToolChoice = Literal["auto", "required", "none"]


@dataclass(frozen=True)
class ChatOptions:
    """How a conversation is rendered (Context.chat, Model.apply_chat_template): by the model's
    chat template, or `template` (Jinja source) instead, with llama.cpp's chat code in the
    backend. `tools` are OpenAI function tools ({"type": "function", "function": {"name",
    "description", "parameters": JSON schema}}, or the function part alone); with them the
    reply's tool calls are parsed into result.message.tool_calls, and their arguments are held to
    each tool's schema by a grammar that starts where the model begins a call."""

    template: str | None = None
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: ToolChoice = "auto"  # "required": the reply is tool calls; "none": never
    parallel_tool_calls: bool = False  # several calls in one reply (when the template can)
    enable_thinking: bool = True  # for templates that have a thinking switch
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)  # extra template variables
    # message text that spells a control token ("<|im_start|>") is refused: it would forge turns
    allow_control_tokens: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tools", tuple(self.tools))
        if self.tool_choice not in ("auto", "required", "none"):
            raise InvalidArgumentError(f"tool_choice must be 'auto', 'required' or 'none', not {self.tool_choice!r}")
        if self.tool_choice == "required" and not self.tools:
            raise InvalidArgumentError("tool_choice='required' needs tools")


class _FrozenMap(dict[int, float]):
    """A dict that cannot change (so a frozen Sampling stays frozen) and hashes by content."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Sampling.logit_bias cannot be changed: make a new Sampling (dataclasses.replace)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def names(group: type[Any]) -> frozenset[str]:
    """The field names of an option group."""
    return frozenset(f.name for f in dataclasses.fields(group))


def resolve(group: type[T], base: T | None, overrides: Mapping[str, Any], what: str) -> T:
    """`base` (or the group's defaults) with `overrides` applied; an unknown name is an error."""
    unknown = set(overrides) - names(group)
    if unknown:
        raise TypeError(f"{what}: unknown option(s) {', '.join(sorted(unknown))}")
    if base is None:
        return group(**overrides)
    return dataclasses.replace(base, **overrides) if overrides else base  # type: ignore[type-var]
