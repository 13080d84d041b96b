#!/usr/bin/env python3
"""Load test of OpenAI-compatible servers, side by side, on loopback.

A bounded async client keeps `--streams` streamed chat completions in flight for `--duration`
seconds against each server in turn: `wasillama serve` (pods x 1 thread, continuous batching),
llama-server built from the pinned llama.cpp (scripts/build_native_reference.sh, CPU, the same
thread count, as many slots as streams) and llama-cpp-python's server where it is installed.
Reported per server: aggregate completion tokens/s, p50/p95 time to first token, p95
inter-token latency, requests done and failed; and the ratios of ours to each.

With --hostile, a second tenant on wasillama's pods sends crafted requests all the while
(grammars that crash llama.cpp's parser, huge prompts, generations past its deadline, malformed
JSON); the good tenant's failed requests are counted (the goal: 0).

Usage: benchmarks/server_load.py [-m MODEL.gguf] [--streams 32] [--duration 120] [--threads 2]
       [--max-tokens 64] [--targets wasillama,llama-server,llama-cpp-python] [--hostile]
       [--out docs/benchmarks-server.json]
Writes the JSON and docs/benchmarks-server.md beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
GOOD, EVIL = "sk-load-good", "sk-load-evil"
QUESTIONS = ["Why is the sky blue?", "Write a haiku about the sea.", "What is a prime number?",
             "Give three tips for learning to cook.", "Explain what a compiler does.",
             "What is the capital of Japan, and why is it famous?", "Describe a cat to someone who never saw one.",
             "How do plants make food?"]


@dataclass
class Sample:
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    ok: bool = False
    error: str = ""


@dataclass
class Result:
    target: str
    streams: int
    duration_s: float
    requests_ok: int
    requests_failed: int
    tokens: int
    tokens_per_s: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    itl_p95_s: float | None
    errors: list[str] = field(default_factory=list)
    hostile: dict[str, list[int]] = field(default_factory=dict)


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _one(client: httpx.AsyncClient, body: dict[str, Any], key: str) -> Sample:
    sample = Sample()
    t0 = time.perf_counter()
    last = t0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as r:
            if r.status_code != 200:
                sample.error = f"{r.status_code}: {(await r.aread())[:200]!r}"
                return sample
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    sample.error = str(chunk["error"])[:200]
                    return sample
                if chunk.get("usage"):
                    sample.tokens = int(chunk["usage"]["completion_tokens"])
                for choice in chunk.get("choices", []):
                    if (choice.get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        if sample.ttft is None:
                            sample.ttft = now - t0
                        else:
                            sample.gaps.append(now - last)
                        last = now
        sample.ok = True
    except Exception as e:
        sample.error = f"{type(e).__name__}: {e}"
    return sample


def _hostile_bodies() -> list[tuple[str, Any]]:
    chat = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    return [
        ("crashing grammar", {**chat, "grammar": "root ::= " + "(" * 3000 + '"a"' + ")" * 3000}),
        ("huge prompt", {**chat, "messages": [{"role": "user", "content": "spam " * 30000}]}),
        ("past its deadline", {**chat, "max_tokens": 1024, "ignore_eos": True}),
        ("malformed JSON", b'{"model": "m", "messages": [{"role": '),
        ("bad grammar", {**chat, "grammar": 'root ::= "unclosed'}),
    ]


async def _load(url: str, streams: int, duration: float, max_tokens: int, model: str,
                hostile: bool) -> tuple[list[Sample], float, dict[str, list[int]]]:
    samples: list[Sample] = []
    hostile_statuses: dict[str, list[int]] = {}
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        # warm up: one request through every path
        await _one(client, {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                            "stream": True}, GOOD)
        start = time.perf_counter()
        end = start + duration

        async def worker(i: int) -> None:
            n = 0
            while time.perf_counter() < end:
                q = QUESTIONS[(i + n) % len(QUESTIONS)]
                body = {"model": model, "messages": [{"role": "user", "content": q}], "max_tokens": max_tokens,
                        "temperature": 0.7, "seed": i * 1000 + n, "stream": True,
                        "stream_options": {"include_usage": True}}
                samples.append(await _one(client, body, GOOD))
                n += 1

        async def evil() -> None:
            while time.perf_counter() < end:
                for what, body in _hostile_bodies():
                    headers = {"Authorization": f"Bearer {EVIL}", "Content-Type": "application/json"}
                    payload = body if isinstance(body, bytes) else json.dumps({**body, "model": model}).encode()
                    try:
                        r = await client.post("/v1/chat/completions", content=payload, headers=headers)
                        hostile_statuses.setdefault(what, []).append(r.status_code)
                    except httpx.HTTPError:
                        hostile_statuses.setdefault(what, []).append(0)
                    await asyncio.sleep(0.2)

        tasks = [worker(i) for i in range(streams)] + ([evil()] if hostile else [])
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return samples, elapsed, hostile_statuses


def _summary(target: str, streams: int, samples: list[Sample], elapsed: float,
             hostile: dict[str, list[int]]) -> Result:
    ok = [s for s in samples if s.ok]
    tokens = sum(s.tokens or (len(s.gaps) + (1 if s.ttft is not None else 0)) for s in ok)
    return Result(target, streams, round(elapsed, 1), len(ok), len(samples) - len(ok), tokens,
                  round(tokens / elapsed, 2), _pct([s.ttft for s in ok if s.ttft is not None], 0.5),
                  _pct([s.ttft for s in ok if s.ttft is not None], 0.95),
                  _pct([g for s in ok for g in s.gaps], 0.95),
                  sorted({s.error for s in samples if not s.ok})[:5], hostile)


def _wait(url: str, proc: subprocess.Popen[bytes], path: str = "/health", timeout: float = 300.0) -> None:
    """Until `path` answers 200 (llama-cpp-python's server has no /health: /v1/models)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, headers={"Authorization": f"Bearer {GOOD}"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


def _start(target: str, model: Path, threads: int, streams: int, n_ctx: int, hostile: bool,
           workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / f"{target}.log", "wb")  # noqa: SIM115 (kept open for the process's life)
    if target == "wasillama":
        pods = max(1, threads)
        config = {"models": [{"name": "m", "path": str(model), "pods": pods, "threads": 1,
                              "parallel": -(-streams // pods), "n_ctx": n_ctx}],
                  "tenants": [{"name": "good", "keys": [GOOD], "max_concurrent": streams + 1},
                              {"name": "evil", "keys": [EVIL], "request_timeout": 2.0}],
                  "queue_size": streams * 2}
        (workdir / "server.json").write_text(json.dumps(config))
        cmd = [str(Path(sys.executable).with_name("wasillama")), "serve", "--config", str(workdir / "server.json"),
               "--port", str(port), "--jobs-db", str(workdir / "jobs.sqlite3"), "--preload"]
    elif target == "llama-server":
        env = {**os.environ, "WASILLAMA_REF_CPU": "server"}
        bin_dir = subprocess.run(["bash", str(ROOT / "scripts" / "build_native_reference.sh")], env=env, check=True,
                                 capture_output=True, text=True).stdout.strip()
        cmd = [f"{bin_dir}/llama-server", "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
               "-t", str(threads), "-tb", str(threads), "-np", str(streams), "-c", str(n_ctx * streams),
               "-cb", "--no-webui", "--api-key", GOOD]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--n_threads", str(threads), "--n_ctx", str(n_ctx), "--api_key", GOOD,
               # by default a new request interrupts the running one: queue them instead (one at a time)
               "--interrupt_requests", "False"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=workdir)
    try:
        _wait(url, proc, "/v1/models" if target == "llama-cpp-python" else "/health")
    except BaseException:
        proc.kill()
        raise
    return proc, url


def available(target: str) -> str | None:
    """Why a target cannot run here, or None."""
    if target == "llama-cpp-python":
        try:
            importlib.import_module("llama_cpp.server")
        except ImportError:
            return "llama-cpp-python[server] is not installed"
    if target == "llama-server" and shutil.which("cmake") is None:
        return "cmake is missing (llama-server is built from the pinned source)"
    return None


def summary(results: dict[str, Any]) -> str:
    """The markdown of a run: settings, the table, ratios, the hostile tenant's outcome."""
    rows = results["results"]
    ours = next((r for r in rows if r["target"] == "wasillama"), None)

    def num(x: float | None, scale: float = 1.0, digits: int = 2) -> str:
        return "—" if x is None else f"{x * scale:.{digits}f}"

    lines = ["| server | tokens/s | TTFT p50 ms | TTFT p95 ms | ITL p95 ms | requests ok | failed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['target']} | {num(r['tokens_per_s'])} | {num(r['ttft_p50_s'], 1e3, 0)} | "
                     f"{num(r['ttft_p95_s'], 1e3, 0)} | {num(r['itl_p95_s'], 1e3, 0)} | {r['requests_ok']} | "
                     f"{r['requests_failed']} |")
    ratios = []
    for r in rows:
        if ours is not None and r is not ours and r["tokens_per_s"]:
            ratios.append(f"- wasillama / {r['target']}: tokens/s **{ours['tokens_per_s'] / r['tokens_per_s']:.2f}**, "
                          f"TTFT p50 {num((ours['ttft_p50_s'] or 0) / (r['ttft_p50_s'] or 1))}x, "
                          f"TTFT p95 {num((ours['ttft_p95_s'] or 0) / (r['ttft_p95_s'] or 1))}x, "
                          f"ITL p95 {num((ours['itl_p95_s'] or 0) / (r['itl_p95_s'] or 1))}x")
    st = results["settings"]
    hostile = ""
    if ours is not None and ours.get("hostile"):
        counts = "; ".join(f"{k}: {len(v)}, answered {sorted(set(v))}" for k, v in ours["hostile"].items())
        hostile = (f"\nAll the while, a hostile tenant on the same pods sent ({counts}). "
                   f"The good tenant's failed requests: **{ours['requests_failed']}**.\n")
    skipped = "".join(f"\n- {t}: not run ({why})" for t, why in results.get("skipped", {}).items())
    command = (f"benchmarks/server_load.py --streams {st['streams']} --duration {st['duration']:g} "
               f"--threads {st['threads']} --max-tokens {st['max_tokens']}")
    return f"""`{command}` on {results['machine']}: {st['streams']} concurrent streamed chat completions
on loopback for {st['duration']:g} s per server, {st['threads']} thread(s) of compute each (wasillama:
{st['threads']} pod(s) x 1 thread, continuous batching; llama-server: `-t {st['threads']} -np {st['streams']} -cb`),
model {st['model']}, up to {st['max_tokens']} tokens per reply, temperature 0.7. TTFT: time to the first
content; ITL: the gap between content chunks. Raw numbers: [benchmarks-server.json](benchmarks-server.json).

{chr(10).join(lines)}

{chr(10).join(ratios)}
{hostile}{skipped}
- llama-cpp-python's server runs one request at a time (started with `--interrupt_requests False`:
  by default each new request cuts off the one running), so under this load its TTFT is mostly
  queueing.
- A failed request of a native server is one it closed without an answer (the errors are in the JSON).
"""


def write_doc(results: dict[str, Any], path: Path) -> None:
    path.write_text("# Server under load\n\n" + summary(results))
    # docs/benchmarks.md shows it too (report.py reads the JSON beside it)
    main_json = path.parent / "benchmarks.json"
    if main_json.is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import report

        report.write_doc(json.loads(main_json.read_text()), path.parent)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", type=Path, default=None)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--n-ctx", type=int, default=512, help="tokens per sequence (slot)")
    ap.add_argument("--targets", default="wasillama,llama-server,llama-cpp-python")
    ap.add_argument("--hostile", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-server.json")
    args = ap.parse_args(argv)
    if args.model is None:
        from wasillama.default_model import default_model_path

        args.model = default_model_path()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "settings": {"streams": args.streams, "duration": args.duration, "threads": args.threads,
                     "max_tokens": args.max_tokens, "n_ctx": args.n_ctx, "model": args.model.name},
        "results": [], "skipped": {}}
    for target in args.targets.split(","):
        why = available(target)
        if why:
            results["skipped"][target] = why
            print(f"{target}: skipped ({why})", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory(prefix=f"load-{target}-") as tmp:
            print(f"{target}: starting", file=sys.stderr)
            try:
                proc, url = _start(target, args.model, args.threads, args.streams, args.n_ctx, args.hostile,
                                   Path(tmp))
            except (RuntimeError, subprocess.CalledProcessError) as e:
                results["skipped"][target] = f"did not start: {e}"
                print(f"{target}: did not start: {e}", file=sys.stderr)
                continue
            try:
                samples, elapsed, hostile = asyncio.run(_load(
                    url, args.streams, args.duration, args.max_tokens, "m",
                    args.hostile and target == "wasillama"))
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        r = _summary(target, args.streams, samples, elapsed, hostile)
        print(json.dumps(asdict(r)), file=sys.stderr)
        results["results"].append(asdict(r))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    write_doc(results, args.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
