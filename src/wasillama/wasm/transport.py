"""WasmTransport: one sandbox — a wasmtime Store + Instance of llama.wasm — and safe access to its memory.

llama.wasm imports its memory, shared, so that guest threads (threads.py) can run on it; the
sandbox creates that memory, its maximum the memory cap (wasmtime's store limits do not apply to
a shared memory). A module that defines its own memory (the ABI tests' stand-ins) works too,
without threads.

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
from .engine import EPOCH_TICK_S, NO_DEADLINE, compiled_module, start_ticking
from .threads import GuestThreads
from .wasi import GuestMemory, Wasi, define

PAGE = 65536
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


class _SharedMemory(wasmtime.SharedMemory):
    """wasmtime-py 50's SharedMemory wraps its pointer twice when imported (a TypeError at
    instantiation); the extern is built from the pointer itself here."""

    def _as_extern(self) -> Any:
        from wasmtime import _ffi as ffi

        return ffi.wasmtime_extern_t(ffi.WASMTIME_EXTERN_SHAREDMEMORY,
                                     ffi.wasmtime_extern_union(sharedmemory=self.ptr()))


def _shared_memory_import(module: wasmtime.Module) -> wasmtime.MemoryType | None:
    """The type of the shared memory `module` imports as env.memory, if it does."""
    for imp in module.imports:
        if imp.module == "env" and imp.name == "memory" and isinstance(imp.type, wasmtime.MemoryType):
            return imp.type
    return None


class WasmTransport:
    """A live llama.wasm instance."""

    name = "wasm"
    capabilities = CAPABILITIES
    pointer_size = 4
    info_prefix = ""

    def __init__(self, module: wasmtime.Module | None = None, *, memory_cap: int | None = None) -> None:
        """A sandbox of llama.wasm (or of `module`, compiled with this package's engine) whose
        memory never grows past `memory_cap` bytes: memory.grow fails, malloc returns NULL and
        llama.cpp reports it; the guest learns it is out of memory, the host is not."""
        compiled = compiled_module()
        module = module or compiled.module
        self._lock = TurnLock()
        self.store = wasmtime.Store(compiled.engine)
        self._epoch = compiled.epoch
        self._engine = compiled.engine
        if self._epoch:
            self.store.set_epoch_deadline(NO_DEADLINE)
        self.sources = Sources()
        self.log = LogSink()
        self._poisoned: str | None = None
        self._thread_failure: str | None = None  # the first trap of a guest thread
        self._memory_cap = memory_cap
        self._refused: ctypes.c_uint32 | None = None  # sbrk's record, bound when a cap is set

        linker = wasmtime.Linker(compiled.engine)
        self.wasi = Wasi(GuestMemory(self.read, self.write, self._size))
        define(linker, self.wasi)
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define_func("wasillama", "host_read", wasmtime.FuncType([i32, i64, i32, i32], [i32]), self._host_read)
        linker.define_func("wasillama", "host_log", wasmtime.FuncType([i32, i32, i32], []), self._host_log)
        self._shared: _SharedMemory | None = None
        self.threads: GuestThreads | None = None
        shared_type = _shared_memory_import(module)
        if shared_type is not None:
            self._shared = self._new_shared_memory(compiled.engine, shared_type)
            linker.define(self.store, "env", "memory", self._shared)
            linker.define_func("wasi", "thread-spawn", wasmtime.FuncType([i32], [i32]), self._spawn)
            pre = linker.instantiate_pre(module)  # each guest thread is one more instance of it
            self.threads = GuestThreads(compiled.engine, pre, self._epoch, self._guest_thread_failed)
            instance = pre.instantiate(self.store)
            self._base = ctypes.cast(self._shared.data_ptr(), ctypes.c_void_p).value or 0
        else:
            instance = linker.instantiate(self.store, module)
            memory = instance.exports(self.store)["memory"]
            assert isinstance(memory, wasmtime.Memory)
            self.memory = memory
            if memory_cap is not None:
                self._check_cap(memory.data_len(self.store))
                self.store.set_limits(memory_size=memory_cap)
        self._exports = instance.exports(self.store)
        self._funcs: dict[str, wasmtime.Func] = {}
        # A reactor runs its static constructors in _initialize (llama.cpp's tables live there).
        self.call("_initialize")
        if memory_cap is not None:  # where the guest's sbrk records a growth the cap refused
            watch = self._runtime_cell("wl_heap_watch")  # (wasm/runtime/sbrk.c; none in stand-ins)
            self._refused = ctypes.c_uint32.from_address(watch) if watch else None
        if self.threads is not None:
            self.threads.bind_doom(ctypes.c_int32.from_address(self._runtime_cell("wl_threads_doom")))

    def _check_cap(self, held: int) -> None:
        assert self._memory_cap is not None
        if self._memory_cap < held:
            raise OutOfMemoryError(f"a memory cap (max_memory) of {_mib(self._memory_cap)} is below the {_mib(held)} "
                                   "the sandbox holds before any model")

    def _new_shared_memory(self, engine: wasmtime.Engine, declared: wasmtime.MemoryType) -> _SharedMemory:
        """The guest's memory: as the module declares it, its maximum lowered to the cap."""
        lo, hi = declared.limits.min, declared.limits.max
        assert hi is not None  # wasm requires a shared memory to declare its maximum
        if self._memory_cap is not None:
            self._check_cap(lo * PAGE)
            hi = min(hi, self._memory_cap // PAGE)
        return _SharedMemory(engine, wasmtime.MemoryType(wasmtime.Limits(lo, hi), shared=True))

    def _runtime_cell(self, export: str) -> int:
        """The host address of a cell the guest's runtime exports the address of (0: none). A
        guest address stays at one host address: wasmtime never moves a 32-bit memory."""
        try:
            ptr = self.call(export) & 0xFFFFFFFF
        except KeyError:
            return 0
        return self.host_address(ptr, 4)

    def _spawn(self, arg: int) -> int:
        return self.threads.spawn(arg) if self.threads is not None else -1

    def _guest_thread_failed(self, why: str) -> None:
        if self._thread_failure is None:
            self._thread_failure = why
        if self._poisoned is None:
            self._poisoned = why

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
                self.store.set_epoch_deadline(NO_DEADLINE)
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
            if self.threads is not None:
                self.threads.doom()  # the guest's other threads stop too
            if e.trap_code == wasmtime.TrapCode.INTERRUPT:
                self._poisoned = f"the deadline stopped the guest in {name}"
                raise DeadlineExceededError(f"{self._poisoned}; this sandbox is unusable now") from e
            last = self.wasi.stderr.last_error or self.log.last_error
            why = f" after: {last}" if last else ""
            if self._thread_failure is not None:  # a guest thread trapped, and this call stopped for it
                self._poisoned = f"{self._thread_failure} in {name}{why}"
                raise BackendError(self._poisoned) from e
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

    def _size(self) -> int:
        """Bytes of guest memory now (guest threads may grow it at any time: never less)."""
        if self._shared is not None:
            return self._shared.data_len() if self._base else 0  # 0: closed
        return self.memory.data_len(self.store)

    def _view(self, ptr: int, n: int) -> ctypes.Array[ctypes.c_ubyte]:
        """Host view of guest bytes [ptr, ptr+n), bounds-checked (the guest chooses ptr)."""
        size = self._size()
        if ptr < 0 or n < 0 or ptr + n > size:
            raise BackendError(f"guest pointer out of bounds: {ptr}+{n} > {size}")
        if self._shared is not None:
            return (ctypes.c_ubyte * n).from_address(self._base + ptr)
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

    def memory_refusal(self) -> str | None:
        """Read (and reset) what sbrk recorded: the growth the cap refused."""
        if self._memory_cap is None or self._refused is None or not self._refused.value:
            return None
        asked, self._refused.value = self._refused.value, 0
        held = self._size()
        return (f"the sandbox's memory cap of {_mib(self._memory_cap)} (max_memory) refused the guest "
                f"{_mib(asked)} more; it holds {_mib(held)}")

    def close(self) -> None:
        """Drop the instance and its memory now (not when the garbage collector gets to them): a
        host that loads and closes models all day must not hold their heaps."""
        if self.threads is not None:
            self.threads.close()  # before the cells it dooms them through go
        self._funcs.clear()
        self._refused = None  # its memory goes with the store
        self._exports = None  # type: ignore[assignment]
        if self._poisoned is None:
            self._poisoned = "the sandbox was closed"
        self.store.close()
        if self._shared is not None:
            self._base = 0  # every later view is out of bounds
            self._shared.close()
