"""The host services the shim calls back into, written once for every transport.

- `Sources`: the model bytes the host serves through ``host_read(source, offset, dst, n)``: an
  open file read with ``pread`` (a file that shrinks under a mapping would SIGBUS the host; a
  read just comes back short), or an in-memory buffer. Both ends are bounds-checked.
- `LogSink`: llama.cpp's log, which arrives in pieces (level 5 continues the previous message),
  reassembled into lines for the ``wasillama.llama`` logger; it keeps the last error line, which
  explains a failure that has no message of its own (a trap, an abort inside llama.cpp).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import deadline

LLAMA_LOGGER = logging.getLogger("wasillama.llama")

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous message)
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
LOG_CONT = 5


Progress = Callable[[float], "bool | None"]


class _Watch:
    """How far the reader has got in a source, for a progress callback (which may say stop)."""

    def __init__(self, size: int, callback: Progress) -> None:
        self.size, self.callback = max(size, 1), callback
        self.high = 0  # the furthest byte read
        self.reported = -1.0
        self.cancelled = False

    def advance(self, end: int) -> bool:
        """False when the callback asked to stop (every later read then fails)."""
        if self.cancelled:
            return False
        self.high = max(self.high, end)
        fraction = min(self.high / self.size, 1.0)
        if fraction >= self.reported + 0.01 or (fraction == 1.0 and self.reported < 1.0):
            self.reported = fraction
            if self.callback(fraction) is False:
                self.cancelled = True
        return not self.cancelled


class Segments:
    """One GGUF the host joins from the parts of a split model (gguf_file.Joined): header bytes
    it made and ranges of the parts' open files, read as if they were one file."""

    def __init__(self, pieces: Sequence[bytes | tuple[int, int, int]], fds: Sequence[int]) -> None:
        self.fds = list(fds)
        self.pieces: list[tuple[int, bytes | tuple[int, int, int]]] = []  # (start in the joined file, piece)
        at = 0
        for piece in pieces:
            self.pieces.append((at, piece))
            at += len(piece) if isinstance(piece, bytes) else piece[2]
        self.size = at

    def read_into(self, offset: int, dst: memoryview) -> int:
        done = 0
        for start, piece in self.pieces:
            length = len(piece) if isinstance(piece, bytes) else piece[2]
            pos = offset + done
            if done == len(dst) or start > pos:
                break
            if pos >= start + length:
                continue
            k = min(len(dst) - done, start + length - pos)
            if isinstance(piece, bytes):
                dst[done: done + k] = piece[pos - start: pos - start + k]
                got = k
            else:
                part, at, _ = piece
                got = os.preadv(self.fds[part], [dst[done: done + k]], at + pos - start)
            done += got
            if got < k:  # a part shrank under us: a short read, as from a file
                break
        return done


class Sources:
    """Byte sources by id, for ``host_read``. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 1
        self._live: dict[int, npt.NDArray[np.uint8] | int | Segments] = {}  # a buffer, a file descriptor, parts
        self._watches: dict[int, _Watch] = {}

    def watch(self, sid: int, size: int, callback: Progress) -> None:
        """Report reads of source `sid` (of `size` bytes) as a fraction to `callback`, at most
        every 1%; when it returns False, reads fail from then on (the load stops)."""
        with self._lock:
            self._watches[sid] = _Watch(size, callback)

    def cancelled(self, sid: int) -> bool:
        """Whether the progress callback of `sid` asked to stop."""
        w = self._watches.get(sid)
        return w is not None and w.cancelled

    def add(self, source: int | bytes | bytearray | memoryview | mmap.mmap | Segments) -> int:
        """Registers a file descriptor (read with pread), a buffer (kept alive until `remove`) or
        the Segments of a joined split model."""
        data: npt.NDArray[np.uint8] | int | Segments
        if isinstance(source, (int, Segments)):
            data = source
        else:
            view = memoryview(source)
            if not view.c_contiguous:
                view = memoryview(view.tobytes())
            data = np.frombuffer(view.cast("B") if view.ndim != 1 or view.format != "B" else view, dtype=np.uint8)
        with self._lock:
            sid = self._next
            self._next = self._next + 1 if self._next < 2**31 - 1 else 1
            self._live[sid] = data
        return sid

    def remove(self, sid: int) -> None:
        # Dropping the last reference lets an mmap the caller passed close again.
        with self._lock:
            self._live.pop(sid, None)
            self._watches.pop(sid, None)

    def read(self, sid: int, offset: int, dst: int, n: int) -> int:
        """Copies up to n bytes at `offset` of source `sid` to host address `dst`; the count, or -1."""
        data = self._live.get(sid)
        if data is None or offset < 0 or n < 0 or not dst:
            return -1
        left = deadline.remaining()
        if left is not None and left <= 0:  # the load's deadline: the read fails, the load stops
            return -1
        if n == 0:
            return 0
        if isinstance(data, (int, Segments)):
            view = memoryview((ctypes.c_ubyte * n).from_address(dst)).cast("B")
            try:
                k = os.preadv(data, [view], offset) if isinstance(data, int) else data.read_into(offset, view)
            except OSError:
                return -1
        else:
            k = max(0, min(n, data.size - offset))
            if k:
                ctypes.memmove(dst, data.ctypes.data + offset, k)
        watch = self._watches.get(sid)
        if watch is not None:
            try:
                if not watch.advance(offset + k):
                    return -1
            except Exception:  # a failing callback stops the load (an exception cannot cross the guest)
                LLAMA_LOGGER.exception("the load progress callback raised: stopping the load")
                watch.cancelled = True
                return -1
        return k


class _Pending(threading.local):
    level: int = logging.INFO
    text: str = ""


class LogSink:
    """llama.cpp's log pieces -> whole lines on the ``wasillama.llama`` logger. Never raises:
    it runs inside a callback from C (or from the guest)."""

    def __init__(self) -> None:
        self._pending = _Pending()  # per thread: native threads log at once
        self.last_error = ""

    def write(self, level: int, data: bytes) -> None:
        try:
            p = self._pending
            if level != LOG_CONT:
                if p.text:  # a new message while the previous one never ended its line
                    self._emit(p.level, p.text)
                    p.text = ""
                p.level = _LEVELS.get(level, logging.INFO)
            *lines, p.text = (p.text + data.decode("utf-8", "replace")).split("\n")
            for line in lines:
                self._emit(p.level, line)
        except BaseException:
            pass

    def _emit(self, level: int, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        if level >= logging.ERROR:
            self.last_error = line
        if LLAMA_LOGGER.isEnabledFor(level):
            LLAMA_LOGGER.log(level, "%s", line)


def as_bytes(data: bytes | bytearray | memoryview | npt.NDArray[Any]) -> bytes:
    return data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
