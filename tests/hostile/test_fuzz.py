"""A short run of the GGUF mutation fuzzer (fuzz.py; the long run is `python tests/hostile/fuzz.py`)."""

from __future__ import annotations

from pathlib import Path

from fuzz import fuzz

INPUTS = 80


def test_a_short_fuzz_run_never_escapes(synthetic_q8: Path) -> None:
    escapes: list[str] = []
    report = fuzz([synthetic_q8], INPUTS, seed=20261201, log=escapes.append)
    assert report.inputs == INPUTS
    assert report.escapes == 0, "\n".join(escapes)
    assert report.outcomes is not None
    assert report.outcomes["ModelLoadError"] > INPUTS // 4  # the mutations reach the loader's checks
