"""The models and prompts on which the wasm backend must match native llama.cpp token for token.

Shared by tests/test_parity.py and scripts/native_reference.py (which regenerates the
checked-in reference tokens with the native plugin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import synthetic

# Exact greedy equality for 64 tokens (tests/test_parity.py). Backends agree per op to float
# noise (~1e-7); over a deep quantized model that noise grows to a few 1e-2 of the logits
# (docs/parity.md), so a long generation can take the other branch of a near-tie. These cases
# have no near-tie in their first 64 tokens; NEAR_TIE_PROMPTS covers the general case.
# NEAR_TIE_PROMPTS go through the chat template with this system message (the CLI's default):
# without one, SmolLM2's template adds its own, which leads this 135M model into rambling French.
CHAT_SYSTEM = "You are a helpful assistant."


def chat_messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": prompt}]


CASES: list[dict[str, Any]] = [
    # a chat turn as ChatML text ("chat": control tokens parsed), independent of template rendering
    {"id": "smollm2-chat", "model": "smollm2", "chat": True,
     "prompt": "<|im_start|>user\nHow do plants make their food?<|im_end|>\n<|im_start|>assistant\n", "n_predict": 64},
    {"id": "synthetic-f16", "model": {"seed": 1234, "n_layer": 2, "n_embd": 128, "qtype": "f16"},
     "prompt": "Once upon a time, in a land far away,", "n_predict": 64},
]

# Chat prompts for SmolLM2 on which wasm and native greedy output may part only at a near-tie:
# where they differ, the two candidate tokens' logits must be within NEAR_TIE_LOGITS.
NEAR_TIE_PROMPTS = [
    "Write a short story about a cat who learns to fly.", "Explain how a rainbow forms.",
    "What are the benefits of regular exercise?", "Give me three tips for learning a new language.",
    "Describe the city of Paris.", "How do plants make their food?", "Write a poem about the sea.",
    "What is machine learning?", "Why is the sky blue?", "Tell me about the history of the bicycle.",
    "What should I pack for a weekend camping trip?", "Explain the rules of chess briefly.",
]
NEAR_TIE_LOGITS = 0.5  # SmolLM2's logits have a standard deviation of about 4.3


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
