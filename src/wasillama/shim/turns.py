"""Whose turn it is to call into a sandbox.

A wasm Store runs one call at a time, so every call sequence into one sandbox holds its
`TurnLock`. Long work — a prompt ingested chunk by chunk — takes each chunk's turn with
`background()`: it waits while another thread holds or wants the lock, and until the lock has
been idle for `GRACE_S`, so a short job in another thread (tokenize, a few decodes, sampling: many
calls in a row with microseconds between them) waits for at most the one chunk in progress,
not for the whole prompt. Re-entrant for the thread that holds it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

GRACE_S = 0.002  # longer than the gaps between one job's calls, shorter than any chunk


class TurnLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._waiting = 0          # foreground threads waiting for a turn
        self._waiting_bg = 0       # background threads waiting for a turn
        self._released_at = 0.0
        self._released_by: int | None = None

    def _take(self, me: int) -> None:
        self._owner = me
        self._depth += 1

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            self._waiting += 1
            try:
                while self._owner is not None:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._take(me)

    def release(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._released_by, self._owner = self._owner, None
                self._released_at = time.monotonic()
                self._cond.notify_all()

    def __enter__(self) -> TurnLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextmanager
    def background(self) -> Iterator[None]:
        """One chunk of long work: yields to other threads' calls first."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
            else:
                self._waiting_bg += 1
                try:
                    while True:
                        idle = time.monotonic() - self._released_at
                        # Its own next chunk may follow at once; but when other long work waits
                        # too, the thread that had the last turn lets it go first (chunks alternate).
                        mine = self._released_by == me
                        others = self._waiting_bg > 1
                        if self._owner is None and self._waiting == 0 and not (mine and others) and (
                                mine or idle >= GRACE_S):
                            break
                        self._cond.wait(None if self._owner is not None else max(GRACE_S - idle, 1e-4))
                finally:
                    self._waiting_bg -= 1
                self._take(me)
        try:
            yield
        finally:
            self.release()


class NoTurns:
    """For a shim that runs calls in parallel (natively): no lock at all."""

    def __enter__(self) -> NoTurns:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def background(self) -> AbstractContextManager[None]:
        return nullcontext()
