"""LoRA adapters on every installed backend, from a path and from bytes: an adapter changes the
output, its scale matters, two apply at once, and removing them restores the base output
exactly; an adapter for another model, or a damaged one, is a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import synthetic
import wasillama
from helpers import load_model
from wasillama import ClosedError, InvalidArgumentError, ModelLoadError

PROMPT = "Once upon a time, in a small village"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora")
    return (synthetic.write_lora(root / "a.gguf", seed=1, strength=3.0),
            synthetic.write_lora(root / "b.gguf", seed=2, strength=3.0))


def _greedy(ctx: wasillama.Context) -> list[int]:
    return ctx.generate(PROMPT, max_tokens=24, temperature=0).tokens


def test_an_adapter_changes_the_output_and_removing_it_restores_it(model: wasillama.Model,
                                                                   adapters: tuple[Path, Path]) -> None:
    with model.new_context(n_ctx=512) as ctx, model.load_lora(adapters[0]) as a, \
            model.load_lora(adapters[1].read_bytes()) as b:
        base = _greedy(ctx)
        ctx.eval(ctx.tokenize(PROMPT))
        base_logits = ctx.logits()
        ctx.set_loras({a: 1.0})
        assert ctx.loras == {a: 1.0}
        with_a = _greedy(ctx)
        assert with_a != base
        ctx.set_loras({a: 0.5})
        half = _greedy(ctx)
        assert half != with_a
        ctx.set_loras({a: 1.0, b: 1.0})
        both = _greedy(ctx)
        assert both not in (base, with_a)
        ctx.set_loras({})
        assert _greedy(ctx) == base  # exactly the base output
        ctx.eval(ctx.tokenize(PROMPT))
        assert (ctx.logits() == base_logits).all()
        # another context of the same model is not affected by this one's adapters
        ctx.set_loras({a: 1.0})
        with model.new_context(n_ctx=512) as other:
            assert _greedy(other) == base
        assert _greedy(ctx) == with_a


def test_an_adapter_outlives_its_handle_while_a_context_uses_it(model: wasillama.Model,
                                                                adapters: tuple[Path, Path]) -> None:
    with model.new_context(n_ctx=512) as ctx:
        lora = model.load_lora(adapters[0])
        ctx.set_loras({lora: 1.0})
        expected = _greedy(ctx)
        lora.close()
        lora.close()
        assert _greedy(ctx) == expected  # the context still holds the adapter
        with pytest.raises(ClosedError):
            ctx.set_loras({lora: 0.5})


def test_an_adapter_of_another_model_is_refused(model: wasillama.Model, tmp_path: Path) -> None:
    wrong = synthetic.write_lora(tmp_path / "wrong.gguf", n_embd=64, n_ff=128)
    with pytest.raises(ModelLoadError, match="LoRA"):
        model.load_lora(wrong)
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(synthetic.write_lora(tmp_path / "ok.gguf").read_bytes()[:300])
    with pytest.raises(ModelLoadError):
        model.load_lora(damaged)
    with pytest.raises(ModelLoadError):
        model.load_lora(b"GGUF" + bytes(64))
    # F64 tensors pass llama.cpp's checks, and ggml's CPU code has no F64 matmul: a decode would
    # call a null kernel (the end of the process natively)
    f64 = synthetic.write_lora(tmp_path / "f64.gguf", dtype=np.float64)
    with pytest.raises(ModelLoadError, match="is of type f64"):
        model.load_lora(f64)


def test_an_adapter_on_a_context_of_another_model(model: wasillama.Model, backend_name: str,
                                                  synthetic_q8: Path, adapters: tuple[Path, Path]) -> None:
    with model.load_lora(adapters[0]) as lora, load_model(synthetic_q8, backend_name) as other, \
            other.new_context(n_ctx=256) as ctx, pytest.raises(InvalidArgumentError, match="another model"):
        ctx.set_loras({lora: 1.0})
