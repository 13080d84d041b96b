"""Shared fixtures: the pinned llama.cpp tree, synthetic models, the default model, backends.

Tests that should run on every backend take the `backend_name` fixture: it is parametrised
over "wasm" and "native", and "native" is skipped unless the wasillama-native plugin is
installed (the ``wasillama.backends`` entry point). Load models with ``helpers.load_model(path,
backend_name)`` (it passes ``trust_model=True``, which the native backend requires).
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import synthetic` from any test module

import synthetic
from helpers import BACKENDS, native_available

# A test that runs longer than this is taken for a hang: every thread's traceback is dumped and
# the process exits, so CI fails with a trace instead of stalling until its own timeout.
HANG_TIMEOUT_S = float(os.environ.get("WASILLAMA_TEST_HANG_TIMEOUT", "600"))


@pytest.fixture(autouse=True)
def _hang_guard() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG_TIMEOUT_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# ---- backends ------------------------------------------------------------------------------------


@pytest.fixture(scope="session", params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The backend to load with: "wasm", or "native" (skipped when the plugin is not installed)."""
    name: str = request.param
    if name == "native" and not native_available():
        pytest.skip("the native backend plugin (wasillama-native) is not installed")
    return name


# ---- sources ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def llama_cpp_dir() -> Path:
    """The pinned llama.cpp tree (scripts/llama_cpp_source.sh: downloads and sha256-checks the
    llama-cpp-python sdist once into .cache/)."""
    try:
        return synthetic.pinned_llama_cpp_dir()
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def vocab_gguf(llama_cpp_dir: Path) -> Path:
    """The vocab-only GGUF the synthetic models copy their tokenizer from."""
    return llama_cpp_dir / "models" / synthetic.DEFAULT_VOCAB


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, fetched once into the user cache by wasillama.default_model."""
    try:
        from wasillama.default_model import default_model_path
    except ImportError as e:
        pytest.skip(f"wasillama.default_model is not importable: {e}")
    return default_model_path(quiet=True)


QWEN_TEMPLATE = "Qwen-Qwen2.5-7B-Instruct.jinja"  # Hermes-style <tool_call> JSON in the reply


@pytest.fixture(scope="session")
def qwen_template(llama_cpp_dir: Path) -> str:
    return (llama_cpp_dir / "models" / "templates" / QWEN_TEMPLATE).read_text()


@pytest.fixture(scope="session")
def tool_model_path(smollm2_path: Path, qwen_template: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct with Qwen2.5's tool-calling chat template in its metadata."""
    pytest.importorskip("gguf")
    dst = tmp_path_factory.mktemp("tool-model") / "smollm2-qwen-template.gguf"
    return synthetic.copy_gguf(smollm2_path, dst, strings={"tokenizer.chat_template": qwen_template})


# ---- synthetic models ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def synthetic_models(tmp_path_factory: pytest.TempPathFactory, vocab_gguf: Path) -> Callable[..., Path]:
    """make(**write_llama kwargs) -> path of a synthetic llama GGUF, written once per session."""
    pytest.importorskip("gguf", reason="the `gguf` package writes the synthetic models (pip install gguf==0.19.0)")
    root = tmp_path_factory.mktemp("synthetic")
    cache: dict[tuple[tuple[str, Any], ...], Path] = {}

    def make(**kwargs: Any) -> Path:
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            name = "llama-" + "-".join(f"{k}{v}" for k, v in key) + ".gguf" if key else "llama-default.gguf"
            cache[key] = synthetic.write_llama(root / name, vocab=vocab_gguf, **kwargs)
        return cache[key]

    return make


# The model most tests use: 2 layers, n_embd 128, F16 matrices.
SYNTHETIC_DEFAULT: dict[str, Any] = {"seed": 0, "n_layer": 2, "n_embd": 128, "qtype": "f16"}


@pytest.fixture(scope="session")
def synthetic_model(synthetic_models: Callable[..., Path]) -> Path:
    return synthetic_models(**SYNTHETIC_DEFAULT)


@pytest.fixture(scope="module")
def model(backend_name: str, synthetic_model: Path) -> Iterator[Any]:
    """synthetic_model loaded on the backend under test, once per test module."""
    from helpers import load_model

    with load_model(synthetic_model, backend_name) as m:
        yield m


@pytest.fixture(scope="module")
def shim(backend_name: str, synthetic_model: Path) -> Iterator[tuple[Any, int]]:
    """The backend under test at the ABI level (a ShimBackend) with synthetic_model loaded."""
    from wasillama.backend import ModelSource, load_plugin
    from wasillama.options import LoadOptions
    from wasillama.shim.abi import ModelParams
    from wasillama.shim.backend import ShimBackend

    plugin = load_plugin(backend_name)
    be = plugin.create()
    assert isinstance(be, ShimBackend)
    handle = be.load_model(ModelSource.of(synthetic_model), ModelParams.of(LoadOptions()))
    try:
        yield be, handle
    finally:
        be.free_model(handle)
        if plugin.per_model:
            be.close()


@pytest.fixture(scope="session")
def synthetic_q8(synthetic_models: Callable[..., Path]) -> Path:
    return synthetic_models(seed=1, n_layer=2, n_embd=64, qtype="q8_0")


@pytest.fixture(scope="session")
def synthetic_shape(vocab_gguf: Path) -> synthetic.LlamaShape:
    """What synthetic_model was written with."""
    return synthetic.llama_shape(vocab=vocab_gguf, **SYNTHETIC_DEFAULT)
