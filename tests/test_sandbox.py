"""The sandbox layer (SandboxOptions): a memory cap per sandbox, a default deadline, and the
policy after a trap (raise, or rebuild from the compiled module and load the model again).
These are the wasm backend's by nature; the native backend refuses what it cannot do."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import synthetic
import wasillama
from helpers import load_model, native_available
from wasillama import (
    BackendError,
    DeadlineExceededError,
    InvalidArgumentError,
    OutOfMemoryError,
    SandboxOptions,
    UnsupportedOptionError,
)
from wasillama.options import parse_size

LOOP = ("{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}x"
        "{% endfor %}{% endfor %}{% endfor %}")
HI = [{"role": "user", "content": "hi"}]
PROMPT = "The sandbox"


def greedy(ctx: wasillama.Context, n: int = 8) -> list[int]:
    return ctx.generate(PROMPT, max_tokens=n, temperature=0).tokens


def force_a_trap(model: wasillama.Model) -> None:
    """A template that never ends, stopped by force (epoch interruption): the guest traps."""
    with pytest.raises(DeadlineExceededError, match="unusable"):
        model.apply_chat_template(HI, template=LOOP, timeout=0.02)
    assert model.poisoned is not None


@pytest.fixture(scope="module")
def reference(synthetic_model: Path) -> list[int]:
    with load_model(synthetic_model) as m, m.new_context(n_ctx=256) as ctx:
        return greedy(ctx, 16)


# ---- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "n"), [(4096, 4096), ("4096", 4096), ("2GiB", 2 * 2**30), ("1.5 GB", 1_500_000_000),
                                         ("512MiB", 512 * 2**20), ("64kib", 65536)])
def test_sizes(text: int | str, n: int) -> None:
    assert parse_size(text, "max_memory") == n
    assert SandboxOptions(max_memory=text).memory_cap == n


@pytest.mark.parametrize("bad", ["2 parsecs", "-1", "", 0, -5, True, "GiB"])
def test_bad_sizes_are_refused(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="max_memory"):
        SandboxOptions(max_memory=bad)  # type: ignore[arg-type]


def test_bad_policy_and_timeout_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="on_trap"):
        SandboxOptions(on_trap="ignore")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="default_timeout"):
        SandboxOptions(default_timeout=0)


def test_keyword_arguments_and_the_group_agree(synthetic_model: Path) -> None:
    with wasillama.Model.load(synthetic_model, sandbox=SandboxOptions(max_memory="1GiB"), on_trap="rebuild") as m:
        assert m.sandbox_options == SandboxOptions(max_memory=2**30, on_trap="rebuild")
    with pytest.raises(TypeError, match="unknown option"):
        wasillama.Model.load(synthetic_model, max_memroy="1GiB")


def test_the_native_backend_cannot_cap_memory(synthetic_model: Path) -> None:
    if not native_available():
        pytest.skip("the native backend plugin (wasillama-native) is not installed")
    with pytest.raises(UnsupportedOptionError, match="max_memory"):
        load_model(synthetic_model, "native", max_memory="1GiB")


# ---- memory cap ----------------------------------------------------------------------------------


def test_weights_past_the_cap_are_refused_up_front(synthetic_model: Path) -> None:
    assert synthetic_model.stat().st_size > 12 * 2**20
    with pytest.raises(OutOfMemoryError, match=r"MiB of weights.*memory cap of 12\.0 MiB"):
        wasillama.Model.load(synthetic_model, max_memory="12MiB")
    with pytest.raises(OutOfMemoryError, match=r"max_memory\) of 1\.0 MiB is below the .* MiB the sandbox holds"):
        wasillama.Model.load(synthetic_model, max_memory="1MiB")


def test_a_cache_past_the_cap_is_refused_up_front(synthetic_model: Path) -> None:
    with wasillama.Model.load(synthetic_model, max_memory="128MiB") as m:
        with pytest.raises(OutOfMemoryError, match=r"token cache needs .* MiB .*memory cap of 128\.0 MiB"):
            m.new_context(n_ctx=2**20)
        with m.new_context(n_ctx=256) as ctx:  # nothing was allocated: the sandbox is fine
            assert ctx.generate(PROMPT, max_tokens=2, temperature=0).completion_tokens == 2


def test_a_cache_past_4_gib_is_refused_up_front_without_a_cap(smollm2_path: Path) -> None:
    """Without max_memory the limit is the 4 GiB wasm32 can address: a 200k-token cache (4.6 GB
    of f16 KV) is refused before llama.cpp sizes a buffer it cannot address (that trapped)."""
    with wasillama.Model.load(smollm2_path) as m:
        with pytest.raises(OutOfMemoryError, match=r"more than the 4 GiB the wasm32 sandbox can address"):
            m.new_context(n_ctx=200_000)
        with m.new_context(n_ctx=256) as ctx:
            assert ctx.generate(PROMPT, max_tokens=2, temperature=0).completion_tokens == 2


def test_an_allocation_past_the_cap_fails_alone(synthetic_model: Path, reference: list[int]) -> None:
    """The compute buffers of a big batch cannot be known up front: the guest's allocation fails
    at the cap, the call raises OutOfMemoryError naming the numbers, and another Model generating
    meanwhile (and after) gets exactly its greedy tokens."""
    other = load_model(synthetic_model)
    seen: list[list[int]] = []
    stop = threading.Event()

    def keep_generating() -> None:
        with other.new_context(n_ctx=256) as ctx:
            while not stop.is_set():
                seen.append(greedy(ctx, 16))
                ctx.clear()

    worker = threading.Thread(target=keep_generating)
    worker.start()
    try:
        while not seen:  # the other model is generating before the first refusal
            time.sleep(0.01)
        with wasillama.Model.load(synthetic_model, max_memory="96MiB", on_trap="rebuild") as capped:
            during = len(seen)
            for _ in range(3):
                with pytest.raises(OutOfMemoryError, match=r"memory cap of 96\.0 MiB \(max_memory\) refused the guest "
                                                           r"\d+\.\d MiB more; it holds \d+\.\d MiB") as oom:
                    capped.new_context(n_ctx=4096, n_batch=4096, n_ubatch=4096)
                assert "max_memory" in str(oom.value)
                with capped.new_context(n_ctx=256) as ctx:  # rebuilt if the guest trapped
                    assert greedy(ctx, 16) == reference
            while len(seen) <= during:  # ... and after
                time.sleep(0.01)
    finally:
        stop.set()
        worker.join()
    assert all(tokens == reference for tokens in seen)
    with other, other.new_context(n_ctx=256) as ctx:
        assert greedy(ctx, 16) == reference


# ---- after a trap --------------------------------------------------------------------------------


def test_by_default_a_trapped_sandbox_says_so(synthetic_model: Path) -> None:
    with wasillama.Model.load(synthetic_model) as m, m.new_context(n_ctx=128) as ctx:
        force_a_trap(m)
        with pytest.raises(BackendError, match="on_trap='rebuild'"):
            greedy(ctx)
        with pytest.raises(BackendError, match="unusable"):
            m.tokenize("still there?")


def test_twenty_traps_in_a_row_each_cost_one_call(synthetic_model: Path, reference: list[int]) -> None:
    with wasillama.Model.load(synthetic_model, on_trap="rebuild") as m, m.new_context(n_ctx=256) as ctx:
        assert greedy(ctx, 16) == reference
        before = m.tokenize("a prompt the cache holds")
        for i in range(20):
            force_a_trap(m)
            assert greedy(ctx, 16) == reference, f"after trap {i + 1}"
            assert m.poisoned is None
        assert m.tokenize("a prompt the cache holds") == before
        assert m._sandbox.rebuilds == 20


def test_contexts_and_adapters_survive_a_rebuild(synthetic_model: Path, tmp_path: Path) -> None:
    lora_path = synthetic.write_lora(tmp_path / "a.gguf", seed=1, strength=3.0)
    with wasillama.Model.load(synthetic_model, on_trap="rebuild") as m, m.load_lora(lora_path) as lora, \
            m.new_context(n_ctx=256, n_seq_max=2) as ctx:
        ctx.set_loras({lora: 1.0})
        with_lora = greedy(ctx, 16)
        batch = [r.tokens for r in ctx.generate_batch([PROMPT, "Other words"], max_tokens=8, temperature=0)]
        force_a_trap(m)
        assert greedy(ctx, 16) == with_lora
        assert ctx.loras == {lora: 1.0}
        assert [r.tokens for r in ctx.generate_batch([PROMPT, "Other words"], max_tokens=8, temperature=0)] == batch
        ctx.set_loras({})
        assert greedy(ctx, 16) != with_lora  # the adapter was really applied after the rebuild


def test_embeddings_and_a_draft_survive_a_rebuild(synthetic_model: Path, synthetic_q8: Path) -> None:
    with wasillama.Model.load(synthetic_model, on_trap="rebuild") as m, \
            wasillama.Model.load(synthetic_q8, on_trap="rebuild") as small:
        with m.new_context(n_ctx=256, embeddings=True, pooling="mean") as ectx:
            before = ectx.embed("hello world")
            force_a_trap(m)
            assert (ectx.embed("hello world") == before).all()
        with m.new_context(n_ctx=256) as ctx, small.new_context(n_ctx=256) as dctx:
            spec = ctx.generate(PROMPT, max_tokens=12, temperature=0, draft=dctx).tokens
            force_a_trap(m)
            assert ctx.generate(PROMPT, max_tokens=12, temperature=0, draft=dctx).tokens == spec
            force_a_trap(small)  # the draft's sandbox, this time
            assert ctx.generate(PROMPT, max_tokens=12, temperature=0, draft=dctx).tokens == spec


def test_a_closed_adapter_a_context_still_uses_survives_a_rebuild(synthetic_model: Path, tmp_path: Path) -> None:
    lora_path = synthetic.write_lora(tmp_path / "a.gguf", seed=1, strength=3.0)
    with wasillama.Model.load(synthetic_model, on_trap="rebuild") as m, m.new_context(n_ctx=256) as ctx:
        lora = m.load_lora(lora_path)
        ctx.set_loras({lora: 1.0})
        with_lora = greedy(ctx, 16)
        lora.close()  # the context keeps it while it applies
        force_a_trap(m)
        assert greedy(ctx, 16) == with_lora
        ctx.set_loras({})
        assert greedy(ctx, 16) != with_lora


def test_threads_that_find_a_trapped_sandbox_rebuild_it_once(synthetic_model: Path) -> None:
    with wasillama.Model.load(synthetic_model, on_trap="rebuild") as m:
        expected = m.tokenize("many threads at once")
        force_a_trap(m)
        results: list[object] = []

        def call() -> None:
            try:
                results.append(m.tokenize("many threads at once"))
            except BackendError as e:  # a thread that was already in the old instance is told to call again
                results.append(str(e))

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert m._sandbox.rebuilds == 1
        assert all(r == expected or "call again" in str(r) for r in results), results
        assert m.tokenize("many threads at once") == expected


def test_a_model_whose_file_changed_is_not_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(synthetic_model_bytes(tmp_path, seed=3))
    with wasillama.Model.load(path, on_trap="rebuild") as m:
        force_a_trap(m)
        path.write_bytes(synthetic_model_bytes(tmp_path, seed=4, n_layer=3))
        with pytest.raises(wasillama.ModelLoadError, match="changed on disk"):
            m.tokenize("hello")
        assert m.poisoned is not None


def synthetic_model_bytes(tmp_path: Path, seed: int, n_layer: int = 2) -> bytes:
    vocab = synthetic.pinned_llama_cpp_dir() / "models" / synthetic.DEFAULT_VOCAB
    out = synthetic.write_llama(tmp_path / f"s{seed}.gguf", vocab=vocab, seed=seed, n_layer=n_layer, n_embd=64,
                                qtype="q8_0")
    return out.read_bytes()


# ---- default deadline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hasty(synthetic_model: Path) -> Iterator[wasillama.Model]:
    with wasillama.Model.load(synthetic_model, default_timeout=0.3) as m:
        yield m


def test_the_default_timeout_applies_when_a_call_names_none(hasty: wasillama.Model) -> None:
    with hasty.new_context(n_ctx=8192) as ctx:
        t = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            ctx.generate(PROMPT, max_tokens=100_000, ignore_eos=True, temperature=0)
        assert time.monotonic() - t < 0.3 + 1.5
        ctx.clear()
        # a call's own timeout wins over the default
        assert ctx.generate(PROMPT, max_tokens=4, temperature=0, timeout=60).completion_tokens == 4
        long = hasty.tokenize("word " * 6000)
        with pytest.raises(DeadlineExceededError):
            ctx.eval(long)
        with pytest.raises(DeadlineExceededError):
            ctx.chat([{"role": "user", "content": "Go on forever."}], template="{{ messages[0].content }}",
                     max_tokens=100_000, ignore_eos=True)
    with hasty.new_context(n_ctx=8192, n_batch=8192, n_ubatch=8192, embeddings=True) as ectx, \
            pytest.raises(DeadlineExceededError):
        ectx.embed("word " * 6000)
