"""One sandbox: a wasmtime Store + Instance of llama.wasm, and safe access to its memory.

The guest gets WASI with no preopened directories, no environment, no arguments and no
inherited stdio: it can read clocks and random bytes, nothing else. Model bytes reach it
only through the `host_read` import, which copies from a host buffer into guest memory after
bounds-checking both sides. A wasmtime Store is not thread-safe, so every call into the guest
holds the instance's lock. A trap poisons the instance: its heap may be inconsistent, so every
later call fails with BackendError instead of running on corrupt state.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import wasmtime

from .._abi import error_for
from ..errors import BackendError
from .engine import compiled_module

llama_log = logging.getLogger("wasillama.llama")

# ggml_log_level -> logging level; 5 (CONT) continues the previous line.
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}


class Guest:
    """A live llama.wasm instance. Not thread-safe by itself: callers hold `lock`."""

    def __init__(self) -> None:
        compiled = compiled_module()
        self.lock = threading.RLock()
        self.store = wasmtime.Store(compiled.engine)
        self.store.set_wasi(wasmtime.WasiConfig())  # nothing granted
        self._sources: dict[int, npt.NDArray[np.uint8] | int] = {}  # a buffer, or a file descriptor
        self._next_source = 1
        self._log_level = logging.INFO
        self._log_line = ""
        self.last_log_error = ""  # the last error line llama.cpp logged (explains a trap)
        self.poisoned: str | None = None

        linker = wasmtime.Linker(compiled.engine)
        linker.define_wasi()
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define_func("wasillama", "host_read", wasmtime.FuncType([i32, i64, i32, i32], [i32]), self._host_read)
        linker.define_func("wasillama", "host_log", wasmtime.FuncType([i32, i32, i32], []), self._host_log)
        instance = linker.instantiate(self.store, compiled.module)
        exports = instance.exports(self.store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self._exports = exports
        self._funcs: dict[str, wasmtime.Func] = {}
        # A reactor runs its static constructors in _initialize (llama.cpp's tables live there).
        self.call("_initialize")

    # ---- calls -------------------------------------------------------------------------------

    def func(self, name: str) -> wasmtime.Func:
        f = self._funcs.get(name)
        if f is None:
            export = self._exports[name]
            assert isinstance(export, wasmtime.Func)
            f = self._funcs[name] = export
        return f

    def call(self, name: str, *args: int | float) -> Any:
        """Call an export. Traps poison the instance and become BackendError."""
        if self.poisoned is not None:
            raise BackendError(f"the sandbox is unusable after an earlier failure: {self.poisoned}")
        try:
            return self.func(name)(self.store, *args)
        except wasmtime.Trap as e:
            why = f" after: {self.last_log_error}" if self.last_log_error else ""
            self.poisoned = f"guest trapped in {name}{why} ({e.message.splitlines()[0]})"
            raise BackendError(self.poisoned) from e
        except wasmtime.WasmtimeError as e:
            self.poisoned = f"guest failed in {name}: {e}"
            raise BackendError(self.poisoned) from e

    def check(self, name: str, handle: int, *args: int | float) -> int:
        """Call a shim function that returns a status; raise the matching error when negative."""
        rc = int(self.call(name, *args))
        if rc < 0:
            raise error_for(rc, self.last_error(handle if rc != -1 else 0))
        return rc

    def fill(self, name: str, handle: int, *args: int, cap: int, itemsize: int = 1) -> bytes:
        """Call a shim function that writes up to `cap` items into a buffer (its last two
        arguments) and returns how many it has in all: grow the buffer and retry until they fit."""
        while True:
            with self.scratch(cap * itemsize) as buf:
                n = self.check(name, handle, *args, buf, cap)
                if n <= cap:
                    return self.read(buf, n * itemsize)
            cap = n

    def last_error(self, handle: int) -> str:
        with self.scratch(4096) as buf:
            n = int(self.call("wl_last_error", handle, buf, 4096))
            return self.read(buf, min(n, 4096)).decode("utf-8", "replace")

    # ---- memory ------------------------------------------------------------------------------

    def alloc(self, n: int) -> int:
        p = int(self.call("malloc", max(n, 1)))
        if p == 0:
            raise error_for(-4, f"the sandbox could not allocate {n} bytes")
        return p

    def free(self, p: int) -> None:
        if p and self.poisoned is None:
            self.call("free", p)

    def scratch(self, n: int) -> _Scratch:
        return _Scratch(self, n)

    def view(self, ptr: int, n: int) -> ctypes.Array[ctypes.c_ubyte]:
        """Host view of guest bytes [ptr, ptr+n), bounds-checked (the guest chooses ptr)."""
        size = self.memory.data_len(self.store)
        if ptr < 0 or n < 0 or ptr + n > size:
            raise BackendError(f"guest pointer out of bounds: {ptr}+{n} > {size}")
        return self.memory.get_buffer_ptr(self.store, n, ptr)

    def write(self, ptr: int, data: bytes | bytearray | memoryview | npt.NDArray[Any]) -> None:
        src = data.view(np.uint8).reshape(-1) if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
        if src.size:
            ctypes.memmove(self.view(ptr, src.size), src.ctypes.data, src.size)

    def read(self, ptr: int, n: int) -> bytes:
        return bytes(self.view(ptr, n)) if n else b""

    def read_array(self, ptr: int, n: int, dtype: type[np.generic]) -> npt.NDArray[Any]:
        nbytes = n * np.dtype(dtype).itemsize
        return np.frombuffer(self.read(ptr, nbytes), dtype=dtype).copy() if n else np.zeros(0, dtype=dtype)

    def put(self, data: bytes | npt.NDArray[Any]) -> int:
        """Copy data into a fresh guest allocation; the caller frees it."""
        raw = data.tobytes() if isinstance(data, np.ndarray) else data
        p = self.alloc(len(raw))
        self.write(p, raw)
        return p

    # ---- host services -------------------------------------------------------------------------

    def add_source(self, source: Any) -> int:
        """Register bytes the guest may read through host_read (a buffer, or an open file
        descriptor read with pread); returns the source id."""
        sid = self._next_source
        self._next_source += 1
        self._sources[sid] = source if isinstance(source, int) else np.frombuffer(source, dtype=np.uint8)
        return sid

    def remove_source(self, sid: int) -> None:
        self._sources.pop(sid, None)

    def _host_read(self, source: int, offset: int, dst: int, n: int) -> int:
        data = self._sources.get(source)
        if data is None or offset < 0 or n < 0:
            return -1
        try:
            view = self.view(dst, n)
        except BackendError:
            return -1
        if isinstance(data, int):
            try:
                return os.preadv(data, [memoryview(view).cast("B")], offset) if n else 0
            except OSError:
                return -1
        n = max(0, min(n, data.size - offset))
        if n:
            ctypes.memmove(view, data.ctypes.data + offset, n)
        return n

    def _host_log(self, level: int, ptr: int, n: int) -> None:
        try:
            text = self.read(ptr, n).decode("utf-8", "replace")
        except BackendError:
            return
        if level != 5:
            self._log_level = _LOG_LEVELS.get(level, logging.INFO)
        self._log_line += text
        if self._log_line.endswith("\n"):
            if self._log_level >= logging.ERROR:
                self.last_log_error = self._log_line.strip()
            if llama_log.isEnabledFor(self._log_level):
                llama_log.log(self._log_level, "%s", self._log_line.rstrip())
            self._log_line = ""

    def close(self) -> None:
        self._sources.clear()
        self._funcs.clear()


class _Scratch:
    """A guest allocation freed on exit: `with guest.scratch(n) as ptr: ...`."""

    def __init__(self, guest: Guest, n: int) -> None:
        self.guest, self.n, self.ptr = guest, n, 0

    def __enter__(self) -> int:
        self.ptr = self.guest.alloc(self.n)
        return self.ptr

    def __exit__(self, *exc: object) -> None:
        self.guest.free(self.ptr)

