"""The wasm backend: llama.cpp compiled to wasm32-wasi, run by wasmtime in a sandbox.

Found like any backend plugin (`wasillama.backend.load_plugin("wasm")`); importing this package
does not import wasmtime: `plugin.create()` does, and makes a new sandbox each time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..shim.transport import Capabilities

if TYPE_CHECKING:
    from ..shim.backend import ShimBackend

# wasm32 addresses 4 GiB; llama.cpp needs room for the KV cache and compute buffers beside the
# weights, and the module's own data and stack.
WASM32_MODEL_LIMIT = 3_500_000_000

CAPABILITIES = Capabilities(sandboxed=True, threads=True, gpu=False, mlock=False, flash_attn=False,
                            path_loads=False, max_model_bytes=WASM32_MODEL_LIMIT, memory_cap=True,
                            address_space=2**32)


class _Plugin:
    """One sandbox per model: each `create()` is a fresh Store + Instance, closed with its model."""

    name = "wasm"
    per_model = True
    capabilities = CAPABILITIES

    def create(self, *, memory_cap: int | None = None) -> ShimBackend:
        from ..shim.backend import ShimBackend
        from .transport import WasmTransport

        return ShimBackend(WasmTransport(memory_cap=memory_cap))

    def __repr__(self) -> str:
        return "<wasillama backend plugin 'wasm'>"


plugin = _Plugin()

__all__ = ["CAPABILITIES", "WASM32_MODEL_LIMIT", "plugin"]
