"""Speculative decoding on every installed backend: the output is token-identical to the
target's plain greedy decoding whatever the draft (the same model: every draft kept; another
model: few kept), the caches stay consistent for the next call, and misuse is a clear error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import wasillama
from helpers import load_model
from wasillama import InvalidArgumentError, UnsupportedOptionError

PROMPTS = ["Once upon a time, in a small village", "The weather today is", "1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def target(backend_name: str, synthetic_model: Path) -> Iterator[wasillama.Model]:
    with load_model(synthetic_model, backend_name) as m:
        yield m


@pytest.fixture(scope="module")
def other(backend_name: str, synthetic_models: Callable[..., Path]) -> Iterator[wasillama.Model]:
    with load_model(synthetic_models(seed=5, n_layer=1, n_embd=64), backend_name) as m:
        yield m


@pytest.mark.parametrize("n_draft", [1, 4, 8])
def test_the_same_model_as_draft_keeps_every_token(target: wasillama.Model, n_draft: int) -> None:
    with target.new_context(n_ctx=1024) as t, target.new_context(n_ctx=1024) as d, \
            target.new_context(n_ctx=1024) as plain:
        for prompt in PROMPTS:
            expected = plain.generate(prompt, max_tokens=48, temperature=0)
            got = t.generate(prompt, max_tokens=48, temperature=0, draft=d, draft_tokens=n_draft)
            assert got.tokens == expected.tokens and got.text == expected.text
            assert got.finish_reason == expected.finish_reason
            assert got.draft is not None and got.draft.acceptance_rate == 1.0
            assert got.draft.rounds <= -(-48 // (n_draft + 1)) + 1  # 1 + n_draft tokens per target decode


def test_another_model_as_draft_changes_nothing_but_speed(target: wasillama.Model, other: wasillama.Model) -> None:
    with target.new_context(n_ctx=1024) as t, other.new_context(n_ctx=1024) as d, \
            target.new_context(n_ctx=1024) as plain:
        for prompt in PROMPTS:
            expected = plain.generate(prompt, max_tokens=48, temperature=0)
            got = t.generate(prompt, max_tokens=48, temperature=0, draft=d, draft_tokens=6)
            assert got.tokens == expected.tokens
            assert got.draft is not None and 0.0 <= got.draft.acceptance_rate < 1.0
        # the caches are consistent: a plain call after speculative ones gives the same tokens
        assert t.generate(PROMPTS[0], max_tokens=16, temperature=0).tokens == \
            plain.generate(PROMPTS[0], max_tokens=16, temperature=0).tokens
        # and speculative decoding reuses the prompt it holds
        again = t.generate(PROMPTS[0], max_tokens=16, temperature=0, draft=d)
        assert again.cached_prompt_tokens == len(t.tokenize(PROMPTS[0])) - 1


def test_stops_and_lengths(target: wasillama.Model, other: wasillama.Model) -> None:
    with target.new_context(n_ctx=1024) as t, other.new_context(n_ctx=1024) as d, \
            target.new_context(n_ctx=1024) as plain:
        full = plain.generate(PROMPTS[0], max_tokens=40, temperature=0)
        stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
        cut = plain.generate(PROMPTS[0], max_tokens=40, temperature=0, stop=[stop])
        got = t.generate(PROMPTS[0], max_tokens=40, temperature=0, stop=[stop], draft=d, draft_tokens=5)
        assert got.text == cut.text and got.finish_reason == "stop" and got.tokens == cut.tokens
        for n in (1, 2, 7):
            assert t.generate(PROMPTS[1], max_tokens=n, temperature=0, draft=d).tokens == \
                plain.generate(PROMPTS[1], max_tokens=n, temperature=0).tokens


def test_misuse(target: wasillama.Model, other: wasillama.Model) -> None:
    with target.new_context(n_ctx=512) as t, other.new_context(n_ctx=512) as d:
        with pytest.raises(UnsupportedOptionError, match="greedy only"):
            t.generate("x", temperature=0.8, draft=d)
        with pytest.raises(UnsupportedOptionError, match="greedy only"):
            t.generate("x", temperature=0, repeat_penalty=1.2, draft=d)
        with pytest.raises(InvalidArgumentError, match="another context"):
            t.generate("x", temperature=0, draft=t)
        with pytest.raises(InvalidArgumentError, match="draft_tokens"):
            t.generate("x", temperature=0, draft=d, draft_tokens=0)
