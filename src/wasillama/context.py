"""Context: a KV cache and the generation loop on top of a Model.

Thread contract: a Context is used by one thread at a time. Two overlapping calls (from two
threads, or a new call while a stream is still open) raise ConcurrentUseError instead of
corrupting the cache. Create one Context per concurrent conversation; they share the model's
weights.

Prefix caching: the context remembers which tokens each sequence of its cache holds; a new
prompt that starts with the same tokens (a chat that grows turn by turn) only evaluates what is
new, and `generate_batch` copies a prefix another sequence already holds (a shared system
prompt is evaluated once).

What runs in parallel: on the native backend, Contexts of one Model run at the same time. In the
wasm sandbox calls are serialised, but a long prompt is evaluated in chunks of n_batch tokens and
another Context of the same Model gets its turn between chunks (it waits for at most one chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import deadline, speculative, state
from .backend import Generated
from .batching import ContinuousBatch
from .chat import ChatPrompt, Message
from .embedding import embed_texts
from .errors import (
    AbortedError,
    ClosedError,
    ConcurrentUseError,
    ContextFullError,
    DeadlineExceededError,
    InvalidArgumentError,
    UnsupportedOptionError,
    WasillamaError,
)
from .options import MAX_TOKENS, ChatOptions, Sampling, names, resolve
from .results import FinishReason, GenerationResult, Timings, TokenLogprob, TopLogprob
from .shim import abi
from .shim.abi import ContextParams, SamplerStep
from .streams import AsyncTextStream, BatchStream, TextStream
from .text import TextAssembler

if TYPE_CHECKING:
    from .backend import Backend
    from .lora import Lora
    from .model import Model

# Tokens one sandbox call generates per sequence when nobody waits for each piece (generate,
# generate_batch); streams take one per call so that each piece arrives as soon as it exists.
_STEPS_PER_CALL = 16

_FINISH: dict[int, FinishReason] = {
    abi.STOP_EOG: "eos",
    abi.STOP_CTX_FULL: "context_full",
    abi.STOP_LENGTH: "length",
}


class Context:
    """A KV cache bound to a Model. Make one with ``model.new_context()``."""

    def __init__(self, model: Model, params: ContextParams) -> None:
        self._model = model
        self._params = params
        self._cached: list[list[int]] = []  # per sequence: the tokens the KV cache holds
        self._busy = threading.Lock()
        self._abort_requested = False
        self._cancel_lock = threading.Lock()
        self._running: threading.Event | None = None  # the cancel event of the run in progress
        self._loras: dict[Lora, float] = {}
        self._closed = True  # until the handle below exists
        backend = model._backend
        self._bound = _Bound(backend, backend.new_context(model._require_handle(), params), model._sandbox.generation)
        self._closed = False
        try:
            self._info = self._backend.context_info(self._handle)
            self.n_ctx, self.n_batch, self.n_ubatch = self._info.n_ctx, self._info.n_batch, self._info.n_ubatch
            # n_ctx_seq: each sequence has its own share of the cache (llama.cpp's non-unified KV)
            self.n_seq_max, self.n_ctx_seq = self._info.n_seq_max, self._info.n_ctx_seq
            self._forget_cache()
        except BaseException:
            self.close()
            raise

    # The backend and the handle in it, replaced together when the sandbox is rebuilt (a thread
    # calling abort() reads one consistent pair).
    @property
    def _backend(self) -> Backend:
        return self._bound.backend

    @property
    def _handle(self) -> int:
        return self._bound.handle

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
        bound = self._bound
        try:
            bound.backend.free_context(bound.handle)
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
        try:
            self._model._require_handle()  # rebuilds a trapped sandbox when the model says so
            if self._bound.generation != self._model._sandbox.generation:
                self._rebind()
        except BaseException:
            self._busy.release()
            raise

    def _rebind(self) -> None:
        """Make this context again in the model's rebuilt sandbox: same options and adapters, an
        empty cache (what the old one held died with it)."""
        model = self._model
        backend, generation = model._backend, model._sandbox.generation
        handle = backend.new_context(model._require_handle(), self._params)
        try:
            if self._loras:  # the model reloaded each adapter a context uses (a closed one too)
                backend.set_loras(handle, [lora._handle for lora in self._loras], list(self._loras.values()))
        except BaseException:
            backend.free_context(handle)
            raise
        self._bound = _Bound(backend, handle, generation)
        self._forget_cache()

    def _release(self) -> None:
        """End an operation: a late abort() must not stop the next one."""
        try:
            if self._abort_requested:
                with contextlib.suppress(WasillamaError):
                    self._backend.set_abort(self._handle, False)
        finally:
            self._busy.release()

    @property
    def embeddings(self) -> bool:
        """Whether this context computes embeddings (embed, embed_batch) instead of logits."""
        return bool(self._info.embeddings)

    @property
    def pooling(self) -> str:
        """How embeddings pool: "none" (per token), "mean", "cls", "last" or "rank"."""
        return self._info.pooling

    def _forget_cache(self) -> None:
        self._cached = [[] for _ in range(self.n_seq_max)]

    def _require_logits(self) -> None:
        if self._info.embeddings:
            raise UnsupportedOptionError(
                "this context computes embeddings: generate with a context made without embeddings=True")

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
            self._forget_cache()
        finally:
            self._release()

    def abort(self) -> None:
        """Stop the operation in progress on this context (called from another thread): it
        raises AbortedError, at the latest after the current graph node. Does nothing when idle."""
        if not self._closed and self._busy.locked():
            self._abort_requested = True
            with contextlib.suppress(ClosedError):  # the sandbox was rebuilt under a failed call: nothing runs
                self._backend.set_abort(self._handle, True)

    def eval(self, tokens: Sequence[int], *, timeout: float | None = None) -> None:
        """Make the cache hold exactly `tokens` (reusing the longest cached prefix). timeout:
        seconds, then DeadlineExceededError (see generate())."""
        with deadline.after(self._model._timeout(timeout)):
            self._acquire()
            try:
                with self._stopwatch():
                    self._ingest(0, [int(t) for t in tokens], with_last=True)
            finally:
                self._release()

    def logits(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Logits of the last evaluated token (n_vocab floats)."""
        self._require_logits()
        self._acquire()
        try:
            return self._backend.logits(self._handle, -1)
        finally:
            self._release()

    # ---- LoRA adapters -------------------------------------------------------------------------

    @property
    def loras(self) -> dict[Lora, float]:
        """The adapters that apply to this context, with their scales."""
        return dict(self._loras)

    def set_loras(self, loras: Mapping[Lora, float]) -> None:
        """Make exactly these adapters apply, each with its scale ({} removes all). The cache is
        emptied when the set changes: what it holds was computed with the other weights."""
        wanted = {lora: float(scale) for lora, scale in loras.items()}
        for lora in wanted:
            if lora.model is not self._model:
                raise InvalidArgumentError(f"{lora!r} belongs to another model")
        self._acquire()
        try:
            if wanted == self._loras:
                return
            self._backend.set_loras(self._handle, [lora._require_handle() for lora in wanted], list(wanted.values()))
            self._loras = wanted
            self._backend.memory_clear(self._handle)
            self._forget_cache()
        finally:
            self._release()

    # ---- state -----------------------------------------------------------------------------------

    def save_state(self) -> bytes:
        """What the cache holds (every sequence, with the tokens prefix caching knows), as bytes
        that load_state() on a context of the same model takes back."""
        self._acquire()
        try:
            sequences = [state.SequenceState(seq, list(tokens), self._backend.state_get(self._handle, seq))
                         for seq, tokens in enumerate(self._cached) if tokens]
            return state.pack(self._model.fingerprint, sequences)
        finally:
            self._release()

    def load_state(self, data: bytes | bytearray | memoryview) -> None:
        """Make the cache hold what save_state() saved; the next prompt that starts with those
        tokens evaluates only the rest. A state from another model or a damaged one raises
        InvalidArgumentError (and leaves the cache empty)."""
        sequences = state.unpack(bytes(data), self._model.fingerprint, self.n_seq_max)
        self._acquire()
        try:
            self._backend.memory_clear(self._handle)
            self._forget_cache()
            try:
                for s in sequences:
                    self._backend.state_set(self._handle, s.seq, s.data)
                    self._cached[s.seq] = list(s.tokens)
            except BaseException:
                with contextlib.suppress(WasillamaError):
                    self._backend.memory_clear(self._handle)
                self._forget_cache()
                raise
        finally:
            self._release()

    def save_state_file(self, path: str | os.PathLike[str]) -> None:
        """save_state() into a file (written whole, then renamed into place)."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(self.save_state())
        tmp.replace(target)

    def load_state_file(self, path: str | os.PathLike[str]) -> None:
        """load_state() from a file (read by the host; the sandbox opens nothing)."""
        self.load_state(Path(path).read_bytes())

    # ---- embeddings ------------------------------------------------------------------------------

    def embed(self, text: str | Sequence[int], *, normalize: bool = True, truncate: bool = False,
              add_special: bool = True, parse_special: bool = False,
              timeout: float | None = None) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The embedding of `text` (a context made with embeddings=True): n_embd float32, pooled as
        the model says (or ContextOptions.pooling), L2-normalised unless normalize=False; with
        pooling "none" a (tokens, n_embd) matrix, a row per token. A text longer than a sequence
        raises ContextFullError, or is cut to its first tokens with truncate=True. timeout: see
        generate()."""
        with deadline.after(self._model._timeout(timeout)), self._stopwatch():
            return embed_texts(self, [text], normalize=normalize, truncate=truncate, add_special=add_special,
                               parse_special=parse_special)[0]

    def embed_batch(self, texts: Sequence[str | Sequence[int]], *, normalize: bool = True, truncate: bool = False,
                    add_special: bool = True, parse_special: bool = False,
                    timeout: float | None = None) -> np.ndarray[Any, np.dtype[np.float32]]:
        """embed() for several texts, decoded together: as many per llama_decode as the context
        has sequences (n_seq_max) and n_batch tokens allow. Returns a (texts, n_embd) array (with
        pooling "none", an object array of per-text matrices)."""
        with deadline.after(self._model._timeout(timeout)), self._stopwatch():
            vectors = embed_texts(self, texts, normalize=normalize, truncate=truncate, add_special=add_special,
                                  parse_special=parse_special)
        if self.pooling != "none":
            return np.stack(vectors) if vectors else np.zeros((0, self._model.n_embd), dtype=np.float32)
        ragged = np.empty(len(vectors), dtype=object)
        ragged[:] = vectors
        return ragged

    # ---- generation ------------------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[int], *, sampling: Sampling | None = None,
                 max_tokens: int = MAX_TOKENS, stop: Sequence[str] = (), logprobs: bool = False,
                 top_logprobs: int = 0, add_special: bool = True, parse_special: bool = False,
                 on_text: Callable[[str], bool | None] | None = None, draft: Context | None = None,
                 draft_tokens: int = 8, timeout: float | None = None, **sampling_options: Any) -> GenerationResult:
        """Complete `prompt` (text, or token ids) with up to max_tokens tokens.

        sampling: a Sampling (its defaults when omitted); keyword arguments named like its fields
        (temperature, top_k, seed, grammar, ...) override it. temperature=0 is greedy.
        stop: strings that end the generation; they are not part of the text, also when the
        model produces one across several tokens.
        logprobs: report each token's log-probability under the model (result.logprobs), with
        its top_logprobs likeliest alternatives (at most 20; only with logprobs=True).
        on_text: called with each text piece as it is generated; returning False cancels the
        rest (finish_reason "cancelled").
        draft: a context of a smaller model with the same vocabulary, for speculative decoding
        (greedy only): it proposes draft_tokens tokens at a time, this context verifies them in
        one batch. The text is this model's greedy text; result.draft says how many were kept.
        timeout: seconds for the whole call (prompt and generation), then DeadlineExceededError;
        the Context stays usable, unless the wasm sandbox had to stop the guest by force (the
        message says so; see docs/security.md)."""
        options = dict(sampling=sampling, max_tokens=max_tokens, stop=stop, logprobs=logprobs,
                       top_logprobs=top_logprobs, add_special=add_special, parse_special=parse_special,
                       **sampling_options)
        if draft is not None:
            if on_text is not None:
                raise UnsupportedOptionError("on_text does not combine with a draft (speculative decoding)")
            self._require_logits()
            with deadline.after(self._model._timeout(timeout)), self._stopwatch():
                return speculative.generate(self, draft, self._job(0, prompt, **options), draft_tokens)
        options["timeout"] = timeout
        with self._text_stream(prompt, 1 if on_text else _STEPS_PER_CALL, options) as stream:
            for piece in stream:
                if on_text is not None and on_text(piece) is False:
                    stream.cancel()
        assert stream.result is not None
        return stream.result

    def stream(self, prompt: str | Sequence[int], *, sampling: Sampling | None = None,
               max_tokens: int = MAX_TOKENS, stop: Sequence[str] = (), logprobs: bool = False,
               top_logprobs: int = 0, add_special: bool = True, parse_special: bool = False,
               timeout: float | None = None, **sampling_options: Any) -> TextStream:
        """Like generate(), as an iterator of text pieces (never a split UTF-8 character), one
        sandbox call per token so that each piece comes as soon as it exists. The finished
        stream's `.result` holds the GenerationResult; stream.cancel() (from any thread) ends it
        early with a result, close() or a ``with`` block drops it."""
        return self._text_stream(prompt, 1, dict(
            sampling=sampling, max_tokens=max_tokens, stop=stop, logprobs=logprobs, top_logprobs=top_logprobs,
            add_special=add_special, parse_special=parse_special, timeout=timeout, **sampling_options))

    def astream(self, prompt: str | Sequence[int], **options: Any) -> AsyncTextStream:
        """stream() for asyncio: ``async for piece in ctx.astream(prompt, ...)`` with generate()'s
        keyword arguments. The work runs in a worker thread (the event loop never blocks);
        cancelling the iterating task stops the generation promptly and frees the Context."""
        return AsyncTextStream(self._text_stream(prompt, 1, options))

    async def agenerate(self, prompt: str | Sequence[int], **options: Any) -> GenerationResult:
        """generate() for asyncio (same keyword arguments); cancelling the task cancels the run."""
        stream = AsyncTextStream(self._text_stream(prompt, _STEPS_PER_CALL, options))
        async for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    async def achat(self, messages: Sequence[Message], *, chat: ChatOptions | None = None,
                    **options: Any) -> GenerationResult:
        """chat() for asyncio (same arguments); cancelling the task cancels the run. The template
        renders in a worker thread too: it comes with the model file, and may be slow."""
        prompt, options = await asyncio.to_thread(self._chat_options, messages, chat, options)
        return await self.agenerate(prompt, **options)

    def _text_stream(self, prompt: str | Sequence[int], chunk: int, options: Mapping[str, Any]) -> TextStream:
        options = dict(options)
        end = deadline.end_of(self._model._timeout(options.pop("timeout", None)))  # from now: it starts at once
        job = self._job(0, prompt, **options)
        cancel = threading.Event()
        return TextStream(deadline.within(self._run([job], chunk, cancel), end), self._canceller(cancel))

    def _canceller(self, event: threading.Event) -> Callable[[], None]:
        def cancel() -> None:
            event.set()
            with self._cancel_lock:  # only while its own run goes on: never the next call's decode
                if self._running is event:
                    self.abort()  # a decode in progress stops at its next graph node

        return cancel

    def generate_batch(self, prompts: Sequence[str | Sequence[int] | Mapping[str, Any]],
                       **options: Any) -> list[GenerationResult]:
        """Complete several prompts at once, each in its own sequence of this context (so at most
        n_seq_max of them): every step samples each prompt with its own sampler and decodes all
        of them in one batch. A prompt is a string, token ids, or a mapping with "prompt" and its
        own values for any of generate()'s keyword arguments (sampling, max_tokens, stop, or a
        Sampling field such as temperature or seed); `options` apply to every prompt unless
        its mapping says otherwise. Results come in the prompts' order; with the
        same seeds they equal separate generate() calls."""
        with self._batch_stream(prompts, _STEPS_PER_CALL, options) as stream:
            for _ in stream:
                pass
        assert stream.results is not None
        return stream.results

    def stream_batch(self, prompts: Sequence[str | Sequence[int] | Mapping[str, Any]],
                     **options: Any) -> BatchStream:
        """Like generate_batch(), as an iterator of (prompt index, text piece); the finished
        stream's `.results` holds the GenerationResults in the prompts' order."""
        return self._batch_stream(prompts, 1, options)

    def continuous_batch(self, *, steps_per_call: int = 1, prompt_chunk: int | None = None) -> ContinuousBatch:
        """Continuous batching (wasillama.batching): prompts join and leave this context's batch
        between decode steps, each in its own sequence with its own sampling; a server's loop.
        It holds the context until closed. steps_per_call: tokens each request gets per step
        (1: every piece comes as soon as it exists); prompt_chunk: most prompt tokens evaluated
        per step (n_batch when None), what a new prompt delays the others' next token by."""
        return ContinuousBatch(self, steps_per_call=steps_per_call, prompt_chunk=prompt_chunk)

    def _batch_stream(self, prompts: Sequence[str | Sequence[int] | Mapping[str, Any]], chunk: int,
                      options: Mapping[str, Any]) -> BatchStream:
        options = dict(options)
        end = deadline.end_of(self._model._timeout(options.pop("timeout", None)))
        cancel = threading.Event()
        return BatchStream(deadline.within(self._run(self._jobs(prompts, options), chunk, cancel), end),
                           self._canceller(cancel))

    def chat(self, messages: Sequence[Message], *, chat: ChatOptions | None = None, **options: Any) -> GenerationResult:
        """Answer a conversation: messages ({"role", "content"}, OpenAI's form; with tools also
        "tool_calls" and "tool_call_id"; or ChatMessages) rendered by the model's chat template
        inside the backend (llama.cpp's chat code and Jinja engine). `chat` is a ChatOptions
        (template override, tools, tool_choice, ...); keyword arguments named like its fields
        override it, the others are generate()'s. result.message is the reply as a ChatMessage,
        its tool calls parsed (finish_reason "tool_calls" when there are any)."""
        prompt, options = self._chat_options(messages, chat, options)
        return self.generate(prompt, **options)

    def chat_stream(self, messages: Sequence[Message], *, chat: ChatOptions | None = None,
                    **options: Any) -> TextStream:
        """chat() as stream(): the pieces are the reply's raw text (tool calls as the model
        writes them); the finished stream's result.message holds the parsed reply."""
        prompt, options = self._chat_options(messages, chat, options)
        return self.stream(prompt, **options)

    def _chat_options(self, messages: Sequence[Message] | ChatPrompt, chat: ChatOptions | None,
                      options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The rendered prompt (`messages` rendered, or already a ChatPrompt), and generate()'s
        options for answering it."""
        chat_fields = names(ChatOptions)
        end = deadline.end_of(self._model._timeout(options.get("timeout")))  # one for rendering and answering
        if isinstance(messages, ChatPrompt):
            if chat is not None or any(k in chat_fields for k in options):
                raise InvalidArgumentError("a rendered ChatPrompt takes no chat options: they applied when it rendered")
            rendered = messages
        else:
            with deadline.until(end):
                rendered = self._model.render_chat(messages, chat,
                                                   **{k: v for k, v in options.items() if k in chat_fields})
                deadline.check("after rendering the chat template")
        rest = {k: v for k, v in options.items() if k not in chat_fields}
        if end is not None:
            rest["timeout"] = max(end - time.monotonic(), 1e-6)  # checked above: what is left
        stop = rest.pop("stop", ())
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        return rendered.prompt, {**rest, "stop": (*stops, *rendered.stops), "parse_special": True, "_chat": rendered}

    # ---- internals -------------------------------------------------------------------------------

    def _jobs(self, prompts: Sequence[str | Sequence[int] | Mapping[str, Any]],
              options: Mapping[str, Any]) -> list[_Job]:
        if not prompts:
            raise InvalidArgumentError("generate_batch needs at least one prompt")
        if len(prompts) > self.n_seq_max:
            raise InvalidArgumentError(
                f"{len(prompts)} prompts but this context has n_seq_max={self.n_seq_max} sequences: "
                "create it with model.new_context(n_seq_max=...)")
        jobs = []
        for i, item in enumerate(prompts):
            if isinstance(item, Mapping):
                item = dict(item)
                if "prompt" not in item:
                    raise InvalidArgumentError(f"prompt {i} is a mapping without a 'prompt' key")
                jobs.append(self._job(i, item.pop("prompt"), **{**options, **item}))
            else:
                jobs.append(self._job(i, item, **options))
        return jobs

    def _job(self, seq: int, prompt: str | Sequence[int], *, sampling: Sampling | None = None,
             max_tokens: int = MAX_TOKENS, stop: Sequence[str] = (), logprobs: bool = False,
             top_logprobs: int = 0, add_special: bool = True, parse_special: bool = False,
             _chat: ChatPrompt | None = None, **sampling_options: Any) -> _Job:
        chosen = resolve(Sampling, sampling, sampling_options, "generate")
        if max_tokens < 0:
            raise InvalidArgumentError("max_tokens must be >= 0")
        if not 0 <= top_logprobs <= abi.TOP_LOGPROBS_MAX:
            raise InvalidArgumentError(f"top_logprobs must be between 0 and {abi.TOP_LOGPROBS_MAX}")
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        if isinstance(prompt, str):
            tokens = self.tokenize(prompt, add_special=add_special, parse_special=parse_special)
        else:
            tokens = [int(t) for t in prompt]
            n_vocab = self._model.n_vocab
            bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
            if bad is not None:
                raise InvalidArgumentError(f"token id {bad} is not in the vocabulary (0 ... {n_vocab - 1})")
        if not tokens:
            raise InvalidArgumentError("the prompt is empty (no tokens)")
        seed = int.from_bytes(os.urandom(4), "little") if chosen.seed is None else chosen.seed
        chosen, steps = self._model._sampler_chain(chosen, seed, _chat)
        return _Job(seq, tokens, chosen, steps, max_tokens, stops, TextAssembler(stops),
                    top_logprobs if logprobs else None, _chat)

    def _held_prefix(self, seq: int, tokens: Sequence[int]) -> int:
        """How many leading tokens of `tokens` sequence `seq` of the cache already holds."""
        n = 0
        for a, b in zip(self._cached[seq], tokens, strict=False):
            if a != b:
                break
            n += 1
        return n

    def _prefix(self, seq: int, tokens: list[int]) -> int:
        """Make sequence `seq` hold the longest prefix of `tokens` that it, or another sequence,
        already holds (another's is copied, not evaluated). Returns its length."""
        own = self._held_prefix(seq, tokens)
        donor, best = max(((j, self._held_prefix(j, tokens)) for j in range(len(self._cached)) if j != seq),
                          key=lambda jc: jc[1], default=(seq, 0))
        try:
            if best > own:
                self._backend.memory_seq_rm(self._handle, seq, 0, -1)  # nothing of its own left beside the copy
                self._backend.memory_seq_cp(self._handle, donor, seq, 0, -1)  # whole streams only
                self._backend.memory_seq_rm(self._handle, seq, best, -1)
                self._cached[seq] = tokens[:best]
                return best
            self._backend.memory_seq_rm(self._handle, seq, own, -1)
        except UnsupportedOptionError:  # memory that cannot drop a suffix (recurrent models): this sequence starts over
            self._backend.memory_seq_rm(self._handle, seq, 0, -1)
            self._cached[seq] = []
            return 0
        except BaseException:
            # what the sequence holds is no longer known: empty it (the others are untouched)
            with contextlib.suppress(WasillamaError):
                self._backend.memory_seq_rm(self._handle, seq, 0, -1)
            self._cached[seq] = []
            raise
        self._cached[seq] = self._cached[seq][:own]
        return own

    def _ingest(self, seq: int, tokens: list[int], *, with_last: bool) -> int:
        """Make sequence `seq` hold `tokens` — all of them (the last one's logits are then
        readable) or all but the last (which generation decodes as its first step). Reuses a
        cached prefix; evaluates the rest in chunks of n_batch that let other Contexts of the same
        sandbox take turns. Returns how many tokens were reused."""
        reused, chunks = self._ingest_plan(seq, tokens, with_last=with_last)
        for k, chunk in enumerate(chunks):
            self._ingest_chunk(seq, chunk, logits_last=with_last and k == len(chunks) - 1, background=len(chunks) > 1)
            if self._abort_requested:
                raise AbortedError("aborted while evaluating the prompt")
            deadline.check("while evaluating the prompt")
        return reused

    def _check_room(self, tokens: Sequence[int]) -> None:
        """ContextFullError when a prompt of `tokens` cannot fit one sequence of this context."""
        if len(tokens) >= self.n_ctx_seq:
            raise ContextFullError(
                f"the prompt has {len(tokens)} tokens but a sequence of this context holds {self.n_ctx_seq}; "
                "shorten it or create the context with a larger n_ctx")

    def _ingest_plan(self, seq: int, tokens: list[int], *, with_last: bool,
                     chunk: int | None = None) -> tuple[int, list[list[int]]]:
        """The first half of _ingest: the reused prefix made ready, and the chunks (of `chunk`
        tokens, n_batch at most) still to evaluate."""
        if not tokens:
            raise InvalidArgumentError("the prompt is empty (no tokens)")
        self._check_room(tokens)
        target = tokens if with_last else tokens[:-1]
        reused = self._prefix(seq, target[:-1] if with_last else target)
        rest = target[reused:]
        size = min(chunk or self.n_batch, self.n_batch)
        return reused, [rest[i : i + size] for i in range(0, len(rest), size)]

    def _ingest_chunk(self, seq: int, chunk: list[int], *, logits_last: bool, background: bool) -> None:
        """Evaluate one chunk of a prompt into sequence `seq`, after what it holds."""
        flags = np.zeros(len(chunk), dtype=np.int8)
        if logits_last:
            flags[-1] = 1
        try:
            self._backend.decode(self._handle, np.asarray(chunk, dtype=np.int32),
                                 seq=np.full(len(chunk), seq, dtype=np.int32), logits=flags, background=background)
            self._cached[seq].extend(chunk)
        except BaseException:
            # a failed chunk may be partly in the cache: drop what the cache holds beyond the known tokens
            with contextlib.suppress(WasillamaError):
                self._backend.memory_seq_rm(self._handle, seq, len(self._cached[seq]), -1)
            raise

    def _record_step(self, seq: int, pending: int, new: list[int], reason: int) -> None:
        """After a wl_context_generate step of `seq`: record which of [pending] + new the cache
        now holds. By its contract each written token was sampled after one decode, and an
        end-of-generation token (not written) after one more; the last written is not decoded."""
        decoded = len(new) + (1 if reason == abi.STOP_EOG else 0)
        self._cached[seq].extend([pending, *new][:decoded])

    def _sync(self, job: _Job, new: list[int], reason: int) -> None:
        """_record_step for a job; the last token written becomes its pending one."""
        self._record_step(job.seq, job.pending, new, reason)
        if new:
            job.pending = new[-1]

    @contextlib.contextmanager
    def _stopwatch(self) -> Iterator[None]:
        """The cooperative stop of the current deadline, around an operation that holds this
        context: at the deadline the abort flag stops the running decode (at its next graph
        node), and the AbortedError that follows becomes DeadlineExceededError."""
        left = deadline.remaining()
        if left is None:
            yield
            return
        fired = threading.Event()

        def fire() -> None:
            fired.set()
            self.abort()

        timer = threading.Timer(max(0.0, left), fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except AbortedError as e:
            if fired.is_set():
                raise DeadlineExceededError("the deadline stopped the decode; the context is usable") from e
            raise
        finally:
            timer.cancel()
            timer.join()  # a fire() under way ends first: inside the operation _release() lowers its flag,
            if fired.is_set() and not self._busy.locked():  # after it (embed, speculative) this does
                with contextlib.suppress(WasillamaError):
                    self._backend.set_abort(self._handle, False)

    def _push(self, job: _Job, token: int) -> str:
        """Add a generated token to the job's text; returns the text that is now safe to show."""
        special = job.chat is not None and token in job.chat.preserved_tokens
        return job.text.push(self._model.token_piece(token, render_special=special))

    def _finished(self, job: _Job, result: GenerationResult) -> GenerationResult:
        """A job's result with its reply parsed, when it answered a chat."""
        if job.chat is None:
            return result
        message = self._model.parse_reply(job.chat, result.text)
        finish = result.finish_reason
        if message.tool_calls and finish in ("eos", "stop"):
            finish = "tool_calls"
        return dataclasses.replace(result, message=message, finish_reason=finish)

    def _piece_text(self, token: int) -> str:
        return self._model.token_piece(token).decode("utf-8", "replace")

    def _token_logprob(self, step: Generated, k: int, n: int, token: int, n_top: int) -> TokenLogprob:
        assert step.logprobs is not None
        top: tuple[TopLogprob, ...] = ()
        if n_top:
            assert step.top_tokens is not None and step.top_logprobs is not None
            top = tuple(TopLogprob(int(t), self._piece_text(int(t)), float(lp))
                        for t, lp in zip(step.top_tokens[k][n][:n_top], step.top_logprobs[k][n][:n_top], strict=True)
                        if t >= 0)
        return TokenLogprob(token, self._piece_text(token), float(step.logprobs[k][n]), top)

    def _start(self, job: _Job, t_prompt: float) -> None:
        """A job whose prompt is in the cache (all but its pending last token) starts generating:
        its sampler is made, with the prompt as history when penalties need one."""
        job.pending = job.tokens[-1]
        if not job.sampler:
            self._make_sampler(job)
        if job.max_tokens == 0:
            job.finish = "length"
        job.t_prompt = t_prompt

    def _make_sampler(self, job: _Job) -> None:
        """The job's sampler chain (a grammar that does not parse fails here), with the prompt
        as history when penalties need one."""
        job.sampler = self._backend.new_sampler(self._model._require_handle(), job.steps)
        if job.sampling.penalised:  # the whole prompt is history, the pending last token included
            self._backend.sampler_accept(job.sampler, np.asarray(job.tokens, dtype=np.int32))

    def _decode_step(self, active: list[_Job], chunk: int) -> Iterator[tuple[_Job, str]]:
        """One wl_context_generate call for every job in `active`: each samples up to `chunk`
        tokens with its own chain, all decoded together. Yields (job, text piece); a job that
        ends gets its finish reason."""
        tops = [j.logprobs for j in active if j.logprobs is not None]
        try:
            step = self._backend.generate_multi(
                self._handle, [j.seq for j in active], [j.sampler for j in active],
                [j.pending for j in active], [min(chunk, j.max_tokens - len(j.out)) for j in active],
                max(tops) if tops else None)
        except BaseException:
            for j in active:  # what the cache holds beyond the known tokens is unknown: drop it
                with contextlib.suppress(WasillamaError):
                    self._backend.memory_seq_rm(self._handle, j.seq, len(self._cached[j.seq]), -1)
            raise
        for k, (job, toks, reason) in enumerate(zip(active, step.tokens, step.stops, strict=True)):
            new_list = toks.tolist()
            self._sync(job, new_list, reason)
            for n, tok in enumerate(new_list):  # a stop string may end the text before the step's last token
                job.out.append(tok)
                if job.logprobs is not None:
                    job.scores.append(self._token_logprob(step, k, n, tok, job.logprobs))
                piece = self._push(job, tok)
                if piece:
                    yield job, piece
                if job.text.stopped is not None:
                    job.finish = "stop"
                    break
            if job.finish is None and (reason != abi.STOP_LENGTH or len(job.out) >= job.max_tokens):
                job.finish = _FINISH[reason]

    def _result(self, job: _Job, t0: float, t1: float, t2: float) -> GenerationResult:
        """A finished job's result: started at t0, its prompt in the cache at t1, done at t2."""
        return self._finished(job, GenerationResult(
            text=job.text.text, tokens=job.out, prompt_tokens=len(job.tokens), cached_prompt_tokens=job.reused,
            finish_reason=job.finish or "length", stop_sequence=job.text.stopped,
            logprobs=job.scores if job.logprobs is not None else None,
            timings=Timings(len(job.tokens) - job.reused, t1 - t0, len(job.out), t2 - t1)))

    def _steps(self, jobs: list[_Job], chunk: int, cancel: threading.Event) -> Iterator[tuple[int, str]]:
        """Ingest every prompt, then generate until every job has finished (or `cancel`)."""
        if cancel.is_set():
            return
        for job in jobs:
            job.reused = self._ingest(job.seq, job.tokens, with_last=False)
        t_prompt = time.perf_counter()
        for job in jobs:
            self._start(job, t_prompt)
        while (active := [j for j in jobs if j.finish is None]) and not cancel.is_set():
            if self._abort_requested:
                raise AbortedError("generation aborted")
            deadline.check("while generating")
            for job, piece in self._decode_step(active, chunk):
                yield job.index, piece

    def _run(self, jobs: list[_Job], chunk: int,
             cancel: threading.Event | None = None) -> Iterator[tuple[int, str] | list[GenerationResult]]:
        """The generation loop under generate / stream / the batch variants. When `cancel` is set
        (by a stream's cancel(), which also aborts a running decode) the jobs still going finish
        as "cancelled" with what they have."""
        self._require_logits()
        self._acquire()
        cancel = cancel or threading.Event()
        with self._cancel_lock:
            self._running = cancel
        try:
            t0 = time.perf_counter()
            try:
                with self._stopwatch():
                    yield from self._steps(jobs, chunk, cancel)
            except AbortedError:
                if not cancel.is_set():
                    raise
            for job in jobs:
                if job.finish is None:
                    job.finish = "cancelled"
            t1 = max(j.t_prompt for j in jobs) or time.perf_counter()
            for job in jobs:
                tail = job.text.finish()
                if tail:
                    yield job.index, tail
            t2 = time.perf_counter()
            yield [self._result(j, t0, t1, t2) for j in jobs]
        finally:
            with self._cancel_lock:
                self._running = None
            try:
                for job in jobs:
                    if job.sampler:
                        with contextlib.suppress(WasillamaError):  # the sandbox may be gone already
                            self._backend.free_sampler(job.sampler)
            finally:
                self._release()


@dataclass(frozen=True)
class _Bound:
    backend: Backend
    handle: int
    generation: int  # the sandbox instance (Sandbox.generation) the handle lives in


@dataclass
class _Job:
    """One prompt being completed in sequence `seq` of a context."""

    seq: int
    tokens: list[int]
    sampling: Sampling
    steps: list[SamplerStep]
    max_tokens: int
    stops: tuple[str, ...]
    text: TextAssembler
    logprobs: int | None  # None: not asked for; else how many top alternatives per token
    chat: ChatPrompt | None = None  # the rendered conversation it answers
    sampler: int = 0
    pending: int = 0  # the next token to decode: sampled (or the prompt's last), not yet in the cache
    reused: int = 0
    t_prompt: float = 0.0  # when its prompt was in the cache
    out: list[int] = field(default_factory=list)
    scores: list[TokenLogprob] = field(default_factory=list)
    finish: FinishReason | None = None

    @property
    def index(self) -> int:
        return self.seq
