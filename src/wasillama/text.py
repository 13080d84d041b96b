"""Turning generated token bytes into text pieces: whole UTF-8 characters, stop strings cut."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextAssembler:
    """Accepts token bytes, returns text that is safe to show.

    - A multi-byte UTF-8 character split across tokens is held back until complete.
    - Text that might be the start of a stop string is held back until it is known not to be.
    - When a stop string appears, the text before it is returned and `stopped` becomes the stop
      string; nothing after it is ever returned.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._pending = ""
        self.text = ""  # everything returned so far
        self.stopped: str | None = None

    def push(self, data: bytes) -> str:
        if self.stopped is not None:
            return ""
        return self._emit(self._pending + self._decoder.decode(data), final=False)

    def finish(self) -> str:
        """Flush what is held back (an incomplete character becomes U+FFFD)."""
        if self.stopped is not None:
            return ""
        return self._emit(self._pending + self._decoder.decode(b"", final=True), final=True)

    def _emit(self, text: str, final: bool) -> str:
        cut = min(((text.find(s), s) for s in self._stop if s in text), default=None)
        if cut is not None:
            self.stopped = cut[1]
            out, self._pending = text[: cut[0]], ""
        elif final:
            out, self._pending = text, ""
        else:
            hold = self._held_suffix(text)
            out, self._pending = text[: len(text) - hold], text[len(text) - hold :]
        self.text += out
        return out

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best
