"""The Backend protocol: the shim's ABI in Python terms, and where backends are found.

This is the cut between the public API (Model, Context) and the machinery that runs llama.cpp:
only ints, bytes, strings and numpy arrays cross it. It has one implementation,
`shim.backend.ShimBackend`, over a transport per backend: the wasm backend (wasmtime, sandboxed,
always available, built in) and the native backend (the `wasillama-native` plugin). Both are
found the same way, by name, through the ``wasillama.backends`` entry point group.

Handles are plain ints that belong to one backend instance. A wasm backend instance is one
sandbox (one wasmtime Store and Instance) and holds one model with its contexts; the native
backend instance is shared by every native model in the process.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .errors import BackendUnavailableError, ModelNotFoundError
from .gguf_file import Joined, join_splits, split_parts
from .shim.abi import ContextInfo, ContextParams, ModelInfo, ModelParams, SamplerStep
from .shim.transport import Capabilities

TokenArray = npt.NDArray[np.int32]
Buffer = bytes | bytearray | memoryview | mmap.mmap

ENTRY_POINT_GROUP = "wasillama.backends"
HUB_SCHEME = "hf://"


@dataclass(frozen=True)
class Generated:
    """What one wl_context_generate call produced, per sequence in the order asked."""

    tokens: list[TokenArray]
    stops: list[int]  # abi.STOP_*
    logprobs: list[npt.NDArray[np.float32]] | None = None  # per token: its log-probability
    top_tokens: list[TokenArray] | None = None  # per token: the n_top likeliest, [n_out, n_top]
    top_logprobs: list[npt.NDArray[np.float32]] | None = None


@dataclass(frozen=True)
class ModelSource:
    """Where the model bytes come from: a file path, an in-memory buffer, or the parts of a split
    GGUF (`path` is its first part; the host serves them joined as one GGUF, see gguf_file)."""

    path: Path | None = None
    buffer: Buffer | None = None
    joined: Joined | None = None

    @classmethod
    def of(cls, source: str | os.PathLike[str] | Buffer, *, quiet: bool = True) -> ModelSource:
        """A source for a path, bytes, or a Hugging Face hub reference ("hf://owner/repo[/file]",
        fetched into the hub's cache unless it is there: wasillama.hub)."""
        if isinstance(source, (bytes, bytearray, memoryview, mmap.mmap)):
            return cls(buffer=source)
        if isinstance(source, str) and source.startswith(HUB_SCHEME):
            from .hub import fetch  # the hub client only when asked for: nothing at import time

            source = fetch(source[len(HUB_SCHEME):], quiet=quiet)
        path = Path(source)
        parts = split_parts(path)
        for p in parts or [path]:
            if not p.is_file():
                raise ModelNotFoundError(f"model file not found: {p}" + (f" (a part of {path})" if parts else ""))
            if not os.access(p, os.R_OK):
                raise ModelNotFoundError(f"model file not readable: {p}")
        return cls(path=path, joined=join_splits(parts) if parts else None)

    @property
    def size(self) -> int:
        if self.buffer is not None:
            return memoryview(self.buffer).nbytes
        if self.joined is not None:
            return self.joined.size
        assert self.path is not None
        return self.path.stat().st_size

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"<{self.size} bytes in memory>"

    @property
    def name(self) -> str:
        """A short name for messages and progress bars."""
        return self.path.name if self.path is not None else "model bytes"


@dataclass(frozen=True)
class Device:
    """A compute device llama.cpp can use in this backend."""

    name: str
    description: str
    kind: str  # "cpu", "gpu" or "other"
    free_bytes: int
    total_bytes: int

    @classmethod
    def parse_all(cls, text: str) -> list[Device]:
        """Parse wl_devices' output: one tab-separated line per device."""
        out = []
        for line in text.splitlines():
            name, desc, kind, free, total = line.split("\t")
            out.append(cls(name, desc, kind, int(free), int(total)))
        return out


class Backend(Protocol):
    """What Model and Context need from a backend. Every method raises WasillamaError subclasses."""

    name: str
    sandboxed: bool
    capabilities: Capabilities

    def close(self, reason: str | None = None) -> None: ...  # a reason: later calls raise BackendError(reason)

    @property
    def poisoned(self) -> str | None:
        """Why this backend instance can no longer be used (a trap in the wasm guest), or None."""
        ...

    def system_info(self) -> str: ...

    def devices(self) -> list[Device]: ...

    # models
    # progress(fraction of the file read); returning False stops the load (ModelLoadError)
    def load_model(self, source: ModelSource, params: ModelParams, tensor_split: Sequence[float] = (),
                   progress: Callable[[float], bool | None] | None = None) -> int: ...
    def free_model(self, model: int) -> None: ...
    def load_lora(self, model: int, source: ModelSource) -> int: ...  # its bytes served by the host
    def free_lora(self, lora: int) -> None: ...
    def set_loras(self, ctx: int, loras: Sequence[int], scales: Sequence[float]) -> None: ...
    def model_info(self, model: int) -> ModelInfo: ...
    def model_metadata(self, model: int) -> dict[str, str]: ...
    def model_desc(self, model: int) -> str: ...
    def chat_template(self, model: int, name: str | None = None) -> str | None: ...

    # vocabulary
    def tokenize(self, model: int, text: bytes, add_special: bool, parse_special: bool) -> TokenArray: ...
    def detokenize(self, model: int, tokens: Sequence[int] | TokenArray, keep_special: bool,
                   render_special: bool) -> bytes: ...
    def token_piece(self, model: int, token: int, render_special: bool) -> bytes: ...
    def eog_tokens(self, model: int) -> TokenArray: ...
    def json_schema_to_grammar(self, schema: str) -> str: ...  # GBNF, by llama.cpp's converter
    # chat (llama.cpp's chat code with its Jinja engine): JSON in, JSON out (wl_chat_apply/parse)
    def chat_render(self, model: int, request: str) -> str: ...
    def chat_parse(self, parser: str, text: str, partial: bool) -> str: ...

    # contexts
    def new_context(self, model: int, params: ContextParams) -> int: ...
    def free_context(self, ctx: int) -> None: ...
    def context_info(self, ctx: int) -> ContextInfo: ...
    def set_abort(self, ctx: int, on: bool) -> None: ...  # any thread; stops the running decode
    def last_error(self) -> str: ...  # this thread's last failed call
    def decode(self, ctx: int, tokens: TokenArray, pos: TokenArray | None = None,
               seq: TokenArray | None = None, logits: npt.NDArray[np.int8] | None = None, *,
               seq_ids: Sequence[Sequence[int]] | None = None, background: bool = False) -> int: ...
    def logits(self, ctx: int, idx: int = -1) -> npt.NDArray[np.float32]: ...
    def embeddings_seq(self, ctx: int, seq: int) -> npt.NDArray[np.float32]: ...  # pooled, of the last decode
    def embeddings_token(self, ctx: int, idx: int) -> npt.NDArray[np.float32]: ...
    def state_get(self, ctx: int, seq: int) -> bytes: ...  # what the sequence's cache holds
    def state_set(self, ctx: int, seq: int, data: bytes) -> None: ...
    def memory_clear(self, ctx: int) -> None: ...
    def memory_seq_rm(self, ctx: int, seq: int, p0: int, p1: int) -> None: ...
    def memory_seq_cp(self, ctx: int, src: int, dst: int, p0: int, p1: int) -> None: ...
    def memory_seq_pos_range(self, ctx: int, seq: int) -> tuple[int, int]: ...  # (-1, -1): empty
    def memory_seq_keep(self, ctx: int, seq: int) -> None: ...
    def memory_seq_add(self, ctx: int, seq: int, p0: int, p1: int, delta: int) -> None: ...

    # samplers
    def new_sampler(self, model: int, steps: Sequence[SamplerStep]) -> int: ...
    def free_sampler(self, sampler: int) -> None: ...
    def sampler_reset(self, sampler: int) -> None: ...
    def sampler_accept(self, sampler: int, tokens: TokenArray) -> None: ...
    def sampler_sample(self, sampler: int, ctx: int, idx: int = -1) -> int: ...
    def generate_multi(self, ctx: int, seqs: Sequence[int], samplers: Sequence[int], pending: Sequence[int],
                       max_tokens: Sequence[int], logprobs: int | None = None) -> Generated: ...


class BackendPlugin(Protocol):
    """What a ``wasillama.backends`` entry point resolves to. Importing it must be cheap: the
    backend's machinery (wasmtime, a native library) loads in `create`."""

    name: str
    per_model: bool               # True: a fresh backend per model, closed with it; False: one shared
    capabilities: Capabilities    # known before anything is loaded (backend choice uses it)

    def create(self, *, memory_cap: int | None = None) -> Backend:
        """A backend instance; `memory_cap` (bytes) only where capabilities.memory_cap: what the
        instance may ever hold, fixed when it is made."""
        ...


# The wasm backend ships with wasillama: found without package metadata (a source checkout).
_BUILT_IN = {"wasm": metadata.EntryPoint("wasm", "wasillama.wasm:plugin", ENTRY_POINT_GROUP)}


def installed_plugins() -> dict[str, metadata.EntryPoint]:
    """Backend plugins by name: the built-in wasm backend and those registered through the entry
    point group."""
    return {**_BUILT_IN, **{ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}}


def load_plugin(name: str) -> BackendPlugin:
    eps = installed_plugins()
    if name not in eps:
        hint = " (pip install ./native_fallback)" if name == "native" else ""
        raise BackendUnavailableError(f"backend {name!r} is not installed{hint}")
    try:
        plugin: BackendPlugin = eps[name].load()
    except Exception as e:  # a broken plugin must not take the host down
        raise BackendUnavailableError(f"backend plugin {name!r} failed to load: {e}") from e
    return plugin
