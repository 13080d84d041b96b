"""Guest threads: ggml's thread pool inside the sandbox (wasm/runtime/threads.c on the guest's
side, wasillama/wasm/threads.py on the host's). A context's graphs run on a pool it keeps; the
threads give the very same tokens as one; none outlives its context, model or sandbox; and one
thread's death stops every other, with an error, never a hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import wasillama
from wasillama import ContextOptions
from wasillama.errors import BackendError, InvalidArgumentError
from wasillama.wasm.threads import GuestThreads
from wasillama.wasm.transport import WasmTransport

PROMPT = "The three primary colours are"


def guest_threads(model: wasillama.Model) -> GuestThreads:
    transport = model._backend.transport  # type: ignore[attr-defined]
    assert isinstance(transport, WasmTransport) and transport.threads is not None
    return transport.threads


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_context_keeps_one_pool_for_all_its_graphs(smollm2_path: Path) -> None:
    with wasillama.Model.load(smollm2_path) as model:
        threads = guest_threads(model)
        with model.new_context(n_ctx=256, n_threads=3, n_threads_batch=2) as ctx:
            assert threads.live == 2  # the pool of max(3, 2): the caller's thread and two more
            ctx.generate(PROMPT, max_tokens=8, temperature=0)
            ctx.generate(PROMPT, max_tokens=8, temperature=0)
            assert threads.started == 2  # none started per graph
        assert wait_until(lambda: threads.live == 0)  # freeing the context joined them
        with model.new_context(n_ctx=256, n_threads=1, n_threads_batch=1) as ctx:
            ctx.generate(PROMPT, max_tokens=4, temperature=0)
            assert threads.started == 2  # one thread: no pool at all


def test_greedy_tokens_are_the_same_with_any_number_of_threads(smollm2_path: Path) -> None:
    with wasillama.Model.load(smollm2_path) as model:
        tokens = {}
        for n in (1, 2, 3):
            with model.new_context(n_ctx=512, n_threads=n, n_threads_batch=n) as ctx:
                tokens[n] = ctx.generate(PROMPT, max_tokens=48, temperature=0).tokens
        assert len(tokens[1]) == 48
        assert tokens[2] == tokens[1]
        assert tokens[3] == tokens[1]


def test_a_long_cache_gives_the_same_logits_with_any_number_of_threads(smollm2_path: Path) -> None:
    """One token after 600 in the cache: flash attention's decode splits the cache into chunks
    (wasm/patches/0007 fixes their number, where ggml took one per thread)."""
    with wasillama.Model.load(smollm2_path) as model:
        prompt = model.tokenize(" ".join(f"item {i}," for i in range(200)))[:600]
        logits = {}
        for n in (1, 2, 3):
            with model.new_context(n_ctx=1024, n_threads=n, n_threads_batch=n, flash_attn=None) as ctx:
                ctx.eval(prompt[:-1])
                ctx.eval(prompt)  # the last token alone, against 599 cached
                logits[n] = ctx.logits().tobytes()
        assert len(prompt) == 600
        assert logits[2] == logits[1]
        assert logits[3] == logits[1]


def test_closing_a_model_stops_the_threads_of_its_open_contexts(smollm2_path: Path) -> None:
    model = wasillama.Model.load(smollm2_path)
    threads = guest_threads(model)
    ctx = model.new_context(n_ctx=128, n_threads=2)
    ctx.generate(PROMPT, max_tokens=2, temperature=0)
    assert threads.live == 1
    model.close()
    assert wait_until(lambda: threads.live == 0)


def test_when_one_thread_dies_every_thread_stops_and_the_call_fails(smollm2_path: Path) -> None:
    """What a trap on a guest thread does to its sandbox (the host dooms the others, as here)."""
    with wasillama.Model.load(smollm2_path) as model:
        threads = guest_threads(model)
        ctx = model.new_context(n_ctx=1024, n_threads=2)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                ctx.generate(PROMPT, max_tokens=900, temperature=0, ignore_eos=True)
            except BaseException as e:
                failure.append(e)

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(1.0)
        threads.doom()
        worker.join(10)
        assert not worker.is_alive(), "the call did not end"
        assert failure and isinstance(failure[0], BackendError)
        assert wait_until(lambda: threads.live == 0)
        assert model.poisoned is not None
        with pytest.raises(BackendError, match="unusable"):
            model.tokenize("still there?")


@pytest.mark.parametrize("option", [{"n_threads": -1}, {"n_threads": 513}, {"n_threads_batch": 10_000}])
def test_thread_counts_ggml_cannot_run_are_refused(option: dict[str, int]) -> None:
    with pytest.raises(InvalidArgumentError, match="between 0"):
        ContextOptions(**option)  # type: ignore[arg-type]
