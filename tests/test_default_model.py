"""The default model (SmolLM2-135M-Instruct Q4_1) answers a simple question, on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import wasillama
from helpers import load_model


@pytest.fixture(scope="module")
def smollm2(backend_name: str, smollm2_path: Path) -> Iterator[wasillama.Model]:
    with load_model(smollm2_path, backend_name) as model:
        yield model


def test_facts(smollm2: wasillama.Model) -> None:
    assert smollm2.architecture == "llama"
    assert smollm2.n_vocab == 49152
    assert smollm2.n_layer == 30
    assert smollm2.chat_template and "<|im_start|>" in smollm2.chat_template


def test_chat_answers(smollm2: wasillama.Model) -> None:
    # with a system message: the template's own default system prompt leads this 135M model astray
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"}]
    prompt = smollm2.apply_chat_template(messages)
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    im_start = smollm2.tokenize("<|im_start|>", add_special=False, parse_special=True)
    assert len(im_start) == 1
    with smollm2.new_context(n_ctx=512) as ctx:
        result = ctx.chat(messages, max_tokens=24, temperature=0)
    assert "Paris" in result.text
    assert result.finish_reason == "eos"
    assert "<|im_end|>" not in result.text
