"""Pods, pools and the model registry: where requests run.

- A **pod** is one sandbox: a Model of its own (its own guest memory and threads), one Context
  with `parallel` sequences, and a thread that runs the Context's continuous batch
  (wasillama.batching): requests join between decode steps and leave when they end.
- A **pool** is a model's pods and the bounded queue in front of them; each pod takes requests
  from it whenever it has a free sequence, so the least busy pod gets the next one. A full queue
  refuses with 429 (Retry-After).
- The **registry** loads pools lazily, the first time a model is asked for, and unloads the
  least recently used idle pool when the loaded models would exceed the memory cap. A tenant
  marked `isolated` gets pools of its own.

Requests cross from the event loop to a pod thread as Work items and their events come back
through the loop's call_soon_threadsafe: a pod never blocks the loop, and the loop never calls
into a sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ..batching import BatchRequest, ContinuousBatch
from ..context import Context
from ..errors import AbortedError, BackendError, WasillamaError
from ..model import Model, kv_cache_bytes
from ..options import Sampling, SandboxOptions
from .config import ModelConfig, ServerConfig
from .errors import ApiError, bad_request, from_library, not_found, rate_limited

log = logging.getLogger("wasillama.server")

WorkKind = Literal["complete", "chat", "embed"]


@dataclass
class Work:
    """One request (one choice of it) on its way to a pod. The pod posts (index, "started",
    prompt tokens), (index, "piece", text), then (index, "done", result) or (index, "error",
    exception) to `events`, on the request's loop; the choices of a request share one queue."""

    kind: WorkKind
    args: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[int, str, Any]]
    deadline: float  # time.monotonic()
    index: int = 0
    max_prompt_tokens: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)
    refused: Exception | None = None  # set by the pod: why it ends with an error whatever the batch says

    def post(self, kind: str, value: Any = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, kind, value))

    def cancel(self) -> None:
        """Any thread: the request ends at its pod's next step (or is dropped from the queue)."""
        self.cancelled.set()


def is_embedding_model(model: Model) -> bool:
    """An encoder that names its pooling (BERT-style embedding models) serves /v1/embeddings."""
    return f"{model.architecture}.pooling_type" in model.metadata


