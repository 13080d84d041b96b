"""Pools of a live server: models load on first use and the least recently used idle one is
unloaded under the memory cap; a full queue answers 429 with Retry-After; an isolated tenant gets
pods of its own, whose memory cap fails its requests alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from server_helpers import MINILM, LiveServer

KEY, ISO = "sk-pools-0123456789", "sk-iso-0123456789"


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model_mib = smollm2_path.stat().st_size / 2**20
    config = {
        "models": [{"name": "a", "path": str(smollm2_path), "parallel": 1, "n_ctx": 512},
                   {"name": "b", "path": str(smollm2_path), "parallel": 1, "n_ctx": 512},
                   {"name": "embed", "path": str(MINILM), "parallel": 2, "n_ctx": 256}],
        "tenants": [{"name": "main", "keys": [KEY]},
                    {"name": "iso", "keys": [ISO], "isolated": True, "max_memory": "64MiB"}],
        # one SmolLM2 pool and the embedder fit, two SmolLM2 pools do not
        "max_loaded_memory": f"{int(model_mib * 1.5)}MiB",
        "queue_size": 1,
    }
    live = LiveServer(config, tmp_path_factory.mktemp("pools"), preload=False).start()
    yield live
    live.stop()


def _client(server: LiveServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_models_load_lazily_and_the_least_recently_used_goes(server: LiveServer) -> None:
    assert server.health()["loaded"] == {}  # nothing before the first request
    client = _client(server)
    client.completions.create(model="a", prompt="Hi", max_tokens=2)
    client.embeddings.create(model="embed", input="hi")
    assert set(server.health()["loaded"]) == {"a", "embed"}
    client.embeddings.create(model="embed", input="hi again")  # "a" is now the least recently used
    client.completions.create(model="b", prompt="Hi", max_tokens=2)
    assert set(server.health()["loaded"]) == {"b", "embed"}
    client.embeddings.create(model="embed", input="hi once more")  # now "b" is
    client.completions.create(model="a", prompt="Hi", max_tokens=2)
    assert set(server.health()["loaded"]) == {"a", "embed"}


async def _flood(url: str, n: int) -> list[httpx.Response]:
    body = {"model": "a", "prompt": "Once upon a time", "max_tokens": 60, "ignore_eos": True, "temperature": 0}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(client.post("/v1/completions", json=body,
                                                  headers={"Authorization": f"Bearer {KEY}"}) for _ in range(n)))


def test_a_full_queue_answers_429_with_retry_after(server: LiveServer) -> None:
    _client(server).completions.create(model="a", prompt="Hi", max_tokens=1)  # loaded before the flood
    # one sequence and a queue of one: one runs, at most one waits, the rest find the queue full
    # (how many get in depends on when the pod takes the first from the queue)
    answers = asyncio.run(_flood(server.url, 6))
    codes = sorted(r.status_code for r in answers)
    assert 1 <= codes.count(200) <= 2 and codes.count(429) >= 4 and set(codes) <= {200, 429}, codes
    busy = next(r for r in answers if r.status_code == 429)
    assert busy.json()["error"]["code"] == "server_busy"
    assert int(busy.headers["retry-after"]) >= 1
    assert all(len(r.json()["choices"][0]["text"]) > 0 for r in answers if r.status_code == 200)


def test_an_isolated_tenant_gets_its_own_pods_and_memory_cap(server: LiveServer) -> None:
    with pytest.raises(openai.APIStatusError) as oom:  # SmolLM2 does not fit its 64 MiB pods
        _client(server, ISO).completions.create(model="a", prompt="Hi", max_tokens=2)
    assert oom.value.status_code == 507 and "memory" in oom.value.message
    r = _client(server).completions.create(model="a", prompt="Hi", max_tokens=2)  # the others never notice
    assert r.choices[0].text
    embedded = _client(server, ISO).embeddings.create(model="embed", input="hi")  # 25 MB fits: its own pool
    assert len(embedded.data[0].embedding) == 384
    assert "embed@iso" in server.health()["loaded"]
