"""What the deadline's epoch checks cost: pp and tg of the wasm backend with llama.wasm compiled
with epoch interruption and without, alternating in fresh processes, on SmolLM2-135M and on a
synthetic Q8_0 model (tests/synthetic.write_llama).

    python benchmarks/epoch_cost.py [--rounds 3] [-p 256] [-n 64] [--embd 1024 --layers 8]

Prints tokens/s per configuration (the best of each round's repetitions, then the median over
rounds) and the ratio with checks / without: the number docs/security.md quotes."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHILD = """
import json, sys
import wasillama.wasm.engine as engine
engine.EPOCH_INTERRUPTION = sys.argv[1] == "1"
from wasillama import Model
from wasillama.bench import run_bench
with Model.load(sys.argv[2]) as model:
    results = run_bench(model, n_prompt=int(sys.argv[3]), n_gen=int(sys.argv[4]), repetitions=3, n_threads=1)
print(json.dumps({r.test: max(r.tokens_per_second) for r in results}))
"""


def measure(epoch: bool, model: Path, n_prompt: int, n_gen: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, "1" if epoch else "0", str(model), str(n_prompt), str(n_gen)],
                         capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-p", "--n-prompt", type=int, default=256)
    ap.add_argument("-n", "--n-gen", type=int, default=64)
    ap.add_argument("--embd", type=int, default=1024, help="the synthetic model's n_embd")
    ap.add_argument("--layers", type=int, default=8, help="the synthetic model's n_layer")
    args = ap.parse_args()

    import synthetic
    from wasillama.default_model import default_model_path

    with tempfile.TemporaryDirectory() as tmp:
        vocab = synthetic.pinned_llama_cpp_dir() / "models" / synthetic.DEFAULT_VOCAB
        q8 = synthetic.write_llama(Path(tmp) / "synthetic-q8_0.gguf", vocab=vocab, n_layer=args.layers,
                                   n_embd=args.embd, n_head=args.embd // 64, n_ff=4 * args.embd, qtype="q8_0")
        for name, model in (("SmolLM2-135M Q4_1", default_model_path()),
                            (f"synthetic Q8_0 n_embd={args.embd} n_layer={args.layers}", q8)):
            runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(args.rounds):
                for epoch in (False, True):
                    runs[epoch].append(measure(epoch, model, args.n_prompt, args.n_gen))
            print(name)
            for test in runs[False][0]:
                off = statistics.median(r[test] for r in runs[False])
                on = statistics.median(r[test] for r in runs[True])
                print(f"  {test}: {off:8.2f} t/s without checks, {on:8.2f} t/s with: ratio {on / off:.3f}")


if __name__ == "__main__":
    main()
