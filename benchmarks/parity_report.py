"""Parity report: how far the wasm backend's logits sit from native llama.cpp's, next to how far two
native builds sit from each other (the noise floor).

    python benchmarks/parity_report.py [--types Q4_0 Q8_0 ...] [--layers 1 4] [--n-embd 1024]

For each weight type, synthetic Llama-shaped models (random weights, a real 32k SentencePiece
vocabulary; written from a fixed seed in F32, then quantized by the pinned llama.cpp's
llama-quantize) and SmolLM2-135M Q4_1 are evaluated on five prompts, one thread, by the wasm
backend (with each of its numerics: "fast", the default, and "x86", which rounds as x86's kernels
do) and by the native plugin forced to two CPU variants (the default one this CPU picks, and the
portable AVX2 one, "haswell"), each variant in its own process. The figure is the relative RMS of
the final-token logits, ||a - b|| / ||b||, averaged over the prompts. A row is flagged when wasm's
distance from native (the farther of the two variants) exceeds 1.5x the native floor (or 1e-3,
where the floor is lower).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from wasillama.options import Numerics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,",
           "The quick brown fox jumps over the lazy dog.", "1, 2, 3, 4, 5,")
TYPES = ("Q4_0", "Q4_1", "Q5_K", "Q6_K", "Q8_0", "Q4_K_M", "F16", "BF16")
AVX2 = "haswell"


def logits(model_path: Path, backend: Literal["wasm", "native"], numerics: Numerics = "fast") -> np.ndarray:
    """(prompts, n_vocab) final-token logits, one thread."""
    import wasillama

    rows = []
    with wasillama.Model.load(model_path, backend=backend, trust_model=True) as model, \
            model.new_context(n_ctx=256, n_threads=1, n_threads_batch=1, numerics=numerics) as ctx:
            for prompt in PROMPTS:
                ctx.eval(model.tokenize(prompt))
                rows.append(ctx.logits().astype(np.float64))
                ctx.clear()
    return np.stack(rows)


def native_logits(model_path: Path, variant: str | None, out: Path) -> tuple[np.ndarray, str]:
    """The native plugin's logits with a CPU variant forced (None: its own choice), in a child."""
    env = dict(os.environ)
    env.pop("WASILLAMA_CPU_VARIANT", None)
    if variant is not None:
        env["WASILLAMA_CPU_VARIANT"] = variant
    proc = subprocess.run([sys.executable, __file__, "--child", str(model_path), str(out)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the native child ({variant or 'default'}) failed: {proc.stderr[-2000:]}")
    return np.load(out), json.loads(proc.stdout.strip().splitlines()[-1])["variant"]


def rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over prompts of ||a - b|| / ||b||."""
    return float(np.mean(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))


def models(types: list[str], layers: list[int], n_embd: int, folder: Path) -> list[tuple[str, int, Path]]:
    """(type, layers, path) of the synthetic models, made once into `folder`."""
    from synthetic_models import quantized_family

    out = []
    for n_layer in layers:
        family = quantized_family(folder, f"llama-{n_embd}x{n_layer}", types, seed=11, n_layer=n_layer,
                                  n_embd=n_embd, n_head=n_embd // 64, n_head_kv=max(1, n_embd // 256),
                                  n_ff=int(n_embd * 2.75) // 256 * 256)
        out += [(t, n_layer, path) for t, path in family.items()]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="+", default=list(TYPES))
    ap.add_argument("--layers", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--n-embd", type=int, default=1024)
    ap.add_argument("--no-smollm2", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # in a child: the native plugin, its variant from the environment
        np.save(args.child[1], logits(Path(args.child[0]), "native"))
        from wasillama.backend import load_plugin
        print(json.dumps({"variant": load_plugin("native").create().transport.cpu.variant}))  # type: ignore[attr-defined]
        return 0

    from wasillama.paths import cache_dir

    folder = cache_dir() / "parity"
    folder.mkdir(parents=True, exist_ok=True)
    cases = models(args.types, args.layers, args.n_embd, folder)
    if not args.no_smollm2:
        from wasillama.default_model import default_model_path
        cases.append(("SmolLM2 Q4_1", 30, default_model_path(quiet=True)))
    print(f"| model | layers | {AVX2} vs default (floor) | fast: wasm vs native | fast / floor | | "
          "x86: wasm vs native | x86 / floor | |")
    print("|---|---|---|---|---|---|---|---|---|")
    flagged = dict.fromkeys(get_args(Numerics), 0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, n_layer, path in cases:
            default, variant = native_logits(path, None, Path(tmp) / "default.npy")
            avx2, _ = native_logits(path, AVX2, Path(tmp) / "avx2.npy")
            floor = rel_rms(avx2, default)
            cells = []
            for numerics in get_args(Numerics):
                wasm = logits(path, "wasm", numerics)
                worst = max(rel_rms(wasm, default), rel_rms(wasm, avx2))
                bad = worst > max(1.5 * floor, 1e-3)
                flagged[numerics] += bad
                ratio = f"{worst / floor:.2f}" if floor else ("identical" if worst == 0 else "-")
                cells += [f"{worst:.2e}", ratio, "**over**" if bad else "ok"]
            print(f"| {name} | {n_layer} | {floor:.2e} ({variant}) | {' | '.join(cells)} |", flush=True)
    print(f"over 1.5x the floor (or 1e-3), of {len(cases)}: " + ", ".join(f"{k} {v}" for k, v in flagged.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
