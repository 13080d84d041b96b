"""The wasmtime Engine and the compiled llama.wasm module, cached on disk.

Compiling the 3.5 MB module takes seconds; deserializing a cached compilation takes a
millisecond. Cache entries are keyed by the module's sha256, the wasmtime version and the
engine configuration, so a new module or a new wasmtime never loads a stale compilation.

A compiled module is native code that wasmtime trusts: whoever can write the cache can run
code outside the sandbox. So the cache folder is created private (0700), an entry is used only
from a folder owned by this user that nobody else can write, and its bytes are checked against
the sha256 sidecar written with it (which catches truncation and corruption) and deserialized
from the very bytes that were checked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import wasmtime

from ..errors import BackendUnavailableError
from ..paths import cache_dir, wasm_module_path

log = logging.getLogger("wasillama")

# Deadlines: the compiled code checks the engine's epoch at function entries and loop heads, and
# a Store past its epoch deadline traps. A ticker thread advances the epoch every EPOCH_TICK_S
# from the first call with a deadline on. (benchmarks/epoch_cost.py measures what the checks cost; read before
# the module is compiled.)
EPOCH_INTERRUPTION = True
EPOCH_TICK_S = 0.01
NO_DEADLINE = 2**62  # epoch ticks: never


def _config_key() -> str:
    """Every engine setting that changes the compiled code belongs in the cache key."""
    return "simd+relaxed+exceptions+threads+v1" + ("+epoch" if EPOCH_INTERRUPTION else "")


@dataclass
class CompiledModule:
    engine: wasmtime.Engine
    module: wasmtime.Module
    module_sha256: str
    from_cache: bool
    seconds: float
    epoch: bool  # compiled with epoch checks: Stores must set a deadline (transport.py does)


_lock = threading.Lock()
_compiled: CompiledModule | None = None


def _make_engine() -> wasmtime.Engine:
    cfg = wasmtime.Config()
    cfg.wasm_simd = True
    # llama.wasm's relaxed instructions (the i8 x u7 dots of the K-quants, Q4_0 and Q4_1) keep
    # their 7-bit operand in range, where every lowering gives the same integers; the
    # deterministic lowering would be the slow one (wasm/build.sh checks that no other relaxed
    # instruction is in the module)
    cfg.wasm_relaxed_simd = True
    cfg.wasm_relaxed_simd_deterministic = False
    cfg.wasm_exceptions = True  # llama.cpp reports load errors by throwing
    cfg.wasm_threads = True  # guest threads: atomics and a shared memory (threads.py)
    cfg.shared_memory = True
    cfg.epoch_interruption = EPOCH_INTERRUPTION
    return wasmtime.Engine(cfg)


def _tick(engine: wasmtime.Engine) -> None:
    while True:
        time.sleep(EPOCH_TICK_S)
        engine.increment_epoch()


_ticking = False


def start_ticking(engine: wasmtime.Engine) -> None:
    """Start advancing the epoch (once per process, from the first call with a deadline: a
    process that never sets one wakes no thread)."""
    global _ticking
    if _ticking:
        return
    with _lock:
        if not _ticking:
            threading.Thread(target=_tick, args=(engine,), name="wasillama-epoch", daemon=True).start()
            _ticking = True


def wasmtime_version() -> str:
    return metadata.version("wasmtime")


def module_cache_path(module_sha256: str) -> Path:
    key = hashlib.sha256(f"{module_sha256}:{wasmtime_version()}:{_config_key()}".encode()).hexdigest()[:32]
    return cache_dir() / "compiled" / f"llama-{key}.cwasm"


def _private(folder: Path) -> bool:
    try:
        st = folder.stat()
    except OSError:
        return False
    return (not hasattr(os, "getuid") or st.st_uid == os.getuid()) and not st.st_mode & 0o022


def _load_cached(engine: wasmtime.Engine, path: Path) -> wasmtime.Module | None:
    if not path.is_file():
        return None
    if not _private(path.parent):
        log.warning("ignoring the compiled-module cache in %s: other users can write there", path.parent)
        return None
    try:
        expected = path.with_suffix(".sha256").read_text().strip()
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != expected:
        log.warning("ignoring corrupt compiled-module cache %s", path)
        return None
    try:
        return wasmtime.Module.deserialize(engine, data)
    except wasmtime.WasmtimeError as e:
        log.warning("ignoring unusable compiled-module cache %s: %s", path, e)
        return None


def _store_cached(module: wasmtime.Module, path: Path) -> None:
    try:
        data = module.serialize()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        digest = hashlib.sha256(data).hexdigest().encode()
        for target, payload in ((path, bytes(data)), (path.with_suffix(".sha256"), digest)):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            os.replace(tmp, target)
    except OSError as e:  # a read-only cache only costs start-up time
        log.warning("could not write the compiled-module cache %s: %s", path, e)


def is_compiled() -> bool:
    """Whether compiled_module() will be quick: done in this process, or in the disk cache."""
    if _compiled is not None:
        return True
    try:
        sha = hashlib.sha256(wasm_module_path().read_bytes()).hexdigest()
    except OSError:
        return False
    return module_cache_path(sha).is_file()


def compiled_module() -> CompiledModule:
    """The process-wide Engine and Module, compiled once (or loaded from the disk cache)."""
    global _compiled
    with _lock:
        if _compiled is not None:
            return _compiled
        path = wasm_module_path()
        try:
            wasm = path.read_bytes()
        except OSError as e:
            raise BackendUnavailableError(f"the wasm module is missing: {path} ({e})") from e
        sha = hashlib.sha256(wasm).hexdigest()
        engine = _make_engine()
        cached = module_cache_path(sha)
        start = time.perf_counter()
        module = _load_cached(engine, cached)
        from_cache = module is not None
        if module is None:
            module = wasmtime.Module(engine, wasm)
            _store_cached(module, cached)
        seconds = time.perf_counter() - start
        log.debug("wasm module %s %s in %.3f s", sha[:12], "loaded from cache" if from_cache else "compiled", seconds)
        _compiled = CompiledModule(engine, module, sha, from_cache, seconds, EPOCH_INTERRUPTION)
        return _compiled
