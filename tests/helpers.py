"""Small helpers shared by the test modules (importable as `helpers`: conftest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import wasillama
from wasillama.backend import installed_plugins

BACKENDS = ("wasm", "native")
HERE = Path(__file__).resolve().parent


def native_available() -> bool:
    """Whether the wasillama-native plugin is installed (its entry point is registered)."""
    return "native" in installed_plugins()


def load_model(source: Any, backend_name: str = "wasm", **kwargs: Any) -> wasillama.Model:
    """Model.load on the given backend (trust_model=True: the test files are ours)."""
    return wasillama.Model.load(source, backend=backend_name, trust_model=True, **kwargs)  # type: ignore[arg-type]


def greedy_and_logits(source: Any, backend_name: str, prompt: str, *, max_tokens: int,
                      n_ctx: int = 128) -> tuple[str, np.ndarray]:
    """What a model gives for `prompt`: its greedy continuation, and the logits after the
    prompt alone (to hold two ways of loading one model to each other)."""
    with load_model(source, backend_name) as model, model.new_context(n_ctx=n_ctx) as ctx:
        text = ctx.generate(prompt, max_tokens=max_tokens, temperature=0).text
        ctx.clear()
        ctx.eval(model.tokenize(prompt))
        return text, ctx.logits()


def native_case_in_child(model: Path, case: dict[str, Any], *, variant: str | None = None,
                         qemu_cpu: str | None = None, timeout: float = 300) -> dict[str, Any]:
    """Runs one parity case in a child through tests/native_cpu_probe.py (optionally under QEMU
    user mode, optionally forcing a CPU variant); the child dying by a signal fails the test."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    env.pop("WASILLAMA_CPU_VARIANT", None)
    if variant is not None:
        env["WASILLAMA_CPU_VARIANT"] = variant
    cmd = [sys.executable, str(HERE / "native_cpu_probe.py"), case["id"], str(model)]
    if qemu_cpu is not None:
        cmd = [qemu_binary(), "-cpu", qemu_cpu, *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode < 0 or proc.returncode >= 128:  # a signal: qemu reports the guest's as 128 + n
        sig = -proc.returncode if proc.returncode < 0 else proc.returncode - 128
        pytest.fail(f"the native plugin died with {signal.Signals(sig).name}: {proc.stderr[-2000:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def qemu_binary() -> str:
    path = shutil.which("qemu-x86_64")
    if path is None:
        if os.environ.get("WASILLAMA_REQUIRE_QEMU") == "1":
            pytest.fail("qemu-x86_64 is required here (WASILLAMA_REQUIRE_QEMU=1): apt-get install qemu-user")
        pytest.skip("qemu-x86_64 is not installed (apt-get install qemu-user): cannot emulate a narrower CPU")
    return path
