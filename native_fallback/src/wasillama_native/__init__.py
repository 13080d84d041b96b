"""wasillama-native: the native (unsandboxed) backend plugin for wasillama.

wasillama finds it through the ``wasillama.backends`` entry point (``native``), which resolves
to `plugin`. Importing this package does not load the shared library; ``plugin.create()`` does.
"""

from __future__ import annotations

import json
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._ffi import library_path

if TYPE_CHECKING:
    from .backend import NativeBackend

__all__ = ["NativeBackend", "build_info", "library_path", "plugin"]


@cache
def build_info() -> dict[str, Any]:
    """How the library was built: llama.cpp commit, ABI version, cuda/metal/vulkan, CPU flags."""
    path = Path(__file__).resolve().parent / "build_info.json"
    try:
        info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return info


class _Plugin:
    """What the ``wasillama.backends`` entry point resolves to."""

    name = "native"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backend: NativeBackend | None = None

    def create(self) -> NativeBackend:
        """The process-wide NativeBackend (loads the library on first use)."""
        with self._lock:
            if self._backend is None:
                from .backend import NativeBackend

                self._backend = NativeBackend()
            return self._backend

    def __repr__(self) -> str:
        return "<wasillama backend plugin 'native'>"


plugin = _Plugin()


def __getattr__(name: str) -> Any:
    if name == "NativeBackend":
        from .backend import NativeBackend

        return NativeBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
