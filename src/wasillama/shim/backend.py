"""ShimBackend: the Backend protocol, every shim call written once, over a Transport.

The wasm backend is ``ShimBackend(WasmTransport())`` — one sandbox, one model and its contexts —
and the native plugin is ``ShimBackend(CtypesTransport(library))``, shared by every native model
of the process. What differs between them is the transport and its `Capabilities`; nothing here
asks which backend it is.

Threads: the transport's lock is held for each call sequence (alloc, call, read, free). In wasm
that serialises every call into one sandbox; natively it is a no-op and calls run in parallel
(a context and its samplers are used by one thread at a time: Context enforces it).
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from ..backend import Device, Generated, ModelSource, TokenArray
from ..errors import (
    BackendError,
    ChatTemplateError,
    ClosedError,
    InvalidArgumentError,
    ModelLoadError,
    ModelTooLargeError,
    OutOfMemoryError,
    UnsupportedOptionError,
    WasillamaError,
)
from . import abi
from .abi import ContextInfo, ContextParams, ModelInfo, ModelParams, SamplerStep
from .hostio import Progress, Segments
from .transport import Transport

T = TypeVar("T")
_I32 = (-(2**31), 2**31 - 1)


def i32(value: int, what: str) -> int:
    """An int32 argument, or InvalidArgumentError (the same on every transport)."""
    try:
        v = int(value)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"{what} must be an integer: {e}") from e
    if not _I32[0] <= v <= _I32[1]:
        raise InvalidArgumentError(f"{what} is out of the int32 range: {v}")
    return v


def i32_array(values: Sequence[int] | npt.ArrayLike, what: str) -> npt.NDArray[np.int32]:
    """A one-dimensional int32 array, or InvalidArgumentError."""
    try:
        wide = np.asarray(values, dtype=np.int64)
    except (OverflowError, ValueError, TypeError) as e:
        raise InvalidArgumentError(f"{what} must be int32 values: {e}") from e
    if wide.ndim != 1:
        raise InvalidArgumentError(f"{what} must be one-dimensional")
    if wide.size and (wide.min() < _I32[0] or wide.max() > _I32[1]):
        raise InvalidArgumentError(f"{what} must be int32 values")
    return np.ascontiguousarray(wide, dtype=np.int32)


class ShimBackend:
    """See `wasillama.backend.Backend`."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self.name = transport.name
        self.capabilities = transport.capabilities
        self.sandboxed = transport.capabilities.sandboxed
        self._closed = False
        self._retired: str | None = None
        self._abort_lock = threading.Lock()
        self._abort_flags: dict[int, int] = {}  # context -> host address of its int32 abort flag
        with self._t.lock:
            major, minor = abi.split_version(self._t.call("wl_abi_version"))
            if major != abi.ABI_VERSION or minor < abi.ABI_MINOR:
                raise BackendError(f"the {self.name} shim speaks ABI {major}.{minor}, this wasillama needs "
                                   f"{abi.ABI_VERSION}.{abi.ABI_MINOR} or a later {abi.ABI_VERSION}.x")
            self._check("wl_init")

    @property
    def transport(self) -> Transport:
        return self._t

    @property
    def poisoned(self) -> str | None:
        return self._t.poisoned

    # ---- plumbing ----------------------------------------------------------------------------

    def _locked(self, fn: Callable[[], T]) -> T:
        with self._t.lock:
            if self._closed:
                if self._retired is not None:
                    raise BackendError(self._retired)
                raise ClosedError(f"the {self.name} backend was closed")
            return fn()

    def _check(self, name: str, *args: int) -> int:
        """A call that returns a status; a negative one raises its WasillamaError."""
        rc = self._t.call(name, *args)
        if rc < 0:
            # read before _last_error, whose own buffer is an allocation too
            refusal = self._t.memory_refusal() if self.capabilities.memory_cap else None
            message = self._last_error()
            if refusal is not None:
                raise OutOfMemoryError(f"{message}: {refusal}")
            raise abi.error_for(rc, message)
        return rc

    def _last_error(self) -> str:
        """The message of this thread's last failed call (the shim keeps one per thread)."""
        with self._scratch(4096) as buf:
            n = self._t.call("wl_error_last", buf, 4096)
            return self._t.read(buf, min(max(n, 0), 4096)).decode("utf-8", "replace")

    @contextmanager
    def _scratch(self, n: int) -> Iterator[int]:
        p = self._t.alloc(max(n, 1))
        try:
            yield p
        finally:
            self._t.free(p)

    @contextmanager
    def _put(self, data: bytes | npt.NDArray[np.generic] | None) -> Iterator[int]:
        """Copies data into transport memory for one call (None: a NULL pointer)."""
        if data is None:
            yield 0
            return
        raw = data.tobytes() if isinstance(data, np.ndarray) else data
        with self._scratch(len(raw)) as p:
            self._t.write(p, raw)
            yield p

    def _fill(self, name: str, *args: int, cap: int, itemsize: int = 1) -> bytes:
        """A call that writes up to `cap` items into a buffer (its last two arguments) and returns
        how many it has in all: grow the buffer and retry until they fit."""
        while True:
            with self._scratch(cap * itemsize) as buf:
                n = self._check(name, *args, buf, cap)
                if n <= cap:
                    return self._t.read(buf, n * itemsize)
            cap = n

    def _string(self, name: str, *args: int, cap: int = 1024) -> str:
        return self._locked(lambda: self._fill(name, *args, cap=cap)).decode("utf-8", "replace")

    def close(self, reason: str | None = None) -> None:
        """Free the instance. With a reason (a rebuilt sandbox's old instance), later calls raise
        BackendError saying it instead of ClosedError: the Model they came from is still open."""
        with self._t.lock, self._abort_lock:
            if not self._closed:
                self._retired = reason
                self._closed = True
                self._abort_flags.clear()
                self._t.close()

    def last_error(self) -> str:
        return self._locked(self._last_error)

    def system_info(self) -> str:
        return self._t.info_prefix + self._string("wl_system_info")

    def devices(self) -> list[Device]:
        return Device.parse_all(self._string("wl_devices"))

    # ---- models ------------------------------------------------------------------------------

    def _check_model_options(self, source: ModelSource, params: ModelParams, tensor_split: Sequence[float]) -> None:
        caps = self.capabilities
        if not caps.gpu and (params.n_gpu_layers != 0 or params.main_gpu != 0 or tensor_split):
            raise UnsupportedOptionError(f"the {self.name} backend runs on the CPU: gpu_layers, main_gpu and "
                                         "tensor_split need backend='native'")
        if not caps.mlock and params.use_mlock:
            raise UnsupportedOptionError(f"the {self.name} backend cannot mlock: its weights live in the "
                                         "sandbox's memory")
        if caps.max_model_bytes is not None and source.size > caps.max_model_bytes:
            raise ModelTooLargeError(
                f"the model is {source.size / 2**30:.2f} GiB; a wasm32 sandbox addresses 4 GiB in all "
                f"(weights + KV cache + compute), so models above {caps.max_model_bytes / 2**30:.2f} GiB "
                "need backend='native'")

    def load_model(self, source: ModelSource, params: ModelParams, tensor_split: Sequence[float] = (),
                   progress: Progress | None = None) -> int:
        self._check_model_options(source, params, tensor_split)
        try:
            split = np.ascontiguousarray(tensor_split, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"tensor_split must be a sequence of floats: {e}") from e
        size = source.size
        if size == 0:
            raise ModelLoadError(f"cannot load a model from {source.describe()}: no bytes")

        def run() -> int:
            with self._put(params.pack()) as p, self._put(split if split.size else None) as sp:
                if source.path is not None and self.capabilities.path_loads:  # mapped: no reads to count
                    if progress is not None and progress(0.0) is False:
                        raise ModelLoadError("loading was cancelled by the progress callback")
                    with self._put(os.fsencode(source.path) + b"\0") as path:
                        handle = self._check("wl_model_load_path", path, p, sp, split.size)
                    if progress is not None:
                        progress(1.0)
                    return handle
                with self._served(source, progress) as sid:
                    return self._check_load(source, "wl_model_load_host", sid, size, p, sp, split.size)

        return self._locked(run)

    @contextmanager
    def _served(self, source: ModelSource, progress: Progress | None = None) -> Iterator[int]:
        """The source's bytes, served to wl_host_read under the id yielded, while the block runs
        (with `progress` told how far the reads got). A file is read with pread, not mapped: a
        file that shrinks under a mapping raises SIGBUS, which would kill the host process."""
        with ExitStack() as files:
            if source.joined is not None:
                fds = [files.enter_context(open(p, "rb")).fileno() for p in source.joined.parts]
                sid = self._t.sources.add(Segments(source.joined.segments, fds))
            elif source.path is not None:
                sid = self._t.sources.add(files.enter_context(open(source.path, "rb")).fileno())
            else:
                sid = self._t.sources.add(source.buffer)  # type: ignore[arg-type]
            with self._serving(source, sid, progress):
                yield sid

    @contextmanager
    def _serving(self, source: ModelSource, sid: int, progress: Progress | None) -> Iterator[None]:
        if progress is not None:
            self._t.sources.watch(sid, source.size, progress)
        try:
            try:
                yield
            except WasillamaError as e:
                if self._t.sources.cancelled(sid):
                    raise ModelLoadError(f"loading {source.describe()} was cancelled by the progress callback") from e
                raise
        finally:
            self._t.sources.remove(sid)

    def _check_load(self, source: ModelSource, name: str, *args: int) -> int:
        try:
            return self._check(name, *args)
        except BackendError as e:
            if self._t.poisoned is None:
                raise
            raise ModelLoadError(f"llama.cpp aborted while loading {source.describe()}: the file is "
                                 f"corrupt or hostile ({e})") from e

    def load_lora(self, model: int, source: ModelSource) -> int:
        size = source.size
        if size == 0:
            raise ModelLoadError(f"cannot load a LoRA adapter from {source.describe()}: no bytes")

        def run() -> int:
            with self._served(source) as sid:
                return self._check_load(source, "wl_lora_load_host", i32(model, "model"), sid, size)

        return self._locked(run)

    def free_lora(self, lora: int) -> None:
        self._locked(lambda: self._check("wl_lora_free", i32(lora, "LoRA")))

    def set_loras(self, ctx: int, loras: Sequence[int], scales: Sequence[float]) -> None:
        handles = i32_array(loras, "LoRA handles")
        weights = np.asarray(scales, dtype=np.float32).reshape(-1)
        if weights.size != handles.size:
            raise InvalidArgumentError("one scale per LoRA adapter")

        def run() -> None:
            with self._put(handles if handles.size else None) as hp, self._put(weights if weights.size else None) as wp:
                self._check("wl_context_set_loras", i32(ctx, "context"), hp, wp, handles.size)

        self._locked(run)

    def free_model(self, model: int) -> None:
        # The shim keeps the weights alive until the model's last context is freed.
        self._locked(lambda: self._check("wl_model_free", i32(model, "model")))

    def model_info(self, model: int) -> ModelInfo:
        def run() -> ModelInfo:
            with self._put(ModelInfo.room()) as p:
                # a module of this minor version or later fills every field this host knows
                self._check("wl_model_info_get", i32(model, "model"), p)
                return ModelInfo.unpack(self._t.read(p, abi.MODEL_INFO.size))

        return self._locked(run)

    def model_metadata(self, model: int) -> dict[str, str]:
        def run() -> dict[str, str]:
            n = self._check("wl_model_meta_count", i32(model, "model"))
            out: dict[str, str] = {}
            for i in range(n):
                key = self._fill("wl_model_meta_key", model, i, cap=256)
                out[key.decode("utf-8", "replace")] = self._fill("wl_model_meta_value", model, i,
                                                                 cap=256).decode("utf-8", "replace")
            return out

        return self._locked(run)

    def model_desc(self, model: int) -> str:
        return self._string("wl_model_desc", i32(model, "model"))

    def chat_template(self, model: int, name: str | None = None) -> str | None:
        def run() -> str | None:
            with self._put(name.encode() + b"\0" if name else None) as name_p:
                try:
                    return self._fill("wl_model_chat_template", model, name_p, cap=4096).decode(
                        "utf-8", "replace")
                except ChatTemplateError:
                    return None

        return self._locked(run)

    # ---- vocabulary --------------------------------------------------------------------------

    def tokenize(self, model: int, text: bytes, add_special: bool, parse_special: bool) -> TokenArray:
        if isinstance(text, str):
            text = text.encode("utf-8")
        raw_text = bytes(text)
        flags = abi.tok_flags(add_special, parse_special)

        def run() -> TokenArray:
            with self._put(raw_text) as tp:
                raw = self._fill("wl_vocab_tokenize", i32(model, "model"), tp, len(raw_text), flags,
                                 cap=len(raw_text) + 8, itemsize=4)
                return np.frombuffer(raw, dtype=np.int32).copy()

        return self._locked(run)

    def detokenize(self, model: int, tokens: Sequence[int] | TokenArray, keep_special: bool,
                   render_special: bool) -> bytes:
        arr = i32_array(tokens, "tokens")
        flags = abi.tok_flags(keep_special, render_special)

        def run() -> bytes:
            with self._put(arr) as tp:
                return self._fill("wl_vocab_detokenize", i32(model, "model"), tp, arr.size, flags,
                                  cap=8 * arr.size + 64)

        return self._locked(run)

    def token_piece(self, model: int, token: int, render_special: bool) -> bytes:
        flags = abi.tok_flags(False, render_special)
        return self._locked(lambda: self._fill("wl_vocab_piece", i32(model, "model"), i32(token, "token"),
                                               flags, cap=64))

    def json_schema_to_grammar(self, schema: str) -> str:
        raw = schema.encode("utf-8", "surrogatepass")

        def run() -> bytes:
            with self._put(raw) as sp:
                return self._fill("wl_json_schema_to_grammar", sp, len(raw), cap=4 * len(raw) + 1024)

        return self._locked(run).decode("utf-8", "replace")

    def eog_tokens(self, model: int) -> TokenArray:
        raw = self._locked(lambda: self._fill("wl_vocab_eog_tokens", i32(model, "model"), cap=16, itemsize=4))
        return np.frombuffer(raw, dtype=np.int32).copy()

    def token_is_eog(self, model: int, token: int) -> bool:
        return bool(self._locked(lambda: self._check("wl_vocab_is_eog", i32(model, "model"),
                                                     i32(token, "token"))))

    def chat_render(self, model: int, request: str) -> str:
        raw = request.encode("utf-8", "surrogatepass")

        def run() -> bytes:
            with self._put(raw) as rp:
                return self._fill("wl_chat_apply", i32(model, "model"), rp, len(raw), cap=2 * len(raw) + 4096)

        return self._locked(run).decode("utf-8", "replace")

    def chat_parse(self, parser: str, text: str, partial: bool) -> str:
        raw_parser, raw_text = parser.encode("utf-8", "surrogatepass"), text.encode("utf-8", "surrogatepass")

        def run() -> bytes:
            with self._put(raw_parser) as pp, self._put(raw_text) as tp:
                return self._fill("wl_chat_parse", pp, len(raw_parser), tp, len(raw_text), int(partial),
                                  cap=2 * len(raw_text) + 1024)

        return self._locked(run).decode("utf-8", "replace")

    # ---- contexts ----------------------------------------------------------------------------

    def new_context(self, model: int, params: ContextParams) -> int:
        caps = self.capabilities
        if caps.threads:
            if params.n_threads <= 0 or params.n_threads_batch <= 0:  # 0 = every core, not llama.cpp's 4
                cores = os.cpu_count() or 1
                params = replace(params, n_threads=params.n_threads or cores,
                                 n_threads_batch=params.n_threads_batch or cores)
        elif params.n_threads > 1 or params.n_threads_batch > 1:
            raise UnsupportedOptionError(
                f"the {self.name} backend is single-threaded: n_threads must be 1 (or 0 for the default)")
        if params.flash_attn == 1 and not caps.flash_attn:
            raise UnsupportedOptionError("flash_attn is only available with backend='native'")

        def run() -> int:
            with self._put(params.pack()) as p:
                ctx = self._check("wl_context_new", i32(model, "model"), p)
            try:
                with self._scratch(self._t.pointer_size) as p:
                    self._check("wl_context_abort_flag", ctx, p)
                    raw = self._t.read(p, self._t.pointer_size)
                    flag = int.from_bytes(raw, "little")
                host_addr = self._t.host_address(flag, 4)
            except BaseException:
                self._t.call("wl_context_free", ctx)
                raise
            with self._abort_lock:
                self._abort_flags[ctx] = host_addr
            return ctx

        return self._locked(run)

    def free_context(self, ctx: int) -> None:
        with self._abort_lock:
            self._abort_flags.pop(ctx, None)  # set_abort can no longer touch its flag
        self._locked(lambda: self._check("wl_context_free", i32(ctx, "context")))

    def context_info(self, ctx: int) -> ContextInfo:
        def run() -> ContextInfo:
            n = ContextInfo.COUNT
            with self._scratch(4 * n) as p:
                self._check("wl_context_info", i32(ctx, "context"), p, n)  # this minor version has them all
                return ContextInfo(*struct.unpack(f"<{n}i", self._t.read(p, 4 * n)))

        return self._locked(run)

    def set_abort(self, ctx: int, on: bool) -> None:
        # Any thread, without the transport lock (the decode this interrupts holds it), and with
        # no call into the shim: the flag's host address was found when the context was made
        # (wasmtime never moves a 32-bit linear memory: it reserves the whole 4 GiB up front).
        with self._abort_lock:  # held while writing, so free_context cannot free the flag under us
            addr = self._abort_flags.get(ctx)
            if addr is None:
                raise ClosedError(f"invalid context handle {ctx}")
            ctypes.c_int32.from_address(addr).value = int(on)

    def decode(self, ctx: int, tokens: TokenArray, pos: TokenArray | None = None, seq: TokenArray | None = None,
               logits: npt.NDArray[np.int8] | None = None, *, seq_ids: Sequence[Sequence[int]] | None = None,
               background: bool = False) -> int:
        """One batch (at most n_batch tokens: the caller splits). Token i goes to sequence seq[i]
        (or to every sequence in seq_ids[i]); logits[i] asks for its output. background=True:
        one chunk of long work, which lets other threads' calls into the same sandbox go first
        (see shim.turns). Returns the number of outputs."""
        tok = i32_array(tokens, "tokens")
        if seq is not None and seq_ids is not None:
            raise InvalidArgumentError("give seq or seq_ids, not both")
        n_ids: npt.NDArray[np.int32] | None = None
        ids: npt.NDArray[np.int32] | None = i32_array(seq, "seq") if seq is not None else None
        if seq_ids is not None:
            if len(seq_ids) != tok.size:
                raise InvalidArgumentError(f"seq_ids must have one entry per token ({tok.size})")
            n_ids = i32_array([len(x) for x in seq_ids], "seq_ids")
            ids = i32_array([s for x in seq_ids for s in x], "seq_ids")
        extras: list[npt.NDArray[np.generic] | None] = [
            i32_array(pos, "pos") if pos is not None else None,
            np.ascontiguousarray(logits, dtype=np.int8) if logits is not None else None]
        for name, e in (("pos", extras[0]), ("seq", ids if n_ids is None else None), ("logits", extras[1])):
            if e is not None and e.shape != tok.shape:
                raise InvalidArgumentError(f"{name} must have one entry per token ({tok.size})")

        def run() -> int:
            with self._put(tok) as tp, self._put(extras[0]) as pp, self._put(n_ids) as np_, self._put(ids) as sp, \
                    self._put(extras[1]) as lp:
                return self._check("wl_context_decode", i32(ctx, "context"), tp, tok.size, pp, np_, sp, lp)

        with self._t.lock.background() if background else nullcontext():
            return self._locked(run)

    def logits(self, ctx: int, idx: int = -1) -> npt.NDArray[np.float32]:
        return self._floats("wl_context_logits", ctx, idx, "idx")

    def _floats(self, name: str, ctx: int, which: int, what: str) -> npt.NDArray[np.float32]:
        """A call (ctx, which, out, cap) that copies a float vector of an output of the last decode
        and returns its length: asked for the length first, then copied."""
        def run() -> npt.NDArray[np.float32]:
            n = self._check(name, i32(ctx, "context"), i32(which, what), 0, 0)  # size query
            with self._scratch(4 * n) as out:
                self._check(name, ctx, which, out, n)
                return np.frombuffer(self._t.read(out, 4 * n), dtype=np.float32).copy()

        return self._locked(run)

    def embeddings_seq(self, ctx: int, seq: int) -> npt.NDArray[np.float32]:
        return self._floats("wl_context_embeddings_seq", ctx, seq, "seq")

    def embeddings_token(self, ctx: int, idx: int) -> npt.NDArray[np.float32]:
        return self._floats("wl_context_embeddings_token", ctx, idx, "idx")

    def state_get(self, ctx: int, seq: int) -> bytes:
        return self._locked(lambda: self._fill("wl_state_seq_get", i32(ctx, "context"), i32(seq, "seq"), cap=0))

    def state_set(self, ctx: int, seq: int, data: bytes) -> None:
        def run() -> None:
            with self._put(data) as p:
                self._check("wl_state_seq_set", i32(ctx, "context"), i32(seq, "seq"), p, len(data))

        self._locked(run)

    def memory_clear(self, ctx: int) -> None:
        self._locked(lambda: self._check("wl_memory_clear", i32(ctx, "context")))

    def memory_seq_rm(self, ctx: int, seq: int, p0: int, p1: int) -> None:
        self._locked(lambda: self._check("wl_memory_seq_rm", i32(ctx, "context"), i32(seq, "seq"),
                                         i32(p0, "p0"), i32(p1, "p1")))

    def memory_seq_cp(self, ctx: int, src: int, dst: int, p0: int, p1: int) -> None:
        self._locked(lambda: self._check("wl_memory_seq_cp", i32(ctx, "context"), i32(src, "src"),
                                         i32(dst, "dst"), i32(p0, "p0"), i32(p1, "p1")))

    def memory_seq_pos_range(self, ctx: int, seq: int) -> tuple[int, int]:
        """The smallest and largest position seq holds; (-1, -1) when it is empty."""
        def run() -> tuple[int, int]:
            with self._scratch(8) as p:
                self._check("wl_memory_seq_pos_range", i32(ctx, "context"), i32(seq, "seq"), p)
                lo, hi = struct.unpack("<2i", self._t.read(p, 8))
                return lo, hi

        return self._locked(run)

    def memory_seq_keep(self, ctx: int, seq: int) -> None:
        self._locked(lambda: self._check("wl_memory_seq_keep", i32(ctx, "context"), i32(seq, "seq")))

    def memory_seq_add(self, ctx: int, seq: int, p0: int, p1: int, delta: int) -> None:
        self._locked(lambda: self._check("wl_memory_seq_add", i32(ctx, "context"), i32(seq, "seq"), i32(p0, "p0"),
                                         i32(p1, "p1"), i32(delta, "delta")))

    # ---- samplers ----------------------------------------------------------------------------

    def new_sampler(self, model: int, steps: Sequence[SamplerStep]) -> int:
        """A sampler chain holding a reference to the model, made of `steps` in order."""
        def run() -> int:
            chain = self._check("wl_sampler_chain_new", i32(model, "model"))
            try:
                for step in steps:
                    floats = np.asarray(step.floats, dtype=np.float32) if step.floats else None
                    ints = i32_array(step.ints, "sampler parameters") if step.ints else None
                    with self._put(floats) as fp, self._put(ints) as ip, self._put(step.text or None) as tp:
                        self._check("wl_sampler_chain_add", chain, step.type, fp, len(step.floats), ip,
                                    len(step.ints), tp, len(step.text))
            except BaseException:
                self._t.call("wl_sampler_free", chain)
                raise
            return chain

        return self._locked(run)

    def free_sampler(self, sampler: int) -> None:
        self._locked(lambda: self._check("wl_sampler_free", i32(sampler, "sampler")))

    def sampler_reset(self, sampler: int) -> None:
        self._locked(lambda: self._check("wl_sampler_reset", i32(sampler, "sampler")))

    def sampler_accept(self, sampler: int, tokens: TokenArray) -> None:
        arr = i32_array(tokens, "tokens")

        def run() -> None:
            with self._put(arr) as tp:
                self._check("wl_sampler_accept", i32(sampler, "sampler"), tp, arr.size)

        self._locked(run)

    def sampler_sample(self, sampler: int, ctx: int, idx: int = -1) -> int:
        """Sample (and accept) a token from an output of ctx's last decode."""
        return self._locked(lambda: self._check("wl_sampler_sample", i32(sampler, "sampler"), i32(ctx, "context"),
                                                i32(idx, "idx")))

    def generate_multi(self, ctx: int, seqs: Sequence[int], samplers: Sequence[int], pending: Sequence[int],
                       max_tokens: Sequence[int], logprobs: int | None = None) -> Generated:
        """wl_context_generate: per sequence, the tokens written and why it stopped; with
        `logprobs` (0 ... abi.TOP_LOGPROBS_MAX) each token's log-probability and that many of the
        likeliest tokens. A failed decode raises; what was generated before it is then lost to
        the caller (the cache keeps it)."""
        seq_a, smp_a, pend_a, max_a = (i32_array(v, name) for v, name in (
            (seqs, "seqs"), (samplers, "samplers"), (pending, "pending"), (max_tokens, "max_tokens")))
        n = seq_a.size
        if not n or not (smp_a.size == pend_a.size == max_a.size == n):
            raise InvalidArgumentError("seqs, samplers, pending and max_tokens need one entry per sequence")
        if logprobs is not None and not 0 <= logprobs <= abi.TOP_LOGPROBS_MAX:
            raise InvalidArgumentError(f"top logprobs must be between 0 and {abi.TOP_LOGPROBS_MAX}")
        stride = max(int(max_a.max()), 1)
        n_top = logprobs or 0
        cells = n * stride

        def run() -> Generated:
            with ExitStack() as stack:
                scratch = [stack.enter_context(self._put(a)) for a in (seq_a, smp_a, pend_a, max_a)]
                out, n_out, stop = (stack.enter_context(self._scratch(4 * k)) for k in (cells, n, n))
                lp, tt, tl = 0, 0, 0
                if logprobs is not None:
                    lp = stack.enter_context(self._scratch(4 * cells))
                    if n_top:
                        tt, tl = (stack.enter_context(self._scratch(4 * cells * n_top)) for _ in range(2))
                self._check("wl_context_generate", i32(ctx, "context"), n, *scratch, stride, out, n_out, stop,
                            lp, n_top, tt, tl)
                counts = np.frombuffer(self._t.read(n_out, 4 * n), dtype=np.int32)
                stops = [int(x) for x in np.frombuffer(self._t.read(stop, 4 * n), dtype=np.int32)]

                def rows(ptr: int, dtype: type[np.generic], width: int = 1) -> list[Any]:
                    arr = np.frombuffer(self._t.read(ptr, 4 * cells * width), dtype=dtype).reshape(n, stride, width)
                    return [arr[i, : counts[i]].reshape(-1) if width == 1 else arr[i, : counts[i]].copy()
                            for i in range(n)]

                tokens = [r.copy() for r in rows(out, np.int32)]
                if logprobs is None:
                    return Generated(tokens, stops)
                chosen = [r.copy() for r in rows(lp, np.float32)]
                if not n_top:
                    return Generated(tokens, stops, chosen)
                return Generated(tokens, stops, chosen, rows(tt, np.int32, n_top), rows(tl, np.float32, n_top))

        return self._locked(run)


__all__ = ["ShimBackend", "i32", "i32_array"]
