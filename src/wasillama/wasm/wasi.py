"""The guest's whole view of the outside: the WASI preview-1 functions llama.wasm imports, each
implemented here instead of by wasmtime's WASI (which would bring a filesystem, sockets and the
environment to any import the module grew).

What the guest gets: the clocks, random bytes, and stdout/stderr as lines on the
``wasillama.llama`` logger. What it does not: no file (no preopened directory, so wasi-libc finds
none; opening a path fails with ENOTCAPABLE), no environment, no arguments, no stdin, no sockets
(not imported at all). exit() ends the call with a trap. Guest threads (threads.py) share these.
`IMPORTS` is the module's import list, pinned: a rebuilt module that imports anything else fails
to instantiate (tests/test_capabilities.py holds it against wasm/llama.wasm).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import Any

import wasmtime

from ..errors import BackendError
from ..shim.hostio import LogSink

MODULE = "wasi_snapshot_preview1"

# errno values of WASI preview 1
SUCCESS, EBADF, EINVAL, ENOTCAPABLE, ESPIPE = 0, 8, 28, 76, 70
FILETYPE_CHARACTER_DEVICE = 2
RIGHT_FD_WRITE = 1 << 6
GGML_LOG_INFO, GGML_LOG_ERROR = 2, 4  # the levels LogSink takes (ggml_log_level)
MAX_WRITE = 65536  # bytes one fd_write takes

_CLOCKS: dict[int, Callable[[], int]] = {
    0: time.time_ns,  # realtime
    1: time.monotonic_ns,
    2: time.process_time_ns,
    3: time.thread_time_ns,
}


class GuestMemory:
    """Bounds-checked access to the guest's memory, for the calls below (the guest chooses every
    pointer and length; a bad one raises BackendError before the host allocates anything)."""

    def __init__(self, read: Callable[[int, int], bytes], write: Callable[[int, bytes], None],
                 size: Callable[[], int]) -> None:
        self.read, self.write, self._size = read, write, size

    def check(self, ptr: int, n: int) -> None:
        if n < 0 or ptr + n > self._size():
            raise BackendError(f"guest buffer out of bounds: {ptr}+{n}")

    def u32(self, ptr: int) -> int:
        value: int = struct.unpack("<I", self.read(ptr, 4))[0]
        return value


class Wasi:
    """The WASI functions of one sandbox."""

    def __init__(self, memory: GuestMemory) -> None:
        self._mem = memory
        self.stdout, self.stderr = LogSink(), LogSink()

    # Each returns a WASI errno; results go through guest pointers.

    def clock_time_get(self, clock: int, _precision: int, out: int) -> int:
        now = _CLOCKS.get(clock)
        if now is None:
            return EINVAL
        self._mem.write(out, struct.pack("<Q", now()))
        return SUCCESS

    def random_get(self, buf: int, n: int) -> int:
        self._mem.check(buf, n)
        for k in range(0, n, 65536):
            self._mem.write(buf + k, os.urandom(min(65536, n - k)))
        return SUCCESS

    def environ_sizes_get(self, count: int, size: int) -> int:
        self._mem.write(count, struct.pack("<I", 0))
        self._mem.write(size, struct.pack("<I", 0))
        return SUCCESS

    def environ_get(self, _environ: int, _buf: int) -> int:
        return SUCCESS  # there is nothing to write

    def fd_write(self, fd: int, iovs: int, n_iovs: int, written: int) -> int:
        sink = {1: self.stdout, 2: self.stderr}.get(fd)
        if sink is None:
            return EBADF
        parts, room = [], MAX_WRITE  # at most this much per call: a short write, as POSIX allows
        for i in range(min(n_iovs, 1024)):
            ptr, n = self._mem.u32(iovs + 8 * i), self._mem.u32(iovs + 8 * i + 4)
            self._mem.check(ptr, n)
            parts.append(self._mem.read(ptr, min(n, room)))
            room -= len(parts[-1])
            if room == 0:
                break
        data = b"".join(parts)
        sink.write(GGML_LOG_INFO if fd == 1 else GGML_LOG_ERROR, data)
        self._mem.write(written, struct.pack("<I", len(data)))
        return SUCCESS

    def fd_fdstat_get(self, fd: int, out: int) -> int:
        if fd not in (1, 2):
            return EBADF
        # filetype, flags, rights_base, rights_inheriting: a character device one can only write
        self._mem.write(out, struct.pack("<BxHxxxxQQ", FILETYPE_CHARACTER_DEVICE, 0, RIGHT_FD_WRITE, 0))
        return SUCCESS

    def fd_fdstat_set_flags(self, fd: int, _flags: int) -> int:
        return SUCCESS if fd in (1, 2) else EBADF

    def fd_prestat_get(self, _fd: int, _out: int) -> int:
        return EBADF  # no preopened directory: wasi-libc stops looking at the first EBADF

    def fd_prestat_dir_name(self, _fd: int, _buf: int, _n: int) -> int:
        return EBADF

    def fd_close(self, fd: int) -> int:
        return SUCCESS if fd in (1, 2) else EBADF

    def fd_read(self, _fd: int, _iovs: int, _n_iovs: int, _read: int) -> int:
        return EBADF  # no stdin, no file

    def fd_seek(self, fd: int, _offset: int, _whence: int, _out: int) -> int:
        return ESPIPE if fd in (1, 2) else EBADF

    def path_open(self, *_args: int) -> int:
        return ENOTCAPABLE

    def sched_yield(self) -> int:
        os.sched_yield()  # a guest thread spinning on a lock (dlmalloc's) lets the others run
        return SUCCESS

    def proc_exit(self, code: int) -> None:
        raise wasmtime.Trap(f"the guest called exit({code})")


_I32, _I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()

# Every import of llama.wasm from WASI, with its signature: nothing else is defined.
IMPORTS: dict[str, tuple[list[wasmtime.ValType], list[wasmtime.ValType]]] = {
    "clock_time_get": ([_I32, _I64, _I32], [_I32]),
    "random_get": ([_I32, _I32], [_I32]),
    "environ_get": ([_I32, _I32], [_I32]),
    "environ_sizes_get": ([_I32, _I32], [_I32]),
    "fd_write": ([_I32, _I32, _I32, _I32], [_I32]),
    "fd_fdstat_get": ([_I32, _I32], [_I32]),
    "fd_fdstat_set_flags": ([_I32, _I32], [_I32]),
    "fd_prestat_get": ([_I32, _I32], [_I32]),
    "fd_prestat_dir_name": ([_I32, _I32, _I32], [_I32]),
    "fd_close": ([_I32], [_I32]),
    "fd_read": ([_I32, _I32, _I32, _I32], [_I32]),
    "fd_seek": ([_I32, _I64, _I32, _I32], [_I32]),
    "path_open": ([_I32, _I32, _I32, _I32, _I32, _I64, _I64, _I32, _I32], [_I32]),
    "proc_exit": ([_I32], []),
    "sched_yield": ([], [_I32]),
}


def define(linker: wasmtime.Linker, wasi: Wasi) -> None:
    """Defines IMPORTS on the linker, each as the Wasi method of its name."""
    for name, (params, results) in IMPORTS.items():
        fn: Callable[..., Any] = getattr(wasi, name)
        unsigned = [str(p) == "i32" for p in params]
        linker.define_func(MODULE, name, wasmtime.FuncType(params, results), _guarded(fn, unsigned, bool(results)))


def _guarded(fn: Callable[..., Any], unsigned: list[bool], returns: bool) -> Callable[..., Any]:
    """wasmtime passes i32 as signed: pointers and lengths are unsigned. A bad guest pointer or
    length is EINVAL for the guest (WASI has no EFAULT), never an exception in the host."""
    def call(*args: int) -> Any:
        args = tuple(a & 0xFFFFFFFF if u else a for a, u in zip(args, unsigned, strict=True))
        if not returns:
            return fn(*args)
        try:
            return fn(*args)
        except (BackendError, struct.error, ValueError, OverflowError):
            return EINVAL

    return call
