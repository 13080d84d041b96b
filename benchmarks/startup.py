"""One model in a fresh process, for benchmarks/side_by_side.py: start-up times and memory, as JSON.

    python benchmarks/startup.py MODEL [--backend wasm|native] [--n-ctx 656] [--prompt-tokens 512]
    python benchmarks/startup.py MODEL --embeddings [--n-ctx 1024 --n-seq 8]

Times: `import wasillama`; Model.load (on the wasm backend this compiles llama.wasm when the
compiled-module cache, $WASILLAMA_CACHE/compiled, is empty: a cold start; else it deserializes it);
a context and one greedy token of a short prompt (load + first token). Memory, from
/proc/self/status: VmRSS after the import and idle with the model and its context loaded, and the
peak (VmHWM) after a decode of --prompt-tokens tokens (what a pp512 run needs).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

FIRST_PROMPT = "The capital of France is"


def memory() -> dict[str, int]:
    """{"rss": bytes, "hwm": bytes} of this process (hwm only, from getrusage, off Linux)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "hwm": int(fields["VmHWM"].split()[0]) * 1024}
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"hwm": peak if sys.platform == "darwin" else peak * 1024}


def probe(model_path: str, backend: str, *, n_ctx: int, prompt_tokens: int, embeddings: bool,
          n_seq: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    import numpy as np

    import wasillama
    from wasillama.model import kv_cache_bytes

    out: dict[str, Any] = {"backend": backend, "t_import_s": time.perf_counter() - t0, "mem_import": memory()}
    t1 = time.perf_counter()
    model = wasillama.Model.load(model_path, backend=backend, trust_model=backend == "native")  # type: ignore[arg-type]
    out["t_load_s"] = time.perf_counter() - t1
    if backend == "wasm":
        from wasillama.wasm.engine import compiled_module

        compiled = compiled_module()
        out.update(module_from_cache=compiled.from_cache, module_seconds=compiled.seconds,
                   module_sha256=compiled.module_sha256)
    with model, model.new_context(n_ctx=n_ctx, n_batch=min(n_ctx, 1024), n_ubatch=min(n_ctx, 1024),
                                  n_seq_max=n_seq, embeddings=embeddings, n_threads=1, n_threads_batch=1) as ctx:
        if embeddings:
            ctx.embed(FIRST_PROMPT)
        else:
            ctx.generate(FIRST_PROMPT, max_tokens=1, temperature=0)
        out["t_first_token_s"] = time.perf_counter() - t1
        out["mem_idle"] = memory()
        if prompt_tokens and not embeddings:
            ctx.clear()
            ctx.eval(np.random.default_rng(0).integers(0, model.n_vocab, prompt_tokens).tolist())
        out["mem_peak"] = memory()
        out.update(size_bytes=model.size_bytes, n_ctx=n_ctx, kv_bytes=kv_cache_bytes(model.info, n_ctx))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--backend", choices=["wasm", "native"], default="wasm")
    ap.add_argument("--n-ctx", type=int, default=512 + 128 + 16)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--embeddings", action="store_true")
    ap.add_argument("--n-seq", type=int, default=1)
    args = ap.parse_args(argv)
    print(json.dumps(probe(args.model, args.backend, n_ctx=args.n_ctx, prompt_tokens=args.prompt_tokens,
                           embeddings=args.embeddings, n_seq=args.n_seq)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
