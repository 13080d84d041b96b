"""Sandbox: the backend instance under one Model, its options, and what happens after a trap.

A wasm Model owns a sandbox (one wasmtime Store + Instance). The sandbox applies the Model's
SandboxOptions: the memory cap on every instance it makes, the default deadline of every call.
When the guest traps, its heap may be inconsistent, so the instance is poisoned: every later
call into it fails. With on_trap="rebuild" the next call on the Model or one of its Contexts
rebuilds instead: a fresh instance from the compiled module, the model loaded into it again,
then the call goes on. `generation` counts the instances, so a Context sees that its handle
belongs to a dead one and makes its own again (with an empty cache). The old instance is closed
whole; nothing of it is reused.

The native plugin has one backend for the process and never traps (a crash there takes the
process down: it is not a sandbox), so its sandbox never rebuilds and never closes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from . import deadline
from .backend import Backend, BackendPlugin
from .errors import UnsupportedOptionError
from .options import SandboxOptions

log = logging.getLogger("wasillama")

T = TypeVar("T")


class Sandbox:
    """A Model's backend instance and its policy (see the module docstring)."""

    def __init__(self, plugin: BackendPlugin, options: SandboxOptions) -> None:
        if options.memory_cap is not None and not plugin.capabilities.memory_cap:
            raise UnsupportedOptionError(f"the {plugin.name} backend is not a sandbox and cannot cap its memory: "
                                         "max_memory= needs backend='wasm'")
        self.plugin = plugin
        self.options = options
        self.owns_backend = plugin.per_model
        self.generation = 0  # instances made before the current one
        self.rebuilds = 0
        self._lock = threading.Lock()
        self._closed = False
        self._backend = self._fresh()

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def poisoned(self) -> str | None:
        """Why the current instance is unusable (a trap), or None."""
        return self._backend.poisoned

    @property
    def rebuilds_on_trap(self) -> bool:
        return self.owns_backend and self.options.on_trap == "rebuild"

    def timeout(self, timeout: float | None) -> float | None:
        """A call's timeout: its own, else the sandbox's default."""
        return timeout if timeout is not None else self.options.default_timeout

    def _fresh(self) -> Backend:
        cap = self.options.memory_cap
        return self.plugin.create() if cap is None else self.plugin.create(memory_cap=cap)

    def rebuild(self, restore: Callable[[Backend], T]) -> T | None:
        """If the instance is still poisoned: a fresh one, `restore(backend)` loading what the
        old one held into it (its result is returned), then the old one closed. None when another
        thread rebuilt first. The rebuild runs without the caller's deadline: it is recovery, not
        the call's work. When restore fails, the old instance stays (poisoned) and the next call
        tries again."""
        with self._lock:
            old = self._backend
            why = old.poisoned
            if why is None or self._closed:
                return None
            log.warning("rebuilding the sandbox after: %s", why)
            with deadline.until(None):
                backend = self._fresh()
                try:
                    restored = restore(backend)
                except BaseException:
                    backend.close()
                    raise
            self._backend = backend
            self.generation += 1
            self.rebuilds += 1
            # a thread still in a call of the old instance learns why it is gone
            old.close(reason=f"the sandbox was rebuilt after: {why}; call again")
        return restored

    def close(self) -> None:
        """Close the instance (under the rebuild lock: a rebuild in progress finishes first, and
        none starts after)."""
        with self._lock:
            self._closed = True
            if self.owns_backend:
                self._backend.close()
