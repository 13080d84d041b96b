"""Where wasillama keeps files: the user cache directory and the bundled wasm module."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def cache_dir() -> Path:
    """$WASILLAMA_CACHE, else $XDG_CACHE_HOME/wasillama, else ~/.cache/wasillama."""
    env = os.environ.get("WASILLAMA_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "wasillama"


def wasm_module_path() -> Path:
    """The llama.wasm module: $WASILLAMA_WASM, the copy inside the installed package, or the
    repository's wasm/llama.wasm when running from a source checkout."""
    env = os.environ.get("WASILLAMA_WASM")
    if env:
        return Path(env)
    packaged = resources.files("wasillama") / "llama.wasm"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "wasm" / "llama.wasm"
