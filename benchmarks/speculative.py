"""Speculative decoding on SmolLM2-135M: the target against itself with a draft made of its own
first layers (tests/synthetic.truncate_layers), greedy, the same prompts, in one run.

    python benchmarks/speculative.py [--backend wasm|native] [--layers 6,10,15] [--draft-tokens 3,5] [-n 128]

Prints per draft: acceptance rate, target decodes per generated token, and generation tokens/s
against plain greedy decoding of the target (the output is checked to be identical)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import synthetic
import wasillama
from wasillama.default_model import default_model_path

PROMPTS = ["Write a short story about a robot who learns to paint.",
           "Explain how a bicycle works to a ten-year-old.",
           "List five facts about the Moon."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="wasm")
    # a draft per item: "10" = the first 10 blocks; "0-9+25-29" = those blocks
    ap.add_argument("--layers", default="10,0-9+25-29")
    ap.add_argument("--draft-tokens", default="3,5")
    ap.add_argument("-n", type=int, default=128)
    args = ap.parse_args()
    target_path = default_model_path(quiet=True)
    trust = args.backend != "wasm"
    with wasillama.Model.load(target_path, backend=args.backend, trust_model=trust) as target, \
            target.new_context(n_ctx=2048) as tctx, tempfile.TemporaryDirectory() as tmp:
        prompts = [target.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]

        def run(**kw: object) -> tuple[float, int, list[wasillama.GenerationResult]]:
            results, seconds = [], 0.0
            for p in prompts:
                tctx.clear()
                t0 = time.perf_counter()
                r = tctx.generate(p, max_tokens=args.n, temperature=0, parse_special=True, **kw)  # type: ignore[arg-type]
                seconds += time.perf_counter() - t0 - r.timings.prompt_seconds
                results.append(r)
            return seconds, sum(len(r.tokens) for r in results), results

        base_s, base_n, base = run()
        print(f"target {target.n_layer} layers, {args.backend}: plain greedy {base_n / base_s:.1f} t/s "
              f"({base_n} tokens)")
        print("draft layers | draft tokens | acceptance | target decodes/token | t/s | vs plain")
        for spec in args.layers.split(","):
            layers = int(spec) if spec.isdigit() else [i for part in spec.split("+")
                                                       for i in range(int(part.split("-")[0]),
                                                                      int(part.split("-")[-1]) + 1)]
            path = synthetic.truncate_layers(target_path, Path(tmp) / f"draft-{spec}.gguf", layers)
            with wasillama.Model.load(path, backend=args.backend, trust_model=trust) as dm, \
                    dm.new_context(n_ctx=2048) as dctx:
                for k in (int(x) for x in args.draft_tokens.split(",")):
                    dctx.clear()
                    s, n, res = run(draft=dctx, draft_tokens=k)
                    assert [r.tokens for r in res] == [r.tokens for r in base], "speculative output differs"
                    proposed = sum(r.draft.proposed for r in res if r.draft)
                    accepted = sum(r.draft.accepted for r in res if r.draft)
                    rounds = sum(r.draft.rounds for r in res if r.draft)
                    print(f"{spec:>12} | {k:12d} | {accepted / max(proposed, 1):10.2f} | {rounds / n:20.2f} | "
                          f"{n / s:5.1f} | {(n / s) / (base_n / base_s):.2f}x")


if __name__ == "__main__":
    main()
