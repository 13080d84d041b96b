"""The jobs API (llama.go's): a client places a job under an id of its choosing, polls its
status, fetches its result. Jobs and results live in SQLite, so they outlive the server.

What happens to a job at a crash (documented in docs/server.md): a job is committed before POST
answers, so an accepted job is never lost. A job that was running when its server died is put
back in the queue and runs again from the start (its partial output is dropped), at most
MAX_ATTEMPTS times in all; after that it is marked failed. A result is written once, by the
server that finished the job; one that finds the job already ended writes nothing.

Who owns a running job: the row names its server (host and pid, plus a random id). A server
re-queues jobs whose owner is gone: on the same host, a pid that no longer runs; anywhere (other
replicas on one shared file, a pid reused by a restarted container), an owner that has not renewed
its heartbeat for STALE_S seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ApiError

log = logging.getLogger("wasillama.server")

MAX_ATTEMPTS = 2
HEARTBEAT_S = 5.0
STALE_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,            -- "chat" or "complete"
    request TEXT NOT NULL,         -- the body, as JSON
    status TEXT NOT NULL,          -- queued, running, done, failed
    result TEXT,                   -- the OpenAI response body, as JSON
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    heartbeat REAL,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, created);
"""


@dataclass(frozen=True)
class Job:
    id: str
    tenant: str
    kind: str
    request: dict[str, Any]
    status: str
    result: Any
    error: str | None
    attempts: int
    created: float
    started: float | None
    finished: float | None

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "object": "job", "status": self.status, "kind": self.kind,
                               "attempts": self.attempts, "created_at": self.created, "started_at": self.started,
                               "finished_at": self.finished}
        if self.status == "done":
            out["result"] = self.result
            out["output"] = _output(self.result)
        if self.error:
            out["error"] = self.error
        return out


def _output(result: Any) -> str | None:
    """The text of a job's first choice (llama.go's "output")."""
    try:
        choice = result["choices"][0]
        return str(choice["message"]["content"] or "") if "message" in choice else str(choice["text"])
    except (KeyError, IndexError, TypeError):
        return None


def _row(r: sqlite3.Row) -> Job:
    return Job(r["id"], r["tenant"], r["kind"], json.loads(r["request"]), r["status"],
               json.loads(r["result"]) if r["result"] else None, r["error"], r["attempts"], r["created"],
               r["started"], r["finished"])