class Pod:
    """One sandbox serving a pool's queue from its own thread."""

    def __init__(self, pool: Pool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.model: Model | None = None
        self._ctx: Context | None = None
        self._batch: ContinuousBatch | None = None
        self.screen: Model | None = None
        self._active: dict[BatchRequest, Work] = {}
        self._thread = threading.Thread(target=self._run, name=f"pod-{pool.name}-{index}", daemon=True)
        self.restarts = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Load the model and make the context (the caller's thread; raises what loading raises)."""
        cfg, pool = self.pool.config, self.pool
        model = Model.load(cfg.path, backend=cfg.backend, trust_model=cfg.trust_model,  # type: ignore[arg-type]
                           sandbox=SandboxOptions(max_memory=pool.max_memory, default_timeout=pool.call_timeout,
                                                  on_trap="rebuild"))
        try:
            embeddings = cfg.embeddings if cfg.embeddings is not None else is_embedding_model(model)
            threads = cfg.threads
            if embeddings:
                ctx = model.new_context(embeddings=True, n_ctx=cfg.n_ctx * cfg.parallel, n_batch=cfg.n_ctx,
                                        n_ubatch=cfg.n_ctx, n_seq_max=cfg.parallel, n_threads=threads,
                                        n_threads_batch=threads)
            else:
                ctx = model.new_context(n_ctx=cfg.n_ctx * cfg.parallel, n_seq_max=cfg.parallel,
                                        n_threads=threads, n_threads_batch=threads)
        except BaseException:
            model.close()
            raise
        self.model, self._ctx = model, ctx
        self.embeddings = embeddings
        if not embeddings:
            # Requests are prepared here first: their chat rendered, their grammar parsed, their
            # sampler chain built. Whatever a request makes llama.cpp crash on while it is
            # prepared traps this vocabulary-only sandbox (rebuilt for the next one), never the
            # pod's, where other requests are being decoded.
            self.screen = Model.load(cfg.path, backend=cfg.backend, trust_model=cfg.trust_model,  # type: ignore[arg-type]
                                     vocab_only=True, sandbox=SandboxOptions(default_timeout=pool.call_timeout,
                                                                             on_trap="rebuild"))
            self._batch = ctx.continuous_batch(prompt_chunk=pool.prompt_chunk)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        for closer in (self._batch, self._ctx, self.model, self.screen):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        self._batch = self._ctx = self.model = self.screen = None

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def busy(self) -> int:
        return len(self._active)

    # ---- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self.pool.stopping.is_set():
            try:
                if self.model is None:
                    self.open()
                if self.embeddings:
                    self._serve_embeddings()
                else:
                    self._serve_generation()
            except Exception as e:  # the pod starts over: its requests fail, the queue waits for it
                log.exception("pod %s-%d failed; restarting it", self.pool.name, self.index)
                self._fail_all(e)
                self.close()
                self.restarts += 1
                self.pool.metrics.pod_restarts.labels(self.pool.name).inc()
                self.pool.stopping.wait(min(5.0, 0.2 * 2 ** min(self.restarts, 5)))
        self._fail_all(AbortedError("the server is shutting down"))
        self.close()

    def _next(self, block: bool) -> Work | None:
        try:
            w = self.pool.queue.get(block=block, timeout=0.1 if block else None)
        except queue.Empty:
            return None
        if w.cancelled.is_set():
            w.post("error", AbortedError("cancelled while queued"))
            return None
        if time.monotonic() >= w.deadline:
            w.post("error", ApiError(504, "the request waited in the queue past its deadline", type="timeout_error",
                                     code="timeout"))
            return None
        return w

    def _serve_generation(self) -> None:
        batch = self._batch
        assert batch is not None
        while not self.pool.stopping.is_set():
            while batch.free and (w := self._next(block=not batch.busy)) is not None:
                self._admit(batch, w)
            if not batch.busy:
                continue
            for r, w in self._active.items():
                if w.cancelled.is_set():
                    r.cancel()
            for r, piece in batch.step():
                w = self._active[r]
                if piece is not None:
                    w.post("piece", piece)
                    continue
                del self._active[r]
                if w.refused is not None:
                    w.post("error", w.refused)
                elif r.error is not None:
                    w.post("error", r.error)
                else:
                    w.post("done", r.result)

    def _prepared(self, w: Work) -> tuple[Any, dict[str, Any]]:
        """The request's prompt (a chat rendered) and options (its sampling built), from the screen."""
        screen = self.screen
        assert screen is not None
        options = dict(w.args["options"])
        sampling = options.get("sampling") or Sampling()
        left = max(w.deadline - time.monotonic(), 1e-3)
        try:
            if w.kind == "chat":
                prompt: Any = screen.render_chat(w.args["messages"], options.pop("chat", None), timeout=left)
                options["sampling"] = screen.prepare_sampling(sampling, chat=prompt)
            else:
                prompt = w.args["prompt"]
                if isinstance(prompt, str):  # tokenized here too: a huge prompt costs the pod nothing
                    prompt = screen.tokenize(prompt)
                options["sampling"] = screen.prepare_sampling(sampling)
        except BackendError as e:
            if screen.poisoned is None:
                raise
            raise bad_request(f"llama.cpp crashed while this request was prepared (its grammar, schema or "
                              f"chat); no other request was affected: {e}") from e
        return prompt, options

    def _admit(self, batch: ContinuousBatch, w: Work) -> None:
        try:
            prompt, options = self._prepared(w)
            left = max(w.deadline - time.monotonic(), 1e-3)
            if w.kind == "chat":
                r = batch.submit_chat(prompt, timeout=left, **options)
            else:
                r = batch.submit(prompt, timeout=left, **options)
        except (WasillamaError, ApiError) as e:
            w.post("error", e)
            return
        except Exception as e:  # what the request's fields made the library choke on: its error alone
            w.post("error", bad_request(f"the request cannot be run: {type(e).__name__}: {e}"))
            return
        self._active[r] = w
        if w.max_prompt_tokens is not None and r.prompt_tokens > w.max_prompt_tokens:
            w.refused = bad_request(f"the prompt has {r.prompt_tokens} tokens, more than this key's limit of "
                                    f"{w.max_prompt_tokens}", param="messages", code="context_length_exceeded")
            r.cancel()
            return
        w.post("started", r.prompt_tokens)

    def _serve_embeddings(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        while not self.pool.stopping.is_set():
            w = self._next(block=True)
            if w is None:
                continue
            try:
                # tokenized once: for the usage and the tenant's limit, then embedded as tokens
                # (embed_batch refuses an input longer than the context embeds)
                inputs = [ctx.tokenize(t) if isinstance(t, str) else t for t in w.args["input"]]
                counts = [len(t) for t in inputs]
                if w.max_prompt_tokens is not None and max(counts, default=0) > w.max_prompt_tokens:
                    raise bad_request(f"an input has {max(counts)} tokens, more than this key's limit of "
                                      f"{w.max_prompt_tokens}", param="input", code="context_length_exceeded")
                vectors = ctx.embed_batch(inputs, timeout=max(w.deadline - time.monotonic(), 1e-3))
            except (WasillamaError, ApiError) as e:
                w.post("error", e)
                continue
            except Exception as e:
                w.post("error", bad_request(f"the input cannot be embedded: {type(e).__name__}: {e}"))
                continue
            w.post("done", (vectors, sum(counts)))

    def _fail_all(self, error: Exception) -> None:
        for w in self._active.values():
            w.post("error", error)
        self._active.clear()


class Pool:
    """A model's pods (one config, one memory cap) and the queue they share."""

    def __init__(self, name: str, config: ModelConfig, server: ServerConfig, metrics: Any,
                 max_memory: int | None) -> None:
        self.name = name  # the model's name, with the tenant's for an isolated pool
        self.config = config
        self.metrics = metrics
        self.max_memory = max_memory
        self.call_timeout = server.call_timeout
        self.prompt_chunk = 128  # a new prompt delays the others' next token by this many tokens at most
        self.queue: queue.Queue[Work] = queue.Queue(maxsize=max(server.queue_size, 1))
        self.stopping = threading.Event()
        self.pods = [Pod(self, i) for i in range(config.pods)]
        self.last_used = time.monotonic()
        self.embeddings = False
        self.model_bytes = 0

    def start(self) -> None:
        """Load every pod's model (blocking: run it off the event loop), then start their threads."""
        try:
            for pod in self.pods:
                pod.open()
        except BaseException:
            for pod in self.pods:
                pod.close()
            raise
        first = self.pods[0]
        assert first.model is not None
        self.embeddings = first.embeddings
        self.model_bytes = first.model.size_bytes
        for pod in self.pods:
            pod.start()

    def stop(self) -> None:
        self.stopping.set()
        for pod in self.pods:
            pod.join(10.0)
        while True:
            try:
                self.queue.get_nowait().post("error", AbortedError("the model was unloaded"))
            except queue.Empty:
                break

    @property
    def model(self) -> Model:
        """A loaded Model of this pool (thread-safe: tokenize, detokenize, metadata)."""
        for pod in self.pods:
            if pod.model is not None:
                return pod.model
        raise ApiError(503, f"the model {self.config.name} is restarting", type="server_error", code="unavailable")

    @property
    def running(self) -> int:
        return sum(p.busy for p in self.pods)

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.queue.empty()

    def submit(self, w: Work) -> None:
        """Queue a request, or 429 when the queue is full."""
        self.last_used = time.monotonic()
        try:
            self.queue.put_nowait(w)
        except queue.Full:
            raise rate_limited(f"the server is busy: {self.queue.qsize()} requests wait for {self.config.name}",
                               1.0 + self.queue.qsize() / max(1, self.config.pods * self.config.parallel),
                               code="server_busy") from None


def estimated_bytes(config: ModelConfig) -> int:
    """What a pool of this model holds: its weights (the file's size) in every pod, plus the KV
    cache its sequences can fill (a guess from the file size until the model is loaded)."""
    try:
        size = os.path.getsize(config.path)
    except OSError:
        size = 0
    return size * config.pods


class Registry:
    """The pools by (model, isolated tenant or None), loaded on first use, LRU-evicted."""

    def __init__(self, config: ServerConfig, metrics: Any) -> None:
        self.config = config
        self.metrics = metrics
        self._pools: dict[tuple[str, str | None], Pool] = {}
        self._loading: dict[tuple[str, str | None], asyncio.Lock] = {}
        self._lock = asyncio.Lock()
        self._capped_loads = asyncio.Lock()
        self._bytes: dict[tuple[str, str | None], int] = {}

    @property
    def pools(self) -> list[Pool]:
        return list(self._pools.values())

    def model_config(self, name: str) -> ModelConfig:
        cfg = self.config.model(name)
        if cfg is None:
            raise not_found(f"the model {name!r} does not exist", code="model_not_found")
        return cfg

    async def pool(self, name: str, tenant: str | None = None, max_memory: int | None = None) -> Pool:
        """The pool that serves `name` (for an isolated `tenant`, its own), loaded if need be."""
        cfg = self.model_config(name)
        key = (name, tenant)
        pool = self._pools.get(key)
        if pool is not None:
            pool.last_used = time.monotonic()
            return pool
        async with self._lock:
            lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            pool = self._pools.get(key)
            if pool is not None:
                return pool
            # under a memory cap one model loads at a time: two loads that each see room would
            # together pass the cap
            capped = self.config.max_loaded_memory is not None
            async with self._capped_loads if capped else contextlib.nullcontext():
                await self._make_room(estimated_bytes(cfg))
                label = name if tenant is None else f"{name}@{tenant}"
                pool = Pool(label, cfg, self.config, self.metrics, max_memory or cfg.max_memory)  # type: ignore[arg-type]
                log.info("loading %s (%d pod(s) of %d sequences)", label, cfg.pods, cfg.parallel)
                try:
                    await asyncio.to_thread(pool.start)
                except WasillamaError as e:
                    err = from_library(e)
                    status = err.status if err.status == 507 else 500  # out of memory says so; the rest is ours
                    raise ApiError(status, f"the model {name!r} failed to load: {e}", type="server_error",
                                   code=err.code if status == 507 else "model_load_failed") from e
                self._pools[key] = pool
                self._bytes[key] = pool.model_bytes * cfg.pods + kv_cache_bytes(
                    pool.model.info, cfg.n_ctx * cfg.parallel) * cfg.pods
            return pool

    async def _make_room(self, need: int) -> None:
        cap = self.config.max_loaded_memory
        if cap is None:
            return
        while self._pools and sum(self._bytes.values()) + need > int(cap):
            idle = [(p.last_used, k) for k, p in self._pools.items() if p.idle]
            if not idle:
                raise rate_limited("the server's models are all busy and another does not fit beside them", 5.0,
                                   code="server_busy")
            _, key = min(idle)
            pool = self._pools.pop(key)
            self._bytes.pop(key, None)
            log.info("unloading %s (least recently used) to make room", pool.name)
            await asyncio.to_thread(pool.stop)

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in pools))

