"""Continuous batching: requests join and leave one Context's batch between decode steps.

``ctx.generate_batch`` starts all its prompts together and returns when the last one ends. A
server cannot wait like that: requests arrive while others generate. A ContinuousBatch holds a
Context for its whole life and lets its owner thread

- ``submit`` a prompt (or a chat) whenever a sequence is free: it gets a sequence, the longest
  prefix that sequence or another one holds is reused (a shared system prompt is copied, not
  evaluated again), and its sampler chain is its own;
- ``step``: evaluate one chunk of the oldest prompt still being read, then sample every
  generating request with its own chain and decode all of them in one batch. A prompt therefore
  delays the others' next tokens by one chunk (``prompt_chunk`` tokens) at most, never by its
  whole length.

A request ends on its own end-of-generation token, stop string, max_tokens, its sequence's share
of the cache running out (finish_reason "context_full"; the others go on), ``cancel()`` (any
thread), or its deadline (DeadlineExceededError as its error). An error that concerns one prompt
(a hostile grammar, a prompt too long) fails that request alone; one that stops the shared
decode fails the requests it was decoding, and after a guest trap the Context is rebuilt (with
``on_trap="rebuild"``) so that later requests run again.

Results equal separate ``ctx.generate`` calls with the same options and seeds: each request
samples with its own chain from its own sequence's logits.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import deadline
from .chat import ChatPrompt, Message
from .errors import (
    AbortedError,
    ClosedError,
    DeadlineExceededError,
    InvalidArgumentError,
    WasillamaError,
)
from .options import ChatOptions
from .results import GenerationResult

if TYPE_CHECKING:
    from .context import Context, _Job


class BatchRequest:
    """One prompt in a ContinuousBatch. ``result`` (or ``error``) is set once it has ended."""

    def __init__(self, job: _Job, end: float | None) -> None:
        self._job = job
        self._end = end  # time.monotonic() deadline
        self._cancelled = threading.Event()
        self._chunks: deque[list[int]] | None = None  # prompt chunks still to evaluate; None: not planned
        self._t0 = time.perf_counter()
        self.result: GenerationResult | None = None
        self.error: WasillamaError | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self._job.tokens)

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def cancel(self) -> None:
        """End this request at the next step with what it has (finish_reason "cancelled"). Any thread."""
        self._cancelled.set()


Event = tuple[BatchRequest, str | None]  # a text piece, or None once the request has ended


class ContinuousBatch:
    """Continuous batching over one Context (see the module's docstring). Use it from one thread;
    only BatchRequest.cancel() may come from others. While it is open the Context is taken: its
    other calls raise ConcurrentUseError. Close it (or use ``with``) to give the Context back."""

    def __init__(self, ctx: Context, *, steps_per_call: int = 1, prompt_chunk: int | None = None) -> None:
        if steps_per_call < 1:
            raise InvalidArgumentError("steps_per_call must be >= 1")
        ctx._require_logits()
        ctx._acquire()
        self._held = True
        self._ctx = ctx
        self._chunk = steps_per_call
        self._prompt_chunk = prompt_chunk
        self._free = list(range(ctx.n_seq_max))
        self._reading: deque[BatchRequest] = deque()  # prompts being evaluated, oldest first
        self._generating: list[BatchRequest] = []
        self._closed = False

    # ---- state -------------------------------------------------------------------------------

    @property
    def free(self) -> int:
        """How many more requests submit() takes now."""
        return len(self._free)

    @property
    def busy(self) -> bool:
        """Whether a request is still running (step() has work)."""
        return bool(self._reading or self._generating)

    @property
    def requests(self) -> list[BatchRequest]:
        return [*self._reading, *self._generating]

    # ---- requests ----------------------------------------------------------------------------

    def submit(self, prompt: str | Sequence[int], *, timeout: float | None = None, **options: Any) -> BatchRequest:
        """Add a prompt (text or token ids) with generate()'s keyword arguments (sampling, stop,
        max_tokens, logprobs, a Sampling field, ...). Raises InvalidArgumentError when no
        sequence is free, ContextFullError when the prompt cannot fit a sequence; errors in the
        options (a bad grammar) raise here or fail the request at its first step."""
        if self._closed:
            raise ClosedError("the batch is closed")
        if not self._free:
            raise InvalidArgumentError(f"all {self._ctx.n_seq_max} sequences are busy: wait for a request to end")
        ctx = self._ctx
        job = ctx._job(-1, prompt, **options)
        ctx._check_room(job.tokens)
        try:
            ctx._make_sampler(job)
        except BaseException:
            if job.sampler:
                with contextlib.suppress(WasillamaError):
                    ctx._backend.free_sampler(job.sampler)
            raise
        job.seq = self._seat(job.tokens)
        left = ctx._model._timeout(timeout)
        request = BatchRequest(job, None if left is None else time.monotonic() + left)
        self._reading.append(request)
        return request

    def submit_chat(self, messages: Sequence[Message] | ChatPrompt, *, chat: ChatOptions | None = None,
                    **options: Any) -> BatchRequest:
        """submit() for a conversation (Context.chat's arguments), or for one already rendered
        (Model.render_chat; by another Model of the same file, e.g. a screening one): the reply
        is parsed into result.message, tool calls included."""
        prompt, rest = self._ctx._chat_options(messages, chat, options)
        return self.submit(prompt, **rest)

    def _seat(self, tokens: list[int]) -> int:
        """The free sequence whose cache shares the longest prefix with `tokens` (a conversation
        goes back to its own), else the emptiest one (what others hold stays reusable)."""
        ctx = self._ctx
        seq = max(self._free, key=lambda s: (ctx._held_prefix(s, tokens), -len(ctx._cached[s])))
        self._free.remove(seq)
        return seq

    # ---- the loop ----------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """One round: cancellations and deadlines, one prompt chunk, one decode of every
        generating request. Returns (request, piece) events, and (request, None) for each request
        that ended (its result or error is set)."""
        if self._closed or not self._held:
            raise ClosedError("the batch is closed" if self._closed else
                              f"the batch lost its context: {self._ctx._model.poisoned or 'it could not be rebuilt'}")
        events: list[Event] = []
        now = time.monotonic()
        for r in self.requests:
            if r._cancelled.is_set():
                self._end(r, events, "cancelled")
            elif r._end is not None and now >= r._end:
                self._fail(r, DeadlineExceededError("the request's deadline passed"), events)
        # each call runs under the sandbox's own limit (default_timeout): a call past it stops
        # (DeadlineExceededError for the requests in it), the others' deadlines are checked above
        ctx = self._ctx
        with deadline.after(ctx._model._timeout(None)), ctx._stopwatch():
            if self._reading:
                self._read(self._reading[0], events)
            if self._generating:
                self._decode(events)
        if ctx._abort_requested:  # the step's timer fired: its flag must not stop the next step
            ctx._abort_requested = False
            with contextlib.suppress(WasillamaError):
                ctx._backend.set_abort(ctx._handle, False)
        return events

    def _error(self, e: WasillamaError) -> WasillamaError:
        """What a request that failed in this step gets: the step's own stop at the sandbox's
        limit is a deadline, not an abort."""
        if isinstance(e, AbortedError) and self._ctx._abort_requested:
            return DeadlineExceededError(f"a sandbox call took longer than its limit "
                                         f"({self._ctx._model.sandbox_options.default_timeout} s)")
        return e

    def _read(self, r: BatchRequest, events: list[Event]) -> None:
        ctx, job = self._ctx, r._job
        try:
            if r._chunks is None:
                job.reused, chunks = ctx._ingest_plan(job.seq, job.tokens, with_last=False, chunk=self._prompt_chunk)
                r._chunks = deque(chunks)
            if r._chunks:
                ctx._ingest_chunk(job.seq, r._chunks.popleft(), logits_last=False, background=False)
            if not r._chunks:
                ctx._start(job, time.perf_counter())
                self._reading.popleft()
                self._generating.append(r)
                if job.finish is not None:  # max_tokens=0
                    self._end(r, events, job.finish)
        except WasillamaError as e:
            e = self._error(e)
            self._fail(r, e, events)
            self._recover(e, events)

    def _decode(self, events: list[Event]) -> None:
        active = list(self._generating)
        try:
            self._decode_together(active, events)
        except WasillamaError as e:
            e = self._error(e)
            if self._ctx._model.poisoned is not None or len(active) == 1 or isinstance(e, DeadlineExceededError):
                for r in active:
                    self._fail(r, e, events)
                self._recover(e, events)
                return
            # one sequence's sampler failed the shared step (a grammar left with no allowed token):
            # each request steps alone, so that only the one at fault fails
            for r in active:
                try:
                    self._decode_together([r], events)
                except WasillamaError as alone:
                    self._fail(r, self._error(alone), events)
                    self._recover(alone, events)
                    if self._ctx._model.poisoned is not None or not self._held:
                        return
        for r in list(self._generating):
            if r._job.finish is not None:
                self._end(r, events, r._job.finish)

    def _decode_together(self, active: list[BatchRequest], events: list[Event]) -> None:
        by_job = {id(r._job): r for r in active}
        for job, piece in self._ctx._decode_step([r._job for r in active], self._chunk):
            events.append((by_job[id(job)], piece))

    def _end(self, r: BatchRequest, events: list[Event], finish: Any) -> None:
        """A request ends with a result: the rest of its text, then None."""
        job = r._job
        job.finish = job.finish or finish
        tail = job.text.finish()
        if tail:
            events.append((r, tail))
        t2 = time.perf_counter()
        try:
            r.result = self._ctx._result(job, r._t0, job.t_prompt or t2, t2)
        except WasillamaError as e:  # parsing a chat reply runs in the backend too
            r.error = e
        self._leave(r)
        events.append((r, None))

    def _fail(self, r: BatchRequest, error: WasillamaError, events: list[Event]) -> None:
        r.error = error
        self._leave(r)
        events.append((r, None))

    def _leave(self, r: BatchRequest) -> None:
        job = r._job
        if r in self._reading:
            self._reading.remove(r)
        if r in self._generating:
            self._generating.remove(r)
        if job.sampler and self._held:
            with contextlib.suppress(WasillamaError):
                self._ctx._backend.free_sampler(job.sampler)
            job.sampler = 0
        self._free.append(job.seq)

    def _recover(self, error: WasillamaError, events: list[Event]) -> None:
        """After a failed call: when the guest trapped, the requests that were generating lose
        their state and fail with `error`; those still reading their prompt start it again in
        the Context made anew in the rebuilt sandbox (on_trap="rebuild"). Without a rebuild the
        Context stays failed, and the next call says so."""
        ctx = self._ctx
        if ctx._model.poisoned is None:
            return
        for r in [*self._reading, *self._generating]:
            r._job.sampler = 0  # it died with the old sandbox
        for r in list(self._generating):
            self._fail(r, error, events)
        self._held = False
        ctx._release()
        ctx._acquire()  # rebinds into the rebuilt sandbox, or raises why it cannot
        self._held = True
        for r in self._reading:
            r._chunks = None  # read again, and its sampler made again, in the new sandbox

    # ---- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """End every request still running (finish_reason "cancelled") and give the Context back.
        Idempotent."""
        if self._closed:
            return
        try:
            events: list[Event] = []
            for r in self.requests:
                self._end(r, events, "cancelled")
        finally:
            self._closed = True
            if self._held:
                self._held = False
                self._ctx._release()

    def __enter__(self) -> ContinuousBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
