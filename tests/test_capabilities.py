"""What the guest can reach: the import list of llama.wasm is pinned, and each WASI function it
imports gives no file, no environment, no stdin and no network (a probe module calls them
through the same linker as llama.wasm); stdout/stderr become log lines; exit() is a trap."""

from __future__ import annotations

import logging
import struct
import time
from pathlib import Path

import pytest
import wasmtime

from wasillama.errors import BackendError
from wasillama.wasm import wasi
from wasillama.wasm.engine import compiled_module
from wasillama.wasm.transport import WasmTransport

# the host's services, the shared memory guest threads run on, and the host's thread spawn
HOST_IMPORTS = {("wasillama", "host_read"), ("wasillama", "host_log"), ("env", "memory"), ("wasi", "thread-spawn")}


def _signature(ty: wasmtime.FuncType) -> tuple[list[str], list[str]]:
    return [str(p) for p in ty.params], [str(r) for r in ty.results]


def test_the_import_list_is_pinned() -> None:
    module = compiled_module().module
    imports = {(i.module, i.name): i.type for i in module.imports}
    assert set(imports) == HOST_IMPORTS | {(wasi.MODULE, name) for name in wasi.IMPORTS}, (
        "llama.wasm imports something new: give it a deliberate implementation in wasillama/wasm/wasi.py")
    for name, (params, results) in wasi.IMPORTS.items():
        ty = imports[(wasi.MODULE, name)]
        assert isinstance(ty, wasmtime.FuncType)
        assert _signature(ty) == _signature(wasmtime.FuncType(params, results)), name
    memory = imports[("env", "memory")]
    assert isinstance(memory, wasmtime.MemoryType) and memory.is_shared and memory.limits.max == 65536
    spawn = imports[("wasi", "thread-spawn")]
    assert isinstance(spawn, wasmtime.FuncType) and _signature(spawn) == (["i32"], ["i32"])


PROBE = """
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "/etc/passwd")
  (data (i32.const 200) "hello from the guest\\0a")
  (func (export "_initialize"))
  (func (export "env_count") (result i32)
    (drop (call $env (i32.const 0) (i32.const 4))) (i32.load (i32.const 0)))
  (func (export "prestat") (param $fd i32) (result i32) (call $prestat (local.get $fd) (i32.const 0)))
  (func (export "open") (param $dirfd i32) (result i32)
    (call $open (local.get $dirfd) (i32.const 0) (i32.const 100) (i32.const 11) (i32.const 0)
                (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 8)))
  (func (export "read") (param $fd i32) (result i32)
    (i32.store (i32.const 16) (i32.const 300)) (i32.store (i32.const 20) (i32.const 64))
    (call $read (local.get $fd) (i32.const 16) (i32.const 1) (i32.const 24)))
  (func (export "write") (param $fd i32) (result i32)
    (i32.store (i32.const 16) (i32.const 200)) (i32.store (i32.const 20) (i32.const 21))
    (call $write (local.get $fd) (i32.const 16) (i32.const 1) (i32.const 24)))
  (func (export "write_wild") (result i32)
    (i32.store (i32.const 16) (i32.const 0x7fff0000)) (i32.store (i32.const 20) (i32.const 64))
    (call $write (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 24)))
  (func (export "random") (result i32) (call $random (i32.const 400) (i32.const 32)))
  (func (export "random_huge") (result i32) (call $random (i32.const 400) (i32.const 0x7fffffff)))
  (func (export "random_high") (result i32) (call $random (i32.const 0x90000000) (i32.const 16)))
  (func (export "write_huge") (result i32)
    (i32.store (i32.const 16) (i32.const 200)) (i32.store (i32.const 20) (i32.const 0xfffffff0))
    (call $write (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 24)))
  (func (export "clock") (param $id i32) (result i32) (call $clock (local.get $id) (i64.const 0) (i32.const 500)))
  (func (export "exit") (call $exit (i32.const 3)))
)
"""


@pytest.fixture
def probe() -> WasmTransport:
    return WasmTransport(wasmtime.Module(compiled_module().engine, PROBE))


def test_no_environment_no_files_no_stdin(probe: WasmTransport) -> None:
    assert probe.call("env_count") == 0
    for fd in (3, 4, 5):  # where wasi-libc looks for preopened directories: there are none
        assert probe.call("prestat", fd) == wasi.EBADF
    for dirfd in (3, -100, 0):
        assert probe.call("open", dirfd) == wasi.ENOTCAPABLE
    assert probe.call("read", 0) == wasi.EBADF
    assert probe.read(300, 64) == bytes(64)


def test_stdout_and_stderr_are_log_lines(probe: WasmTransport, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="wasillama.llama"):
        assert probe.call("write", 1) == 0 and probe.call("write", 2) == 0
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "hello from the guest"), (logging.ERROR, "hello from the guest")]
    assert struct.unpack("<I", probe.read(24, 4))[0] == 21
    assert probe.call("write", 3) == wasi.EBADF
    # pointers past the memory (also past 2 GiB, which wasmtime hands over as negative numbers) and
    # lengths up to 4 GiB: an error for the guest, found before the host allocates anything
    assert probe.call("write_wild") == wasi.EINVAL
    assert probe.call("write_huge") == wasi.EINVAL
    assert probe.call("random_huge") == wasi.EINVAL
    assert probe.call("random_high") == wasi.EINVAL
    assert probe.call("env_count") == 0  # and the sandbox goes on


def test_clocks_and_random(probe: WasmTransport) -> None:
    assert probe.call("random") == 0 and probe.read(400, 32) != bytes(32)
    assert probe.call("clock", 0) == 0
    assert abs(struct.unpack("<Q", probe.read(500, 8))[0] - time.time_ns()) < 5e9
    assert probe.call("clock", 9) == wasi.EINVAL


def test_exit_is_a_trap(probe: WasmTransport) -> None:
    with pytest.raises(BackendError, match="exit"):
        probe.call("exit")
    with pytest.raises(BackendError, match="unusable"):
        probe.call("env_count")


@pytest.mark.parametrize(("name", "params"), [("sock_accept", "i32 i32 i32"), ("path_unlink_file", "i32 i32 i32"),
                                              ("fd_readdir", "i32 i32 i32 i64 i32"), ("args_get", "i32 i32")])
def test_nothing_else_is_defined(name: str, params: str) -> None:
    """A module that imports any other WASI function (with its real signature) does not link."""
    wat = f"""(module (import "wasi_snapshot_preview1" "{name}" (func (param {params}) (result i32)))
               (memory (export "memory") 1) (func (export "_initialize")))"""
    with pytest.raises(wasmtime.WasmtimeError, match=f"unknown import.*{name}|{name}.*unknown"):
        WasmTransport(wasmtime.Module(compiled_module().engine, wat))


def test_the_guest_cannot_load_a_path(smollm2_path: Path) -> None:
    """Model files reach the guest as bytes the host serves; asked to open a path itself (the
    native build's wl_model_load_path), the guest refuses."""
    from wasillama.backend import load_plugin
    from wasillama.errors import UnsupportedOptionError
    from wasillama.shim.backend import ShimBackend

    be = load_plugin("wasm").create()
    assert isinstance(be, ShimBackend)
    try:
        def load() -> int:
            with be._put(str(smollm2_path).encode() + b"\0") as path:
                return be._check("wl_model_load_path", path, 0, 0, 0)

        with pytest.raises(UnsupportedOptionError):
            be._locked(load)
    finally:
        be.close()
