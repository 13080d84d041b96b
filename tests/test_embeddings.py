"""Embeddings against the PyTorch reference vectors of all-MiniLM-L6-v2 (tests/data, copied from
../shared/models), on every installed backend: cosine per sentence, the similarity ordering,
batching (one decode per group of texts), pooling, normalisation, long texts; and the one-call
`wasillama.embed` from the package's own bytes, in a process with an empty cache and no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import wasillama
from helpers import load_model
from wasillama import ContextFullError, UnsupportedOptionError
from wasillama.embedder import model_bytes

REPO = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((REPO / "tests" / "data" / "minilm_reference.json").read_text())
SENTENCES: list[str] = REFERENCE["sentences"]
VECTORS = np.asarray(REFERENCE["embeddings"], dtype=np.float64)
SHARED_MODELS = Path(os.environ.get("WASILLAMA_SHARED_MODELS", REPO.parent / "shared" / "models"))
MIN_COSINE = {"q8_0": 0.995, "f16": 0.999}


def _source(kind: str) -> bytes | Path:
    if kind == "q8_0":
        return model_bytes()  # the copy the package ships (the same file as ../shared/models')
    path = SHARED_MODELS / "all-MiniLM-L6-v2-f16.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is not here (set WASILLAMA_SHARED_MODELS)")
    return path


@pytest.fixture(scope="module", params=["q8_0", "f16"])
def minilm(request: pytest.FixtureRequest, backend_name: str) -> Iterator[tuple[str, wasillama.Model]]:
    with load_model(_source(request.param), backend_name) as m:
        yield request.param, m


@pytest.fixture(scope="module")
def ectx(minilm: tuple[str, wasillama.Model]) -> Iterator[wasillama.Context]:
    with minilm[1].new_context(n_ctx=2048, n_batch=1024, n_seq_max=4, embeddings=True) as c:
        yield c


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    out: np.ndarray = (a * b).sum(-1)
    return out


def test_embeddings_match_pytorch(minilm: tuple[str, wasillama.Model], ectx: wasillama.Context) -> None:
    kind, _ = minilm
    assert ectx.embeddings and ectx.pooling == "mean"  # from the GGUF
    ours = ectx.embed_batch(SENTENCES)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    cos = _cosines(ours.astype(np.float64), VECTORS)
    assert cos.min() >= MIN_COSINE[kind], cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_similarity_ordering_matches_pytorch(ectx: wasillama.Context) -> None:
    ours = ectx.embed_batch(SENTENCES).astype(np.float64)
    sim, ref = ours @ ours.T, VECTORS @ VECTORS.T
    np.fill_diagonal(sim, -2)
    np.fill_diagonal(ref, -2)
    assert list(sim.argmax(1)) == list(ref.argmax(1))  # every sentence's nearest neighbour
    upper = np.triu_indices(len(SENTENCES), 1)
    ranks = np.argsort(np.argsort(sim[upper])), np.argsort(np.argsort(ref[upper]))
    assert np.corrcoef(*ranks)[0, 1] > 0.99  # Spearman over all pairs
    assert np.abs(sim[upper] - ref[upper]).max() < 0.03


def test_a_batch_is_one_decode_per_group(ectx: wasillama.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = []
    real = ectx._backend.decode

    def counted(*args: Any, **kwargs: Any) -> Any:
        decodes.append(args[1].size)
        return real(*args, **kwargs)

    monkeypatch.setattr(ectx._backend, "decode", counted)
    batched = ectx.embed_batch(SENTENCES[:8])
    assert len(decodes) == 2  # 8 short texts, 4 sequences per decode
    monkeypatch.undo()
    alone = np.stack([ectx.embed(s) for s in SENTENCES[:8]])
    assert _cosines(batched, alone).min() > 0.99999


def test_pooling_and_normalisation(minilm: tuple[str, wasillama.Model], ectx: wasillama.Context) -> None:
    text = SENTENCES[0]
    raw = ectx.embed(text, normalize=False)
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3
    np.testing.assert_allclose(ectx.embed(text), raw / np.linalg.norm(raw), rtol=1e-5, atol=1e-6)
    model = minilm[1]
    with model.new_context(n_ctx=512, n_batch=512, embeddings=True, pooling="none") as per_token, \
            model.new_context(n_ctx=512, n_batch=512, embeddings=True, pooling="cls") as cls:
        rows = per_token.embed(text, normalize=False)
        assert rows.shape == (len(model.tokenize(text)), 384)
        # llama.cpp's mean pooling is the mean of the per-token embeddings
        np.testing.assert_allclose(rows.mean(0), raw, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(cls.embed(text, normalize=False), rows[0], rtol=1e-3, atol=1e-4)
        ragged = per_token.embed_batch(SENTENCES[:2], normalize=False)
        assert [r.shape[0] for r in ragged] == [len(model.tokenize(s)) for s in SENTENCES[:2]]


def test_a_text_longer_than_a_sequence(ectx: wasillama.Context) -> None:
    long = " ".join(SENTENCES) * 8
    tokens = ectx.tokenize(long)
    limit = min(ectx.n_ctx_seq, ectx.n_batch)
    assert len(tokens) > limit
    with pytest.raises(ContextFullError, match=rf"has {len(tokens)} tokens .* at most {limit} per text"):
        ectx.embed(long)
    cut = ectx.embed(long, truncate=True)
    np.testing.assert_allclose(cut, ectx.embed(tokens[:limit]), atol=1e-6)


def test_embeddings_and_logits_need_their_own_contexts(minilm: tuple[str, wasillama.Model],
                                                       ectx: wasillama.Context) -> None:
    with pytest.raises(UnsupportedOptionError, match="computes embeddings"):
        ectx.generate("hello", max_tokens=2)
    with minilm[1].new_context(n_ctx=512) as plain, pytest.raises(UnsupportedOptionError, match="embeddings=True"):
        plain.embed("hello")


def test_one_call_embed_offline_with_an_empty_cache(tmp_path: Path) -> None:
    """wasillama.embed in a fresh process: HOME and the cache empty, no network when this machine
    can take it away (unshare -n), the model from the package's bytes."""
    script = ("import json, sys, wasillama; v = wasillama.embed([sys.argv[1]]); "
              "print(json.dumps([list(map(float, v[0])), list(v.shape)]))")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    cmd = [sys.executable, "-c", script, SENTENCES[3]]
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        cmd = [unshare, "-n", *cmd]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=True)
    vector, shape = json.loads(out.stdout)
    assert shape == [1, 384]
    assert _cosines(np.asarray(vector), VECTORS[3]) >= 0.995
    # nothing was fetched: the cache holds at most the compiled wasm module
    cached = {p.relative_to(tmp_path / "cache").parts[:2] for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert cached <= {("wasillama", "compiled")}, cached
