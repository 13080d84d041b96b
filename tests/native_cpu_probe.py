"""Child process for the native-CPU tests: loads the native plugin (honouring
WASILLAMA_CPU_VARIANT, read once per process), runs one parity case greedily, prints one JSON line.

    python tests/native_cpu_probe.py CASE_ID MODEL_PATH

Prints {"variant": ..., "features": {...}, "tokens": [...]} on success, or {"error": TYPE,
"message": ...} when the plugin refuses to run (a clear error is the point: never a signal).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from parity_cases import CASES
from wasillama import Model, WasillamaError


def greedy(case: dict[str, Any], model_path: str, backend: str) -> list[int]:
    """The case's greedy tokens (chat cases go through the model's template)."""
    with (Model.load(model_path, backend=backend, trust_model=True) as model,  # type: ignore[arg-type]
          model.new_context(n_ctx=512) as ctx):
        prompt = case["prompt"]
        return ctx.generate(prompt, max_tokens=case["n_predict"], temperature=0,
                            parse_special=bool(case.get("chat"))).tokens


def main() -> None:
    case = next(c for c in CASES if c["id"] == sys.argv[1])
    try:
        tokens = greedy(case, sys.argv[2], "native")
        from wasillama_native import cpu_info

        cpu = cpu_info()
        print(json.dumps({"variant": cpu.variant, "features": cpu.features, "tokens": tokens}))
    except WasillamaError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))


if __name__ == "__main__":
    main()
