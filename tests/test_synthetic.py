"""The synthetic models themselves: they load, generate, and are what synthetic.py says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import synthetic
from helpers import load_model


@pytest.mark.parametrize("qtype", synthetic.QTYPES)
def test_synthetic_model_generates_16_greedy_tokens(synthetic_models: Callable[..., Path], backend_name: str,
                                                    qtype: str) -> None:
    path = synthetic_models(seed=0, n_layer=2, n_embd=max(64, synthetic.row_multiple(qtype)), qtype=qtype)
    with load_model(path, backend_name) as model, model.new_context(n_ctx=256) as ctx:
        assert model.architecture == "llama"
        result = ctx.generate("Once upon a time", max_tokens=16, temperature=0)
        assert len(result.tokens) == 16
        assert result.finish_reason == "length"
        assert all(0 <= t < model.n_vocab for t in result.tokens)
        assert result.text


def test_same_arguments_give_the_same_bytes(tmp_path: Path, vocab_gguf: Path) -> None:
    pytest.importorskip("gguf")
    a = synthetic.write_llama(tmp_path / "a.gguf", vocab=vocab_gguf, seed=3, n_layer=1, n_embd=64, qtype="q8_0")
    b = synthetic.write_llama(tmp_path / "b.gguf", vocab=vocab_gguf, seed=3, n_layer=1, n_embd=64, qtype="q8_0")
    c = synthetic.write_llama(tmp_path / "c.gguf", vocab=vocab_gguf, seed=4, n_layer=1, n_embd=64, qtype="q8_0")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def _tiny_vocab(src: Path, dst: Path, n_tokens: int = 512) -> Path:
    """A vocab-only GGUF with the first n_tokens of src: enough for GGUFReader to be quick."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(dst), "llama")
    for name, value, vtype, sub in synthetic.read_tokenizer_fields(src):
        if vtype == gguf.GGUFValueType.ARRAY and name in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                                           "tokenizer.ggml.token_type"):
            value = value[:n_tokens]
        writer.add_key_value(name, value, vtype, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.mark.parametrize("qtype", synthetic.QTYPES)
def test_write_without_tensor_drops_exactly_one(tmp_path: Path, vocab_gguf: Path, qtype: str) -> None:
    gguf = pytest.importorskip("gguf")
    vocab = _tiny_vocab(vocab_gguf, tmp_path / "tiny-vocab.gguf")
    src = synthetic.write_llama(tmp_path / "src.gguf", vocab=vocab, n_layer=2,
                                n_embd=max(64, synthetic.row_multiple(qtype)), qtype=qtype)
    dst = synthetic.write_without_tensor(src, tmp_path / "missing.gguf", "blk.1.attn_v.weight")
    a, b = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(dst))
    assert synthetic.gguf_layout(src.read_bytes()).data_start == a.data_offset
    before = {t.name: t for t in a.tensors}
    after = {t.name: t for t in b.tensors}
    assert set(before) - set(after) == {"blk.1.attn_v.weight"}
    assert len(after) == len(before) - 1
    for name, t in after.items():
        assert t.tensor_type == before[name].tensor_type
        assert list(t.shape) == list(before[name].shape)
        assert bytes(t.data) == bytes(before[name].data), name
    def fields(r: Any) -> dict[str, Any]:
        return {k: (f.types, [bytes(f.parts[i]) for i in f.data])
                for k, f in r.fields.items() if k != "GGUF.tensor_count"}

    assert fields(a) == fields(b)
    with pytest.raises(KeyError):
        synthetic.write_without_tensor(src, tmp_path / "x.gguf", "no.such.tensor")
