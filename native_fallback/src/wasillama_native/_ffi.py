"""ctypes declarations of the shim (shim/wasillama.h) and the host services it calls back into.

The library is loaded once per process: it registers the read and log callbacks with
``wl_set_host`` and initialises llama.cpp (``wl_init``). The callbacks live in this module for
the life of the process, because the library keeps pointers to them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wasillama import _abi
from wasillama.errors import BackendUnavailableError

_HERE = Path(__file__).resolve().parent
_LIBRARY_NAMES = ("libwasillama_native.so", "libwasillama_native.dylib", "wasillama_native.dll")

i32 = ctypes.c_int32
i64 = ctypes.c_int64
ptr = ctypes.c_void_p   # buffers: numpy addresses (int), bytes, ctypes string buffers
cstr = ctypes.c_char_p  # NUL-terminated inputs, or None

READ_FN = ctypes.CFUNCTYPE(i32, i32, i64, ptr, i32)
LOG_FN = ctypes.CFUNCTYPE(None, i32, ptr, i32)

# name: (restype, argtypes)
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "wl_abi_version": (i32, []),
    "wl_init": (i32, []),
    "wl_last_error": (i32, [i32, ptr, i32]),
    "wl_system_info": (i32, [ptr, i32]),
    "wl_devices": (i32, [ptr, i32]),
    "wl_set_host": (i32, [READ_FN, LOG_FN]),
    "wl_backends_load": (i32, [cstr, cstr, ptr, i32]),
    "wl_model_load_host": (i32, [i32, i64, ptr, ptr, i32]),
    "wl_model_load_path": (i32, [cstr, ptr, ptr, i32]),
    "wl_model_free": (i32, [i32]),
    "wl_model_info_get": (i32, [i32, ptr]),
    "wl_model_meta": (i32, [i32, cstr, ptr, i32]),
    "wl_model_meta_count": (i32, [i32]),
    "wl_model_meta_key": (i32, [i32, i32, ptr, i32]),
    "wl_model_meta_value": (i32, [i32, i32, ptr, i32]),
    "wl_model_desc": (i32, [i32, ptr, i32]),
    "wl_model_chat_template": (i32, [i32, cstr, ptr, i32]),
    "wl_tokenize": (i32, [i32, ptr, i32, i32, ptr, i32]),
    "wl_detokenize": (i32, [i32, ptr, i32, i32, ptr, i32]),
    "wl_token_piece": (i32, [i32, i32, i32, ptr, i32]),
    "wl_token_is_eog": (i32, [i32, i32]),
    "wl_chat_apply": (i32, [i32, cstr, ptr, i32, i32, i32, ptr, i32]),
    "wl_context_new": (i32, [i32, ptr]),
    "wl_context_free": (i32, [i32]),
    "wl_context_info": (i32, [i32, ptr, i32]),
    "wl_context_abort_flag": (i32, [i32, ctypes.POINTER(ptr)]),
    "wl_decode": (i32, [i32, ptr, i32, ptr, ptr, ptr]),
    "wl_logits": (i32, [i32, i32, ptr, i32]),
    "wl_memory_clear": (i32, [i32]),
    "wl_memory_seq_rm": (i32, [i32, i32, i32, i32]),
    "wl_memory_seq_pos_next": (i32, [i32, i32]),
    "wl_sampler_new": (i32, [i32, ptr]),
    "wl_sampler_free": (i32, [i32]),
    "wl_sampler_reset": (i32, [i32]),
    "wl_sampler_accept": (i32, [i32, ptr, i32]),
    "wl_generate": (i32, [i32, i32, i32, i32, ptr, ptr]),
}


def library_path() -> Path:
    """The shared library this package loads (``WASILLAMA_NATIVE_LIBRARY`` overrides it)."""
    override = os.environ.get("WASILLAMA_NATIVE_LIBRARY")
    if override:
        return Path(override)
    for name in _LIBRARY_NAMES:
        candidate = _HERE / name
        if candidate.is_file():
            return candidate
    raise BackendUnavailableError(
        f"the native library is missing from {_HERE} (reinstall: pip install ./native_fallback)")


# ---- host services --------------------------------------------------------------------------

class _Sources:
    """Buffers the shim may read through ``host_read`` while a model loads, by source id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 1
        self._live: dict[int, tuple[int, int, object]] = {}  # id -> (address, size, keep-alive)

    def add(self, buffer: object) -> tuple[int, int]:
        """Registers a buffer; returns (source id, size). Keeps it alive until ``remove``."""
        view = memoryview(buffer)  # type: ignore[arg-type]
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        if view.ndim != 1 or view.format not in ("B", "b", "c"):
            view = view.cast("B")
        array = np.frombuffer(view, dtype=np.uint8)
        with self._lock:
            source = self._next
            self._next = self._next + 1 if self._next < 2**31 - 1 else 1
            self._live[source] = (array.ctypes.data, array.size, (array, view))
        return source, array.size

    def remove(self, source: int) -> None:
        # Dropping the last references (CPython frees them at once) lets an mmap close again.
        with self._lock:
            self._live.pop(source, None)

    def read(self, source: int, offset: int, dst: int, n: int) -> int:
        entry = self._live.get(source)
        if entry is None or offset < 0 or n < 0:
            return -1
        address, size, _ = entry
        if offset >= size:
            return 0
        k = min(n, size - offset)
        ctypes.memmove(dst, address + offset, k)
        return k


