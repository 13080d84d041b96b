"""Ray Serve scale-out: two replicas of the server on a single-node Ray cluster started here
answer the openai client; killing one replica while jobs run loses no accepted job."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from server_helpers import free_port

ray = pytest.importorskip("ray", reason="the ray extra (pip install 'wasillama[ray]') is not installed")
serve = pytest.importorskip("ray.serve")

N_JOBS = 16


@pytest.fixture(scope="module")
def cluster(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The proxy's URL, and the jobs file every replica shares."""
    from wasillama.server.ray_serve import deployment

    work = tmp_path_factory.mktemp("ray")
    config = {"models": [{"name": "smollm2", "path": str(smollm2_path), "parallel": 4, "n_ctx": 256}],
              "jobs_db": str(work / "jobs.sqlite3"), "job_workers": 2}
    (work / "server.json").write_text(json.dumps(config))
    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(str(work / "server.json"), replicas=2, num_cpus=1).bind(), name="wasillama",
                  route_prefix="/")
        yield f"http://127.0.0.1:{port}", work / "jobs.sqlite3"
    finally:
        serve.shutdown()
        ray.shutdown()


def _replicas() -> list[str]:
    """The names of the deployment's replica actors (Serve's naming: SERVE_REPLICA::app#deployment#id)."""
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::wasillama#wasillama#"))


def test_two_replicas_answer_the_openai_client(cluster: tuple[str, Path]) -> None:
    client = openai.OpenAI(base_url=cluster[0] + "/v1", api_key="none", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == ["smollm2"]
    texts = {client.chat.completions.create(model="smollm2", temperature=0, max_tokens=8, messages=[
        {"role": "user", "content": "What is the capital of France?"}]).choices[0].message.content for _ in range(6)}
    assert len(texts) == 1 and texts != {None}  # whichever replica answered, the same greedy text
    assert len(_replicas()) == 2


def _running_on(db: Path, pid: int) -> list[str]:
    """The jobs the replica process `pid` is running now (the owner column names host:pid:id)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, owner FROM jobs WHERE status = 'running'").fetchall()
    return [job_id for job_id, owner in rows if owner and owner.split(":")[1] == str(pid)]


def test_killing_a_replica_loses_no_accepted_job(cluster: tuple[str, Path]) -> None:
    url, db = cluster
    ids = [str(uuid.uuid4()) for _ in range(N_JOBS)]
    for i, job_id in enumerate(ids):
        r = httpx.post(url + "/jobs", timeout=60, json={
            "id": job_id, "model": "smollm2", "prompt": f"Fact number {i}:", "max_tokens": 24, "temperature": 0})
        assert r.status_code == 201
    victim = ray.get_actor(_replicas()[0], namespace="serve")
    pid = ray.get(victim.__ray_call__.remote(lambda self: os.getpid()))
    end = time.monotonic() + 120
    while not (lost := _running_on(db, pid)):  # kill it while it runs jobs
        assert time.monotonic() < end, "the replica ran no job"
        time.sleep(0.05)
    ray.kill(victim, no_restart=False)
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
    # the jobs the dead replica held ran again elsewhere, as second attempts
    assert all(jobs[i]["attempts"] == 2 for i in lost), [jobs[i] for i in lost]
