"""The HTTP server: OpenAI's routes, the jobs API, health and metrics, on Starlette.

Starlette (with uvicorn) because it is the small, well-kept ASGI core that FastAPI itself is
built on: routing, streaming responses that notice a client leaving, lifespan hooks; nothing we
would otherwise write. Request checking stays ours (openai_api.py) so that the server accepts
exactly what the library does.

Every request: its key names its tenant (401 without one); the tenant's limits apply (429 with
Retry-After, 400 for a request larger than allowed); its choices go to a pool's queue as Work;
a client that disconnects cancels them. Nothing here calls into a sandbox: pods do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import ExitStack
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import WasillamaError
from ..results import GenerationResult
from . import openai_api as oa
from .config import ServerConfig
from .engine import Pool, Registry, Work
from .errors import ApiError, bad_request, from_library, not_found
from .jobs import DuplicateJobError, Job, JobRunner, JobStore
from .metrics import Metrics
from .tenants import Tenant, Tenants

log = logging.getLogger("wasillama.server")

MAX_BODY = 16 * 2**20


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _api_error(e: BaseException) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, WasillamaError):
        return from_library(e)
    return ApiError(500, f"internal error: {type(e).__name__}", type="server_error")


class Choices:
    """The running choices of one request: their Work items, their events, their cleanup."""

    def __init__(self, server: Server, tenant: Tenant, pool: Pool, works: list[Work], stack: ExitStack) -> None:
        self.server, self.tenant, self.pool, self.works, self._stack = server, tenant, pool, works, stack
        self.events = works[0].events
        self.t0 = time.monotonic()
        self.first_piece: float | None = None
        self.results: list[GenerationResult | None] = [None] * len(works)
        self._closed = False
        self._early: list[tuple[int, str, Any]] = []
        self.admitted_choices = 0

    async def _event(self) -> tuple[int, str, Any]:
        """The next event; past the request's deadline (and a grace for the pod to say so) a 504."""
        left = self.works[0].deadline - time.monotonic() + 5.0
        try:
            return await asyncio.wait_for(self.events.get(), max(left, 0.1))
        except asyncio.TimeoutError:
            raise ApiError(504, "the request passed its deadline", type="timeout_error", code="timeout") from None

    async def admitted(self) -> None:
        """Wait until every choice is in a batch; raise the first refusal (before any response starts).
        A choice that starts generating before another is admitted keeps its events for stream()."""
        started = 0
        while started < len(self.works):
            event = await self._event()
            if event[1] == "error":
                raise event[2]
            if event[1] == "started":
                started += 1
                self.admitted_choices += 1
            else:
                self._early.append(event)

    async def stream(self) -> AsyncIterator[tuple[int, str, Any]]:
        """(choice, "piece" | "done", value) until every choice is done; the first error raises."""
        left = sum(r is None for r in self.results)
        while left:
            i, kind, value = self._early.pop(0) if self._early else await self._event()
            if kind == "error":
                raise value
            if kind == "piece" and self.first_piece is None:
                self.first_piece = time.monotonic()
                self.server.metrics.ttft.labels(self.tenant.name, self.pool.name).observe(self.first_piece - self.t0)
            if kind == "done":
                self.results[i] = value
                left -= 1
            yield i, kind, value

    async def collect(self) -> list[GenerationResult]:
        async for _ in self.stream():
            pass
        return [r for r in self.results if r is not None]

    def close(self) -> None:
        """Cancel what still runs, release the tenant's slot, count the tokens. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for w in self.works:
            w.cancel()
        done = [r for r in self.results if r is not None]
        prompt = sum(r.prompt_tokens for r in done)
        completion = sum(r.completion_tokens for r in done)
        # a choice that ran but has no result (its client left, it failed) is charged what it may
        # have used: leaving early is no way around tokens_per_minute
        unfinished = max(0, self.admitted_choices - len(done)) * int(self.works[0].args["options"]["max_tokens"])
        self.tenant.spend(prompt + completion + unfinished)
        self.server.metrics.generated(self.tenant.name, self.pool.name, prompt, completion)
        self._stack.close()


class Server:
    """A server's state: config, tenants, pools, jobs, metrics. `app` is its ASGI application."""

    def __init__(self, config: ServerConfig, *, preload: bool = False) -> None:
        self.config = config
        self.metrics = Metrics()
        self.tenants = Tenants(config)
        self.registry = Registry(config, self.metrics)
        self.created = int(time.time())
        self.preload = preload
        self.jobs: JobRunner | None = None
        self._watched: dict[str, Pool] = {}  # the pool each model's gauges read (a reload is a new one)
        self.app = Starlette(routes=self._routes(), lifespan=self._lifespan)

    # ---- lifecycle ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        store = JobStore(self.config.jobs_db or "jobs.sqlite3")
        self.jobs = JobRunner(store, self._run_job, self.config.job_workers)
        if self.preload:
            for m in self.config.models:
                await self.registry.pool(m.name)
        self.jobs.start()
        try:
            yield
        finally:
            await self.jobs.stop()
            await self.registry.close()
            store.close()

    def _routes(self) -> list[Route]:
        e = self._endpoint
        return [
            Route("/v1/chat/completions", e("chat", self.chat_completions), methods=["POST"]),
            Route("/v1/completions", e("completions", self.completions), methods=["POST"]),
            Route("/v1/embeddings", e("embeddings", self.embeddings), methods=["POST"]),
            Route("/v1/models", e("models", self.models), methods=["GET"]),
            Route("/v1/models/{model:path}", e("models", self.model), methods=["GET"]),
            Route("/tokenize", e("tokenize", self.tokenize), methods=["POST"]),
            Route("/detokenize", e("detokenize", self.detokenize), methods=["POST"]),
            Route("/jobs", e("jobs", self.post_job), methods=["POST"]),
            Route("/jobs/status/{id}", e("jobs", self.job_status), methods=["GET"]),
            Route("/jobs/{id}", e("jobs", self.get_job), methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]

    def _endpoint(self, name: str, fn: Callable[[Request, Tenant], Awaitable[Response]]
                  ) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            t0 = time.monotonic()
            tenant_name = "-"
            try:
                tenant = self.tenants.authenticate(request.headers.get("authorization"))
                tenant_name = tenant.name
                self.metrics.tenant_running.labels(tenant_name).set(tenant.running)
                response = await fn(request, tenant)
            except Exception as e:  # every failure answers in OpenAI's form
                err = _api_error(e)
                if err.status >= 500:
                    log.warning("%s: %s", name, err.message)
                response = _error_response(err)
            self.metrics.requests.labels(tenant_name, name, str(response.status_code)).inc()
            if not isinstance(response, StreamingResponse):
                self.metrics.latency.labels(tenant_name, name).observe(time.monotonic() - t0)
            return response

        return handler

    # ---- helpers -----------------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad_request(f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise bad_request("the body is a JSON object")
        return body

    async def pool(self, model: str, tenant: Tenant) -> Pool:
        iso = tenant.config.isolated
        pool = await self.registry.pool(model, tenant.name if iso else None,
                                        tenant.config.max_memory if iso else None)  # type: ignore[arg-type]
        if self._watched.get(pool.name) is not pool:
            self._watched[pool.name] = pool
            self.metrics.watch(pool.name, pool.queue.qsize, lambda: pool.running)
        return pool

    def _timeout(self, tenant: Tenant) -> float:
        own = tenant.config.request_timeout
        return self.config.request_timeout if own is None else min(own, self.config.request_timeout)

    @property
    def default_model(self) -> str:
        return self.config.models[0].name

    async def start(self, plan: oa.Plan, tenant: Tenant) -> Choices:
        """Check a plan against the tenant's limits and queue its choices; returns once every
        choice is in a batch (the refusals of that stage raise here)."""
        tenant.check_sizes(plan.model, None, plan.max_tokens)
        self.registry.model_config(plan.model)
        pool = await self.pool(plan.model, tenant)
        if pool.embeddings:
            raise bad_request(f"the model {plan.model!r} computes embeddings: use /v1/embeddings", param="model")
        stack = ExitStack()
        stack.enter_context(tenant.slot(plan.planned_tokens))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()
        end = time.monotonic() + self._timeout(tenant)
        works = [Work(plan.kind, args, loop, events, end, index=i, max_prompt_tokens=tenant.config.max_prompt_tokens)  # type: ignore[arg-type]
                 for i, args in enumerate(plan.choices)]
        choices = Choices(self, tenant, pool, works, stack)
        try:
            for w in works:
                pool.submit(w)
            await choices.admitted()
        except BaseException:
            choices.close()
            raise
        return choices

    async def _until_disconnect(self, request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    async def _complete(self, request: Request | None, choices: Choices) -> list[GenerationResult]:
        """All results; a client that leaves first cancels the choices."""
        work = asyncio.ensure_future(choices.collect())
        if request is None:
            return await work
        gone = asyncio.ensure_future(self._until_disconnect(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not work.done():
            work.cancel()
            raise ApiError(499, "the client closed the request")
        return work.result()

    # ---- OpenAI ------------------------------------------------------------------------------

    async def chat_completions(self, request: Request, tenant: Tenant) -> Response:
        body = await self._body(request)
        plan = oa.chat_plan(body, self.default_model, self.config.default_max_tokens, tenant.config.max_tokens)
        return await self._answer(request, tenant, plan)

    async def completions(self, request: Request, tenant: Tenant) -> Response:
        body = await self._body(request)
        plan = oa.completion_plan(body, self.default_model, tenant.config.max_tokens)
        return await self._answer(request, tenant, plan)

    async def _answer(self, request: Request, tenant: Tenant, plan: oa.Plan) -> Response:
        choices = await self.start(plan, tenant)
        rid = oa.new_id("chatcmpl" if plan.kind == "chat" else "cmpl")
        if plan.stream:
            # the stream's own `finally` closes the choices; the background task too, for a
            # stream that never started (its client left first)
            return StreamingResponse(self._sse(rid, plan, choices), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(choices.close))
        try:
            results = await self._complete(request, choices)
        finally:
            choices.close()
        self.metrics.latency.labels(tenant.name, plan.kind).observe(time.monotonic() - choices.t0)
        return JSONResponse(await self._response(rid, plan, results, choices.pool))

    async def _response(self, rid: str, plan: oa.Plan, results: list[GenerationResult], pool: Pool) -> dict[str, Any]:
        if plan.kind == "chat":
            return oa.chat_response(rid, plan.model, results)
        texts = [p if isinstance(p, str) else await asyncio.to_thread(pool.model.detokenize, p)
                 for p in plan.prompts] if plan.echo else []
        return oa.completion_response(rid, plan, results, texts)

    async def _sse(self, rid: str, plan: oa.Plan, choices: Choices) -> AsyncIterator[bytes]:
        held: dict[int, list[str]] = {}  # with tools the text is sent once parsed, at the end
        try:
            if plan.kind == "chat":
                for i in range(len(plan.choices)):
                    yield oa.sse(oa.chat_chunk(rid, plan.model, i, {"role": "assistant", "content": ""}))
            if plan.kind == "complete" and plan.echo:
                for i, p in enumerate(plan.prompts):
                    text = p if isinstance(p, str) else await asyncio.to_thread(choices.pool.model.detokenize, p)
                    yield oa.sse(oa.completion_chunk(rid, plan.model, i, text))
            async for i, kind, value in choices.stream():
                if kind == "piece":
                    if plan.kind == "complete":
                        yield oa.sse(oa.completion_chunk(rid, plan.model, i, value))
                    elif plan.tools:
                        held.setdefault(i, []).append(value)
                    else:
                        yield oa.sse(oa.chat_chunk(rid, plan.model, i, {"content": value}))
                elif kind == "done":
                    for chunk in self._final_chunks(rid, plan, i, value):
                        yield oa.sse(chunk)
            if plan.include_usage:
                yield oa.sse(oa.usage_chunk(rid, plan.model, plan.kind, [r for r in choices.results if r]))
            yield oa.sse("[DONE]")
        except Exception as e:  # the status line has gone: the error travels as an event
            yield oa.error_event(_api_error(e))
        finally:
            choices.close()
            self.metrics.latency.labels(choices.tenant.name, plan.kind).observe(time.monotonic() - choices.t0)

    def _final_chunks(self, rid: str, plan: oa.Plan, i: int, r: GenerationResult) -> list[dict[str, Any]]:
        finish = oa.finish_reason(r)
        if plan.kind == "complete":
            return [oa.completion_chunk(rid, plan.model, i, "", finish, oa.completion_logprobs(r.logprobs, 0))]
        out = []
        if plan.tools:
            message = oa.chat_message(r)
            if message.get("content"):
                out.append(oa.chat_chunk(rid, plan.model, i, {"content": message["content"]}))
            calls = message.get("tool_calls") or []
            if calls:
                out.append(oa.chat_chunk(rid, plan.model, i, {"tool_calls": [
                    {"index": k, **c} for k, c in enumerate(calls)]}))
        out.append(oa.chat_chunk(rid, plan.model, i, {}, finish, oa.chat_logprobs(r.logprobs)))
        return out

    async def embeddings(self, request: Request, tenant: Tenant) -> Response:
        body = await self._body(request)
        texts, fmt = oa.embedding_inputs(body)
        model = oa._model(body, self.default_model)
        tenant.check_sizes(model, None, None)
        pool = await self.pool(model, tenant)
        if not pool.embeddings:
            raise bad_request(f"the model {model!r} does not compute embeddings", param="model")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()
        work = Work("embed", {"input": texts}, loop, events, time.monotonic() + self._timeout(tenant),
                    max_prompt_tokens=tenant.config.max_prompt_tokens)
        with tenant.slot(0):
            pool.submit(work)
            try:
                _, kind, value = await asyncio.wait_for(events.get(), self._timeout(tenant) + 5.0)
            except asyncio.TimeoutError:
                raise ApiError(504, "the request passed its deadline", type="timeout_error", code="timeout") from None
            finally:
                work.cancel()
        if kind == "error":
            raise value
        vectors, tokens = value
        tenant.spend(tokens)
        self.metrics.generated(tenant.name, pool.name, tokens, 0)
        return JSONResponse(oa.embeddings_response(model, vectors, tokens, fmt))

    async def models(self, request: Request, tenant: Tenant) -> Response:
        allowed = tenant.config.models
        data = [oa.model_entry(m.name, self.created) for m in self.config.models if not allowed or m.name in allowed]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request, tenant: Tenant) -> Response:
        name = request.path_params["model"]
        if self.config.model(name) is None or (tenant.config.models and name not in tenant.config.models):
            raise not_found(f"the model {name!r} does not exist", code="model_not_found")
        return JSONResponse(oa.model_entry(name, self.created))

    # ---- tokens ------------------------------------------------------------------------------

    async def tokenize(self, request: Request, tenant: Tenant) -> Response:
        body = await self._body(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise bad_request("'content' is a string", param="content")
        model = oa._model(body, self.default_model)
        tenant.check_sizes(model, None, None)
        pool = await self.pool(model, tenant)
        tokens = await asyncio.to_thread(pool.model.tokenize, content, add_special=bool(body.get("add_special", False)),
                                         parse_special=bool(body.get("parse_special", True)))
        if body.get("with_pieces"):
            pieces = [pool.model.token_piece(t).decode("utf-8", "replace") for t in tokens]
            return JSONResponse({"tokens": [{"id": t, "piece": p} for t, p in zip(tokens, pieces, strict=True)]})
        return JSONResponse({"tokens": tokens})

    async def detokenize(self, request: Request, tenant: Tenant) -> Response:
        body = await self._body(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise bad_request("'tokens' is a list of token ids", param="tokens")
        model = oa._model(body, self.default_model)
        tenant.check_sizes(model, None, None)
        pool = await self.pool(model, tenant)
        n_vocab = pool.model.n_vocab
        if any(not 0 <= t < n_vocab for t in tokens):
            raise bad_request(f"token ids are between 0 and {n_vocab - 1}", param="tokens")
        return JSONResponse({"content": await asyncio.to_thread(pool.model.detokenize, tokens)})

    # ---- jobs --------------------------------------------------------------------------------

    def _plan(self, body: Mapping[str, Any], tenant: Tenant) -> oa.Plan:
        if body.get("stream"):
            raise bad_request("a job does not stream: poll /jobs/status/{id}", param="stream")
        if "messages" in body:
            return oa.chat_plan(body, self.default_model, self.config.default_max_tokens, tenant.config.max_tokens)
        if "prompt" in body:
            return oa.completion_plan({"max_tokens": self.config.default_max_tokens, **body}, self.default_model,
                                      tenant.config.max_tokens)
        raise bad_request("a job has a 'prompt' or 'messages'")

    async def post_job(self, request: Request, tenant: Tenant) -> Response:
        body = await self._body(request)
        job_id = body.get("id")
        try:
            job_id = str(uuid.UUID(str(job_id)))
        except ValueError:
            raise bad_request("'id' is a UUID the client chooses", param="id") from None
        spec = {k: v for k, v in body.items() if k != "id"}
        plan = self._plan(spec, tenant)  # refuse now what would fail later
        tenant.check_sizes(plan.model, None, plan.max_tokens)
        if tenant.never_fits(plan.planned_tokens):
            raise bad_request(f"the job may use {plan.planned_tokens} tokens, more than this key's "
                              f"{tenant.config.tokens_per_minute} per minute: it could never run", param="max_tokens")
        self.registry.model_config(plan.model)
        assert self.jobs is not None
        try:
            await asyncio.to_thread(self.jobs.store.add, job_id, tenant.name, plan.kind, spec)
        except DuplicateJobError:
            raise ApiError(409, f"a job with id {job_id} exists", code="duplicate_id", param="id") from None
        self.jobs.wake()
        return JSONResponse({"id": job_id, "object": "job", "status": "queued"}, status_code=201)

    async def _job(self, request: Request, tenant: Tenant) -> Job:
        assert self.jobs is not None
        job = await asyncio.to_thread(self.jobs.store.get, request.path_params["id"])
        if job is None or job.tenant != tenant.name:
            raise not_found(f"no job with id {request.path_params['id']!r}")
        return job

    async def job_status(self, request: Request, tenant: Tenant) -> Response:
        job = await self._job(request, tenant)
        return JSONResponse({"id": job.id, "status": job.status, "attempts": job.attempts})

    async def get_job(self, request: Request, tenant: Tenant) -> Response:
        return JSONResponse((await self._job(request, tenant)).public())

    async def _run_job(self, job: Job) -> dict[str, Any]:
        tenant = self.tenants.get(job.tenant)
        if tenant is None:
            raise ApiError(403, f"the tenant {job.tenant!r} no longer exists")
        plan = self._plan(job.request, tenant)
        choices = await self.start(plan, tenant)
        try:
            results = await self._complete(None, choices)
        finally:
            choices.close()
        return await self._response(oa.new_id("job"), plan, results, choices.pool)

    # ---- operations --------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        loaded = {p.name: {"pods": len(p.pods), "running": p.running, "queued": p.queue.qsize()}
                  for p in self.registry.pools}
        jobs = await asyncio.to_thread(self.jobs.store.counts) if self.jobs else {}
        return JSONResponse({"status": "ok", "models": [m.name for m in self.config.models], "loaded": loaded,
                             "jobs": jobs})

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4")


def create_app(config: ServerConfig, *, preload: bool = False) -> Starlette:
    """The ASGI application of a server (uvicorn.run(create_app(config)))."""
    return Server(config, preload=preload).app


__all__ = ["Server", "create_app"]
