"""The Python view of the ABI (wasillama.shim.abi) agrees with shim/wasillama.h and with what the
shim builds export; a shim speaking another ABI version is refused, naming both versions."""

from __future__ import annotations

import re
import struct
from contextlib import ExitStack
from pathlib import Path

import pytest
import wasmtime

from helpers import native_available
from wasillama.errors import BackendError
from wasillama.options import ContextOptions
from wasillama.shim import abi
from wasillama.shim.backend import ShimBackend

HEADER = (Path(__file__).resolve().parents[1] / "shim" / "wasillama.h").read_text()
_C_SIZES = {"int32_t": 4, "uint32_t": 4, "float": 4, "int64_t": 8}


def header_functions() -> dict[str, tuple[str, ...]]:
    """Every `int32_t wl_*(...)` declaration, its parameters as "i32" / "i64" / "ptr"."""
    out: dict[str, tuple[str, ...]] = {}
    for name, params in re.findall(r"^int32_t\s+(wl_\w+)\s*\(([^)]*)\)\s*;", HEADER, re.MULTILINE):
        kinds = []
        for param in " ".join(params.split()).split(","):
            param = param.strip()
            if param in ("", "void"):
                continue
            if "*" in param or param.split()[0].endswith("_fn"):
                kinds.append("ptr")
            elif param.split()[0] == "int64_t":
                kinds.append("i64")
            else:
                assert param.split()[0] == "int32_t", param
                kinds.append("i32")
        out[name] = tuple(kinds)
    return out


def header_defines(prefix: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(rf"^#define\s+WL_({prefix}\w*)\s+\(?(-?\d+)\)?", HEADER, re.MULTILINE)}


def header_struct_size(name: str) -> int:
    body = re.search(rf"typedef struct {name} \{{(.*?)\}} {name};", HEADER, re.DOTALL)
    assert body is not None, name
    size = 0
    for ctype, count in re.findall(r"^\s*(\w+)\s+\w+(?:\[(\d+)\])?\s*;", body[1], re.MULTILINE):
        size += _C_SIZES[ctype] * int(count or 1)
    return size


def test_functions_match_the_header() -> None:
    assert header_functions() == abi.FUNCTIONS


def test_constants_match_the_header() -> None:
    assert header_defines("ABI_VERSION") == {"ABI_VERSION": abi.ABI_VERSION}
    assert header_defines("ABI_MINOR") == {"ABI_MINOR": abi.ABI_MINOR}
    assert header_defines("SAMPLER_") == {k: getattr(abi, k) for k in dir(abi) if k.startswith("SAMPLER_")}
    errors = {k.removeprefix("E_"): v for k, v in header_defines("E_").items()}
    assert errors == {k.removeprefix("E_"): getattr(abi, k) for k in dir(abi) if k.startswith("E_")}
    assert header_defines("STOP_") == {k: getattr(abi, k) for k in dir(abi) if k.startswith("STOP_")}
    assert header_defines("TOK_") == {k: getattr(abi, k) for k in dir(abi) if k.startswith("TOK_")}
    assert header_defines("NUMERICS_") == {k: getattr(abi, k) for k in dir(abi) if k.startswith("NUMERICS_")}


@pytest.mark.parametrize(("struct", "layout"), [
    ("wl_model_params", abi.MODEL_PARAMS), ("wl_context_params", abi.CONTEXT_PARAMS),
    ("wl_model_info", abi.MODEL_INFO)])
def test_struct_layouts_match_the_header(struct: str, layout: object) -> None:
    assert header_struct_size(struct) == layout.size  # type: ignore[attr-defined]


def test_the_wasm_module_exports_the_abi() -> None:
    from wasillama.wasm.engine import compiled_module

    wasm_kinds = {"i32": "i32", "ptr": "i32", "i64": "i64"}  # wasm32: pointers are i32
    exports = {e.name: e.type for e in compiled_module().module.exports}
    for name, params in abi.FUNCTIONS.items():
        if name in abi.NATIVE_ONLY:
            assert name not in exports, name
            continue
        ftype = exports[name]
        assert isinstance(ftype, wasmtime.FuncType), name
        assert [str(p) for p in ftype.params] == [wasm_kinds[k] for k in params], name
        assert [str(r) for r in ftype.results] == ["i32"], name


@pytest.mark.parametrize(("version", "why"), [((1 << 16) | 7, "speaks ABI 1.7"), ((3 << 16) | 0, "speaks ABI 3.0")])
def test_a_module_of_another_abi_version_is_refused(version: int, why: str) -> None:
    from wasillama.wasm.engine import compiled_module
    from wasillama.wasm.transport import WasmTransport

    wat = f"""(module (memory (export "memory") 1)
                (func (export "_initialize"))
                (func (export "wl_abi_version") (result i32) i32.const {version}))"""
    module = wasmtime.Module(compiled_module().engine, wat)
    with pytest.raises(BackendError, match=rf"{why}, this wasillama needs 2\.{abi.ABI_MINOR} or a later 2\.x"):
        ShimBackend(WasmTransport(module))


