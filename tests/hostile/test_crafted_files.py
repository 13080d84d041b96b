"""Crafted hostile GGUFs (cases.py: every public GGUF / llama.cpp loader vulnerability pattern):
each is refused with a WasillamaError whose message names the problem, or, where llama.cpp may
accept the file, loads and generates or fails cleanly; none crashes the host or hangs it (every
load and generate runs under a deadline, as a host serving untrusted files should), and the same
process then loads a good model and generates the same tokens as before."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import wasillama
from cases import Case, all_cases
from gguf_craft import parse
from wasillama import DeadlineExceededError, WasillamaError

DEADLINE_S = 5.0  # a file that makes llama.cpp work for minutes (PLaMo-2's tables) is stopped here
CATEGORIES = ("header", "kv", "tensor", "hparams", "vocab")


@pytest.fixture(scope="module")
def cases(synthetic_q8: Path) -> list[Case]:
    raw = synthetic_q8.read_bytes()
    base = parse(raw)
    assert base.encode() == raw  # the crafting layer writes back exactly what it read
    return all_cases(base)


@pytest.fixture(scope="module")
def healthy(synthetic_q8: Path) -> Callable[[], None]:
    def greedy() -> list[int]:
        with wasillama.Model.load(synthetic_q8) as m, m.new_context(n_ctx=64) as ctx:
            return ctx.generate("The sandbox", max_tokens=4, temperature=0).tokens

    expected = greedy()
    return lambda: None if greedy() == expected else pytest.fail("the good model changed its output")


def outcome(case: Case) -> str | None:
    """None when the case behaved, else what went wrong."""
    start = time.monotonic()
    try:
        with wasillama.Model.load(case.data, timeout=DEADLINE_S) as model, model.new_context(n_ctx=64) as ctx:
            ctx.generate("hello", max_tokens=2, temperature=0, timeout=DEADLINE_S)
            tokens = model.tokenize("hello world", add_special=True)
            if not all(0 <= t < model.n_vocab for t in tokens):
                return f"token ids out of range: {tokens}"
    except DeadlineExceededError as e:
        if not case.survives:
            return f"hit the deadline instead of a load error: {e}"
    except WasillamaError as e:
        message = str(e)
        if len(message) < 20:
            return f"uninformative message {message!r}"
        if not re.search(case.pattern, message, re.IGNORECASE):
            return f"{type(e).__name__}: {message!r} does not name the problem (/{case.pattern}/)"
    else:
        if not case.survives:
            return "loaded, but must be refused"
    elapsed = time.monotonic() - start
    if elapsed > 2 * DEADLINE_S + 5:
        return f"took {elapsed:.1f} s: the deadline did not hold"
    return None


def test_there_are_at_least_200_crafted_files(cases: list[Case]) -> None:
    assert len(cases) >= 200
    assert {c.name.split("/")[0] for c in cases} == set(CATEGORIES)
    assert len({c.data for c in cases}) == len(cases)  # no two cases are the same file


@pytest.mark.parametrize("category", CATEGORIES)
def test_crafted_files(category: str, cases: list[Case], healthy: Callable[[], None]) -> None:
    mine = [c for c in cases if c.name.startswith(category + "/")]
    assert mine
    failures = {c.name: why for c in mine if (why := outcome(c)) is not None}
    assert not failures, "\n".join(f"{name}: {why}" for name, why in failures.items())
    healthy()
