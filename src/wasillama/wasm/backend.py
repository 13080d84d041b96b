"""WasmBackend: the Backend protocol over one llama.wasm sandbox.

One WasmBackend is one sandbox (Store + Instance). It holds one model's weights once; every
context of that model is a handle inside the same instance and shares them. Calls are
serialised with the instance lock: a Store is not thread-safe.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from .. import _abi
from .._abi import ContextParams, ModelInfo, ModelParams, SamplerParams
from ..backend import Device, ModelSource, TokenArray
from ..errors import (
    BackendError,
    ChatTemplateError,
    ClosedError,
    InvalidArgumentError,
    ModelLoadError,
    ModelTooLargeError,
    UnsupportedOptionError,
)
from .guest import Guest

T = TypeVar("T")

# wasm32 addresses 4 GiB; llama.cpp needs room for the KV cache and compute buffers beside the
# weights, and the module's own data and stack.
WASM32_MODEL_LIMIT = 3_500_000_000


class WasmBackend:
    name = "wasm"
    sandboxed = True

    def __init__(self) -> None:
        self._guest = Guest()
        self._closed = False
        self._abort_flags: dict[int, int] = {}  # context -> host address of its abort flag
        self._abort_lock = threading.Lock()
        with self._guest.lock:
            abi = int(self._guest.call("wl_abi_version"))
            if abi != _abi.ABI_VERSION:
                raise BackendError(f"llama.wasm speaks ABI {abi}, this wasillama needs {_abi.ABI_VERSION}")
            self._guest.check("wl_init", 0)

    @property
    def guest(self) -> Guest:
        return self._guest

    def _locked(self, fn: Callable[[Guest], T]) -> T:
        with self._guest.lock:
            if self._closed:
                raise ClosedError("the model's sandbox was closed")
            return fn(self._guest)

    def close(self) -> None:
        with self._guest.lock, self._abort_lock:
            if not self._closed:
                self._closed = True
                self._abort_flags.clear()
                self._guest.close()

    def _string_call(self, name: str, handle: int, *args: int, cap: int = 1024) -> bytes:
        return self._locked(lambda g: g.fill(name, handle, *args, cap=cap))

    def last_error(self, handle: int) -> str:
        return self._locked(lambda g: g.last_error(handle))

    def system_info(self) -> str:
        return self._string_call("wl_system_info", 0).decode()

    def devices(self) -> list[Device]:
        return Device.parse_all(self._string_call("wl_devices", 0).decode("utf-8", "replace"))

    # ---- models ----------------------------------------------------------------------------

    def load_model(self, source: ModelSource, params: ModelParams, tensor_split: Sequence[float] = ()) -> int:
        if params.n_gpu_layers != 0 or params.main_gpu != 0 or tensor_split:
            raise UnsupportedOptionError(
                "the wasm backend runs on the CPU: gpu_layers, main_gpu and tensor_split need backend='native'")
        if params.use_mlock:
            raise UnsupportedOptionError("the wasm backend cannot mlock: its weights live in the sandbox's memory")
        size = source.size
        if size > WASM32_MODEL_LIMIT:
            raise ModelTooLargeError(
                f"the model is {size / 2**30:.2f} GiB; a wasm32 sandbox addresses 4 GiB in all "
                f"(weights + KV cache + compute), so models above {WASM32_MODEL_LIMIT / 2**30:.2f} GiB "
                "need backend='native'")

        def run(g: Guest) -> int:
            # A file is read with pread straight into guest memory, not mapped: a file that
            # shrinks under a mapping raises SIGBUS, which would kill the host process.
            f = open(source.path, "rb") if source.path is not None else None  # noqa: SIM115
            sid = g.add_source(f.fileno() if f is not None else source.buffer)
            try:
                with g.scratch(_abi.MODEL_PARAMS.size) as p:
                    g.write(p, params.pack())
                    return g.check("wl_model_load_host", 0, sid, size, p, 0, 0)
            except BackendError as e:
                if g.poisoned is None:
                    raise
                raise ModelLoadError(f"llama.cpp aborted while loading {source.describe()}: the file is "
                                     f"corrupt or hostile ({e})") from e
            finally:
                g.remove_source(sid)
                if f is not None:
                    f.close()

        return self._locked(run)

    def free_model(self, model: int) -> None:
        self._locked(lambda g: g.check("wl_model_free", model, model))

    def model_info(self, model: int) -> ModelInfo:
        def run(g: Guest) -> ModelInfo:
            with g.scratch(_abi.MODEL_INFO.size) as p:
                g.check("wl_model_info_get", model, model, p)
                return ModelInfo.unpack(g.read(p, _abi.MODEL_INFO.size))

        return self._locked(run)

    def model_metadata(self, model: int) -> dict[str, str]:
        n = self._locked(lambda g: g.check("wl_model_meta_count", model, model))
        out: dict[str, str] = {}
        for i in range(n):
            key = self._string_call("wl_model_meta_key", model, model, i).decode("utf-8", "replace")
            out[key] = self._string_call("wl_model_meta_value", model, model, i).decode("utf-8", "replace")
        return out

    def model_desc(self, model: int) -> str:
        return self._string_call("wl_model_desc", model, model).decode("utf-8", "replace")

    def chat_template(self, model: int, name: str | None = None) -> str | None:
        def run(g: Guest) -> str | None:
            name_p = g.put((name or "").encode() + b"\0")
            try:
                return g.fill("wl_model_chat_template", model, model, name_p, cap=4096).decode("utf-8", "replace")
            except ChatTemplateError:
                return None
            finally:
                g.free(name_p)

        return self._locked(run)

    # ---- vocabulary --------------------------------------------------------------------------

    def tokenize(self, model: int, text: bytes, add_special: bool, parse_special: bool) -> TokenArray:
        flags = _abi.tok_flags(add_special, parse_special)

        def run(g: Guest) -> TokenArray:
            tp = g.put(text)
            try:
                raw = g.fill("wl_tokenize", model, model, tp, len(text), flags, cap=len(text) + 8, itemsize=4)
                return np.frombuffer(raw, dtype=np.int32).copy()
            finally:
                g.free(tp)

        return self._locked(run)

    def detokenize(self, model: int, tokens: Sequence[int] | TokenArray, keep_special: bool,
                   render_special: bool) -> bytes:
        arr = np.ascontiguousarray(tokens, dtype=np.int32)
        flags = _abi.tok_flags(keep_special, render_special)

        def run(g: Guest) -> bytes:
            tp = g.put(arr)
            try:
                return g.fill("wl_detokenize", model, model, tp, len(arr), flags, cap=8 * len(arr) + 64)
            finally:
                g.free(tp)

        return self._locked(run)

    def token_piece(self, model: int, token: int, render_special: bool) -> bytes:
        flags = _abi.tok_flags(False, render_special)
        return self._string_call("wl_token_piece", model, model, token, flags, cap=64)

    def chat_apply(self, model: int, template: str | None, messages: Sequence[tuple[str, str]],
                   add_assistant: bool) -> str:
        packed = _abi.pack_messages(messages)

        def run(g: Guest) -> str:
            mp = g.put(packed)
            tp = g.put(template.encode() + b"\0") if template is not None else 0
            try:
                out = g.fill("wl_chat_apply", model, model, tp, mp, len(packed), len(messages), int(add_assistant),
                             cap=2 * len(packed) + 1024)
                return out.decode("utf-8", "replace")
            finally:
                g.free(mp)
                g.free(tp)

        return self._locked(run)

    # ---- contexts ----------------------------------------------------------------------------

    def new_context(self, model: int, params: ContextParams) -> int:
        if params.n_threads > 1 or params.n_threads_batch > 1:
            raise UnsupportedOptionError(
                "the wasm guest is single-threaded: n_threads must be 1 (or 0 for the default)")
        if params.flash_attn == 1:
            raise UnsupportedOptionError("flash_attn is only available with backend='native'")

        def run(g: Guest) -> int:
            with g.scratch(_abi.CONTEXT_PARAMS.size) as p:
                g.write(p, params.pack())
                ctx = g.check("wl_context_new", model, model, p)
            with g.scratch(4) as p:
                g.check("wl_context_abort_flag", ctx, ctx, p)
                guest_addr = struct.unpack("<I", g.read(p, 4))[0]
            host_addr = ctypes.addressof(g.view(guest_addr, 4))
            with self._abort_lock:
                self._abort_flags[ctx] = host_addr
            return ctx

        return self._locked(run)

    def free_context(self, ctx: int) -> None:
        with self._abort_lock:
            self._abort_flags.pop(ctx, None)
        self._locked(lambda g: g.check("wl_context_free", ctx, ctx))

    def context_info(self, ctx: int) -> tuple[int, int, int, int]:
        def run(g: Guest) -> tuple[int, int, int, int]:
            with g.scratch(16) as p:
                g.check("wl_context_info", ctx, ctx, p, 4)
                a, b, c, d = struct.unpack("<4i", g.read(p, 16))
                return a, b, c, d

        return self._locked(run)

    def set_abort(self, ctx: int, on: bool) -> None:
        # Not the instance lock (the decode this interrupts holds it), and no Store call from
        # this thread: the flag's host address was computed when the context was made, and
        # wasmtime never moves a 32-bit linear memory (it reserves the whole 4 GiB up front).
        with self._abort_lock:
            addr = self._abort_flags.get(ctx)
            if addr is None:
                raise ClosedError(f"invalid context handle {ctx}")
            ctypes.c_int32.from_address(addr).value = int(on)

    def decode(self, ctx: int, tokens: TokenArray, pos: TokenArray | None = None, seq: TokenArray | None = None,
               logits: npt.NDArray[np.int8] | None = None) -> int:
        arrays = [np.ascontiguousarray(tokens, dtype=np.int32)]
        n = len(arrays[0])
        for extra, dt in ((pos, np.int32), (seq, np.int32), (logits, np.int8)):
            if extra is not None and len(extra) != n:
                raise InvalidArgumentError("pos, seq and logits must have one entry per token")
            arrays.append(np.ascontiguousarray(extra, dtype=dt) if extra is not None else None)  # type: ignore[arg-type]

        def run(g: Guest) -> int:
            ptrs = [g.put(a) if a is not None else 0 for a in arrays]
            try:
                return g.check("wl_decode", ctx, ctx, ptrs[0], n, ptrs[1], ptrs[2], ptrs[3])
            finally:
                for p in ptrs:
                    g.free(p)

        return self._locked(run)

    def logits(self, ctx: int, idx: int = -1) -> npt.NDArray[np.float32]:
        def run(g: Guest) -> npt.NDArray[np.float32]:
            n_vocab = g.check("wl_logits", ctx, ctx, idx, 0, 0)
            with g.scratch(4 * n_vocab) as out:
                g.check("wl_logits", ctx, ctx, idx, out, n_vocab)
                return g.read_array(out, n_vocab, np.float32)

        return self._locked(run)

    def memory_clear(self, ctx: int) -> None:
        self._locked(lambda g: g.check("wl_memory_clear", ctx, ctx))

    def memory_seq_rm(self, ctx: int, seq: int, p0: int, p1: int) -> None:
        self._locked(lambda g: g.check("wl_memory_seq_rm", ctx, ctx, seq, p0, p1))

    def memory_seq_pos_max(self, ctx: int, seq: int) -> int:
        return self._locked(lambda g: g.check("wl_memory_seq_pos_next", ctx, ctx, seq)) - 1

    # ---- samplers ----------------------------------------------------------------------------

    def new_sampler(self, model: int, params: SamplerParams) -> int:
        def run(g: Guest) -> int:
            with g.scratch(_abi.SAMPLER_PARAMS.size) as p:
                g.write(p, params.pack())
                return g.check("wl_sampler_new", model, model, p)

        return self._locked(run)

    def free_sampler(self, sampler: int) -> None:
        self._locked(lambda g: g.check("wl_sampler_free", sampler, sampler))

    def sampler_reset(self, sampler: int) -> None:
        self._locked(lambda g: g.check("wl_sampler_reset", sampler, sampler))

    def sampler_accept(self, sampler: int, tokens: TokenArray) -> None:
        arr = np.ascontiguousarray(tokens, dtype=np.int32)

        def run(g: Guest) -> None:
            tp = g.put(arr)
            try:
                g.check("wl_sampler_accept", sampler, sampler, tp, len(arr))
            finally:
                g.free(tp)

        self._locked(run)

    def generate(self, ctx: int, sampler: int, seq: int, max_tokens: int) -> tuple[TokenArray, int]:
        def run(g: Guest) -> tuple[TokenArray, int]:
            with g.scratch(4 * max_tokens + 4) as out:
                stop_p = out + 4 * max_tokens
                n = g.check("wl_generate", ctx, ctx, sampler, seq, max_tokens, out, stop_p)
                stop = struct.unpack("<i", g.read(stop_p, 4))[0]
                return g.read_array(out, n, np.int32), stop

        return self._locked(run)
