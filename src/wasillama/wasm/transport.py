"""WasmTransport: one sandbox — a wasmtime Store + Instance of llama.wasm — and safe access to its memory.

The guest gets the clocks, random bytes and stdout/stderr as log lines, nothing else: the WASI
functions it imports are this package's (`wasi.py`), not wasmtime's. Model bytes reach it only
through the `host_read` import (`shim.hostio.Sources`), which copies into guest memory after
bounds-checking both sides. A wasmtime Store is not thread-safe, so every call sequence holds
the instance's lock. A trap poisons the instance: its heap may be inconsistent, so every later
call fails with BackendError instead of running on corrupt state.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from typing import Any

import wasmtime

from .. import deadline
from ..errors import BackendError, DeadlineExceededError, OutOfMemoryError
from ..shim.hostio import LogSink, Sources
from ..shim.turns import TurnLock
from . import CAPABILITIES
from .engine import EPOCH_TICK_S, compiled_module, start_ticking
from .wasi import GuestMemory, Wasi, define

_NO_DEADLINE = 2**62  # epoch ticks: never
# Calls that free, drop or read the last error run whatever the deadline: cleanup after a
# deadline must neither leak guest memory nor leave the KV cache holding what the host does not
# know about, and they take microseconds.
_UNTIMED = frozenset({"malloc", "free", "wl_error_last", "wl_sampler_free", "wl_context_free", "wl_model_free",
                      "wl_lora_free", "wl_memory_seq_rm", "wl_memory_clear"})
# Decodes have the cooperative stop (the abort flag, checked between graph nodes; one node of a
# big batch can take a second): the hard stop waits longer for them.
_DECODES = frozenset({"wl_context_decode", "wl_context_generate"})


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class WasmTransport:
    """A live llama.wasm instance."""

    name = "wasm"
    capabilities = CAPABILITIES
    pointer_size = 4
    info_prefix = ""

    def __init__(self, module: wasmtime.Module | None = None) -> None:
        """A sandbox of llama.wasm (or of `module`, compiled with this package's engine)."""
        compiled = compiled_module()
        module = module or compiled.module
        self._lock = TurnLock()
        self.store = wasmtime.Store(compiled.engine)
        self._epoch = compiled.epoch
        self._engine = compiled.engine
        if self._epoch:
            self.store.set_epoch_deadline(_NO_DEADLINE)
        self.sources = Sources()
        self.log = LogSink()
        self._poisoned: str | None = None
        self._memory_cap: int | None = None
        self._refused: ctypes.c_uint32 | None = None  # sbrk's record, bound when a cap is set

        linker = wasmtime.Linker(compiled.engine)
        self.wasi = Wasi(GuestMemory(self.read, self.write, lambda: self.memory.data_len(self.store)))
        define(linker, self.wasi)
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define_func("wasillama", "host_read", wasmtime.FuncType([i32, i64, i32, i32], [i32]), self._host_read)
        linker.define_func("wasillama", "host_log", wasmtime.FuncType([i32, i32, i32], []), self._host_log)
        instance = linker.instantiate(self.store, module)
        exports = instance.exports(self.store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self._exports = exports
        self._funcs: dict[str, wasmtime.Func] = {}
        # A reactor runs its static constructors in _initialize (llama.cpp's tables live there).
        self.call("_initialize")
        # where the guest's sbrk records a growth the cap refused (wasm/runtime/sbrk.c; 0: a module
        # without it, such as the ABI tests' stand-ins)
        try:
            self._heap_watch = self.call("wl_heap_watch") & 0xFFFFFFFF
        except KeyError:
            self._heap_watch = 0

    @property
    def lock(self) -> TurnLock:
        return self._lock

    @property
    def poisoned(self) -> str | None:
        return self._poisoned

    # ---- calls -------------------------------------------------------------------------------

    def _func(self, name: str) -> wasmtime.Func:
        f = self._funcs.get(name)
        if f is None:
            export = self._exports[name]
            assert isinstance(export, wasmtime.Func)
            f = self._funcs[name] = export
        return f

    def call(self, name: str, *args: int) -> int:
        """Calls an export. Traps poison the instance and become BackendError; the current
        deadline (deadline.py) is its hard stop: past it by GRACE_S the guest traps, and the
        call raises DeadlineExceededError."""
        if self._poisoned is not None:
            raise BackendError(f"the sandbox is unusable after an earlier failure: {self._poisoned} (close the "
                               "model and load it again; a model loaded with on_trap='rebuild' does that itself)")
        left = None if name in _UNTIMED else deadline.remaining()
        if self._epoch:
            if left is None:
                self.store.set_epoch_deadline(_NO_DEADLINE)
            else:
                deadline.check(f"before {name}")
                start_ticking(self._engine)
                grace = deadline.DECODE_GRACE_S if name in _DECODES else deadline.GRACE_S
                self.store.set_epoch_deadline(max(1, math.ceil((left + grace) / EPOCH_TICK_S)))
        if self._refused is not None and name not in _UNTIMED:
            self._refused.value = 0  # a refusal the guest survived earlier is not this call's
        try:
            result: Any = self._func(name)(self.store, *args)
        except wasmtime.Trap as e:
            if e.trap_code == wasmtime.TrapCode.INTERRUPT:
                self._poisoned = f"the deadline stopped the guest in {name}"
                raise DeadlineExceededError(f"{self._poisoned}; this sandbox is unusable now") from e
            last = self.wasi.stderr.last_error or self.log.last_error
            why = f" after: {last}" if last else ""
            self._poisoned = f"guest trapped in {name}{why} ({e.message.splitlines()[0]})"
            refusal = self.memory_refusal()
            if refusal is not None:  # llama.cpp asserted on a NULL from malloc: out of memory
                self._poisoned = f"the guest ran out of memory in {name}: {refusal}"
                raise OutOfMemoryError(f"{self._poisoned}; this sandbox is unusable now") from e
            raise BackendError(self._poisoned) from e
        except wasmtime.WasmtimeError as e:
            self._poisoned = f"guest failed in {name}: {e}"
            raise BackendError(self._poisoned) from e
        return int(result) if result is not None else 0

    # ---- memory ------------------------------------------------------------------------------

    def alloc(self, n: int) -> int:
        p = self.call("malloc", max(n, 1))
        if p == 0:
            raise OutOfMemoryError(f"the sandbox could not allocate {n} bytes")
        return p

    def free(self, ptr: int) -> None:
        if ptr and self._poisoned is None:
            self.call("free", ptr)

    def _view(self, ptr: int, n: int) -> ctypes.Array[ctypes.c_ubyte]:
        """Host view of guest bytes [ptr, ptr+n), bounds-checked (the guest chooses ptr)."""
        size = self.memory.data_len(self.store)
        if ptr < 0 or n < 0 or ptr + n > size:
            raise BackendError(f"guest pointer out of bounds: {ptr}+{n} > {size}")
        return self.memory.get_buffer_ptr(self.store, n, ptr)

    def host_address(self, ptr: int, n: int) -> int:
        return ctypes.addressof(self._view(ptr, n))

    def write(self, ptr: int, data: bytes) -> None:
        if data:
            ctypes.memmove(self._view(ptr, len(data)), data, len(data))

    def read(self, ptr: int, n: int) -> bytes:
        return bytes(self._view(ptr, n)) if n else b""

    # ---- host services -------------------------------------------------------------------------

    def _host_read(self, source: int, offset: int, dst: int, n: int) -> int:
        try:  # wasmtime passes i32 as signed: guest addresses past 2 GiB arrive negative
            return self.sources.read(source, offset, self.host_address(dst & 0xFFFFFFFF, n), n)
        except BackendError:
            return -1

    def _host_log(self, level: int, ptr: int, n: int) -> None:
        with contextlib.suppress(BackendError):
            self.log.write(level, self.read(ptr & 0xFFFFFFFF, n))

    def limit_memory(self, n: int) -> None:
        """memory.grow past n bytes fails (malloc returns NULL, llama.cpp reports it): the guest
        learns it is out of memory, the host is not."""
        held = self.memory.data_len(self.store)
        if n < held:
            raise OutOfMemoryError(f"a memory cap (max_memory) of {_mib(n)} is below the {_mib(held)} the sandbox "
                                   "holds before any model")
        self.store.set_limits(memory_size=n)
        self._memory_cap = n
        if self._heap_watch:  # its host address is stable: wasmtime never moves a 32-bit memory
            self._refused = ctypes.c_uint32.from_address(self.host_address(self._heap_watch, 4))

    def memory_refusal(self) -> str | None:
        """Read (and reset) what sbrk recorded: the growth the cap refused."""
        if self._memory_cap is None or self._refused is None or not self._refused.value:
            return None
        asked, self._refused.value = self._refused.value, 0
        held = self.memory.data_len(self.store)
        return (f"the sandbox's memory cap of {_mib(self._memory_cap)} (max_memory) refused the guest "
                f"{_mib(asked)} more; it holds {_mib(held)}")

    def close(self) -> None:
        """Drop the instance and its memory now (not when the garbage collector gets to them): a
        host that loads and closes models all day must not hold their heaps."""
        self._funcs.clear()
        self._refused = None  # its memory goes with the store
        self._exports = None  # type: ignore[assignment]
        if self._poisoned is None:
            self._poisoned = "the sandbox was closed"
        self.store.close()