SOURCES = _Sources()

LLAMA_LOGGER = logging.getLogger("wasillama.llama")
# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous message)
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_LOG_CONT = 5


class _LogState(threading.local):
    level: int = logging.INFO
    pending: str = ""


_log_state = _LogState()


def _emit(level: int, line: str) -> None:
    line = line.rstrip()
    if line:
        LLAMA_LOGGER.log(level, "%s", line)


def _host_log(level: int, text: int | None, n: int) -> None:
    # Runs on llama.cpp's thread with the GIL re-acquired; must never raise into C.
    try:
        state = _log_state
        if level == _LOG_CONT:
            lvl = state.level
        else:
            if state.pending:  # a new message while the previous one never ended its line
                _emit(state.level, state.pending)
                state.pending = ""
            lvl = state.level = _LEVELS.get(level, logging.INFO)
        if not text or n <= 0 or not LLAMA_LOGGER.isEnabledFor(lvl):
            return
        data = state.pending + ctypes.string_at(text, n).decode("utf-8", "replace")
        *lines, state.pending = data.split("\n")
        for line in lines:
            _emit(lvl, line)
    except BaseException:
        pass


def _host_read(source: int, offset: int, dst: int | None, n: int) -> int:
    try:
        if not dst:
            return -1
        return SOURCES.read(source, offset, dst, n)
    except BaseException:
        return -1


_READ_CB = READ_FN(_host_read)
_LOG_CB = LOG_FN(_host_log)


# ---- the library ----------------------------------------------------------------------------

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}
_host_lib: ctypes.CDLL | None = None


def _unregister_at_exit() -> None:
    # Python objects behind the callbacks go away at shutdown; llama.cpp may still log then.
    if _host_lib is not None:
        with contextlib.suppress(Exception):
            _host_lib.wl_set_host(None, None)


def _match_wasm_kernels(build_info: Path) -> None:
    """A build with the wasm-identical CPU kernels (the default) also turns off ggml's x86 tiled
    K-quant matmul, which only a run-time switch controls; the user's own setting wins."""
    try:
        kernels = json.loads(build_info.read_text(encoding="utf-8")).get("cpu_kernels")
    except (OSError, ValueError):
        return
    if kernels == "wasm-identical":
        os.environ.setdefault("GGML_CPU_TILED_MM", "0")


