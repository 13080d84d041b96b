"""A prompt evaluated as one batch gives the logits of the same tokens evaluated one at a time.

A batch runs through the matrix-matrix kernels (llamafile's sgemm, with wasm's own tiles from
wasm/patches/0009), one token through ggml-cpu/arch/wasm's dot products (F16: the same patch's
matrix-vector loop). On the wasm backend those sum exactly as the tiles do, so both give the very
same floats; F32 tiles sum in another order than ggml's F32 dot product (native llama.cpp's do
too), so there, and on the native backend, the two agree to float rounding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import wasillama
from helpers import load_model

# n_embd and n_ff multiples of 256 so every type's blocks fit; 3 tiles' worth of rows and columns
SHAPE = {"seed": 11, "n_layer": 2, "n_embd": 256, "n_ff": 512}
EXACT_ON_WASM = ("q8_0", "q4_0", "q4_1", "q4_k", "f16")


def last_logits(model: wasillama.Model, tokens: list[int], *, one_at_a_time: bool) -> np.ndarray:
    with model.new_context(n_ctx=128, n_threads=1, n_threads_batch=1) as ctx:
        if one_at_a_time:
            # eval takes the whole sequence and decodes what its cache lacks: here one new token
            for i in range(1, len(tokens) + 1):
                ctx.eval(tokens[:i])
        else:
            ctx.eval(tokens)
        return np.asarray(ctx.logits(), dtype=np.float32).copy()


@pytest.mark.parametrize("qtype", [*EXACT_ON_WASM, "f32"])
def test_a_batch_computes_what_single_tokens_compute(qtype: str, backend_name: str,
                                                      synthetic_models: Callable[..., Path]) -> None:
    path = synthetic_models(**SHAPE, qtype=qtype)
    with load_model(path, backend_name) as model:
        tokens = model.tokenize("The quick brown fox jumps over the lazy dog, and then it runs far away")
        assert len(tokens) >= 8
        batch = last_logits(model, tokens, one_at_a_time=False)
        single = last_logits(model, tokens, one_at_a_time=True)
    assert np.isfinite(batch).all() and float(np.std(batch)) > 0
    if backend_name == "wasm" and qtype in EXACT_ON_WASM:
        assert batch.tobytes() == single.tobytes(), \
            f"max |diff| {float(np.max(np.abs(batch - single)))}: the tiles no longer sum as the dot products"
    else:
        rel = float(np.linalg.norm(batch - single) / np.linalg.norm(single))
        assert rel < 2e-3, rel
