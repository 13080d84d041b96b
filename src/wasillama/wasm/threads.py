"""Guest threads: wasi-threads' `thread-spawn`, implemented by the host.

llama.wasm imports one shared memory and ``wasi.thread-spawn(arg) -> tid``. When the guest
starts a thread (ggml's pool, through wasm/runtime/threads.c), the host makes a new Store and
Instance of the same module, importing the same memory, and calls its
``wasi_thread_start(tid, arg)`` on a Python thread of its own. wasmtime releases the GIL while
wasm runs, so guest threads run in parallel. A Store is not thread-safe: each guest thread has
its own, used by that thread alone.

Containment: a trap ends only the thread that trapped, and its peers may wait for it forever.
So the guest checks a doom flag at every wait and every spin of ggml's pool and traps when it is
set; the host sets it when any thread traps (the sandbox is poisoned then anyway) and when the
sandbox closes. No guest thread outlives its sandbox.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import threading
from collections.abc import Callable

import wasmtime

from .engine import NO_DEADLINE

log = logging.getLogger("wasillama")

EAGAIN = 6  # WASI errno: thread-spawn returns its negation when it cannot start a thread
JOIN_S = 1.0  # how long close() waits for a doomed thread (the guest notices within 50 ms)


class GuestThreads:
    """The threads one sandbox's guest started."""

    def __init__(self, engine: wasmtime.Engine, pre: wasmtime.InstancePre, epoch: bool,
                 on_trap: Callable[[str], None]) -> None:
        self._engine = engine
        self._pre = pre  # the module with its imports resolved (the shared memory among them)
        self._epoch = epoch
        self._on_trap = on_trap
        self._lock = threading.Lock()
        self._live: dict[int, threading.Thread] = {}
        self._tids = itertools.count(1)
        self._doom: ctypes.c_int32 | None = None  # the guest's flag, bound by the transport
        self._closed = False
        self.started = 0  # threads ever started (for tests and diagnostics)

    def bind_doom(self, cell: ctypes.c_int32) -> None:
        self._doom = cell

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._live)

    @property
    def doomed(self) -> bool:
        return self._doom is not None and self._doom.value != 0

    def doom(self) -> None:
        """Make every guest thread trap at its next wait or spin."""
        if self._doom is not None:
            self._doom.value = 1

    def spawn(self, arg: int) -> int:
        """The `thread-spawn` import: a new thread's id, or -EAGAIN (never raises: it runs inside
        the guest's call)."""
        with self._lock:
            if self._closed or self.doomed:
                return -EAGAIN
            tid = next(self._tids)
        try:
            store = wasmtime.Store(self._engine)
            if self._epoch:
                store.set_epoch_deadline(NO_DEADLINE)
            start = self._pre.instantiate(store).exports(store)["wasi_thread_start"]
            assert isinstance(start, wasmtime.Func)
        except Exception as e:  # e.g. the host is out of memory for one more instance
            log.warning("could not start guest thread %d: %s", tid, e)
            return -EAGAIN
        thread = threading.Thread(target=self._run, args=(store, start, tid, arg & 0xFFFFFFFF),
                                  name=f"wasillama-guest-{tid}", daemon=True)
        with self._lock:
            self._live[tid] = thread
            self.started += 1
        thread.start()
        return tid

    def _run(self, store: wasmtime.Store, start: wasmtime.Func, tid: int, arg: int) -> None:
        try:
            start(store, tid, arg)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            if not self.doomed:  # the first failure; the threads it takes down are not news
                self._on_trap(f"guest thread {tid} trapped ({str(e).splitlines()[0]})")
                self.doom()
        finally:
            with self._lock:
                self._live.pop(tid, None)
            store.close()

    def close(self) -> None:
        """Doom the threads still running, wait for them (briefly: each is a daemon), and let go
        of the module's imports (the shared memory goes when its last instance does)."""
        with self._lock:
            self._closed = True
            threads = list(self._live.values())
        if threads:
            self.doom()
            for t in threads:
                t.join(JOIN_S)
        self._pre.close()
