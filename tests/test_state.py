"""Saving and restoring a Context's state on every installed backend: a restored context
continues with the tokens the original would have produced, evaluating only what is new; states
of another model, of a smaller context, or damaged ones are clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import wasillama
from helpers import load_model
from wasillama import InvalidArgumentError

PROMPT = "Once upon a time, in a small village"


def test_a_restored_state_continues_with_identical_tokens(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=512) as original, model.new_context(n_ctx=512) as restored:
        first = original.generate(PROMPT, max_tokens=20, temperature=0)
        saved = original.save_state()
        history = original.tokenize(PROMPT) + first.tokens
        expected = original.generate(history, max_tokens=20, temperature=0)
        restored.load_state(saved)
        again = restored.generate(history, max_tokens=20, temperature=0)
        assert again.tokens == expected.tokens
        # the prompt and all but the last generated token were in the saved cache
        assert again.cached_prompt_tokens == len(history) - 1 == expected.cached_prompt_tokens


def test_state_files(model: wasillama.Model, tmp_path: Path) -> None:
    path = tmp_path / "ctx.state"
    with model.new_context(n_ctx=512) as a, model.new_context(n_ctx=512) as b:
        a.generate(PROMPT, max_tokens=8, temperature=0)
        a.save_state_file(path)
        assert path.stat().st_size > 0 and not path.with_name("ctx.state.tmp").exists()
        b.load_state_file(path)
        assert b.generate(PROMPT, max_tokens=8, temperature=0).cached_prompt_tokens == len(a.tokenize(PROMPT)) - 1


def test_several_sequences(model: wasillama.Model) -> None:
    prompts = [PROMPT, "The weather today is"]
    with model.new_context(n_ctx=1024, n_seq_max=2) as a, model.new_context(n_ctx=1024, n_seq_max=2) as b:
        a.generate_batch(prompts, max_tokens=6, temperature=0)
        b.load_state(a.save_state())
        assert [r.tokens for r in b.generate_batch(prompts, max_tokens=6, temperature=0)] == \
            [r.tokens for r in a.generate_batch(prompts, max_tokens=6, temperature=0)]
        with model.new_context(n_ctx=512) as single, pytest.raises(InvalidArgumentError, match="holds sequence 1"):
            single.load_state(a.save_state())


@pytest.mark.parametrize("damage", [
    lambda b: b[:-1],
    lambda b: b[:40],
    lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 0xFF]) + b[len(b) // 2 + 1 :],
    lambda b: b"garbage",
    lambda b: b"",
], ids=["last-byte-cut", "header-only", "one-byte-flipped", "garbage", "empty"])
def test_a_damaged_state_is_refused(model: wasillama.Model, damage: Callable[[bytes], bytes]) -> None:
    with model.new_context(n_ctx=512) as ctx:
        ctx.generate(PROMPT, max_tokens=4, temperature=0)
        blob = ctx.save_state()
        with pytest.raises(InvalidArgumentError, match=r"damaged|not a wasillama context state"):
            ctx.load_state(damage(blob))
        fresh = ctx.generate(PROMPT, max_tokens=4, temperature=0)
        assert fresh.tokens == ctx.generate(PROMPT, max_tokens=4, temperature=0).tokens


def test_a_state_of_another_model_is_refused(model: wasillama.Model, backend_name: str,
                                             synthetic_q8: Path) -> None:
    with load_model(synthetic_q8, backend_name) as other, other.new_context(n_ctx=512) as theirs, \
            model.new_context(n_ctx=512) as ours:
        theirs.generate(PROMPT, max_tokens=4, temperature=0)
        with pytest.raises(InvalidArgumentError, match="of another model"):
            ours.load_state(theirs.save_state())


def test_a_state_that_does_not_fit_is_refused(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=1024) as big, model.new_context(n_ctx=256) as small:
        long = list(range(100, 700))
        big.generate(long, max_tokens=2, temperature=0)
        with pytest.raises(InvalidArgumentError, match="does not fit"):
            small.load_state(big.save_state())
        assert len(small.generate(PROMPT, max_tokens=3, temperature=0).tokens) == 3  # emptied, usable
