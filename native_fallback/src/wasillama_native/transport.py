"""CtypesTransport: the natively built shim in this process, through ctypes — the native plugin's
only contribution besides its build. Every shim call is written once, in
`wasillama.shim.backend.ShimBackend`; this module loads the library and moves bytes.

The library is loaded once per process: it registers the host services (`host_read` serving
model bytes, `host_log`; both `wasillama.shim.hostio`, shared with the wasm transport), initialises
llama.cpp and loads its compute backends (`wl_backends_load`: the CPU variant this CPU runs). The
callbacks live in this module for the life of the process, because the library keeps pointers to
them. Every ctypes call releases the GIL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from wasillama.errors import BackendUnavailableError
from wasillama.shim import abi
from wasillama.shim.hostio import LogSink, Sources
from wasillama.shim.transport import Capabilities
from wasillama.shim.turns import NoTurns

_HERE = Path(__file__).resolve().parent
_LIBRARY_NAMES = ("libwasillama_native.so", "libwasillama_native.dylib", "wasillama_native.dll")
_CTYPES = {"i32": ctypes.c_int32, "i64": ctypes.c_int64, "ptr": ctypes.c_void_p}

CAPABILITIES = Capabilities(sandboxed=False, threads=True, gpu=True, mlock=True, flash_attn=True,
                            path_loads=True, max_model_bytes=None)

# Process-wide, like the library's own callback registration.
SOURCES = Sources()
LOG = LogSink()


def _host_read(source: int, offset: int, dst: int | None, n: int) -> int:
    try:
        return SOURCES.read(source, offset, dst or 0, n)
    except BaseException:  # never raise into C
        return -1


def _host_log(level: int, text: int | None, n: int) -> None:
    try:
        if text and n > 0:
            LOG.write(level, ctypes.string_at(text, n))
    except BaseException:
        pass


_READ_CB = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int32)(
    _host_read)
_LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32)(_host_log)


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


@dataclass(frozen=True)
class CpuInfo:
    """The CPU code the library runs: its variant and the instruction sets that variant uses."""

    variant: str              # a ggml variant tag ("icelake", "haswell", "x64", ...), or "native"/"portable"
    features: dict[str, str]  # ggml's CPU backend features, e.g. {"AVX2": "1", "AVX512": "1", ...}

    def describe(self) -> str:
        used = [name for name, value in self.features.items() if value not in ("", "0")]
        return f"CPU variant {self.variant} ({', '.join(used) or 'baseline ISA'})"


class _Library:
    """One loaded shim library with its ctypes functions, declared from `abi.FUNCTIONS`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _match_wasm_kernels(path.with_name("build_info.json"))
        try:
            self.cdll = ctypes.CDLL(str(path), mode=getattr(os, "RTLD_LOCAL", 0))
        except OSError as e:
            raise BackendUnavailableError(f"cannot load the native library {path}: {e}") from e
        self.fns: dict[str, ctypes._CFuncPtr] = {}
        try:
            for name, params in abi.FUNCTIONS.items():
                fn = getattr(self.cdll, name)
                fn.restype = ctypes.c_int32
                fn.argtypes = [_CTYPES[kind] for kind in params]
                self.fns[name] = fn
        except AttributeError as e:
            raise BackendUnavailableError(f"{path} is not a wasillama shim library: {e}") from e
        major, minor = abi.split_version(self.fns["wl_abi_version"]())
        if major != abi.ABI_VERSION or minor < abi.ABI_MINOR:
            raise BackendUnavailableError(
                f"{path} implements shim ABI {major}.{minor}, this wasillama needs {abi.ABI_VERSION}.{abi.ABI_MINOR} "
                f"or a later {abi.ABI_VERSION}.x: rebuild it (pip install ./native_fallback)")
        self.fns["wl_set_host"](ctypes.cast(_READ_CB, ctypes.c_void_p), ctypes.cast(_LOG_CB, ctypes.c_void_p))
        if self.fns["wl_init"]() < 0:
            raise BackendUnavailableError(f"llama.cpp failed to initialise: {self.string('wl_error_last')}")
        self.cpu = self._load_backends()

    def string(self, name: str, *args: int | bytes | None) -> str:
        """A (…, buf, cap) -> length call, with one retry in a buffer of the full length."""
        cap = 4096
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = self.fns[name](*args, buf, cap)
            if n < 0:
                raise BackendUnavailableError(self.string("wl_error_last") or f"{name} failed with status {n}")
            if n <= cap:
                return buf.raw[:n].decode("utf-8", "replace")
            cap = n

    def _load_backends(self) -> CpuInfo:
        """In a dispatch build: the best CPU variant this CPU can run (or WASILLAMA_CPU_VARIANT's)
        and the GPU modules next to the library."""
        wanted = os.environ.get("WASILLAMA_CPU_VARIANT", "").encode()
        try:
            text = self.string("wl_backends_load", os.fsencode(self.path.parent), wanted)
        except BackendUnavailableError as e:
            raise BackendUnavailableError(f"the native backend cannot run here: {e}") from e
        variant, _, rest = text.partition("\n")
        return CpuInfo(variant, dict(line.partition("=")[::2] for line in rest.splitlines() if line))


