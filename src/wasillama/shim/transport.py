"""What a backend contributes: a Transport (how calls and bytes reach the shim) and what it can do.

Everything else — marshalling, the grow-and-retry buffers, error mapping, option checks — is
`shim.backend.ShimBackend`, written once. Two transports exist: wasm guest memory
(`wasillama.wasm.transport`) and ctypes buffers in this process (the wasillama-native plugin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .hostio import LogSink, Sources
from .turns import NoTurns, TurnLock


@dataclass(frozen=True)
class Capabilities:
    """What a transport's shim build can do; ShimBackend refuses the rest with a clear error."""

    sandboxed: bool              # the shim runs where it cannot reach this process's memory
    threads: bool                # n_threads > 1 runs on several cores
    gpu: bool                    # gpu_layers / main_gpu / tensor_split may be asked for
    mlock: bool                  # the weights are in memory this process can lock
    flash_attn: bool             # flash_attn=True is available
    path_loads: bool             # wl_model_load_path (llama.cpp opens the file itself, may mmap it)
    max_model_bytes: int | None  # the largest model file that can fit, or None
    memory_cap: bool = False     # create(memory_cap=) caps what the shim can allocate (a sandbox's memory)
    address_space: int | None = None  # the most memory the shim can address at all (4 GiB in wasm32)


class Transport(Protocol):
    """Moves calls and bytes to one shim instance. Addresses ("ptr") are the transport's own:
    offsets into guest memory for wasm, host addresses natively."""

    name: str
    capabilities: Capabilities
    sources: Sources   # model bytes served through host_read
    log: LogSink       # llama.cpp's log
    pointer_size: int  # bytes of a pointer the shim writes (4 in wasm32, 8 natively)
    info_prefix: str   # what system_info says first about this transport (the CPU variant natively)

    @property
    def lock(self) -> TurnLock | NoTurns:
        """Held around every call sequence (serialises a wasm Store; no lock natively)."""
        ...

    @property
    def poisoned(self) -> str | None:
        """Why this instance can no longer be used (a wasm trap), or None."""
        ...

    def call(self, name: str, *args: int) -> int: ...
    def alloc(self, n: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def write(self, ptr: int, data: bytes) -> None: ...
    def read(self, ptr: int, n: int) -> bytes: ...
    def host_address(self, ptr: int, n: int) -> int:
        """The host address of transport memory [ptr, ptr+n), stable for the instance's life."""
        ...
    def memory_refusal(self) -> str | None:
        """What the memory cap refused since the last ask ("... refused 3.0 MiB more ..."), or None."""
        ...
    def close(self) -> None: ...
