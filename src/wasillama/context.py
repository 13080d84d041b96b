"""Context: a KV cache and the generation loop on top of a Model.

Thread contract: a Context is used by one thread at a time. Two overlapping calls (from two
threads, or a new call while a stream is still open) raise ConcurrentUseError instead of
corrupting the cache. Create one Context per concurrent conversation; they share the model's
weights.

Prefix caching: the context remembers which tokens its cache holds; a new prompt that starts
with the same tokens (a chat that grows turn by turn) only evaluates what is new.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import (
    AbortedError,
    ClosedError,
    ConcurrentUseError,
    ContextFullError,
    InvalidArgumentError,
    WasillamaError,
)
from .results import FinishReason, GenerationResult, Timings
from .shim import abi
from .shim.abi import ContextParams, SamplerParams
from .text import TextAssembler

if TYPE_CHECKING:
    from .model import Model

Message = Mapping[str, str]

_FINISH: dict[int, FinishReason] = {
    abi.STOP_EOG: "eos",
    abi.STOP_CTX_FULL: "context_full",
    abi.STOP_LENGTH: "length",
}


class Context:
    """A KV cache bound to a Model. Make one with ``model.new_context()``."""

    def __init__(self, model: Model, params: ContextParams) -> None:
        self._model = model
        self._backend = model._backend
        self._cached: list[int] = []  # tokens held by sequence 0 of the KV cache
        self._busy = threading.Lock()
        self._abort_requested = False
        self._closed = True  # until the handle below exists
        self._handle = self._backend.new_context(model._require_handle(), params)
        self._closed = False
        try:
            self.n_ctx, self.n_batch, self.n_ubatch, self.n_seq_max = self._backend.context_info(self._handle)
        except BaseException:
            self.close()
            raise

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def model(self) -> Model:
        return self._model

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Free the KV cache. Idempotent; the model stays open."""
        if self._closed:
            return
        self._closed = True
        try:
            self._backend.free_context(self._handle)
        except WasillamaError:  # a closed or poisoned sandbox cannot free; it was dropped whole
            pass
        finally:
            self._model._forget(self)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a safety net only; close() is the contract
        with contextlib.suppress(Exception):
            self.close()

    def _acquire(self) -> None:
        if self._closed or self._model.closed:
            raise ClosedError("the context is closed")
        if not self._busy.acquire(blocking=False):
            raise ConcurrentUseError(
                "this Context is already in use (by another thread, or by an unfinished stream); "
                "use one Context per concurrent conversation")
        self._abort_requested = False

    def _release(self) -> None:
        """End an operation: a late abort() must not stop the next one."""
        try:
            if self._abort_requested:
                with contextlib.suppress(WasillamaError):
                    self._backend.set_abort(self._handle, False)
        finally:
            self._busy.release()

    # ---- tokens ----------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self._model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: Sequence[int], *, keep_special: bool = False, render_special: bool = False) -> str:
        return self._model.detokenize(tokens, keep_special=keep_special, render_special=render_special)

    def clear(self) -> None:
        """Empty the KV cache."""
        self._acquire()
        try:
            self._backend.memory_clear(self._handle)
            self._cached = []
        finally:
            self._release()

    def abort(self) -> None:
        """Stop the operation in progress on this context (called from another thread): it
        raises AbortedError, at the latest after the current graph node. Does nothing when idle."""
        if not self._closed and self._busy.locked():
            self._abort_requested = True
            self._backend.set_abort(self._handle, True)

    def eval(self, tokens: Sequence[int]) -> None:
        """Make the cache hold exactly `tokens` (reusing the longest cached prefix)."""
        self._acquire()
        try:
            self._ingest(list(tokens))
        finally:
            self._release()

    def logits(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Logits of the last evaluated token (n_vocab floats)."""
        self._acquire()
        try:
            return self._backend.logits(self._handle, -1)
        finally:
            self._release()

    # ---- generation ------------------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[int], *, max_tokens: int = 256, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 repeat_last_n: int = 64, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 seed: int | None = None, stop: Sequence[str] = (), add_special: bool = True,
                 parse_special: bool = False) -> GenerationResult:
        """Complete `prompt` (text, or token ids). temperature=0 is greedy (deterministic)."""
        stream = self.stream(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             min_p=min_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                             frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, seed=seed,
                             stop=stop, add_special=add_special, parse_special=parse_special, _chunk=16)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(self, prompt: str | Sequence[int], *, max_tokens: int = 256, temperature: float = 0.8,
               top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
               repeat_last_n: int = 64, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
               seed: int | None = None, stop: Sequence[str] = (), add_special: bool = True,
               parse_special: bool = False, _chunk: int = 1) -> TextStream:
        """Like generate(), as an iterator of text pieces (never a split UTF-8 character).
        The finished stream's `.result` holds the GenerationResult."""
        if max_tokens < 0:
            raise InvalidArgumentError("max_tokens must be >= 0")
        if isinstance(prompt, str):
            tokens = self.tokenize(prompt, add_special=add_special, parse_special=parse_special)
        else:
            tokens = [int(t) for t in prompt]
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        sampling = SamplerParams(seed=seed, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 repeat_penalty=repeat_penalty, penalty_last_n=repeat_last_n,
                                 frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)
        return TextStream(self._run(tokens, sampling, max_tokens, stop, _chunk if not stop else 1))

    def chat(self, messages: Sequence[Message], *, template: str | None = None, **kwargs: Any) -> GenerationResult:
        """Answer a conversation, rendered with the model's own chat template (inside the backend)."""
        prompt = self._model.apply_chat_template(messages, template=template)
        return self.generate(prompt, parse_special=True, **kwargs)

    def chat_stream(self, messages: Sequence[Message], *, template: str | None = None, **kwargs: Any) -> TextStream:
        prompt = self._model.apply_chat_template(messages, template=template)
        return self.stream(prompt, parse_special=True, **kwargs)

    # ---- internals -------------------------------------------------------------------------------

    def _ingest(self, tokens: list[int]) -> int:
        """Evaluate `tokens`, reusing the cached prefix. Returns how many were reused."""
        if not tokens:
            raise InvalidArgumentError("the prompt is empty (no tokens)")
        if len(tokens) >= self.n_ctx:
            raise ContextFullError(
                f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}; "
                "shorten it or create the context with a larger n_ctx")
        common = 0
        for a, b in zip(self._cached, tokens, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # re-evaluate at least one token to get logits
        try:
            self._backend.memory_seq_rm(self._handle, 0, common, -1)
        except InvalidArgumentError:  # memory that cannot drop a suffix (recurrent models): start over
            self._backend.memory_clear(self._handle)
            common = 0
        self._cached = self._cached[:common]
        try:
            self._backend.decode(self._handle, np.asarray(tokens[common:], dtype=np.int32))
        except BaseException:
            # the failed batch may be partly in the cache: forget it all rather than guess
            self._cached = []
            with contextlib.suppress(WasillamaError):
                self._backend.memory_clear(self._handle)
            raise
        self._cached = list(tokens)
        return common

    def _run(self, tokens: list[int], sampling: SamplerParams, max_tokens: int, stop: Sequence[str],
             chunk: int) -> Iterator[str | GenerationResult]:
        self._acquire()
        sampler = 0
        try:
            t0 = time.perf_counter()
            reused = self._ingest(tokens)
            t1 = time.perf_counter()
            sampler = self._backend.new_sampler(self._model._require_handle(), sampling)
            if sampling.repeat_penalty != 1.0 or sampling.frequency_penalty or sampling.presence_penalty:
                self._backend.sampler_accept(sampler, np.asarray(tokens, dtype=np.int32))
            text = TextAssembler(stop)
            out: list[int] = []
            finish: FinishReason = "length"
            while len(out) < max_tokens:
                if self._abort_requested:
                    raise AbortedError("generation aborted")
                new, why = self._backend.generate(self._handle, sampler, 0, min(chunk, max_tokens - len(out)))
                new_list = new.tolist()
                out.extend(new_list)
                # On a full context or a failed decode the last token never reached the cache.
                self._cached.extend(new_list if why in (abi.STOP_LENGTH, abi.STOP_EOG) else new_list[:-1])
                if why < 0:  # the decode of a sampled token failed (e.g. aborted)
                    raise abi.error_for(why, self._backend.last_error(self._handle))
                for tok in new_list:
                    piece = text.push(self._model.token_piece(tok))
                    if piece:
                        yield piece
                    if text.stopped is not None:
                        break
                if text.stopped is not None:
                    finish = "stop"
                    break
                if why != abi.STOP_LENGTH:
                    finish = _FINISH[why]
                    break
            tail = text.finish()
            if tail:
                yield tail
            t2 = time.perf_counter()
            yield GenerationResult(
                text=text.text, tokens=out, prompt_tokens=len(tokens), cached_prompt_tokens=reused,
                finish_reason=finish, stop_sequence=text.stopped,
                timings=Timings(len(tokens) - reused, t1 - t0, len(out), t2 - t1))
        finally:
            try:
                if sampler:
                    with contextlib.suppress(WasillamaError):  # the sandbox may be gone already
                        self._backend.free_sampler(sampler)
            finally:
                self._release()


class TextStream(Iterator[str]):
    """Text pieces as they are generated; `.result` once exhausted. close() stops early."""

    def __init__(self, gen: Iterator[str | GenerationResult]) -> None:
        self._gen = gen
        self.result: GenerationResult | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        item = next(self._gen)
        if isinstance(item, GenerationResult):
            self.result = item
            self.close()  # runs the generator's cleanup: frees the sampler, releases the context
            raise StopIteration
        return item

    def close(self) -> None:
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
