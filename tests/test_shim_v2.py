"""ABI 2 at the Backend protocol, on both backends: batches whose tokens carry their own
sequences and outputs, output indices the caller maps, per-sequence KV operations, sampler
chains in the caller's order (a GBNF grammar among them), and bad input as clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wasillama.backend import Backend
from wasillama.errors import ClosedError, ContextFullError, InvalidArgumentError
from wasillama.options import ContextOptions
from wasillama.shim import abi
from wasillama.shim.abi import ContextParams, SamplerStep


def _context(be: Backend, model: int, **kw: int | bool) -> int:
    options = ContextOptions(**{"n_ctx": 512, "n_batch": 64, "n_ubatch": 64, "n_threads": 1, "n_threads_batch": 1,
                                **kw})  # type: ignore[arg-type]
    return be.new_context(model, ContextParams.of(options))


def test_outputs_are_addressed_by_batch_position(shim: tuple[Backend, int]) -> None:
    be, model = shim
    ctx = _context(be, model, n_seq_max=2)
    try:
        tokens = be.tokenize(model, b"one two three four", True, False)
        n = len(tokens)
        # the same prompt into sequences 0 and 1, as one batch: outputs at both last tokens
        batch = np.concatenate([tokens, tokens])
        seq = np.array([0] * n + [1] * n, dtype=np.int32)
        pos = np.concatenate([np.arange(n), np.arange(n)]).astype(np.int32)
        flags = np.zeros(2 * n, dtype=np.int8)
        flags[[n - 1, 2 * n - 1]] = 1
        assert be.decode(ctx, batch, pos=pos, seq=seq, logits=flags) == 2
        a, b = be.logits(ctx, n - 1), be.logits(ctx, 2 * n - 1)
        np.testing.assert_array_equal(a, b)  # separate KV streams, same input: same numbers
        np.testing.assert_array_equal(be.logits(ctx, -1), b)
        with pytest.raises(InvalidArgumentError, match="has no output"):
            be.logits(ctx, 0)
        with pytest.raises(InvalidArgumentError, match="does not exist"):
            be.logits(ctx, -3)
        assert be.memory_seq_pos_range(ctx, 1) == (0, n - 1)
    finally:
        be.free_context(ctx)


def test_a_token_in_several_sequences(shim: tuple[Backend, int]) -> None:
    be, model = shim
    separate = _context(be, model, n_seq_max=3)
    try:
        with pytest.raises(InvalidArgumentError, match="needs a context with kv_unified"):
            be.decode(separate, np.ones(1, dtype=np.int32), seq_ids=[[0, 1]])
    finally:
        be.free_context(separate)
    ctx = _context(be, model, n_seq_max=3, kv_unified=True)
    try:
        tokens = be.tokenize(model, b"shared prefix here", True, False)
        be.decode(ctx, tokens, seq_ids=[[0, 1, 2]] * len(tokens))
        assert [be.memory_seq_pos_range(ctx, s) for s in range(3)] == [(0, len(tokens) - 1)] * 3
        with pytest.raises(InvalidArgumentError, match="the same sequence twice"):
            be.decode(ctx, np.ones(1, dtype=np.int32), seq_ids=[[1, 1]])
        be.memory_seq_keep(ctx, 1)
        assert be.memory_seq_pos_range(ctx, 0) == (-1, -1)
        assert be.memory_seq_pos_range(ctx, 1) == (0, len(tokens) - 1)
    finally:
        be.free_context(ctx)


def test_bad_batches_are_clear_errors(shim: tuple[Backend, int]) -> None:
    be, model = shim
    ctx = _context(be, model, n_seq_max=2)
    try:
        with pytest.raises(InvalidArgumentError, match="larger than n_batch=64: split it"):
            be.decode(ctx, np.ones(65, dtype=np.int32))
        with pytest.raises(InvalidArgumentError, match="sequence id 2 out of range"):
            be.decode(ctx, np.ones(2, dtype=np.int32), seq=np.array([0, 2], dtype=np.int32))
        with pytest.raises(InvalidArgumentError, match="1 to n_seq_max"):
            be.decode(ctx, np.ones(1, dtype=np.int32), seq_ids=[[0, 1, 0]])
        with pytest.raises(InvalidArgumentError, match="must not be negative"):
            be.decode(ctx, np.ones(1, dtype=np.int32), pos=np.array([-1], dtype=np.int32))
        with pytest.raises(ContextFullError, match="sequence 1 is full"):
            be.decode(ctx, np.ones(1, dtype=np.int32), pos=np.array([256], dtype=np.int32),
                      seq=np.array([1], dtype=np.int32))
        be.decode(ctx, np.ones(3, dtype=np.int32))  # and the context still works
        with pytest.raises(InvalidArgumentError, match="sequence id out of range"):
            be.memory_seq_pos_range(ctx, 2)
    finally:
        be.free_context(ctx)
    with pytest.raises(ClosedError):
        be.memory_seq_pos_range(ctx, 0)


def _chain(be: Backend, model: int, steps: list[SamplerStep]) -> int:
    return be.new_sampler(model, steps)


def test_sampler_chains_in_the_callers_order(shim: tuple[Backend, int]) -> None:
    be, model = shim
    ctx = _context(be, model)
    try:
        be.decode(ctx, be.tokenize(model, b"Answer:", True, False))
        greedy = _chain(be, model, [SamplerStep(abi.SAMPLER_GREEDY)])
        best = int(np.argmax(be.logits(ctx, -1)))
        assert be.sampler_sample(greedy, ctx, -1) == best
        # a logit bias that forbids the best token, then greedy: the second best
        banned = _chain(be, model, [SamplerStep(abi.SAMPLER_LOGIT_BIAS, (-float("inf"),), (best,)),
                                    SamplerStep(abi.SAMPLER_GREEDY)])
        assert be.sampler_sample(banned, ctx, -1) == int(np.argsort(be.logits(ctx, -1))[-2])
        grammar = _chain(be, model, [SamplerStep(abi.SAMPLER_GRAMMAR, text=b'root ::= "yes" | "no"\0root'),
                                     SamplerStep(abi.SAMPLER_GREEDY)])
        piece = be.token_piece(model, be.sampler_sample(grammar, ctx, -1), False).decode()
        assert piece and ("yes".startswith(piece) or "no".startswith(piece)), piece
        every = [SamplerStep(abi.SAMPLER_PENALTIES, (1.1, 0.1, 0.1), (64,)),
                 SamplerStep(abi.SAMPLER_DRY, (0.8, 1.75), (2, 64), b"\n\0."),
                 SamplerStep(abi.SAMPLER_TOP_K, (), (40,)), SamplerStep(abi.SAMPLER_TYPICAL, (0.95,), (1,)),
                 SamplerStep(abi.SAMPLER_TOP_P, (0.9,), (1,)), SamplerStep(abi.SAMPLER_MIN_P, (0.05,), (1,)),
                 SamplerStep(abi.SAMPLER_XTC, (0.5, 0.1), (1, 7)), SamplerStep(abi.SAMPLER_TEMP_EXT, (0.8, 0.2, 1.0)),
                 SamplerStep(abi.SAMPLER_MIROSTAT_V2, (5.0, 0.1), (7,))]
        mixed = _chain(be, model, every)
        assert 0 <= be.sampler_sample(mixed, ctx, -1) < be.model_info(model).n_vocab
        for h in (greedy, banned, grammar, mixed):
            be.free_sampler(h)
    finally:
        be.free_context(ctx)


def _literal(text: str) -> bytes:
    return json.dumps(text).encode()  # a JSON string is a GBNF string literal


def test_grammar_prefill_and_lazy_triggers(shim: tuple[Backend, int]) -> None:
    """A grammar that has already seen some tokens (a chat template's generation prompt), and a
    lazy one: unconstrained until its trigger token, then held to the grammar (which begins with
    the trigger, as llama.cpp's lazy grammars do)."""
    be, model = shim
    ctx = _context(be, model)
    try:
        be.decode(ctx, be.tokenize(model, b"Answer:", True, False))
        best = int(np.argmax(be.logits(ctx, -1)))
        yes_no = b' ("yes" | "no")\0root'
        prefill = [int(t) for t in be.tokenize(model, b"Say", False, False)]
        said = b"".join(be.token_piece(model, t, False) for t in prefill).decode()
        strict = _chain(be, model, [SamplerStep(abi.SAMPLER_GRAMMAR, (), tuple(prefill), b"root ::= " + _literal(said)
                                                + yes_no), SamplerStep(abi.SAMPLER_GREEDY)])
        piece = be.token_piece(model, be.sampler_sample(strict, ctx, -1), False).decode()
        assert piece and ("yes".startswith(piece) or "no".startswith(piece)), piece
        with pytest.raises(InvalidArgumentError, match="does not accept its prefill"):
            _chain(be, model, [SamplerStep(abi.SAMPLER_GRAMMAR, (), tuple(prefill), b'root ::= "x"\0root')])

        # the trigger is the second-best token: a grammar that were not lazy would force it now
        second = int(np.argsort(be.logits(ctx, -1))[-2])
        trigger = be.token_piece(model, second, False).decode()
        lazy = _chain(be, model, [SamplerStep(abi.SAMPLER_GRAMMAR_LAZY, (), (second,), b"root ::= " + _literal(trigger)
                                              + yes_no), SamplerStep(abi.SAMPLER_GREEDY)])
        assert be.sampler_sample(lazy, ctx, -1) == best  # free until the trigger: the greedy token
        be.decode(ctx, np.asarray([best], dtype=np.int32))
        # now force the trigger (a logit bias towards it) and check what follows is held to the grammar
        forced = _chain(be, model, [SamplerStep(abi.SAMPLER_GRAMMAR_LAZY, (), (second,), b"root ::= "
                                                + _literal(trigger) + yes_no),
                                    SamplerStep(abi.SAMPLER_LOGIT_BIAS, (100.0,), (second,)),
                                    SamplerStep(abi.SAMPLER_GREEDY)])
        assert be.sampler_sample(forced, ctx, -1) == second  # the trigger: the grammar starts
        be.decode(ctx, np.asarray([second], dtype=np.int32))
        piece = be.token_piece(model, be.sampler_sample(forced, ctx, -1), False).decode()
        assert piece and ("yes".startswith(piece) or "no".startswith(piece)), piece
        be.free_sampler(forced)
        for h in (strict, lazy):
            be.free_sampler(h)
    finally:
        be.free_context(ctx)
    with pytest.raises(InvalidArgumentError, match="needs a trigger"):
        _chain(be, model, [SamplerStep(abi.SAMPLER_GRAMMAR_LAZY, (), (), b'root ::= "x"\0root')])
    with pytest.raises(InvalidArgumentError, match="takes no trigger patterns"):
        _chain(be, model, [SamplerStep(abi.SAMPLER_GRAMMAR, (), (), b'root ::= "x"\0root\0x')])


def test_bad_sampler_steps_are_clear_errors(shim: tuple[Backend, int]) -> None:
    be, model = shim
    with pytest.raises(InvalidArgumentError, match="does not parse"):
        _chain(be, model, [SamplerStep(abi.SAMPLER_GRAMMAR, text=b"root ::= (")])
    with pytest.raises(InvalidArgumentError, match="takes 1 floats and 0 ints"):
        _chain(be, model, [SamplerStep(abi.SAMPLER_TEMP, (), (1,))])
    with pytest.raises(InvalidArgumentError, match="unknown sampler type 99"):
        _chain(be, model, [SamplerStep(99)])
    with pytest.raises(InvalidArgumentError, match="must not be negative"):
        _chain(be, model, [SamplerStep(abi.SAMPLER_PENALTIES, (1.1, 0.0, 0.0), (-1,))])
    # a chain that picks no token would trip llama.cpp's assertion (the end of the process natively)
    ctx = _context(be, model)
    try:
        be.decode(ctx, be.tokenize(model, b"Hi", True, False))
        for steps in ([SamplerStep(abi.SAMPLER_TEMP, (0.7,))],
                      [SamplerStep(abi.SAMPLER_GREEDY), SamplerStep(abi.SAMPLER_TOP_K, (), (5,))]):
            chain = _chain(be, model, steps)
            with pytest.raises(InvalidArgumentError, match="must end with greedy, dist"):
                be.sampler_sample(chain, ctx, -1)
            with pytest.raises(InvalidArgumentError, match="must end with greedy, dist"):
                be.generate_multi(ctx, [0], [chain], [1], [2])
            be.free_sampler(chain)
        assert be.sampler_sample(_chain(be, model, [SamplerStep(abi.SAMPLER_GREEDY)]), ctx, -1) >= 0
    finally:
        be.free_context(ctx)