class DuplicateJobError(Exception):
    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobStore:
    """The jobs table. Every method is one short transaction; thread-safe."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an accepted job survives a power cut, not only a kill
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, job_id: str, tenant: str, kind: str, request: Mapping[str, Any]) -> None:
        with self._lock:
            try:
                self._db.execute("INSERT INTO jobs (id, tenant, kind, request, status, created) "
                                 "VALUES (?, ?, ?, ?, 'queued', ?)",
                                 (job_id, tenant, kind, json.dumps(request), time.time()))
            except sqlite3.IntegrityError:
                raise DuplicateJobError(job_id) from None

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if r is None else _row(r)

    def claim(self) -> Job | None:
        """The oldest queued job, now running here."""
        now = time.time()
        with self._lock:
            r = self._db.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, owner = ?, heartbeat = ?, started = ? "
                "WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created, rowid LIMIT 1) "
                "RETURNING *", (self.owner, now, now)).fetchone()
        return None if r is None else _row(r)

    def release(self, job_id: str) -> None:
        """Back to the queue without counting the attempt (the server was too busy to run it)."""
        with self._lock:
            self._db.execute("UPDATE jobs SET status = 'queued', attempts = attempts - 1, owner = NULL "
                             "WHERE id = ? AND owner = ? AND status = 'running'", (job_id, self.owner))

    def finish(self, job_id: str, *, result: Any = None, error: str | None = None) -> bool:
        """Record the end of a job this server runs; False when it is not (or no longer) ours."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, finished = ? "
                "WHERE id = ? AND owner = ? AND status = 'running'",
                ("failed" if error is not None else "done", None if result is None else json.dumps(result), error,
                 time.time(), job_id, self.owner))
        return cur.rowcount == 1

    def heartbeat(self) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET heartbeat = ? WHERE owner = ? AND status = 'running'",
                             (time.time(), self.owner))

    def recover(self) -> int:
        """Re-queue (or fail, past MAX_ATTEMPTS) running jobs whose server is gone. Returns how many."""
        host = socket.gethostname()
        now = time.time()
        with self._lock:
            rows = self._db.execute("SELECT id, owner, heartbeat, attempts FROM jobs WHERE status = 'running' "
                                    "AND owner != ?", (self.owner,)).fetchall()
            orphans = []
            for r in rows:
                owner_host, _, rest = (r["owner"] or "::").partition(":")
                pid = rest.partition(":")[0]
                silent = now - (r["heartbeat"] or 0) > STALE_S  # also a pid reused on this host (containers)
                gone = silent or (owner_host == host and (not pid.isdigit() or not _pid_alive(int(pid))))
                if gone:
                    orphans.append(r)
            for r in orphans:
                if r["attempts"] >= MAX_ATTEMPTS:
                    self._db.execute("UPDATE jobs SET status = 'failed', finished = ?, error = ? WHERE id = ? "
                                     "AND status = 'running' AND owner = ?",
                                     (now, f"the server running it stopped {r['attempts']} times", r["id"], r["owner"]))
                else:
                    self._db.execute("UPDATE jobs SET status = 'queued', owner = NULL WHERE id = ? "
                                     "AND status = 'running' AND owner = ?", (r["id"], r["owner"]))
        if orphans:
            log.warning("jobs: %d job(s) of a stopped server re-queued or failed", len(orphans))
        return len(orphans)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {r["status"]: r["n"] for r in rows}


Run = Callable[[Job], Awaitable[dict[str, Any]]]


class JobRunner:
    """Runs queued jobs, `workers` at a time, with `run` (the server's non-streaming path)."""

    def __init__(self, store: JobStore, run: Run, workers: int) -> None:
        self.store = store
        self._run = run
        self._workers = workers
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.store.recover()
        self._main = asyncio.get_running_loop().create_task(self._loop())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    async def _loop(self) -> None:
        last_beat = 0.0
        while True:
            try:
                if time.monotonic() - last_beat > HEARTBEAT_S:
                    await asyncio.to_thread(self.store.heartbeat)
                    await asyncio.to_thread(self.store.recover)
                    last_beat = time.monotonic()
                job = await asyncio.to_thread(self.store.claim) if len(self._tasks) < self._workers else None
            except sqlite3.Error:  # a lock held too long by another replica, a full disk: try again
                log.exception("jobs: the store failed; trying again in 1 s")
                await asyncio.sleep(1.0)
                continue
            if job is None:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            task = asyncio.get_running_loop().create_task(self._one(job))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _one(self, job: Job) -> None:
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            while True:
                try:
                    result = await self._run(job)
                    break
                except ApiError as e:
                    if e.status != 429:
                        error = f"{e.status}: {e.message}"
                        break
                    # busy or over quota now: it waits, holding its place (POST refused the jobs
                    # that could never fit the quota)
                    await asyncio.sleep(min(5.0, float(e.headers.get("Retry-After", "1"))))
        except asyncio.CancelledError:  # the server is stopping: back to the queue, for the next start
            self.store.release(job.id)
            raise
        except Exception as e:
            log.exception("job %s failed", job.id)
            error = f"500: {e}"
        for attempt in range(5):  # the end is written, even past a busy moment of the store
            try:
                await asyncio.to_thread(self.store.finish, job.id, result=result, error=error)
                return
            except sqlite3.Error:
                log.exception("jobs: recording the end of %s failed (try %d)", job.id, attempt + 1)
                await asyncio.sleep(1.0)
