"""Prompt-processing (pp) and generation (tg) throughput, measured the way llama-bench does.

pp: evaluate n_prompt random tokens in batches of n_batch on an empty cache.
tg: evaluate n_gen random tokens one at a time on an empty cache.
Each test runs once to warm up, then `repetitions` times; the mean and standard deviation of
tokens/s are reported. Optionally runs native llama-bench on the same model in the same
process run, so the ratio compares like with like on this machine at this moment.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from dataclasses import dataclass

import numpy as np

from .context import Context
from .model import Model
from .options import Numerics


@dataclass(frozen=True)
class BenchResult:
    test: str  # "pp512", "tg128"
    tokens_per_second: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.tokens_per_second)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.tokens_per_second) if len(self.tokens_per_second) > 1 else 0.0


def _random_tokens(model: Model, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, model.n_vocab, size=n, dtype=np.int32)


def _time_pp(ctx: Context, tokens: np.ndarray) -> float:
    ctx.clear()
    batch = tokens.tolist()
    t = time.perf_counter()
    ctx.eval(batch)  # one decode of the whole prompt (the shim splits it into n_batch chunks)
    return len(tokens) / (time.perf_counter() - t)


def _time_tg(ctx: Context, tokens: np.ndarray) -> float:
    ctx.clear()
    seq = tokens.tolist()
    t = time.perf_counter()
    for i in range(len(seq)):
        ctx.eval(seq[: i + 1])  # the cache holds seq[:i]: one token decoded per step
    return len(tokens) / (time.perf_counter() - t)


def run_bench(model: Model, *, n_prompt: int = 512, n_gen: int = 128, repetitions: int = 3,
              n_batch: int = 512, n_threads: int = 0, numerics: Numerics = "fast") -> list[BenchResult]:
    """pp{n_prompt} and tg{n_gen} on `model` (either may be 0 to skip it)."""
    results = []
    with model.new_context(n_ctx=max(n_prompt, n_gen) + 16, n_batch=n_batch, n_ubatch=n_batch,
                           n_threads=n_threads, n_threads_batch=n_threads, numerics=numerics) as ctx:
        for test, n, timer in (("pp", n_prompt, _time_pp), ("tg", n_gen, _time_tg)):
            if n <= 0:
                continue
            tokens = _random_tokens(model, n, seed=n)
            timer(ctx, tokens[: min(n, 16)])  # warm-up
            results.append(BenchResult(f"{test}{n}", [timer(ctx, tokens) for _ in range(repetitions)]))
    return results


def run_llama_bench(binary: str, model_path: str, *, n_prompt: int, n_gen: int, repetitions: int,
                    threads: int, gpu_layers: int = 0) -> list[BenchResult]:
    """Run native llama-bench with the same shape of test; its per-repetition samples."""
    ngl = 999 if gpu_layers < 0 else gpu_layers  # llama-bench has no "all layers" value
    cmd = [binary, "-m", model_path, "-p", str(n_prompt), "-n", str(n_gen), "-r", str(repetitions),
           "-t", str(threads), "-ngl", str(ngl), "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    results = []
    for row in json.loads(out):
        n_p, n_g = int(row["n_prompt"]), int(row["n_gen"])
        test = f"pp{n_p}" if n_p else f"tg{n_g}"
        results.append(BenchResult(test, [float(x) for x in row["samples_ts"]]))
    return results
