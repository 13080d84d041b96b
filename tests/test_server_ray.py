"""Ray Serve scale-out: `wasillama serve --ray` runs two replicas on a single-node Ray cluster it
starts; they answer the openai client, and killing one while it runs jobs loses no accepted job.

Ray runs in that server process, never in this one: Ray's core worker installs its own handlers
for fatal signals, which would turn the wasm traps of later tests in this process into crashes."""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from server_helpers import LiveServer

if importlib.util.find_spec("ray") is None:
    pytest.skip("the ray extra (pip install 'wasillama[ray]') is not installed", allow_module_level=True)

N_JOBS = 16


@pytest.fixture(scope="module")
def cluster(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The proxy's URL, and the jobs file every replica shares."""
    work = tmp_path_factory.mktemp("ray")
    db = work / "jobs.sqlite3"
    config = {"models": [{"name": "smollm2", "path": str(smollm2_path), "parallel": 4, "n_ctx": 256}],
              "jobs_db": str(db), "job_workers": 2}
    live = LiveServer(config, work, ray_replicas=2).start(timeout=300)
    try:
        yield live.url, db
    finally:
        live.stop()


def _owners(db: Path) -> dict[str, str]:
    """job id -> the pid of the replica that runs (or ran) it, from the owner column (host:pid:id)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, owner FROM jobs WHERE owner IS NOT NULL").fetchall()
    return {job_id: owner.split(":")[1] for job_id, owner in rows}


def _running(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, owner FROM jobs WHERE status = 'running'").fetchall()
    return {job_id: owner.split(":")[1] for job_id, owner in rows}


def test_two_replicas_answer_the_openai_client(cluster: tuple[str, Path]) -> None:
    client = openai.OpenAI(base_url=cluster[0] + "/v1", api_key="none", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == ["smollm2"]
    texts = {client.chat.completions.create(model="smollm2", temperature=0, max_tokens=8, messages=[
        {"role": "user", "content": "What is the capital of France?"}]).choices[0].message.content for _ in range(6)}
    assert len(texts) == 1 and texts != {None}  # whichever replica answered, the same greedy text


def test_killing_a_replica_loses_no_accepted_job(cluster: tuple[str, Path]) -> None:
    url, db = cluster
    ids = [str(uuid.uuid4()) for _ in range(N_JOBS)]
    for i, job_id in enumerate(ids):
        r = httpx.post(url + "/jobs", timeout=60, json={
            "id": job_id, "model": "smollm2", "prompt": f"Fact number {i}:", "max_tokens": 24, "temperature": 0})
        assert r.status_code == 201
    end = time.monotonic() + 120
    while not (running := _running(db)):
        assert time.monotonic() < end, "no job started"
        time.sleep(0.05)
    victim = next(iter(running.values()))
    lost = [job_id for job_id, pid in running.items() if pid == victim]
    os.kill(int(victim), signal.SIGKILL)  # the replica's process, while it runs these jobs
    end = time.monotonic() + 300
    while True:
        statuses = [httpx.get(f"{url}/jobs/status/{i}", timeout=30).json() for i in ids]
        if all(s["status"] in ("done", "failed") for s in statuses):
            break
        assert time.monotonic() < end, statuses
        time.sleep(0.5)
    jobs = {i: httpx.get(f"{url}/jobs/{i}", timeout=30).json() for i in ids}
    not_done = [j for j in jobs.values() if j["status"] != "done"]
    assert not not_done, not_done
    assert all(j["output"] for j in jobs.values())
    # the jobs the dead replica held ran again on another one, as second attempts
    assert all(jobs[i]["attempts"] == 2 for i in lost), [jobs[i] for i in lost]
    owners = _owners(db)
    assert all(owners[i] != victim for i in lost)
    assert len(set(owners.values()) - {victim}) >= 1
