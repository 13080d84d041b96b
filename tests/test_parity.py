"""Greedy decoding in the wasm sandbox matches native llama.cpp token for token.

The reference tokens in tests/data/native_reference.json come from llama.cpp built natively
from the same pinned source (scripts/native_reference.py regenerates them). Where the native
plugin is installed, a live native run is compared as well, so a stale reference cannot hide
a divergence.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import native_available
from parity_cases import CASES, materialize
from wasillama import Model

REFERENCE = json.loads((Path(__file__).parent / "data" / "native_reference.json").read_text())["cases"]


def _greedy(path: Path, case: dict[str, Any], backend: str) -> list[int]:
    with Model.load(path, backend=backend, trust_model=True) as model, model.new_context(n_ctx=512) as ctx:  # type: ignore[arg-type]
        prompt = case["prompt"]
        if case.get("chat"):
            prompt = model.apply_chat_template([{"role": "user", "content": prompt}])
        special = bool(case.get("chat"))
        return ctx.generate(prompt, max_tokens=case["n_predict"], temperature=0, parse_special=special).tokens


@pytest.fixture(scope="module")
def parity_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parity")


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_wasm_matches_native_reference(case: dict[str, Any], parity_cache: Path) -> None:
    ref = REFERENCE[case["id"]]
    path = materialize(case, parity_cache)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref["model_sha256"], (
        "the model differs from the one the reference was made with; run scripts/native_reference.py")
    assert len(ref["tokens"]) == case["n_predict"] == 64
    assert _greedy(path, case, "wasm") == ref["tokens"]


@pytest.mark.skipif(not native_available(), reason="the wasillama-native plugin is not installed")
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_native_still_matches_reference(case: dict[str, Any], parity_cache: Path) -> None:
    assert _greedy(materialize(case, parity_cache), case, "native") == REFERENCE[case["id"]]["tokens"]


@pytest.mark.skipif(not native_available(), reason="the wasillama-native plugin is not installed")
@pytest.mark.parametrize("case", CASES[1:], ids=[c["id"] for c in CASES[1:]])
def test_first_logits_close_to_native(case: dict[str, Any], parity_cache: Path) -> None:
    """Beyond equal argmax: the whole logit vector agrees within float noise."""
    path = materialize(case, parity_cache)
    logits = {}
    for backend in ("wasm", "native"):
        with Model.load(path, backend=backend, trust_model=True) as model, model.new_context(n_ctx=256) as ctx:  # type: ignore[arg-type]
            ctx.eval(model.tokenize(case["prompt"]))
            logits[backend] = ctx.logits()
    w, n = logits["wasm"], logits["native"]
    rel_rms = float(np.sqrt(np.mean((w - n) ** 2)) / np.sqrt(np.mean(n**2)))
    assert rel_rms < 1e-3, f"relative RMS difference {rel_rms:.2e}"
