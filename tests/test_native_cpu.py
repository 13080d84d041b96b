"""The native plugin's CPU code never takes the process down on the CPU it runs on.

A dispatch build (the default on x86-64 Linux) ships ggml's CPU backend as one module per CPU
variant and loads, at run time, the best variant this CPU can run. Each variant must give the
native reference's greedy tokens; a CPU narrower than the build machine (emulated with QEMU user
mode) must get a narrower variant, or a clear error when one is forced: never SIGILL. AMX is off
unless asked for at build time (ggml's AMX matmul dies with SIGILL on VMs that grant AMX).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import native_available, native_case_in_child
from parity_cases import CASES, materialize

pytestmark = pytest.mark.skipif(not native_available(), reason="the wasillama-native plugin is not installed")

HERE = Path(__file__).resolve().parent
REFERENCE = json.loads((HERE / "data" / "native_reference.json").read_text())["cases"]
CASE = next(c for c in CASES if c["id"] == "synthetic-f16")

# ggml's x86 variants (ggml/src/CMakeLists.txt) and the instruction sets each is compiled for.
VARIANT_FEATURES: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("SSE42",),
    "sandybridge": ("SSE42", "AVX"),
    "haswell": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"),
    "skylakex": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"),
    "icelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI"),
    "alderlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"),
    "zen4": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
             "AVX512_BF16"),
    "sapphirerapids": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
                       "AVX512_BF16", "AMX_TILE", "AMX_INT8"),
}
# The /proc/cpuinfo flags behind each, and the weight ggml's score gives it (arch/x86/cpu-feats.cpp).
CPUINFO_FLAGS: dict[str, tuple[str, ...]] = {
    "SSE42": ("sse4_2",), "AVX": ("avx",), "F16C": ("f16c",), "FMA": ("fma",), "AVX2": ("avx2",),
    "BMI2": ("bmi2",), "AVX_VNNI": ("avx_vnni",),
    "AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "AVX512_VBMI": ("avx512vbmi",), "AVX512_VNNI": ("avx512_vnni",), "AVX512_BF16": ("avx512_bf16",),
    "AMX_TILE": ("amx_tile",), "AMX_INT8": ("amx_int8",),
}
SCORE_BITS = {"FMA": 0, "F16C": 1, "SSE42": 2, "BMI2": 3, "AVX": 4, "AVX2": 5, "AVX_VNNI": 6, "AVX512": 7,
              "AVX512_VBMI": 8, "AVX512_BF16": 9, "AVX512_VNNI": 10, "AMX_INT8": 11, "AMX_TILE": -1}


def build_info() -> dict[str, Any]:
    import wasillama_native

    return wasillama_native.build_info()


def shipped_variants() -> list[str]:
    return [v for v in build_info().get("cpu_variants", "").split(",") if v]


def dispatch_build() -> bool:
    return bool(build_info().get("cpu_build") == "dispatch")


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def runs_here(variant: str, flags: set[str]) -> bool:
    return all(f in flags for feat in VARIANT_FEATURES[variant] for f in CPUINFO_FLAGS[feat])


def score(variant: str) -> int:
    return 1 + sum(1 << SCORE_BITS[f] for f in VARIANT_FEATURES[variant] if SCORE_BITS[f] >= 0)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize(CASE, tmp_path_factory.mktemp("native-cpu"))


needs_dispatch = pytest.mark.skipif(not (native_available() and dispatch_build()),
                                    reason="the plugin was built with WASILLAMA_CPU other than dispatch")
needs_x86_linux = pytest.mark.skipif(not (sys.platform == "linux" and os.uname().machine == "x86_64"),
                                     reason="x86-64 Linux only")


def test_amx_is_off_by_default() -> None:
    """Unless the build asked for it (WASILLAMA_AMX=1), no AMX variant ships and none is used."""
    from wasillama_native import cpu_info

    if os.environ.get("WASILLAMA_AMX") == "1":
        pytest.skip("this environment builds with WASILLAMA_AMX=1")
    assert build_info()["amx"] is False
    assert "sapphirerapids" not in shipped_variants()
    assert "AMX_INT8" not in cpu_info().features


@needs_x86_linux
@needs_dispatch
def test_loads_the_best_variant_this_cpu_runs() -> None:
    from wasillama_native import cpu_info, plugin

    flags = cpu_flags()
    expected = max((v for v in shipped_variants() if runs_here(v, flags)), key=score)
    cpu = cpu_info()
    assert cpu.variant == expected
    for feat in VARIANT_FEATURES[expected]:
        if feat not in ("SSE42", "AMX_TILE"):  # ggml reports neither by that name
            assert cpu.features.get(feat) == "1", (feat, cpu.features)
    assert f"CPU variant {expected}" in plugin.create().system_info()


@needs_x86_linux
@needs_dispatch
def test_every_variant_this_cpu_runs_matches_the_reference(model: Path) -> None:
    flags = cpu_flags()
    runnable = [v for v in shipped_variants() if runs_here(v, flags)]
    assert "x64" in runnable
    for variant in runnable:
        result = native_case_in_child(model, CASE, variant=variant)
        assert result.get("variant") == variant, result
        assert result["tokens"] == REFERENCE[CASE["id"]]["tokens"], variant


@needs_dispatch
def test_unknown_variant_is_a_clear_error(model: Path) -> None:
    result = native_case_in_child(model, CASE, variant="pentium-pro")
    assert result["error"] == "BackendUnavailableError"
    assert "no CPU variant 'pentium-pro'" in result["message"]
    assert all(v in result["message"] for v in shipped_variants())


@needs_x86_linux
@needs_dispatch
def test_narrower_cpu_gets_a_narrower_variant(model: Path) -> None:
    """QEMU's TCG has no AVX-512: the build machine's AVX-512 variants must not be chosen there."""
    result = native_case_in_child(model, CASE, qemu_cpu="max")
    assert "error" not in result, result
    assert "AVX512" not in result["features"], result["variant"]
    assert result["variant"] in shipped_variants()
    assert result["tokens"] == REFERENCE[CASE["id"]]["tokens"]


@needs_x86_linux
@needs_dispatch
def test_baseline_cpu_gets_the_baseline_variant(model: Path) -> None:
    """Nehalem (SSE4.2, no AVX): only the x64 variant runs, and it gives the same tokens."""
    result = native_case_in_child(model, CASE, qemu_cpu="Nehalem")
    assert result.get("variant") == "x64", result
    assert result["tokens"] == REFERENCE[CASE["id"]]["tokens"]


@needs_x86_linux
@needs_dispatch
def test_forcing_a_variant_the_cpu_lacks_is_refused(model: Path) -> None:
    if "skylakex" not in shipped_variants():
        pytest.skip("this build ships no skylakex (AVX-512) variant")
    result = native_case_in_child(model, CASE, variant="skylakex", qemu_cpu="max")
    assert result["error"] == "BackendUnavailableError", result
    assert "needs instructions this CPU does not have" in result["message"]
