"""NativeBackend: the `wasillama.backend.Backend` protocol over the natively built shim (ctypes).

Not sandboxed: llama.cpp runs in this process with every core (and the GPU when the library was
built with CUDA/Metal/Vulkan). Semantics match the wasm backend call for call, since both drive
the same shim source; only the transport differs (numpy buffers passed by address instead of
copies into guest memory).

Threads: every ctypes call releases the GIL. Model handles may be used from many threads at
once; a context and its samplers from one thread at a time (the caller enforces that), except
`abort`, which may be called from any thread.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from wasillama import _abi
from wasillama._abi import ContextParams, ModelInfo, ModelParams, SamplerParams
from wasillama.backend import Device, ModelSource, TokenArray
from wasillama.errors import ChatTemplateError, ModelLoadError, WasillamaError

from . import _ffi


def _i32_array(values: Sequence[int] | npt.ArrayLike, what: str) -> npt.NDArray[np.int32]:
    try:
        arr = np.ascontiguousarray(values, dtype=np.int32)
    except (OverflowError, ValueError, TypeError) as e:
        raise _abi.error_for(_abi.E_ARG, f"{what} must be int32 values: {e}") from e
    if arr.ndim != 1:
        raise _abi.error_for(_abi.E_ARG, f"{what} must be one-dimensional")
    return arr


class NativeBackend:
    """The shim in this process, through ctypes. See `wasillama.backend.Backend`."""

    name = "native"
    sandboxed = False

    def __init__(self, library: str | os.PathLike[str] | None = None) -> None:
        self._lib = _ffi.load(library)
        self._lock = threading.Lock()
        self._models: set[int] = set()
        self._contexts: dict[int, int] = {}  # context -> address of the shim's int32 abort flag
        self._samplers: set[int] = set()

    # ---- plumbing -------------------------------------------------------------------------

    def _error(self, status: int, handle: int) -> WasillamaError:
        # The shim files "unknown handle" errors under handle 0.
        where = 0 if status == _abi.E_HANDLE else handle
        return _abi.error_for(status, _ffi.last_error(self._lib, where))

    def _check(self, status: int, handle: int) -> int:
        if status < 0:
            raise self._error(status, handle)
        return status

    def _string(self, handle: int, call, cap: int = 256) -> bytes:  # type: ignore[no-untyped-def]
        try:
            return _ffi.read_string(call, cap)
        except _ffi.StatusError as e:
            raise self._error(e.status, handle) from None

    def close(self) -> None:
        """Frees every sampler, context and model created through this instance.

        The library stays loaded and the instance usable (a process cannot safely unload
        llama.cpp); the shared instance from ``wasillama_native.plugin.create()`` is used by
        every native model in the process, so only close it when all of them are done.
        """
        with self._lock:
            samplers, self._samplers = list(self._samplers), set()
            contexts, self._contexts = list(self._contexts), {}
            models, self._models = list(self._models), set()
        for h in samplers:
            self._lib.wl_sampler_free(h)
        for h in contexts:
            self._lib.wl_context_free(h)
        for h in models:
            self._lib.wl_model_free(h)

    def last_error(self, handle: int) -> str:
        return _ffi.last_error(self._lib, handle)

    def devices(self) -> list[Device]:
        return Device.parse_all(self._string(0, self._lib.wl_devices, 1024).decode("utf-8", "replace"))

    @property
    def cpu(self) -> _ffi.CpuInfo:
        """The CPU variant this process runs and the instruction sets it uses."""
        return _ffi.cpu_info(self._lib)

    def system_info(self) -> str:
        info = self._string(0, self._lib.wl_system_info, 1024).decode("utf-8", "replace")
        return f"{self.cpu.describe()} | {info}"

    # ---- models ---------------------------------------------------------------------------

    def load_model(self, source: ModelSource, params: ModelParams,
                   tensor_split: Sequence[float] = ()) -> int:
        packed = params.pack()
        try:
            split = np.ascontiguousarray(tensor_split, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as e:
            raise _abi.error_for(_abi.E_ARG, f"tensor_split must be a sequence of floats: {e}") from e
        split_ptr = split.ctypes.data if split.size else None
        if source.path is not None:
            h = self._lib.wl_model_load_path(os.fsencode(source.path), packed, split_ptr, split.size)
        else:
            if source.buffer is None:
                raise ModelLoadError("the model source has neither a path nor a buffer")
            # The shim reads the bytes through _ffi's host_read callback during this call
            # only (it copies every tensor), so the buffer need not outlive it.
            src, size = _ffi.SOURCES.add(source.buffer)
            try:
                if size == 0:
                    raise ModelLoadError(f"cannot load a model from {source.describe()}: no bytes")
                h = self._lib.wl_model_load_host(src, size, packed, split_ptr, split.size)
            finally:
                _ffi.SOURCES.remove(src)
        h = self._check(h, 0)
        with self._lock:
            self._models.add(h)
        return h

    def free_model(self, model: int) -> None:
        # The shim keeps the weights alive until the model's last context is freed.
        with self._lock:
            self._models.discard(model)
        self._check(self._lib.wl_model_free(model), model)

    def model_info(self, model: int) -> ModelInfo:
        buf = ctypes.create_string_buffer(_abi.MODEL_INFO.size)
        self._check(self._lib.wl_model_info_get(model, buf), model)
        return ModelInfo.unpack(buf.raw)

    def model_metadata(self, model: int) -> dict[str, str]:
        lib = self._lib
        n = self._check(lib.wl_model_meta_count(model), model)
        out: dict[str, str] = {}
        for i in range(n):
            key = self._string(model, lambda b, c, i=i: lib.wl_model_meta_key(model, i, b, c))
            value = self._string(model, lambda b, c, i=i: lib.wl_model_meta_value(model, i, b, c))
            out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        return out

    def model_desc(self, model: int) -> str:
        return self._string(model, lambda b, c: self._lib.wl_model_desc(model, b, c)).decode("utf-8", "replace")

    def chat_template(self, model: int, name: str | None = None) -> str | None:
        key = name.encode("utf-8") if name else None
        try:
            raw = self._string(model, lambda b, c: self._lib.wl_model_chat_template(model, key, b, c), 4096)
        except ChatTemplateError:
            return None
        return raw.decode("utf-8", "replace")

    # ---- vocabulary -----------------------------------------------------------------------

    def tokenize(self, model: int, text: bytes, add_special: bool, parse_special: bool) -> TokenArray:
        if isinstance(text, str):
            text = text.encode("utf-8")
        text = bytes(text)
        flags = _abi.tok_flags(add_special, parse_special)
        cap = len(text) + 8
        out = np.empty(cap, dtype=np.int32)
        n = self._check(self._lib.wl_tokenize(model, text, len(text), flags, out.ctypes.data, cap), model)
        if n > cap:
            cap = n
            out = np.empty(cap, dtype=np.int32)
            n = self._check(self._lib.wl_tokenize(model, text, len(text), flags, out.ctypes.data, cap), model)
        return out[:n].copy() if n < cap // 2 else out[:n]

    def detokenize(self, model: int, tokens: Sequence[int] | TokenArray, keep_special: bool,
                   render_special: bool) -> bytes:
        arr = _i32_array(tokens, "tokens")
        flags = _abi.tok_flags(keep_special, render_special)
        return self._string(
            model, lambda b, c: self._lib.wl_detokenize(model, arr.ctypes.data, arr.size, flags, b, c),
            8 * arr.size + 64)

    def token_piece(self, model: int, token: int, render_special: bool) -> bytes:
        flags = _abi.tok_flags(False, render_special)
        return self._string(model, lambda b, c: self._lib.wl_token_piece(model, int(token), flags, b, c), 64)

    def token_is_eog(self, model: int, token: int) -> bool:
        """Not part of the protocol; handy for tests."""
        return bool(self._check(self._lib.wl_token_is_eog(model, int(token)), model))

    def chat_apply(self, model: int, template: str | None, messages: Sequence[tuple[str, str]],
                   add_assistant: bool) -> str:
        packed = _abi.pack_messages(messages)
        tmpl = template.encode("utf-8") if template is not None else None
        out = self._string(
            model,
            lambda b, c: self._lib.wl_chat_apply(model, tmpl, packed, len(packed), len(messages),
                                                 int(add_assistant), b, c),
            2 * len(packed) + 1024)
        return out.decode("utf-8", "replace")

    # ---- contexts -------------------------------------------------------------------------

    def new_context(self, model: int, params: ContextParams) -> int:
        if params.n_threads <= 0 or params.n_threads_batch <= 0:  # 0 = every core, not llama.cpp's 4
            cores = os.cpu_count() or 1
            params = replace(params, n_threads=params.n_threads or cores,
                             n_threads_batch=params.n_threads_batch or cores)
        ctx = self._check(self._lib.wl_context_new(model, params.pack()), model)
        try:
            flag = ctypes.c_void_p()
            self._check(self._lib.wl_context_abort_flag(ctx, ctypes.byref(flag)), ctx)
        except BaseException:
            self._lib.wl_context_free(ctx)
            raise
        with self._lock:
            self._contexts[ctx] = flag.value or 0
        return ctx

    def free_context(self, ctx: int) -> None:
        with self._lock:
            self._contexts.pop(ctx, None)  # abort() can no longer touch its flag
        self._check(self._lib.wl_context_free(ctx), ctx)

    def context_info(self, ctx: int) -> tuple[int, int, int, int]:
        out = np.zeros(4, dtype=np.int32)
        self._check(self._lib.wl_context_info(ctx, out.ctypes.data, 4), ctx)
        return int(out[0]), int(out[1]), int(out[2]), int(out[3])

    def set_abort(self, ctx: int, on: bool) -> None:
        """Raises (or lowers) the context's abort flag: the running decode stops with AbortedError."""
        with self._lock:  # held while writing, so free_context cannot free the flag under us
            addr = self._contexts.get(ctx)
            if not addr:
                raise _abi.error_for(_abi.E_HANDLE, f"invalid context handle {ctx}")
            ctypes.c_int32.from_address(addr).value = int(on)

    def decode(self, ctx: int, tokens: TokenArray, pos: TokenArray | None = None,
               seq: TokenArray | None = None, logits: npt.NDArray[np.int8] | None = None) -> int:
        tok = _i32_array(tokens, "tokens")
        n = tok.size
        pos_a = seq_a = out_a = None
        if pos is not None:
            pos_a = _i32_array(pos, "pos")
        if seq is not None:
            seq_a = _i32_array(seq, "seq")
        if logits is not None:
            out_a = np.ascontiguousarray(logits, dtype=np.int8)
        for name, a in (("pos", pos_a), ("seq", seq_a), ("logits", out_a)):
            if a is not None and a.shape != (n,):
                raise _abi.error_for(_abi.E_ARG, f"{name} must have one entry per token ({n})")
        return self._check(self._lib.wl_decode(
            ctx, tok.ctypes.data, n,
            pos_a.ctypes.data if pos_a is not None else None,
            seq_a.ctypes.data if seq_a is not None else None,
            out_a.ctypes.data if out_a is not None else None), ctx)

    def logits(self, ctx: int, idx: int = -1) -> npt.NDArray[np.float32]:
        n_vocab = self._check(self._lib.wl_logits(ctx, int(idx), None, 0), ctx)  # size query
        out = np.empty(n_vocab, dtype=np.float32)
        self._check(self._lib.wl_logits(ctx, int(idx), out.ctypes.data, n_vocab), ctx)
        return out

    def memory_clear(self, ctx: int) -> None:
        self._check(self._lib.wl_memory_clear(ctx), ctx)

    def memory_seq_rm(self, ctx: int, seq: int, p0: int, p1: int) -> None:
        self._check(self._lib.wl_memory_seq_rm(ctx, int(seq), int(p0), int(p1)), ctx)

    def memory_seq_pos_max(self, ctx: int, seq: int) -> int:
        return self._check(self._lib.wl_memory_seq_pos_next(ctx, int(seq)), ctx) - 1

    # ---- samplers -------------------------------------------------------------------------

    def new_sampler(self, model: int, params: SamplerParams) -> int:
        h = self._check(self._lib.wl_sampler_new(model, params.pack()), model)
        with self._lock:
            self._samplers.add(h)
        return h

    def free_sampler(self, sampler: int) -> None:
        with self._lock:
            self._samplers.discard(sampler)
        self._check(self._lib.wl_sampler_free(sampler), sampler)

    def sampler_reset(self, sampler: int) -> None:
        self._check(self._lib.wl_sampler_reset(sampler), sampler)

    def sampler_accept(self, sampler: int, tokens: TokenArray) -> None:
        arr = _i32_array(tokens, "tokens")
        self._check(self._lib.wl_sampler_accept(sampler, arr.ctypes.data, arr.size), sampler)

    def generate(self, ctx: int, sampler: int, seq: int, max_tokens: int) -> tuple[TokenArray, int]:
        if max_tokens < 0:
            raise _abi.error_for(_abi.E_ARG, "max_tokens must not be negative")
        out = np.empty(max(int(max_tokens), 1), dtype=np.int32)
        stop = ctypes.c_int32(0)
        n = self._check(self._lib.wl_generate(ctx, sampler, int(seq), int(max_tokens), out.ctypes.data,
                                              ctypes.byref(stop)), ctx)
        return out[:n], int(stop.value)
