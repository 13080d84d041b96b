"""timeout= on the calls that compute, on every backend: the cooperative stops (checks between
steps, the abort flag at the deadline) leave the Context usable; in the wasm sandbox the hard
stop (epoch interruption) ends what nothing else can, a chat template in a loop, and poisons only
that sandbox. (Bounds on elapsed time here are loose on purpose: the closing note measures.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import wasillama
from helpers import load_model
from wasillama import BackendError, DeadlineExceededError, InvalidArgumentError

LONG: dict[str, Any] = {"max_tokens": 5000, "ignore_eos": True, "temperature": 0}  # minutes of work
LOOP = ("{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}x"
        "{% endfor %}{% endfor %}{% endfor %}")
SLACK_S = 1.5  # a loaded CI machine may be slow to hand control back; the note gives real numbers


@pytest.fixture(scope="module")
def smollm2(backend_name: str, smollm2_path: Path) -> Iterator[wasillama.Model]:
    with load_model(smollm2_path, backend_name) as m:
        yield m


def _greedy(model: wasillama.Model) -> list[int]:
    with model.new_context(n_ctx=256) as ctx:
        return ctx.generate("Once upon a time", max_tokens=12, temperature=0).tokens


def test_generate_stops_and_the_context_goes_on(smollm2: wasillama.Model) -> None:
    expected = _greedy(smollm2)
    with smollm2.new_context(n_ctx=8192) as ctx:
        t = time.monotonic()
        with pytest.raises(DeadlineExceededError) as stopped:
            ctx.generate("Once upon a time", timeout=0.2, **LONG)
        assert time.monotonic() - t < 0.2 + SLACK_S
        assert "unusable" not in str(stopped.value)  # a cooperative stop
        ctx.clear()
        assert ctx.generate("Once upon a time", max_tokens=12, temperature=0).tokens == expected


def test_streams_eval_embed_and_chat_take_a_timeout(smollm2: wasillama.Model) -> None:
    with smollm2.new_context(n_ctx=8192) as ctx:
        t = time.monotonic()
        between: list[BaseException] = []
        with pytest.raises(DeadlineExceededError), ctx.stream("Once upon a time", timeout=0.2, **LONG) as stream:
            for _ in stream:
                try:  # the consumer's own calls between pieces are not under the stream's deadline
                    time.sleep(0.01)
                    smollm2.tokenize("between pieces")
                except DeadlineExceededError as e:
                    between.append(e)
        assert not between
        assert time.monotonic() - t < 0.2 + SLACK_S
        with pytest.raises(DeadlineExceededError):
            ctx.chat([{"role": "user", "content": "Tell me a long story."}], timeout=0.2, **LONG)
        prompt = smollm2.tokenize("word " * 3000)
        with pytest.raises(DeadlineExceededError):
            ctx.eval(prompt, timeout=0.05)
        assert ctx.generate("Once upon a time", max_tokens=4, temperature=0).completion_tokens == 4
    with smollm2.new_context(n_ctx=8192, n_seq_max=2) as pair, pytest.raises(DeadlineExceededError):
        pair.generate_batch(["Once", "Twice"], timeout=0.2, **LONG)
    with pytest.raises(InvalidArgumentError, match="positive"):
        _greedy_with_timeout(smollm2, 0)


def _greedy_with_timeout(model: wasillama.Model, timeout: float) -> list[int]:
    with model.new_context(n_ctx=256) as ctx:
        return ctx.generate("Hi", max_tokens=2, timeout=timeout).tokens


def test_embed_takes_a_timeout(smollm2: wasillama.Model) -> None:
    with smollm2.new_context(n_ctx=4096, n_batch=4096, n_ubatch=4096, embeddings=True, pooling="mean") as ctx:
        with pytest.raises(DeadlineExceededError) as stopped:
            ctx.embed("word " * 3000, timeout=0.05)
        assert "unusable" not in str(stopped.value)
        assert ctx.embed("hello", timeout=600).shape == (smollm2.n_embd,)


def test_a_timeout_that_is_not_reached_changes_nothing(smollm2: wasillama.Model) -> None:
    with smollm2.new_context(n_ctx=256) as ctx:
        tokens = ctx.generate("Once upon a time", max_tokens=12, temperature=0, timeout=600).tokens
    assert tokens == _greedy(smollm2)


def test_load_stops_at_the_deadline(smollm2_path: Path) -> None:
    """The wasm backend reads the file through the host: the read after the deadline fails."""
    with pytest.raises(DeadlineExceededError, match="deadline"):
        wasillama.Model.load(smollm2_path, timeout=0.001)


def test_a_template_in_a_loop_is_stopped_by_force(smollm2_path: Path, smollm2: wasillama.Model,
                                                  backend_name: str) -> None:
    """Only the sandbox can stop a guest that never returns: natively a template like this runs
    to its end (docs/security.md)."""
    if backend_name != "wasm":
        pytest.skip("the native backend has no hard stop (it is not a sandbox)")
    expected = _greedy(smollm2)
    with wasillama.Model.load(smollm2_path) as victim:
        t = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="unusable"):
            victim.apply_chat_template([{"role": "user", "content": "hi"}], template=LOOP, timeout=0.2)
        assert time.monotonic() - t < 0.2 + SLACK_S
        with pytest.raises(BackendError, match="deadline"):
            victim.tokenize("still there?")
        assert _greedy(smollm2) == expected  # another model's sandbox never noticed
