"""Aggregate generation speed of `Context.generate_batch` (N prompts at once) against N sequential
`generate` calls, on one backend, greedy, same prompts (so the same tokens).

    python benchmarks/batch.py [--backend wasm|native] [-m MODEL] [-n 128] [--prompts 8]

benchmarks/batch_vs_native.sh runs it next to llama-batched-bench from the pinned source.
"""

from __future__ import annotations

import argparse
import time

from wasillama import Model
from wasillama.default_model import default_model_path

PROMPTS = [
    "Write a short story about a lighthouse keeper.", "Explain how a rainbow forms.",
    "List some facts about the planet Mars.", "Describe a walk through a forest in autumn.",
    "What makes a good cup of coffee?", "Tell me about the history of the bicycle.",
    "How do bees make honey?", "Describe the city of Paris.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="wasm")
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("-t", "--threads", type=int, default=1)
    args = ap.parse_args()
    path = args.model or str(default_model_path())
    prompts = (PROMPTS * 4)[: args.prompts]
    with Model.load(path, backend=args.backend, trust_model=True) as model:
        chats = [model.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
        kw = {"max_tokens": args.n_gen, "temperature": 0, "parse_special": True}
        with model.new_context(n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads) as ctx:
            ctx.generate(chats[0], max_tokens=4, temperature=0, parse_special=True)  # warm-up
            t = time.perf_counter()
            seq = [ctx.generate(c, **kw) for c in chats]
            t_seq = time.perf_counter() - t
        with model.new_context(n_ctx=1024 * len(chats), n_seq_max=len(chats), n_threads=args.threads,
                               n_threads_batch=args.threads) as ctx:
            ctx.generate(chats[0], max_tokens=4, temperature=0, parse_special=True)
            t = time.perf_counter()
            batch = ctx.generate_batch(chats, **kw)
            t_batch = time.perf_counter() - t
    n_seq = sum(len(r.tokens) for r in seq)
    n_batch = sum(len(r.tokens) for r in batch)
    same = [r.tokens for r in seq] == [r.tokens for r in batch]
    print(f"backend {args.backend}, {len(chats)} prompts x up to {args.n_gen} tokens, {args.threads} thread(s)")
    print(f"sequential: {n_seq} tokens in {t_seq:.2f} s = {n_seq / t_seq:.1f} t/s (prompts included)")
    print(f"batch:      {n_batch} tokens in {t_batch:.2f} s = {n_batch / t_batch:.1f} t/s (prompts included)")
    print(f"batch / sequential: {t_seq / t_batch * n_batch / n_seq:.2f}x; same tokens: {same}")


if __name__ == "__main__":
    main()
