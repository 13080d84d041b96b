"""GPU offload on the native backend: same greedy tokens as the CPU backends.

Skipped unless the wasillama-native plugin was built with a GPU backend (CUDA, Metal, Vulkan)
and llama.cpp sees a GPU. CI has none; run these on a GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import native_available
from wasillama import Model
from wasillama.backend import load_plugin


def _gpu_devices() -> list[str]:
    if not native_available():
        return []
    return [d.name for d in load_plugin("native").create().devices() if d.kind == "gpu"]


pytestmark = pytest.mark.skipif(not _gpu_devices(),
                                reason="no GPU: the native plugin has no GPU backend or no GPU is visible")


def _greedy(path: Path, backend: str, gpu_layers: int, n: int = 64) -> tuple[list[int], np.ndarray]:
    with (Model.load(path, backend=backend, trust_model=True, gpu_layers=gpu_layers) as model,  # type: ignore[arg-type]
          model.new_context(n_ctx=512) as ctx):
        tokens = ctx.generate("Once upon a time, in a land far away,", max_tokens=n, temperature=0).tokens
        ctx.eval(model.tokenize("Once upon a time, in a land far away,"))
        return tokens, ctx.logits()


# GPU kernels sum in other orders (and may keep F16 intermediates): relative RMS of the prompt's
# logits stays around 1e-3 on this 2-layer F16 model; a wrong kernel is off by 1e-1 or more.
GPU_LOGITS_RTOL = 1e-2


def test_all_layers_on_the_gpu_match_the_cpu(synthetic_models) -> None:  # type: ignore[no-untyped-def]
    path = synthetic_models(seed=1234, n_layer=2, n_embd=128, qtype="f16")
    gpu_tokens, gpu_logits = _greedy(path, "native", -1)
    cpu_tokens, cpu_logits = _greedy(path, "native", 0)
    wasm_tokens, wasm_logits = _greedy(path, "wasm", 0)
    rel = float(np.sqrt(np.mean((gpu_logits - cpu_logits) ** 2)) / np.sqrt(np.mean(cpu_logits**2)))
    assert rel < GPU_LOGITS_RTOL, f"GPU logits differ from the CPU's by {rel:.2e} relative RMS"
    rel_wasm = float(np.sqrt(np.mean((gpu_logits - wasm_logits) ** 2)) / np.sqrt(np.mean(wasm_logits**2)))
    assert rel_wasm < GPU_LOGITS_RTOL, f"GPU logits differ from wasm's by {rel_wasm:.2e} relative RMS"
    assert gpu_tokens == cpu_tokens == wasm_tokens, f"first-step logits differ by {rel:.2e} relative RMS"
