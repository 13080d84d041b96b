"""Aggregate generation speed of `Context.generate_batch` (N prompts at once) against N sequential
`generate` calls, on one backend, in llama-batched-bench's shape so that the two can be compared:
N prompts of `--n-prompt` random tokens (a fixed seed), each generating `-n` tokens greedily with
end-of-generation ignored, 1 thread.

    python benchmarks/batch.py [--backend wasm|native] [-m MODEL] [-n 128] [--n-prompt 32] [--prompts 8]
                               [--llama-batched-bench BIN]

It reports, like llama-batched-bench: S_PP (prompt tokens/s of all sequences), S_TG (generated
tokens/s of all sequences: the time of a run generating n + 1 tokens less that of a run generating
one, each in a new context, so prompts and the first sample are out of it) and S (all tokens over
all time), and the sequential calls' S_TG the same way. generate_batch samples every token (the
native tool decodes random ones), so its S_TG includes sampling. With --llama-batched-bench it
also runs that binary on the same model and shape (1 and N sequences) and prints the ratios;
benchmarks/batch_vs_native.sh builds it from the pinned source and adds pp512 for reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Callable

import numpy as np

from wasillama import Model, Sampling
from wasillama.default_model import default_model_path


def timed(fn: Callable[[], list[list[int]]], reps: int) -> tuple[float, list[list[int]]]:
    """The median seconds of `reps` calls, and what the last call returned."""
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out), result


def native_tg(binary: str, model: str, pp: int, n: int, pl: int, threads: int) -> dict[int, float]:
    """llama-batched-bench's S_TG (t/s) at 1 and `pl` parallel sequences."""
    out = subprocess.run([binary, "-m", model, "-c", str((pp + n + 16) * pl), "-b", "512", "-ub", "512",
                          "-npp", str(pp), "-ntg", str(n), "-npl", f"1,{pl}", "-t", str(threads),
                          "--output-format", "jsonl"], capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {int(r["pl"]): float(r["speed_tg"]) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="wasm")
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("--n-prompt", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--llama-batched-bench", default=None, help="native binary to run on the same shape")
    args = ap.parse_args()
    path = args.model or str(default_model_path())
    n, pl, pp = args.n_gen, args.prompts, args.n_prompt
    with Model.load(path, backend=args.backend, trust_model=True) as model:
        rng = np.random.default_rng(0)
        prompts = [rng.integers(0, model.n_vocab, pp).tolist() for _ in range(pl)]
        greedy = Sampling(temperature=0.0, ignore_eos=True)
        t = args.threads

        def batch(max_tokens: int) -> list[list[int]]:
            with model.new_context(n_ctx=(pp + n + 16) * pl, n_seq_max=pl, n_threads=t, n_threads_batch=t) as ctx:
                return [r.tokens for r in ctx.generate_batch(prompts, max_tokens=max_tokens, sampling=greedy)]

        def sequential(max_tokens: int) -> list[list[int]]:
            with model.new_context(n_ctx=pp + n + 16, n_threads=t, n_threads_batch=t) as ctx:
                out = []
                for p in prompts:
                    out.append(ctx.generate(p, max_tokens=max_tokens, sampling=greedy).tokens)
                    ctx.clear()
                return out

        batch(2)  # warm-up
        b1, _ = timed(lambda: batch(1), args.repetitions)
        bn, batch_tokens = timed(lambda: batch(n + 1), args.repetitions)
        s1, _ = timed(lambda: sequential(1), args.repetitions)
        sn, sequential_tokens = timed(lambda: sequential(n + 1), args.repetitions)
        same = batch_tokens == sequential_tokens
    tg_batch, tg_seq = pl * n / (bn - b1), pl * n / (sn - s1)
    print(f"backend {args.backend}, {pl} prompts x {pp} tokens, {n} generated each, {args.threads} thread(s), "
          f"median of {args.repetitions}")
    print(f"batch:      S_PP {pl * pp / b1:8.1f} t/s  S_TG {tg_batch:8.1f} t/s  S {pl * (pp + n + 1) / bn:8.1f} t/s")
    print(f"sequential: S_PP {pl * pp / s1:8.1f} t/s  S_TG {tg_seq:8.1f} t/s  S {pl * (pp + n + 1) / sn:8.1f} t/s")
    print(f"batch / sequential S_TG: {tg_batch / tg_seq:.2f}x; same tokens: {same}")
    if args.llama_batched_bench:
        native = native_tg(args.llama_batched_bench, path, pp, n, pl, args.threads)
        print(f"llama-batched-bench S_TG: {native[1]:.1f} t/s at 1 sequence, {native[pl]:.1f} t/s at {pl} "
              f"({native[pl] / native[1]:.2f}x)")
        print(f"{args.backend} / native S_TG: {tg_seq / native[1]:.2f} at 1 sequence, {tg_batch / native[pl]:.2f} "
              f"at {pl}")


if __name__ == "__main__":
    main()
