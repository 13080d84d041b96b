"""Hostile and broken model files: each fails with a specific WasillamaError, nothing crashes or
hangs, and the same process then loads a good model and generates.

These run on the wasm backend only: surviving a hostile file is what the sandbox is for (the
native backend is llama.cpp without a sandbox and needs trust_model=True).
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import synthetic
import wasillama
from helpers import load_model
from wasillama import ModelLoadError, ModelNotFoundError, WasillamaError

# a hostile load must fail fast; a loop over a bogus count would take much longer
MAX_SECONDS = 30.0

GGUF_VERSION = 3
T_UINT8, T_STRING, T_ARRAY = 0, 8, 9


def gguf_header(n_tensors: int, n_kv: int, version: int = GGUF_VERSION) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def gguf_str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def kv_string(key: bytes, value: bytes) -> bytes:
    return gguf_str(key) + struct.pack("<I", T_STRING) + gguf_str(value)


def kv_u8_array(key: bytes, count: int, payload: bytes) -> bytes:
    return gguf_str(key) + struct.pack("<IIQ", T_ARRAY, T_UINT8, count) + payload


# Hand-made headers with absurd sizes: name -> (bytes, what the message must mention).
CRAFTED: dict[str, tuple[bytes, str]] = {
    "n_tensors_2^62": (gguf_header(2**62, 0) + bytes(64), r"number of tensors"),
    "n_kv_2^62": (gguf_header(0, 2**62) + bytes(64), r"key.value pairs"),
    "key_length_2^60": (gguf_header(0, 1) + struct.pack("<Q", 2**60) + b"abc", r"string length"),
    "value_length_2^60": (gguf_header(0, 1) + gguf_str(b"general.name") + struct.pack("<IQ", T_STRING, 2**60)
                          + b"abc", r"string length"),
    "array_count_2^62": (gguf_header(0, 1) + kv_u8_array(b"general.junk", 2**62, bytes(16)), r"key.value"),
    # 2**32 + 0 truncates to an empty array where size_t is 32 bits (wasm32): the count must be
    # rejected before that, as the native build rejects it, not reinterpreted.
    "array_count_2^32": (gguf_header(0, 2) + kv_u8_array(b"general.junk", 2**32, b"")
                         + kv_string(b"general.architecture", b"llama"), r"key.value"),
    "string_array_count_2^40": (gguf_header(0, 1) + gguf_str(b"general.junk")
                                + struct.pack("<IIQ", T_ARRAY, T_STRING, 2**40) + bytes(16), r"key.value"),
    "version_2^32-1": (gguf_header(0, 0, version=2**32 - 1), r"version"),
    "tensor_n_dims_2^31": (gguf_header(1, 0) + gguf_str(b"t") + struct.pack("<I", 2**31) + bytes(64),
                           r"dimensions"),
    "tensor_dims_2^62": (gguf_header(1, 0) + gguf_str(b"t") + struct.pack("<I", 4) + struct.pack("<4Q", *[2**62] * 4)
                         + struct.pack("<IQ", 0, 0) + bytes(64), r"overflow|shape"),
}


@pytest.fixture(scope="module")
def good_model(synthetic_q8: Path) -> Path:
    return synthetic_q8


@pytest.fixture(scope="module")
def good_tokens(good_model: Path) -> list[int]:
    with load_model(good_model) as model, model.new_context(n_ctx=128) as ctx:
        return ctx.generate("The sandbox", max_tokens=4, temperature=0).tokens


@pytest.fixture
def still_healthy(good_model: Path, good_tokens: list[int]) -> Callable[[], None]:
    def check() -> None:
        with load_model(good_model) as model, model.new_context(n_ctx=128) as ctx:
            assert ctx.generate("The sandbox", max_tokens=4, temperature=0).tokens == good_tokens

    return check


def expect_load_error(source: object, cls: type[WasillamaError], pattern: str) -> WasillamaError:
    start = time.perf_counter()
    with pytest.raises(cls) as info:
        load_model(source)
    elapsed = time.perf_counter() - start
    assert elapsed < MAX_SECONDS, f"rejecting the file took {elapsed:.1f} s"
    message = str(info.value)
    assert len(message) > 15, f"uninformative message: {message!r}"
    assert re.search(pattern, message, re.IGNORECASE), f"{message!r} does not mention /{pattern}/"
    return info.value


def _as(kind: str, data: bytes, tmp_path: Path) -> object:
    if kind == "bytes":
        return data
    if kind == "memoryview":
        return memoryview(bytearray(data))
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    return path


SOURCES = ("path", "bytes", "memoryview")


# ---- broken real files -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize(("case", "pattern"), [
    ("truncated_60_percent", r"bounds|truncat|corrupt|incomplete"),
    ("truncated_1000_bytes", r"key.value|read"),
    ("truncated_after_header", r"key.value|read"),
    ("random_bytes", r"magic"),
    ("random_after_magic", r"version|read|invalid"),
])
def test_broken_file(case: str, pattern: str, kind: str, good_model: Path, tmp_path: Path,
                     still_healthy: Callable[[], None]) -> None:
    good = good_model.read_bytes()
    rng = np.random.default_rng(1234)
    data = {
        "truncated_60_percent": good[: int(len(good) * 0.6)],
        "truncated_1000_bytes": good[:1000],
        "truncated_after_header": good[:24],
        "random_bytes": rng.integers(0, 256, 65536, dtype=np.uint8).tobytes(),
        "random_after_magic": b"GGUF" + rng.integers(0, 256, 65536, dtype=np.uint8).tobytes(),
    }[case]
    expect_load_error(_as(kind, data, tmp_path), ModelLoadError, pattern)
    still_healthy()


@pytest.mark.parametrize("kind", SOURCES)
def test_missing_tensor(kind: str, good_model: Path, tmp_path: Path, still_healthy: Callable[[], None]) -> None:
    pytest.importorskip("gguf")
    broken = synthetic.write_without_tensor(good_model, tmp_path / "missing.gguf", "blk.1.ffn_down.weight")
    expect_load_error(_as(kind, broken.read_bytes(), tmp_path), ModelLoadError, r"blk\.1\.ffn_down\.weight")
    still_healthy()


@pytest.mark.parametrize("kind", SOURCES)
def test_empty_file(kind: str, tmp_path: Path, still_healthy: Callable[[], None]) -> None:
    expect_load_error(_as(kind, b"", tmp_path), ModelLoadError, r"empty|0 bytes|size")
    still_healthy()


def test_path_that_does_not_exist(tmp_path: Path, still_healthy: Callable[[], None]) -> None:
    missing = tmp_path / "no-such-model.gguf"
    err = expect_load_error(missing, ModelNotFoundError, re.escape(str(missing)))
    assert isinstance(err, FileNotFoundError)
    still_healthy()


def test_directory_is_not_a_model(tmp_path: Path, still_healthy: Callable[[], None]) -> None:
    expect_load_error(tmp_path, ModelNotFoundError, re.escape(str(tmp_path)))
    still_healthy()


# ---- crafted headers -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_header(case: str, kind: str, tmp_path: Path, still_healthy: Callable[[], None]) -> None:
    data, pattern = CRAFTED[case]
    expect_load_error(_as(kind, data, tmp_path), ModelLoadError, pattern)
    still_healthy()


# ---- well-formed files that lie about the model ----------------------------------------------------

# (key, value, what the message must mention). block_count 0 and 100000 trip a GGML_ASSERT in
# llama.cpp's loader: natively that aborts the process; in the sandbox it must be a load error.
BAD_HPARAMS = [
    ("llama.block_count", 0, r"load"),
    ("llama.block_count", 100_000, r"load"),
    ("llama.block_count", 3, r"blk\.2\.\S+ not found"),
    ("llama.block_count", 1, r"wrong number of tensors"),
    ("llama.embedding_length", 0, r"n_rot|shape"),
    ("llama.embedding_length", 2**31 - 1, r"n_rot|shape"),
    ("llama.attention.head_count", 0, r"shape"),
    ("llama.attention.head_count_kv", 0, r"shape"),
    ("llama.feed_forward_length", 0, r"shape"),
    ("llama.rope.dimension_count", 2**31, r"n_rot"),
]


@pytest.mark.parametrize(("key", "value", "pattern"), BAD_HPARAMS,
                         ids=[f"{k.removeprefix('llama.')}={v}" for k, v, _ in BAD_HPARAMS])
def test_lying_hparams(key: str, value: int, pattern: str, good_model: Path,
                       still_healthy: Callable[[], None]) -> None:
    data = synthetic.with_scalar(good_model.read_bytes(), key, value)
    expect_load_error(data, ModelLoadError, pattern)
    still_healthy()


@pytest.mark.parametrize(("tensor", "dim", "value", "pattern"), [
    ("token_embd.weight", 1, 5, r"offset"),
    ("token_embd.weight", 0, 2**40, r"size in bytes|overflow"),
    ("output.weight", 1, 2**62, r"overflow"),
    ("blk.0.attn_q.weight", 0, 32, r"offset|shape"),
], ids=["embd-rows-5", "embd-cols-2^40", "output-rows-2^62", "attn_q-cols-32"])
def test_lying_tensor_shape(tensor: str, dim: int, value: int, pattern: str, good_model: Path,
                            still_healthy: Callable[[], None]) -> None:
    data = synthetic.with_tensor_dim(good_model.read_bytes(), tensor, dim, value)
    expect_load_error(data, ModelLoadError, pattern)
    still_healthy()


def test_model_that_traps_at_run_time(good_model: Path, still_healthy: Callable[[], None]) -> None:
    """An rms-norm epsilon of NaN loads, then trips a GGML_ASSERT in the first decode: natively
    that aborts the process; in the sandbox it is an error, the model is unusable after it, and
    closing the model and its context still works."""
    data = synthetic.with_scalar(good_model.read_bytes(), "llama.attention.layer_norm_rms_epsilon", float("nan"))
    model = wasillama.Model.load(data)
    ctx = model.new_context(n_ctx=64)
    with pytest.raises(WasillamaError):
        ctx.generate("hello", max_tokens=2, temperature=0)
    with pytest.raises(WasillamaError):  # the sandbox is poisoned: no call runs on a corrupt heap
        model.tokenize("hello")
    model.close()  # frees nothing in the poisoned sandbox, but must not raise
    assert model.closed and ctx.closed
    ctx.close()
    still_healthy()


def test_out_of_range_special_tokens(good_model: Path, still_healthy: Callable[[], None]) -> None:
    data = good_model.read_bytes()
    data = synthetic.with_scalar(data, "tokenizer.ggml.bos_token_id", 2**31)
    data = synthetic.with_scalar(data, "tokenizer.ggml.eos_token_id", 999_999)
    data = synthetic.with_scalar(data, "tokenizer.ggml.unknown_token_id", 2**32 - 1)
    try:
        model = wasillama.Model.load(data)
    except ModelLoadError:
        pass  # rejecting the file is fine too
    else:
        with model, model.new_context(n_ctx=64) as ctx:
            tokens = model.tokenize("hello", add_special=True)
            assert all(0 <= t < model.n_vocab for t in tokens)
            result = ctx.generate("hello", max_tokens=2, temperature=0)
            assert all(0 <= t < model.n_vocab for t in result.tokens)
    still_healthy()


# ---- random mutations of a real file ---------------------------------------------------------------


def test_random_mutations_never_escape(good_model: Path, still_healthy: Callable[[], None]) -> None:
    """Bytes flipped in the header, KV and tensor-info region: every outcome is a clean load or a
    WasillamaError; a model that does load must also tokenize and generate or fail cleanly."""
    good = good_model.read_bytes()
    data_start = synthetic.gguf_layout(good).data_start
    rng = np.random.default_rng(20261123)
    outcomes: dict[str, int] = {}
    for _ in range(24):
        data = bytearray(good)
        # half the time in the first 4 KiB (header, hparams, tokenizer scalars), else anywhere
        # before the tensor data (mostly the vocabulary)
        end = min(4096, data_start) if rng.random() < 0.5 else data_start
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(0, end))] = int(rng.integers(0, 256))
        try:
            with wasillama.Model.load(bytes(data)) as model, model.new_context(n_ctx=64) as ctx:
                ctx.generate("hello", max_tokens=2, temperature=0)
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        except WasillamaError as e:
            outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
    assert sum(outcomes.values()) == 24, outcomes
    assert set(outcomes) - {"ok"} <= {"ModelLoadError", "ContextFullError", "DecodeError"}, outcomes
    still_healthy()