def _match_wasm_kernels(build_info: Path) -> None:
    """A build with the wasm-identical CPU kernels (the default) also turns off ggml's x86 tiled
    K-quant matmul, which only a run-time switch controls; the user's own setting wins."""
    try:
        kernels = json.loads(build_info.read_text(encoding="utf-8")).get("cpu_kernels")
    except (OSError, ValueError):
        return
    if kernels == "wasm-identical":
        os.environ.setdefault("GGML_CPU_TILED_MM", "0")


_lock = threading.Lock()
_loaded: dict[Path, _Library] = {}


def load(path: str | os.PathLike[str] | None = None) -> _Library:
    """Loads and initialises the shim library (once per path); raises BackendUnavailableError."""
    lib_path = Path(path) if path is not None else library_path()
    with _lock:
        lib = _loaded.get(lib_path)
        if lib is None:
            lib = _loaded[lib_path] = _Library(lib_path)
            if len(_loaded) == 1:
                atexit.register(_unregister_at_exit, lib)
        return lib


def _unregister_at_exit(lib: _Library) -> None:
    # Python objects behind the callbacks go away at shutdown; llama.cpp may still log then.
    with contextlib.suppress(Exception):
        lib.fns["wl_set_host"](None, None)


class CtypesTransport:
    """Calls into the library; "pointers" are host addresses of buffers this transport owns."""

    name = "native"
    capabilities = CAPABILITIES
    pointer_size = ctypes.sizeof(ctypes.c_void_p)
    sources = SOURCES
    log = LOG
    poisoned = None
    lock = NoTurns()  # the shim is thread-safe; Context keeps one thread per context

    def __init__(self, library: str | os.PathLike[str] | None = None) -> None:
        self._lib = load(library)
        self._fns = self._lib.fns
        self._buffers: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self._buffers_lock = threading.Lock()
        self.cpu = self._lib.cpu
        self.info_prefix = f"{self.cpu.describe()} | "

    def call(self, name: str, *args: int) -> int:
        return int(self._fns[name](*args))

    def alloc(self, n: int) -> int:
        buf = ctypes.create_string_buffer(max(n, 1))
        addr = ctypes.addressof(buf)
        with self._buffers_lock:
            self._buffers[addr] = buf
        return addr

    def free(self, ptr: int) -> None:
        with self._buffers_lock:
            self._buffers.pop(ptr, None)

    def write(self, ptr: int, data: bytes) -> None:
        if data:
            ctypes.memmove(ptr, data, len(data))

    def read(self, ptr: int, n: int) -> bytes:
        return ctypes.string_at(ptr, n) if n else b""

    def host_address(self, ptr: int, n: int) -> int:
        return ptr

    def memory_refusal(self) -> None:
        return None

    def close(self) -> None:
        """The library stays loaded for the process (other models may use it)."""


__all__ = ["CAPABILITIES", "CpuInfo", "CtypesTransport", "library_path", "load"]
