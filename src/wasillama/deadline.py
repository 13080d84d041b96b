"""Deadlines: `timeout=` on calls that compute.

A deadline is a time.monotonic() instant held in a context variable while the call runs (the
sooner one wins when calls nest). Three stops enforce it, cheapest first:
  - between steps, the host checks it and raises DeadlineExceededError;
  - at the deadline a timer raises the running context's abort flag: llama.cpp stops the decode
    at its next graph node, and the Context stays usable;
  - in the wasm sandbox, epoch interruption traps whatever the guest is doing GRACE_S after the
    deadline (a chat template in a loop, a load), DECODE_GRACE_S for a decode: that sandbox is
    then unusable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from .errors import DeadlineExceededError, InvalidArgumentError

T = TypeVar("T")

GRACE_S = 0.1  # after the deadline, before the sandbox's hard stop
DECODE_GRACE_S = 2.0  # for a decode, which the abort flag stops first (at its next graph node)

_current: ContextVar[float | None] = ContextVar("wasillama_deadline", default=None)


def end_of(timeout: float | None) -> float | None:
    """The deadline `timeout` seconds from now (None: none), the sooner of it and the current."""
    if timeout is None:
        return _current.get()
    if not timeout > 0:
        raise InvalidArgumentError(f"timeout must be a positive number of seconds, not {timeout!r}")
    end = time.monotonic() + timeout
    outer = _current.get()
    return end if outer is None else min(outer, end)


@contextmanager
def until(end: float | None) -> Iterator[None]:
    """Calls inside run under the deadline `end` (from end_of)."""
    token = _current.set(end)
    try:
        yield
    finally:
        _current.reset(token)


@contextmanager
def after(timeout: float | None) -> Iterator[None]:
    """Calls inside run under a deadline `timeout` seconds from now (None: the current one)."""
    with until(end_of(timeout)):
        yield


def within(gen: Iterator[T], end: float | None) -> Iterator[T]:
    """A generator's steps under the deadline `end`, set only while it runs (a consumer's own
    calls between its items do not inherit it). Closing this closes `gen`, without a deadline."""
    try:
        while True:
            with until(end):
                try:
                    item = next(gen)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()


def remaining() -> float | None:
    """Seconds left before the current deadline (None: no deadline)."""
    end = _current.get()
    return None if end is None else end - time.monotonic()


def check(what: str) -> None:
    """DeadlineExceededError when the current deadline has passed."""
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceededError(f"the deadline passed {-left:.3f} s ago, {what}")
