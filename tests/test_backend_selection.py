"""Choosing a backend: explicit, auto, trust, and options one backend cannot honour."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import native_available
from wasillama import Model, UnsupportedOptionError
from wasillama.errors import BackendUnavailableError


def test_default_is_the_sandbox(synthetic_model: Path) -> None:
    with Model.load(synthetic_model) as model:
        assert model.backend_name == "wasm"
        assert model.sandboxed
        assert [d.kind for d in model._backend.devices()] == ["cpu"]


def test_auto_stays_in_the_sandbox_for_a_small_cpu_model(synthetic_model: Path) -> None:
    with Model.load(synthetic_model, backend="auto") as model:
        assert model.backend_name == "wasm"


@pytest.mark.parametrize("option", [{"gpu_layers": -1}, {"main_gpu": 1}, {"tensor_split": [0.5, 0.5]},
                                    {"mlock": True}])
def test_wasm_rejects_native_only_model_options(synthetic_model: Path, option: dict[str, object]) -> None:
    with pytest.raises(UnsupportedOptionError, match=r"native|mlock"):
        Model.load(synthetic_model, backend="wasm", **option)  # type: ignore[arg-type]


def test_wasm_rejects_native_only_context_options(synthetic_model: Path) -> None:
    with Model.load(synthetic_model) as model:
        with pytest.raises(UnsupportedOptionError, match="flash_attn"):
            model.new_context(flash_attn=True)
        with model.new_context(n_ctx=128) as ctx:  # still usable after the refusals
            assert ctx.generate("Hello", max_tokens=2, temperature=0).completion_tokens == 2


def test_unknown_backend(synthetic_model: Path) -> None:
    with pytest.raises(UnsupportedOptionError, match="unknown backend"):
        Model.load(synthetic_model, backend="gpu")  # type: ignore[arg-type]


@pytest.mark.skipif(not native_available(), reason="the wasillama-native plugin is not installed")
def test_native_needs_trust(synthetic_model: Path) -> None:
    with pytest.raises(UnsupportedOptionError, match="trust_model"):
        Model.load(synthetic_model, backend="native")
    with Model.load(synthetic_model, backend="native", trust_model=True) as model:
        assert model.backend_name == "native"
        assert not model.sandboxed
        assert any(d.kind == "cpu" for d in model._backend.devices())


@pytest.mark.skipif(not native_available(), reason="the wasillama-native plugin is not installed")
def test_auto_picks_native_for_gpu_layers(synthetic_model: Path) -> None:
    with Model.load(synthetic_model, backend="auto", gpu_layers=-1, trust_model=True) as model:
        assert model.backend_name == "native"


@pytest.mark.skipif(native_available(), reason="only meaningful without the plugin")
def test_native_missing_is_a_clear_error(synthetic_model: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"pip install \./native_fallback"):
        Model.load(synthetic_model, backend="native", trust_model=True)


def test_out_of_memory_in_the_sandbox_is_an_error_not_a_crash(synthetic_model: Path) -> None:
    """A KV cache larger than the wasm32 address space is refused before anything is allocated,
    and the model stays usable. (Wasm only: natively this would really allocate. An allocation
    that fails inside the guest: tests/test_sandbox.py, under a memory cap.)"""
    from wasillama import OutOfMemoryError

    with Model.load(synthetic_model) as model:
        with pytest.raises(OutOfMemoryError, match="more than the 4 GiB the wasm32 sandbox can address"):
            model.new_context(n_ctx=100_000_000)
        with model.new_context(n_ctx=128) as ctx:
            assert ctx.generate("Hello", max_tokens=2, temperature=0).completion_tokens == 2
