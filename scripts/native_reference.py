#!/usr/bin/env python3
"""Regenerate tests/data/native_reference.json: greedy tokens from native llama.cpp.

The reference is llama.cpp built natively from the same pinned source (the wasillama-native
plugin: `pip install ./native_fallback`), run on the CPU. tests/test_parity.py checks that the
wasm backend produces exactly these tokens, and, where the plugin is installed, that a live
native run still does too.

The native plugin runs the CPU variant REFERENCE_VARIANT (AVX2, 8 float lanes): any x86-64 CPU
from the last ten years can run it again, so the reference does not depend on the machine that
made it (variants with other lane widths sum in another order; see docs/parity.md).

Usage: python scripts/native_reference.py
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from parity_cases import CASES, materialize  # noqa: E402
from wasillama import Model  # noqa: E402

REFERENCE_VARIANT = "haswell"


def main() -> None:
    os.environ["WASILLAMA_CPU_VARIANT"] = REFERENCE_VARIANT  # read when the plugin loads, below
    out: dict[str, Any] = {"generator": "scripts/native_reference.py", "backend": "native (CPU)",
                           "cpu_variant": REFERENCE_VARIANT, "cases": {}}
    for case in CASES:
        path = materialize(case, ROOT / ".cache" / "parity")
        with Model.load(path, backend="native", trust_model=True) as model, model.new_context(n_ctx=512) as ctx:
            prompt = case["prompt"]
            r = ctx.generate(prompt, max_tokens=case["n_predict"], temperature=0, parse_special=bool(case.get("chat")))
            out["cases"][case["id"]] = {
                "model_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "prompt": case["prompt"],
                "chat": bool(case.get("chat")),
                "n_predict": case["n_predict"],
                "tokens": r.tokens,
                "text": r.text,
            }
            print(f"{case['id']}: {len(r.tokens)} tokens: {r.text[:60]!r}", file=sys.stderr)
    dest = ROOT / "tests" / "data" / "native_reference.json"
    dest.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
