"""Split GGUFs (…-00001-of-0000N.gguf): the host joins the parts into one GGUF as it serves the
bytes (wasillama.gguf_file), so the sandbox sees one file. A split loads exactly as the whole
file does on every backend, and broken or hostile parts are refused with ModelLoadError or
ModelNotFoundError before llama.cpp sees them."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from helpers import greedy_and_logits, load_model
from synthetic import copy_gguf, with_scalar
from wasillama import ModelLoadError, ModelNotFoundError
from wasillama.gguf_file import join_splits, read_header, split_parts

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def whole(synthetic_models: Callable[..., Path]) -> Path:
    return synthetic_models(qtype="q8_0", n_layer=2, n_embd=128, n_ff=256, seed=3)


@pytest.fixture
def split(whole: Path, tmp_path: Path) -> list[Path]:
    first = copy_gguf(whole, tmp_path / "m.gguf", split_max_tensors=6)
    parts = split_parts(first)
    assert parts is not None and len(parts) == 4  # 21 tensors, 6 a part
    return parts


def logits(source: Path, backend_name: str) -> tuple[str, np.ndarray]:
    return greedy_and_logits(source, backend_name, PROMPT, max_tokens=6, n_ctx=64)


def test_a_split_loads_as_the_whole_file(whole: Path, split: list[Path], backend_name: str) -> None:
    text, got = logits(split[0], backend_name)
    ref_text, ref = logits(whole, backend_name)
    assert text == ref_text
    np.testing.assert_array_equal(got, ref)


def test_the_joined_header_is_the_whole_files(whole: Path, split: list[Path]) -> None:
    joined = join_splits(split)
    header = joined.segments[0]
    assert isinstance(header, bytes)
    n_tensors, n_kv = struct.unpack_from("<QQ", header, 8)
    ref = read_header(whole)
    assert n_tensors == len(ref.tensor_spans)
    assert n_kv == len(ref.kv_spans)  # the split.* keys are gone
    assert joined.size >= sum(p.stat().st_size for p in split) - sum(read_header(p).data_start for p in split)


def test_a_missing_part_is_named(split: list[Path], backend_name: str) -> None:
    split[2].unlink()
    with pytest.raises(ModelNotFoundError, match=r"m-00003-of-00004\.gguf"):
        load_model(split[0], backend_name)


def test_a_part_that_is_not_gguf(split: list[Path], backend_name: str) -> None:
    split[1].write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(ModelLoadError, match="bad magic"):
        load_model(split[0], backend_name)


def test_a_part_from_another_split(split: list[Path], backend_name: str) -> None:
    shutil.copy(split[1], split[2])  # split.no says 1 where 2 belongs
    with pytest.raises(ModelLoadError, match="is not part 3"):
        load_model(split[0], backend_name)


def test_a_count_that_disagrees_with_the_name(split: list[Path], backend_name: str) -> None:
    split[0].write_bytes(with_scalar(split[0].read_bytes(), "split.count", 3))
    with pytest.raises(ModelLoadError, match=r"split\.count=3"):
        load_model(split[0], backend_name)


@pytest.mark.parametrize("field", ["n_tensors", "n_kv"])
def test_counts_past_the_file_are_refused_before_allocating(split: list[Path], backend_name: str,
                                                             field: str) -> None:
    raw = bytearray(split[3].read_bytes())
    struct.pack_into("<Q", raw, 8 if field == "n_tensors" else 16, 2**62)
    split[3].write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match="more than the file can hold"):
        load_model(split[0], backend_name)


def test_a_truncated_part_fails_to_load_and_the_process_lives(split: list[Path], backend_name: str) -> None:
    data = split[2].read_bytes()
    split[2].write_bytes(data[: len(data) - 4096])  # tensor data cut short
    with pytest.raises(ModelLoadError):
        load_model(split[0], backend_name)
