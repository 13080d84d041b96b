"""The exceptions wasillama raises. Every failure a user can cause is a `WasillamaError`."""

from __future__ import annotations


class WasillamaError(Exception):
    """Base class of every wasillama error."""


class InvalidArgumentError(WasillamaError, ValueError):
    """An argument is out of range or malformed (a token id, a sequence id, a NUL in a message...)."""


class ModelNotFoundError(WasillamaError, FileNotFoundError):
    """The model path does not exist or is not a readable file."""


class ModelLoadError(WasillamaError):
    """The model bytes are not a GGUF llama.cpp can load (corrupt, truncated, hostile, unsupported)."""


class ModelTooLargeError(ModelLoadError):
    """The model does not fit the wasm32 guest's 4 GiB address space; use the native backend."""


class OutOfMemoryError(WasillamaError, MemoryError):
    """An allocation inside the backend failed (weights, KV cache or compute buffers)."""


class ContextFullError(WasillamaError):
    """The prompt or the generation does not fit in the context window (n_ctx)."""


class DecodeError(WasillamaError):
    """llama.cpp failed to evaluate a batch."""


class AbortedError(WasillamaError):
    """The operation was cancelled."""


class DeadlineExceededError(WasillamaError, TimeoutError):
    """A call's `timeout=` passed. Stopped between steps or by the abort flag, the Context is
    still usable; stopped by the sandbox's hard stop, that sandbox is not (the message says)."""


class ChatTemplateError(WasillamaError):
    """The model has no chat template, or llama.cpp does not support it."""


class ClosedError(WasillamaError, ValueError):
    """The model or context was closed."""


class ConcurrentUseError(WasillamaError, RuntimeError):
    """A Context was used from two threads at once (a Context is one-thread-at-a-time)."""


class BackendError(WasillamaError):
    """The backend failed in a way the caller did not cause (a guest trap, an internal error)."""


class BackendUnavailableError(WasillamaError):
    """The requested backend is not installed or cannot do what was asked."""


class UnsupportedOptionError(WasillamaError, ValueError):
    """An option was set that the chosen backend cannot honour."""
