"""LoRA adapters: loaded into a Model from a path or bytes (the host reads them; the sandbox
opens no file), applied per Context with a scale (several at once), removed again."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from .backend import ModelSource
from .errors import ClosedError, WasillamaError

if TYPE_CHECKING:
    from .model import Model


class Lora:
    """A LoRA adapter of one Model. Make one with ``model.load_lora(path_or_bytes)``; apply it
    with ``ctx.set_loras({lora: scale})``. close() frees it once no context uses it."""

    def __init__(self, model: Model, handle: int, source: ModelSource) -> None:
        self._model = model
        self._handle = handle
        self._source = source
        self._lock = threading.Lock()
        self._closed = False

    @property
    def model(self) -> Model:
        return self._model

    @property
    def closed(self) -> bool:
        return self._closed or self._model.closed

    def _require_handle(self) -> int:
        if self.closed:
            raise ClosedError("the LoRA adapter is closed")
        return self._handle

    def close(self) -> None:
        """Free the adapter (contexts that use it keep it until they drop it). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self._model.closed:
            with contextlib.suppress(WasillamaError):  # a poisoned sandbox was dropped whole
                self._model._sandbox.backend.free_lora(self._handle)

    def __enter__(self) -> Lora:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Lora {self._source.describe()} of {self._model!r}>"
