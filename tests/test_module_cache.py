"""The compiled wasm module is cached on disk, reused, and invalidated when it must be."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from wasillama import paths
from wasillama.wasm import engine


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache dir and no in-process compiled module (restored afterwards)."""
    monkeypatch.setenv("WASILLAMA_CACHE", str(tmp_path))
    saved = engine._compiled
    engine._compiled = None
    yield tmp_path
    engine._compiled = saved


def _compile() -> engine.CompiledModule:
    engine._compiled = None  # as in a new process
    return engine.compiled_module()


def test_second_start_loads_from_cache(fresh_cache: Path) -> None:
    cold = _compile()
    assert not cold.from_cache
    assert engine.module_cache_path(cold.module_sha256).is_file()
    warm = _compile()
    assert warm.from_cache
    assert warm.seconds < cold.seconds


def test_new_module_invalidates(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _compile()
    # Same code, different bytes: a custom section appended is still a valid module.
    name = b"wasillama-test"
    section = bytes([0, len(name) + 1 + 3, len(name)]) + name + b"abc"
    changed = fresh_cache / "changed.wasm"
    changed.write_bytes(paths.wasm_module_path().read_bytes() + section)
    monkeypatch.setenv("WASILLAMA_WASM", str(changed))
    second = _compile()
    assert second.module_sha256 != first.module_sha256
    assert not second.from_cache
    assert engine.module_cache_path(second.module_sha256) != engine.module_cache_path(first.module_sha256)


def test_new_wasmtime_version_invalidates(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sha = _compile().module_sha256
    before = engine.module_cache_path(sha)
    monkeypatch.setattr(engine, "wasmtime_version", lambda: "0.0.0-other")
    assert engine.module_cache_path(sha) != before
    assert not _compile().from_cache


def test_corrupt_cache_entry_is_not_deserialized(fresh_cache: Path) -> None:
    sha = _compile().module_sha256
    path = engine.module_cache_path(sha)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    again = _compile()
    assert not again.from_cache  # the sha256 sidecar caught it; recompiled and rewritten
    assert _compile().from_cache


def test_cache_in_a_folder_others_can_write_is_not_trusted(fresh_cache: Path) -> None:
    """A compiled module is native code: one planted by another user must never be loaded."""
    sha = _compile().module_sha256
    folder = engine.module_cache_path(sha).parent
    assert folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o777)
    try:
        assert not _compile().from_cache
    finally:
        folder.chmod(0o700)
    assert _compile().from_cache
