"""Two Contexts of one wasm Model, two threads: how long a 16-token generate in one waits while the
other ingests a 2,000-token prompt (chunks of n_batch), against one chunk's time and its own.

    python benchmarks/turns.py [MODEL.gguf]     (default: SmolLM2-135M-Instruct)
"""

from __future__ import annotations

import sys
import threading
import time

from wasillama import Model
from wasillama.default_model import default_model_path


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else str(default_model_path())
    n_batch = 512
    with Model.load(path) as model:
        prompt = (model.tokenize("The quick brown fox jumps over the lazy dog. " * 300, add_special=False))[:2000]
        with model.new_context(n_ctx=2048 + 64, n_batch=n_batch) as big, model.new_context(n_ctx=256) as small:
            t = time.perf_counter()
            big.eval(prompt[:n_batch])
            chunk = time.perf_counter() - t
            big.clear()
            small.generate("warm up", max_tokens=2, temperature=0)
            t = time.perf_counter()
            small.generate("Hello there, how are you?", max_tokens=16, temperature=0)
            solo = time.perf_counter() - t
            done: dict[str, float] = {}

            def ingest() -> None:
                t0 = time.perf_counter()
                big.eval(prompt)
                done["long"] = time.perf_counter() - t0

            worker = threading.Thread(target=ingest)
            worker.start()
            time.sleep(0.2 * chunk)
            t = time.perf_counter()
            small.generate("Hello there, how are you?", max_tokens=16, temperature=0)
            concurrent = time.perf_counter() - t
            worker.join()
    print(f"one chunk ({n_batch} tokens): {chunk:.3f} s; 16-token generate alone: {solo:.3f} s")
    print(f"16-token generate while 2,000 tokens are ingested ({done['long']:.2f} s): {concurrent:.3f} s "
          f"= {concurrent / (chunk + solo):.2f} x (one chunk + its own work)")


if __name__ == "__main__":
    main()
