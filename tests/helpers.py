"""Small helpers shared by the test modules (importable as `helpers`: conftest puts tests/ on sys.path)."""

from __future__ import annotations

from typing import Any

import wasillama
from wasillama.backend import installed_plugins

BACKENDS = ("wasm", "native")


def native_available() -> bool:
    """Whether the wasillama-native plugin is installed (its entry point is registered)."""
    return "native" in installed_plugins()


def load_model(source: Any, backend_name: str = "wasm", **kwargs: Any) -> wasillama.Model:
    """Model.load on the given backend (trust_model=True: the test files are ours)."""
    return wasillama.Model.load(source, backend=backend_name, trust_model=True, **kwargs)  # type: ignore[arg-type]