def load(path: str | os.PathLike[str] | None = None) -> ctypes.CDLL:
    """Loads and initialises the shim library (once per path); raises BackendUnavailableError."""
    global _host_lib
    lib_path = str(Path(path) if path is not None else library_path())
    with _lock:
        lib = _loaded.get(lib_path)
        if lib is not None:
            return lib
        _match_wasm_kernels(Path(lib_path).with_name("build_info.json"))
        try:
            lib = ctypes.CDLL(lib_path, mode=getattr(os, "RTLD_LOCAL", 0))
        except OSError as e:
            raise BackendUnavailableError(f"cannot load the native library {lib_path}: {e}") from e
        try:
            for name, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.restype = restype
                fn.argtypes = argtypes
        except AttributeError as e:
            raise BackendUnavailableError(f"{lib_path} is not a wasillama shim library: {e}") from e
        version = lib.wl_abi_version()
        if version != _abi.ABI_VERSION:
            raise BackendUnavailableError(
                f"{lib_path} implements shim ABI {version}, this wasillama needs {_abi.ABI_VERSION}: "
                "rebuild it (pip install ./native_fallback)")
        lib.wl_set_host(_READ_CB, _LOG_CB)
        rc = lib.wl_init()
        if rc < 0:
            raise BackendUnavailableError(f"wl_init failed with status {rc}: {last_error(lib, 0)}")
        _CPU[lib_path] = _load_backends(lib, Path(lib_path).parent)
        if _host_lib is None:
            _host_lib = lib
            atexit.register(_unregister_at_exit)
        _loaded[lib_path] = lib
        return lib


@dataclass(frozen=True)
class CpuInfo:
    """The CPU code the library runs: its variant and the instruction sets that variant uses."""

    variant: str                 # a ggml variant tag ("icelake", "haswell", "x64", ...), or "native"/"portable"
    features: dict[str, str]     # ggml's CPU backend features, e.g. {"AVX2": "1", "AVX512": "1", ...}

    def describe(self) -> str:
        used = [name for name, value in self.features.items() if value not in ("", "0")]
        return f"CPU variant {self.variant} ({', '.join(used) or 'baseline ISA'})"


_CPU: dict[str, CpuInfo] = {}


def _load_backends(lib: ctypes.CDLL, folder: Path) -> CpuInfo:
    """Registers the compute backends: in a dispatch build, the best CPU variant this CPU can run
    (or the one ``WASILLAMA_CPU_VARIANT`` names) and the GPU modules next to the library."""
    wanted = os.environ.get("WASILLAMA_CPU_VARIANT", "")
    try:
        text = read_string(lambda buf, cap: lib.wl_backends_load(os.fsencode(folder), wanted.encode(), buf, cap),
                           4096).decode("utf-8", "replace")
    except StatusError as e:
        raise BackendUnavailableError(f"the native backend cannot run here: {last_error(lib, 0)}") from e
    variant, _, rest = text.partition("\n")
    features = dict(line.partition("=")[::2] for line in rest.splitlines() if line)
    return CpuInfo(variant, features)


def cpu_info(lib: ctypes.CDLL) -> CpuInfo:
    """What `load` registered for this library."""
    for path, loaded in _loaded.items():
        if loaded is lib:
            return _CPU[path]
    raise KeyError("library not loaded by wasillama_native._ffi.load")


def last_error(lib: ctypes.CDLL, handle: int) -> str:
    return read_string(lambda buf, cap: lib.wl_last_error(handle, buf, cap)).decode("utf-8", "replace")


def read_string(call: Callable[[ctypes.Array[ctypes.c_char] | None, int], int], cap: int = 256) -> bytes:
    """Runs a (buf, cap) -> length call, growing the buffer once when the result is longer.

    A negative length is returned as-is through ``StatusError`` for the caller to map.
    """
    buf = ctypes.create_string_buffer(cap)
    n = call(buf, cap)
    if n < 0:
        raise StatusError(n)
    if n > cap:
        cap = n
        buf = ctypes.create_string_buffer(cap)
        n = call(buf, cap)
        if n < 0:
            raise StatusError(n)
    return buf.raw[: min(n, cap)]


class StatusError(Exception):
    """A negative shim status seen by ``read_string``; the caller turns it into a WasillamaError."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


__all__ = ["LLAMA_LOGGER", "SOURCES", "CpuInfo", "StatusError", "cpu_info", "last_error", "library_path", "load",
           "read_string"]
