"""Streams over a generation run: iterators (TextStream, BatchStream) and the asyncio variant
(AsyncTextStream). Each can stop early: close() (or leaving a ``with`` block, or breaking out of
a ``for`` loop over a stream nobody else holds) drops the run; cancel() (from any thread) ends it
soon with what it has, so the result still comes, with finish_reason "cancelled"."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .results import GenerationResult

Run = Iterator[tuple[int, str] | list[GenerationResult]]


class _Stream:
    def __init__(self, run: Run, cancel: Callable[[], None]) -> None:
        self._run = run
        self._cancel = cancel

    def cancel(self) -> None:
        """Stop generating soon (safe from any thread): a decode in progress is aborted, the
        stream yields what is left and ends; its result's finish_reason is "cancelled"."""
        self._cancel()

    def close(self) -> None:
        """Drop the run now (frees its samplers, releases the context). Idempotent."""
        close = getattr(self._run, "close", None)
        if close is not None:
            close()

    def _next(self) -> tuple[int, str] | list[GenerationResult]:
        item = next(self._run)
        if isinstance(item, list):
            self.close()  # runs the generator's cleanup: frees the samplers, releases the context
        return item

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a stream left behind (a `for` loop that broke) frees its context
        with contextlib.suppress(Exception):
            self.close()


class TextStream(_Stream, Iterator[str]):
    """Text pieces as they are generated; `.result` once exhausted."""

    def __init__(self, run: Run, cancel: Callable[[], None]) -> None:
        super().__init__(run, cancel)
        self.result: GenerationResult | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        item = self._next()
        if isinstance(item, list):
            self.result = item[0]
            raise StopIteration
        return str(item[1])

    def __enter__(self) -> TextStream:
        return self


class BatchStream(_Stream, Iterator[tuple[int, str]]):
    """(prompt index, text piece) as they are generated; `.results` once exhausted."""

    def __init__(self, run: Run, cancel: Callable[[], None]) -> None:
        super().__init__(run, cancel)
        self.results: list[GenerationResult] | None = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[int, str]:
        item = self._next()
        if isinstance(item, list):
            self.results = item
            raise StopIteration
        return int(item[0]), str(item[1])

    def __enter__(self) -> BatchStream:
        return self


class AsyncTextStream(AsyncIterator[str]):
    """``async for piece in ctx.astream(...)``: the run goes on in a worker thread, so the event
    loop never blocks. Cancelling the task that iterates, or aclose(), cancels the run and waits
    for the worker to let go of the Context (at most one aborted decode), so the Context is free
    again when the cancellation has propagated. `.result` once exhausted."""

    def __init__(self, stream: TextStream) -> None:
        self._stream = stream
        self._queue: asyncio.Queue[tuple[str, Any]] | None = None
        self._thread: threading.Thread | None = None
        self.result: GenerationResult | None = None

    def __aiter__(self) -> AsyncTextStream:
        return self

    async def __anext__(self) -> str:
        if self._queue is None:
            self._start()
        assert self._queue is not None
        try:
            kind, value = await self._queue.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if kind == "piece":
            return str(value)
        await self._join()
        if kind == "error":
            raise value
        self.result = value
        raise StopAsyncIteration

    def cancel(self) -> None:
        """Like TextStream.cancel(): the stream ends soon with finish_reason "cancelled"."""
        self._stream.cancel()

    async def aclose(self) -> None:
        """Cancel the run and wait until the worker has released the Context."""
        self._stream.cancel()
        if self._thread is None:
            self._stream.close()
        await self._join()

    async def __aenter__(self) -> AsyncTextStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._queue = queue

        def post(kind: str, value: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def work() -> None:
            try:
                for piece in self._stream:
                    post("piece", piece)
                post("done", self._stream.result)
            except BaseException as e:
                post("error", e)
            finally:
                self._stream.close()

        self._thread = threading.Thread(target=work, name="wasillama-astream", daemon=True)
        self._thread.start()

    async def _join(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)
