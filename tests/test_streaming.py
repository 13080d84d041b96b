"""Streaming in its three forms (iterator, callback, asyncio) and cancellation in its four
(break, cancel(), a callback saying no, cancelling the asyncio task), on every installed
backend: the same text as generate(), and a Context that works afterwards."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import wasillama
from wasillama import ConcurrentUseError

PROMPT = "Once upon a time, in a small village"
# ends only when cancelled (or when the context is full)
LONG: dict[str, Any] = {"max_tokens": 100_000, "temperature": 0, "ignore_eos": True}


@pytest.fixture
def ctx(model: wasillama.Model) -> Iterator[wasillama.Context]:
    with model.new_context(n_ctx=4096) as c:
        yield c


def _greedy(ctx: wasillama.Context, n: int = 24) -> list[int]:
    return ctx.generate(PROMPT, max_tokens=n, temperature=0).tokens


def test_async_stream_and_generate_equal_the_sync_ones(ctx: wasillama.Context) -> None:
    sync = ctx.generate(PROMPT, max_tokens=24, temperature=0)

    async def main() -> tuple[list[str], wasillama.GenerationResult | None, wasillama.GenerationResult]:
        stream = ctx.astream(PROMPT, max_tokens=24, temperature=0)
        pieces = [p async for p in stream]
        return pieces, stream.result, await ctx.agenerate(PROMPT, max_tokens=24, temperature=0)

    pieces, streamed, generated = asyncio.run(main())
    assert "".join(pieces) == sync.text
    assert streamed is not None and streamed.tokens == generated.tokens == sync.tokens


def test_async_work_never_runs_on_the_event_loops_thread(ctx: wasillama.Context,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[int] = set()
    real = ctx._backend.generate_multi

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.add(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(ctx._backend, "generate_multi", spy)

    async def main() -> int:
        await ctx.agenerate(PROMPT, max_tokens=8, temperature=0)
        async for _ in ctx.astream(PROMPT, max_tokens=8, temperature=0):
            pass
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert threads and loop_thread not in threads


def test_cancelling_the_asyncio_task(ctx: wasillama.Context) -> None:
    async def main() -> tuple[float, int]:
        seen = asyncio.Event()
        count = 0

        async def consume() -> None:
            nonlocal count
            async for _ in ctx.astream(PROMPT, **LONG):
                count += 1
                if count == 5:
                    seen.set()

        task = asyncio.create_task(consume())
        await seen.wait()
        t0 = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.perf_counter() - t0, count

    took, count = asyncio.run(main())
    assert count >= 5
    assert took < 0.1, f"cancellation took {took * 1000:.0f} ms"
    assert _greedy(ctx) == _greedy(ctx)  # the Context is free, and works


def test_cancel_from_another_thread_keeps_the_result(ctx: wasillama.Context) -> None:
    stream = ctx.stream(PROMPT, **LONG)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 5:
            other = threading.Thread(target=stream.cancel)
            other.start()
            other.join()
    result = stream.result
    assert result is not None and result.finish_reason == "cancelled"
    assert 0 < len(result.tokens) < 100_000 and result.text == "".join(pieces)
    # what it generated is in the cache: continuing from there matches a fresh greedy run
    fresh = _greedy(ctx, n=len(result.tokens) + 4)
    assert fresh[: len(result.tokens)] == result.tokens


def test_a_callback_that_says_no(ctx: wasillama.Context) -> None:
    pieces: list[str] = []

    def on_text(piece: str) -> bool:
        pieces.append(piece)
        return len(pieces) < 6

    result = ctx.generate(PROMPT, on_text=on_text, **LONG)
    assert result.finish_reason == "cancelled"
    assert len(pieces) == 6 and result.text == "".join(pieces)
    full = ctx.generate(PROMPT, max_tokens=24, temperature=0, on_text=pieces.append)
    assert full.finish_reason == "length"


def test_breaking_out_of_a_stream_frees_the_context(ctx: wasillama.Context) -> None:
    for i, _ in enumerate(ctx.stream(PROMPT, **LONG)):
        if i == 3:
            break
    assert len(_greedy(ctx)) == 24  # no ConcurrentUseError: the abandoned stream let go
    held = ctx.stream(PROMPT, **LONG)
    next(held)
    with pytest.raises(ConcurrentUseError):
        _greedy(ctx)
    held.close()
    assert len(_greedy(ctx)) == 24


def test_cancel_while_the_prompt_is_evaluated(model: wasillama.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    with model.new_context(n_ctx=4096, n_batch=32) as ctx:
        prompt = list(range(100, 3100))  # 3,000 tokens in chunks of 32
        stream = ctx.stream(prompt, max_tokens=4, temperature=0)
        chunks = []
        real = ctx._backend.decode

        def decode(*args: Any, **kwargs: Any) -> Any:
            chunks.append(1)
            if len(chunks) == 10:  # cancel from another thread while the 10th chunk runs
                threading.Timer(0.0, stream.cancel).start()
            return real(*args, **kwargs)

        monkeypatch.setattr(ctx._backend, "decode", decode)
        assert list(stream) == []
        monkeypatch.undo()
        assert 10 <= len(chunks) < 3000 // 32
        assert stream.result is not None and stream.result.finish_reason == "cancelled"
        assert stream.result.tokens == []
        with model.new_context(n_ctx=4096, n_batch=32) as fresh:
            assert ctx.generate(prompt[:200], max_tokens=4, temperature=0).tokens == \
                fresh.generate(prompt[:200], max_tokens=4, temperature=0).tokens


def test_a_late_cancel_does_not_touch_the_next_call(ctx: wasillama.Context) -> None:
    done = ctx.stream(PROMPT, max_tokens=4, temperature=0)
    assert len(list(done)) > 0
    results: list[wasillama.GenerationResult] = []

    def later() -> None:
        for _ in range(50):
            done.cancel()  # the finished stream's cancel, while another run goes on
            time.sleep(0.002)

    other = threading.Thread(target=later)
    other.start()
    results.append(ctx.generate(PROMPT, max_tokens=200, temperature=0, ignore_eos=True))
    other.join()
    assert results[0].finish_reason == "length" and len(results[0].tokens) == 200
