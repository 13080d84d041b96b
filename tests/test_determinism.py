"""The wasm backend computes the very same logits on every machine: wasm's float semantics are
deterministic (IEEE 754, no fused or reassociated operations; llama.wasm's relaxed SIMD
instructions, i8 x u7 dot products, only see operands where every lowering agrees), and nothing
inside the guest asks what the host CPU is. So the logits' sha256 is pinned here, and every
machine that runs the suite must produce it (this VM, CI, the GPU machine's CPU), with any number
of guest threads.

A pinned digest changes only when llama.wasm computes differently (a kernel fix, a new llama.cpp):
update it in the same commit, and say why. The models' own sha256s are pinned first, so a failure
says which of the two changed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

import wasillama
from wasillama.options import Numerics

PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,")

# name -> (model file sha256, logits sha256)
PINNED: dict[str, tuple[str, str]] = {
    "smollm2-q4_1": ("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                     "d009001dc1e318b456daed7b80905f2f04cb2996ff7ce7620b9fbc14db082551"),
    "synthetic-f16": ("610506937502fb64020948c665a0f135b8d4724c8d5118395313ec19c363aa06",
                      "ef75b7b274cddaa1bad27bb4538b6a13b9ee87576c121ea42d4286b258372ad2"),
    "synthetic-q8_0": ("7f2c4efa6e3a1975fc8e0533ce0b4f9744f021c40f32591e791fc659b9d3c9b3",
                       "762b21bfb515e647b6b0379f45d04dff7b7199b3e68d9db7b01924ad39fd1343"),
    "synthetic-f32": ("0905b8157fd2ff2598f601e343dc380d4c855447b99dc6bc0be5e95fce1c33c1",
                      "7bb453e96d72500a1560149152508122a9df7bb367df8fa17b08da0946b3e4d4"),
}


# numerics="x86" (its own kernels for Q8_0, Q4_0, Q4_1 and Q4_K): name -> logits sha256
PINNED_X86: dict[str, str] = {
    "smollm2-q4_1": "d9d98b2ec42db36b1ff37ab80ef8adf67f57f1591739fef380f1c82ddc44a4c8",
    "synthetic-q8_0": "9949a255062c26f24184ad464a6062378403a7af6104e3a6de3fe7b06709462e",
}


def logits_digest(model: wasillama.Model, n_threads: int = 1, numerics: Numerics = "fast") -> str:
    """sha256 of the float32 logits after each prompt and after each of 4 greedy steps from it."""
    h = hashlib.sha256()
    with model.new_context(n_ctx=256, n_threads=n_threads, n_threads_batch=n_threads, numerics=numerics) as ctx:
        for prompt in PROMPTS:
            tokens = model.tokenize(prompt)
            for _ in range(5):
                ctx.eval(tokens)
                logits = ctx.logits()
                h.update(logits.astype("<f4").tobytes())
                tokens = [*tokens, int(logits.argmax())]
            ctx.clear()
    return h.hexdigest()


@pytest.fixture(scope="module")
def models(smollm2_path: Path, synthetic_models: Callable[..., Path]) -> dict[str, Path]:
    synthetic = {f"synthetic-{q}": synthetic_models(seed=7, n_layer=2, n_embd=128, qtype=q)
                 for q in ("f16", "q8_0", "f32")}
    return {"smollm2-q4_1": smollm2_path, **synthetic}


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_logits_are_the_same_on_every_machine(name: str, n_threads: int, models: dict[str, Path]) -> None:
    """... and with any number of guest threads (each output of an op is one thread's work, done
    by the same kernel whichever thread it is)."""
    path = models[name]
    file_sha, logits_sha = PINNED[name]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == file_sha, f"the {name} model file itself changed"
    with wasillama.Model.load(path) as model:
        assert logits_digest(model, n_threads) == logits_sha


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("name", sorted(PINNED_X86))
def test_x86_numerics_give_the_same_logits_on_every_machine(name: str, n_threads: int,
                                                            models: dict[str, Path]) -> None:
    with wasillama.Model.load(models[name]) as model:
        assert logits_digest(model, n_threads, "x86") == PINNED_X86[name]


def test_the_same_logits_in_every_sandbox(models: dict[str, Path]) -> None:
    with wasillama.Model.load(models["synthetic-q8_0"]) as a, wasillama.Model.load(models["synthetic-q8_0"]) as b:
        assert logits_digest(a) == logits_digest(b) == logits_digest(a)
