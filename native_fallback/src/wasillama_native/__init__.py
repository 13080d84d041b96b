"""wasillama-native: the native (unsandboxed) backend plugin for wasillama.

wasillama finds it through the ``wasillama.backends`` entry point (``native``), which resolves
to `plugin`. Importing this package does not load the shared library; ``plugin.create()`` does.
The plugin contributes a transport (`transport.CtypesTransport`); the backend over it is
wasillama's own `ShimBackend`, shared by every native model of the process.
"""

from __future__ import annotations

import json
import threading
from functools import cache
from typing import TYPE_CHECKING, Any

from wasillama.errors import BackendUnavailableError, UnsupportedOptionError

from .transport import CAPABILITIES, CpuInfo, library_path

if TYPE_CHECKING:
    from wasillama.shim.backend import ShimBackend

__all__ = ["CpuInfo", "build_info", "cpu_info", "library_path", "plugin"]


@cache
def build_info() -> dict[str, Any]:
    """How the library was built: llama.cpp commit, ABI version, cuda/metal/vulkan, CPU flags
    (build_info.json next to the library this package loads)."""
    try:
        info: dict[str, Any] = json.loads(library_path().with_name("build_info.json").read_text(encoding="utf-8"))
    except (OSError, BackendUnavailableError):
        return {}
    return info


class _Plugin:
    """What the ``wasillama.backends`` entry point resolves to."""

    name = "native"
    per_model = False
    capabilities = CAPABILITIES

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backend: ShimBackend | None = None

    def create(self, *, memory_cap: int | None = None) -> ShimBackend:
        """The process-wide native backend (loads the library on first use)."""
        if memory_cap is not None:
            raise UnsupportedOptionError("the native backend is not a sandbox: it cannot cap its memory "
                                         "(max_memory= needs backend='wasm')")
        with self._lock:
            if self._backend is None:
                from wasillama.shim.backend import ShimBackend

                from .transport import CtypesTransport

                self._backend = ShimBackend(CtypesTransport())
            return self._backend

    def __repr__(self) -> str:
        return "<wasillama backend plugin 'native'>"


plugin = _Plugin()


def cpu_info() -> CpuInfo:
    """The CPU variant this process runs and the instruction sets it uses (loads the library)."""
    from .transport import load

    plugin.create()
    return load().cpu
