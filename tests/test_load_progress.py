"""Load progress on every installed backend: the callback sees the share of the file read,
rising to 1.0; returning False (or raising) stops the load with ModelLoadError, and the next
load works."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import load_model
from wasillama import ModelLoadError


@pytest.mark.parametrize("from_bytes", [False, True], ids=["path", "bytes"])
def test_progress_rises_to_one(backend_name: str, synthetic_model: Path, from_bytes: bool) -> None:
    seen: list[float] = []
    source = synthetic_model.read_bytes() if from_bytes else synthetic_model
    with load_model(source, backend_name, progress=seen.append) as model:
        assert model.n_layer == 2
    assert seen == sorted(seen) and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    if backend_name == "native" and not from_bytes:
        assert seen == [0.0, 1.0]  # a mapped file is not read through the host
    else:
        assert 3 <= len(seen) <= 102  # at most every 1%: the header first, the tensors in large reads


@pytest.mark.parametrize("stop", ["false", "raise"])
def test_the_callback_can_stop_the_load(backend_name: str, synthetic_model: Path, stop: str) -> None:
    def progress(fraction: float) -> bool:
        if fraction >= 0.3:
            if stop == "raise":
                raise RuntimeError("enough")
            return False
        return True

    with pytest.raises(ModelLoadError, match="cancelled by the progress callback"):
        load_model(synthetic_model.read_bytes(), backend_name, progress=progress)
    with load_model(synthetic_model, backend_name) as model:  # nothing was left behind
        assert model.n_layer == 2
