"""wasillama: llama.cpp in a WebAssembly sandbox, for Python.

    from wasillama import Model
    with Model.load("model.gguf") as model, model.new_context() as ctx:
        print(ctx.generate("The capital of France is", max_tokens=16, temperature=0).text)
"""

import logging

from .chat import ChatMessage, ChatPrompt, ToolCall
from .context import Context
from .embedder import embed
from .errors import (
    AbortedError,
    BackendError,
    BackendUnavailableError,
    ChatTemplateError,
    ClosedError,
    ConcurrentUseError,
    ContextFullError,
    DeadlineExceededError,
    DecodeError,
    InvalidArgumentError,
    ModelLoadError,
    ModelNotFoundError,
    ModelTooLargeError,
    OutOfMemoryError,
    UnsupportedOptionError,
    WasillamaError,
)
from .lora import Lora
from .model import Model
from .options import ChatOptions, ContextOptions, LoadOptions, Sampling, SandboxOptions
from .results import GenerationResult, Timings, TokenLogprob, TopLogprob
from .shim.abi import ModelInfo
from .streams import AsyncTextStream, BatchStream, TextStream

__version__ = "0.1.0"

# A library logs, the application decides what to show (llama.cpp's log goes to "wasillama.llama").
logging.getLogger("wasillama").addHandler(logging.NullHandler())

__all__ = [
    "AbortedError", "AsyncTextStream", "BackendError", "BackendUnavailableError", "BatchStream", "ChatMessage",
    "ChatOptions", "ChatPrompt", "ChatTemplateError", "ClosedError", "ConcurrentUseError", "Context",
    "ContextFullError", "ContextOptions", "DeadlineExceededError", "DecodeError", "GenerationResult",
    "InvalidArgumentError", "LoadOptions", "Lora", "Model", "ModelInfo", "ModelLoadError", "ModelNotFoundError",
    "ModelTooLargeError", "OutOfMemoryError", "SandboxOptions", "Sampling", "TextStream", "Timings", "TokenLogprob",
    "ToolCall", "TopLogprob", "UnsupportedOptionError", "WasillamaError", "__version__", "embed",
]
