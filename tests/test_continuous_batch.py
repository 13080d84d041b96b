"""Continuous batching (Context.continuous_batch): requests that join a running batch at any
step get the very tokens of separate generate() calls; each ends on its own (length, stop,
cancel, deadline, a full sequence) while the others go on; bad requests fail alone."""

from __future__ import annotations

import time

import pytest

import wasillama
from wasillama.batching import BatchRequest, ContinuousBatch

PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "In 1969, astronauts",
           "The best way to learn", "Water boils at"]


def _drain(batch: ContinuousBatch, texts: dict[int, str] | None = None) -> None:
    while batch.busy:
        for r, piece in batch.step():
            if texts is not None and piece is not None:
                texts[id(r)] = texts.get(id(r), "") + piece


def test_requests_joining_mid_flight_equal_separate_calls(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=256) as ctx:
        greedy = [ctx.generate(p, max_tokens=20, temperature=0).tokens for p in PROMPTS]
        seeded = [ctx.generate(p, max_tokens=20, temperature=0.9, seed=40 + i).tokens for i, p in enumerate(PROMPTS)]
    with model.new_context(n_ctx=4 * 256, n_seq_max=4) as ctx, ctx.continuous_batch() as batch:
        todo = [(p, {"temperature": 0.0}) for p in PROMPTS] + [
            (p, {"temperature": 0.9, "seed": 40 + i}) for i, p in enumerate(PROMPTS)]
        done: list[BatchRequest] = []
        texts: dict[int, str] = {}
        steps = 0
        while todo or batch.busy:
            if todo and batch.free and steps % 3 == 0:  # a new request every third step, while others run
                p, options = todo.pop(0)
                done.append(batch.submit(p, max_tokens=20, **options))
                assert batch.busy
            for r, piece in batch.step():
                if piece is not None:
                    texts[id(r)] = texts.get(id(r), "") + piece
            steps += 1
        assert all(r.result is not None for r in done), [r.error for r in done]
        assert [r.result.tokens for r in done if r.result] == greedy + seeded
        assert [texts.get(id(r), "") for r in done] == [r.result.text for r in done if r.result]
        assert batch.free == 4


def test_each_request_ends_on_its_own(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=3 * 256, n_seq_max=3) as ctx:
        with ctx.continuous_batch() as batch:
            short = batch.submit(PROMPTS[0], max_tokens=3, temperature=0)
            long = batch.submit(PROMPTS[1], max_tokens=30, temperature=0)
            cancelled = batch.submit(PROMPTS[2], max_tokens=30, temperature=0)
            for _ in range(8):
                batch.step()
            cancelled.cancel()
            _drain(batch)
            assert short.result and short.result.finish_reason == "length" and len(short.result.tokens) == 3
            assert long.result and len(long.result.tokens) == 30
            assert cancelled.result and cancelled.result.finish_reason == "cancelled"
            assert 0 < len(cancelled.result.tokens) < 30
        # the batch gave the context back: it is usable again, and remembers what it holds
        again = ctx.generate(PROMPTS[1], max_tokens=4, temperature=0)
        assert again.cached_prompt_tokens == again.prompt_tokens - 1


def test_deadline_fails_its_request_only(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=2 * 256, n_seq_max=2) as ctx, ctx.continuous_batch() as batch:
        late = batch.submit(PROMPTS[0], max_tokens=200, temperature=0, timeout=0.05)
        fine = batch.submit(PROMPTS[1], max_tokens=10, temperature=0)
        time.sleep(0.1)
        _drain(batch)
        assert isinstance(late.error, wasillama.DeadlineExceededError)
        assert fine.result is not None and len(fine.result.tokens) == 10


def test_bad_requests_fail_alone(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=2 * 64, n_seq_max=2) as ctx, ctx.continuous_batch() as batch:
        fine = batch.submit(PROMPTS[1], max_tokens=8, temperature=0)
        with pytest.raises(wasillama.ContextFullError):
            batch.submit("word " * (ctx.n_ctx_seq + 10), max_tokens=4)
        with pytest.raises(wasillama.InvalidArgumentError):
            batch.submit(PROMPTS[0], grammar='root ::= "unclosed')
        assert batch.free == 1  # refused requests took no sequence
        other = batch.submit(PROMPTS[0], max_tokens=8, temperature=0)
        with pytest.raises(wasillama.InvalidArgumentError, match="sequences are busy"):
            batch.submit(PROMPTS[2])
        _drain(batch)
        assert fine.result is not None and other.result is not None


def test_a_sequence_running_out_of_room_ends_alone(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=2 * 64, n_seq_max=2) as ctx, ctx.continuous_batch() as batch:
        full = batch.submit(PROMPTS[0], max_tokens=500, temperature=0, ignore_eos=True)
        fine = batch.submit(PROMPTS[1], max_tokens=8, temperature=0)
        _drain(batch)
        assert full.result is not None and full.result.finish_reason == "context_full"
        assert fine.result is not None and len(fine.result.tokens) == 8


def test_the_context_is_taken_while_the_batch_is_open(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=256) as ctx:
        batch = ctx.continuous_batch()
        with pytest.raises(wasillama.ConcurrentUseError):
            ctx.generate("Hi", max_tokens=1)
        running = batch.submit(PROMPTS[0], max_tokens=50, temperature=0)
        batch.step()
        batch.close()
        batch.close()  # idempotent
        assert running.result is not None and running.result.finish_reason == "cancelled"
        with pytest.raises(wasillama.ClosedError):
            batch.step()
        assert ctx.generate("Hi", max_tokens=2, temperature=0).completion_tokens == 2


def test_chat_requests_are_parsed(smollm2_path: object, backend_name: str) -> None:
    from helpers import load_model

    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"}]
    with load_model(smollm2_path, backend_name) as model, model.new_context(n_ctx=2 * 512, n_seq_max=2) as ctx:
        alone = ctx.chat(messages, max_tokens=16, temperature=0)
        with ctx.continuous_batch() as batch:
            r = batch.submit_chat(messages, max_tokens=16, temperature=0)
            _drain(batch)
        assert r.result is not None and r.result.message is not None
        assert r.result.tokens == alone.tokens and r.result.message.content == alone.message.content  # type: ignore[union-attr]


def test_a_request_whose_sampler_fails_fails_alone(model: wasillama.Model) -> None:
    """A grammar that is complete after "a", with end-of-generation banned (ignore_eos), leaves
    no token to sample: that request fails, the one decoded with it goes on to its own text."""
    with model.new_context(n_ctx=256) as ctx:
        alone = ctx.generate(PROMPTS[1], max_tokens=12, temperature=0).tokens
    with model.new_context(n_ctx=2 * 256, n_seq_max=2) as ctx, ctx.continuous_batch() as batch:
        good = batch.submit(PROMPTS[1], max_tokens=12, temperature=0)
        stuck = batch.submit(PROMPTS[0], max_tokens=12, temperature=0, grammar='root ::= "a"', ignore_eos=True)
        _drain(batch)
        assert isinstance(stuck.error, wasillama.WasillamaError) and stuck.result is None
        assert good.result is not None and good.result.tokens == alone


def test_token_ids_outside_the_vocabulary_are_refused(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=256) as ctx, ctx.continuous_batch() as batch:
        for bad in ([1, model.n_vocab], [-1], [1, 2**40]):
            with pytest.raises(wasillama.InvalidArgumentError, match="not in the vocabulary"):
                batch.submit(bad, max_tokens=2)
        assert batch.free == 1