def _call(be: ShimBackend, name: str, *args: int | bytes) -> tuple[int, str]:
    """A raw shim call with byte strings placed in the transport's memory: (status, last error)."""
    def run() -> tuple[int, str]:
        with ExitStack() as stack:
            ptrs = [stack.enter_context(be._put(a)) if isinstance(a, bytes) else a for a in args]
            status = be.transport.call(name, *ptrs)
            return status, be._last_error() if status < 0 else ""

    return be._locked(run)


def _context_params() -> list[int]:
    return list(abi.CONTEXT_PARAMS.unpack(abi.ContextParams.of(ContextOptions(n_ctx=256, n_threads=1)).pack()))


def test_a_newer_host_struct_is_read_when_its_new_fields_are_zero(shim: tuple[ShimBackend, int]) -> None:
    be, model = shim
    values = _context_params()
    newer = struct.pack(f"<{len(values) + 2}i", abi.CONTEXT_PARAMS.size + 8, *values[1:], 0, 0)
    status, _ = _call(be, "wl_context_new", model, newer)
    assert status > 0
    be.free_context(status)


def test_a_newer_host_field_this_module_does_not_know_is_refused(shim: tuple[ShimBackend, int]) -> None:
    be, model = shim
    values = _context_params()
    newer = struct.pack(f"<{len(values) + 2}i", abi.CONTEXT_PARAMS.size + 8, *values[1:], 0, 7)
    status, message = _call(be, "wl_context_new", model, newer)
    assert status == abi.E_UNSUPPORTED
    assert f"sets byte {abi.CONTEXT_PARAMS.size + 4}, a field this module (ABI 2.{abi.ABI_MINOR}) does not know" \
        in message


def test_an_unknown_numerics_value_is_refused(shim: tuple[ShimBackend, int]) -> None:
    be, model = shim
    values = _context_params()
    values[-1] = 2
    status, message = _call(be, "wl_context_new", model, abi.CONTEXT_PARAMS.pack(*values))
    assert status == abi.E_ARG
    assert "numerics must be 0 (fast) or 1 (x86)" in message


FIRST_CONTEXT_PARAMS_SIZE = 56  # ABI 2.1's layout: the smallest a module accepts


def test_an_older_host_struct_is_read_with_its_missing_fields_zero(shim: tuple[ShimBackend, int]) -> None:
    """ABI 2.1's wl_context_params (56 bytes, before `numerics`): the fast numerics."""
    be, model = shim
    values = _context_params()
    assert values[-1] == abi.NUMERICS_FAST
    status, _ = _call(be, "wl_context_new", model, struct.pack("<14i", FIRST_CONTEXT_PARAMS_SIZE, *values[1:14]))
    assert status > 0
    be.free_context(status)


@pytest.mark.parametrize("size", [0, 4, FIRST_CONTEXT_PARAMS_SIZE - 4, abi.CONTEXT_PARAMS.size + 2, 1 << 20])
def test_a_struct_size_that_is_no_layout_is_refused(shim: tuple[ShimBackend, int], size: int) -> None:
    be, model = shim
    values = _context_params()
    status, message = _call(be, "wl_context_new", model, struct.pack(f"<{len(values)}i", size, *values[1:]))
    assert status == abi.E_ARG
    assert f"wl_context_params: size {size} is no layout of it" in message


def test_an_output_struct_is_filled_as_far_as_the_host_has_room(shim: tuple[ShimBackend, int]) -> None:
    be, model = shim
    full = be.model_info(model)
    # an older host with room for the first three fields only: those are written, nothing past them
    room = 8 * 4
    buf = struct.pack("<q", room) + b"\xAA" * (abi.MODEL_INFO.size - 8)

    def run_with(buf: bytes) -> tuple[int, bytes]:
        with be._put(buf) as p:
            return be.transport.call("wl_model_info_get", model, p), be.transport.read(p, len(buf))

    status, out = be._locked(lambda: run_with(buf))
    assert status == abi.MODEL_INFO.size
    assert struct.unpack("<4q", out[:room]) == (room, full.n_params, full.size_bytes, full.n_ctx_train)
    assert out[room:] == b"\xAA" * (abi.MODEL_INFO.size - room)
    # a newer host with more room: its extra fields are left alone and it learns the module's size
    bigger = abi.MODEL_INFO.size + 16
    buf = struct.pack("<q", bigger) + b"\xAA" * (bigger - 8)
    status, out = be._locked(lambda: run_with(buf))
    assert status == abi.MODEL_INFO.size
    assert abi.ModelInfo.unpack(out[:abi.MODEL_INFO.size]) == full
    assert struct.unpack("<q", out[:8]) == (abi.MODEL_INFO.size,)
    assert out[abi.MODEL_INFO.size:] == b"\xAA" * 16


@pytest.mark.skipif(not native_available(), reason="the wasillama-native plugin is not installed")
def test_the_native_library_exports_the_abi() -> None:
    import ctypes

    from wasillama_native import library_path

    lib = ctypes.CDLL(str(library_path()))
    for name in abi.FUNCTIONS:
        assert hasattr(lib, name), name
