"""The models and prompts on which the wasm backend must match native llama.cpp token for token.

Shared by tests/test_parity.py and scripts/native_reference.py (which regenerates the
checked-in reference tokens with the native plugin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import synthetic

CASES: list[dict[str, Any]] = [
    {"id": "smollm2-chat", "model": "smollm2", "chat": True,
     "prompt": "Write a short story about a cat who learns to fly.",
     "n_predict": 64},
    {"id": "synthetic-f16", "model": {"seed": 1234, "n_layer": 2, "n_embd": 128, "qtype": "f16"},
     "prompt": "Once upon a time, in a land far away,", "n_predict": 64},
    {"id": "synthetic-q8_0", "model": {"seed": 99, "n_layer": 4, "n_embd": 256, "n_ff": 512, "qtype": "q8_0"},
     "prompt": "The quick brown fox jumps over the lazy dog.", "n_predict": 64},
]


def materialize(case: dict[str, Any], cache: Path) -> Path:
    """The model file of a case: the default model, or a synthetic one written once."""
    spec = case["model"]
    if spec == "smollm2":
        from wasillama.default_model import default_model_path

        return default_model_path(quiet=True)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{case['id']}.gguf"
    if not path.exists():
        synthetic.write_llama(path.with_suffix(".tmp"), **spec)
        path.with_suffix(".tmp").rename(path)
    return path
