"""Many sequences in one context: generate_batch equals separate generate calls, per-sequence
sampling and stops, shared prefixes evaluated once, and bad input as clear errors."""

from __future__ import annotations

import pytest

import wasillama

PROMPTS = [
    "Once upon a time", "The capital of France is", "def fibonacci(n):", "In 1969, astronauts",
    "The best way to learn", "Water boils at", "My favourite colour is", "Roses are red,",
]


def test_greedy_batch_equals_separate_calls(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=256) as ctx:
        separate = [ctx.generate(p, max_tokens=24, temperature=0).tokens for p in PROMPTS]
    with model.new_context(n_ctx=256 * len(PROMPTS), n_seq_max=len(PROMPTS)) as ctx:
        batch = ctx.generate_batch(PROMPTS, max_tokens=24, temperature=0)
    assert [r.tokens for r in batch] == separate
    assert all(len(t) == 24 for t in separate)


def test_seeded_sampling_batch_equals_separate_calls(model: wasillama.Model) -> None:
    items = [{"prompt": p, "seed": 100 + i, "max_tokens": 8 + 2 * i} for i, p in enumerate(PROMPTS)]
    with model.new_context(n_ctx=256) as ctx:
        separate = [ctx.generate(p, max_tokens=8 + 2 * i, temperature=0.9, seed=100 + i).text
                    for i, p in enumerate(PROMPTS)]
    with model.new_context(n_ctx=256 * len(PROMPTS), n_seq_max=len(PROMPTS)) as ctx:
        batch = ctx.generate_batch(items, temperature=0.9)
    assert [r.text for r in batch] == separate
    assert [len(r.tokens) for r in batch] == [8 + 2 * i for i in range(len(PROMPTS))]
    assert len(set(separate)) > 1


def test_stream_batch_yields_indexed_pieces(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=512, n_seq_max=2) as ctx:
        stream = ctx.stream_batch(PROMPTS[:2], max_tokens=12, temperature=0)
        texts = ["", ""]
        for i, piece in stream:
            texts[i] += piece
        assert stream.results is not None
        assert texts == [r.text for r in stream.results]


def test_shared_prefix_is_copied_not_evaluated(model: wasillama.Model) -> None:
    system = "You are a helpful assistant. Answer briefly and clearly. " * 4
    prompts = [system + "Question one?", system + "Question two?", system + "Question three?"]
    n_system = len(model.tokenize(system)) - 2  # the prompts agree on at least this many tokens
    with model.new_context(n_ctx=3 * 512, n_seq_max=3) as ctx:
        first = ctx.generate_batch(prompts, max_tokens=4, temperature=0)
    assert first[0].cached_prompt_tokens == 0
    assert first[1].cached_prompt_tokens >= n_system and first[2].cached_prompt_tokens >= n_system
    with model.new_context(n_ctx=512) as ctx:
        assert [ctx.generate(p, max_tokens=4, temperature=0).tokens for p in prompts] == [r.tokens for r in first]


def test_one_sequence_full_the_others_go_on(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=2 * 256, n_seq_max=2) as ctx:
        room = ctx.n_ctx_seq
        long_prompt = model.tokenize("word " * (room - 20))[: room - 20]
        results = ctx.generate_batch([{"prompt": long_prompt, "max_tokens": 60}, {"prompt": "Hi", "max_tokens": 30}],
                                     temperature=0)
    assert results[0].finish_reason == "context_full"
    assert len(results[0].tokens) == room - len(long_prompt) + 1  # the last one sampled, not cached
    assert results[1].finish_reason == "length" and len(results[1].tokens) == 30


def test_bad_batches_are_clear_errors(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=256, n_seq_max=2) as ctx:
        with pytest.raises(wasillama.InvalidArgumentError, match="n_seq_max=2"):
            ctx.generate_batch(PROMPTS[:3], max_tokens=2)
        with pytest.raises(wasillama.InvalidArgumentError, match="at least one prompt"):
            ctx.generate_batch([], max_tokens=2)
        with pytest.raises(wasillama.InvalidArgumentError, match="'prompt'"):
            ctx.generate_batch([{"max_tokens": 2}])
        with pytest.raises(wasillama.ContextFullError):
            ctx.generate_batch(["word " * ctx.n_ctx_seq], max_tokens=2)
        # the context still works
        assert len(ctx.generate_batch(PROMPTS[:2], max_tokens=3, temperature=0)[1].tokens) == 3
