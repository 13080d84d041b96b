"""Sampling as an option group, on every installed backend: the Sampling dataclass and keyword
arguments mean the same; each of llama.cpp's samplers is reachable and reproducible by seed;
logit bias, ignore_eos, GBNF grammars and log-probabilities behave as their references say
(the backend's own logits, a regular expression for the grammar's language)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import wasillama
from wasillama import InvalidArgumentError
from wasillama.options import ContextOptions, LoadOptions, Sampling

PROMPT = "Once upon a time, in a small village"


@pytest.fixture
def ctx(model: wasillama.Model) -> Iterator[wasillama.Context]:
    with model.new_context(n_ctx=256) as c:
        yield c


def test_keyword_arguments_and_the_option_group_agree(ctx: wasillama.Context) -> None:
    group = Sampling(temperature=0.9, top_k=20, seed=11)
    a = ctx.generate(PROMPT, max_tokens=12, sampling=group).tokens
    assert ctx.generate(PROMPT, max_tokens=12, temperature=0.9, top_k=20, seed=11).tokens == a
    # a keyword overrides the group's field
    b = ctx.generate(PROMPT, max_tokens=12, sampling=dataclasses.replace(group, seed=12)).tokens
    assert ctx.generate(PROMPT, max_tokens=12, sampling=group, seed=12).tokens == b
    with pytest.raises(TypeError, match=r"unknown option.*tempreature"):
        ctx.generate(PROMPT, tempreature=0.5)


@pytest.mark.parametrize(("options", "message"), [
    ({"top_p": 1.5}, "top_p"), ({"mirostat": 3}, "mirostat"), ({"typical_p": 0.0}, "typical_p"),
    ({"repeat_last_n": -1}, "repeat_last_n"), ({"temperature": float("nan")}, "finite"),
    ({"logit_bias": {5: float("nan")}}, "NaN")])
def test_bad_sampling_values_are_clear_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        Sampling(**options)


def test_option_groups_are_frozen_and_hashable() -> None:
    s = Sampling(logit_bias={1: 2.0})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.temperature = 0.1  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.logit_bias[1] = 3.0  # type: ignore[index]
    assert hash(s) == hash(Sampling(logit_bias={1: 2.0}))
    assert ContextOptions() == ContextOptions(n_ctx=4096) and LoadOptions().mmap


def test_the_cli_defaults_are_the_libraries() -> None:
    from wasillama.cli import _SAMPLING_FLAGS, run

    params = {p.name: p for p in run.params}
    defaults = Sampling()
    for name in _SAMPLING_FLAGS:
        assert params[name].default == getattr(defaults, name), name
    assert params["n_ctx"].default == ContextOptions().n_ctx


CHAINS: dict[str, dict[str, Any]] = {
    "default": {},
    "penalties": {"repeat_penalty": 1.3, "frequency_penalty": 0.2, "presence_penalty": 0.2, "repeat_last_n": 32},
    "dry": {"dry_multiplier": 0.8, "dry_allowed_length": 1},
    "typical": {"typical_p": 0.7, "top_k": 0},
    "xtc": {"xtc_probability": 0.9, "xtc_threshold": 0.05, "top_k": 0, "min_p": 0.0},
    "mirostat": {"mirostat": 1, "mirostat_tau": 3.0},
    "mirostat_v2": {"mirostat": 2, "mirostat_tau": 3.0},
    "hot": {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0},
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_each_chain_is_reproducible_by_seed(ctx: wasillama.Context, chain: str) -> None:
    def sample(seed: int) -> list[int]:
        return ctx.generate(PROMPT, max_tokens=24, seed=seed, **CHAINS[chain]).tokens

    first = sample(7)
    assert len(first) > 0
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (1, 2, 3, 4)), "four other seeds all gave seed 7's tokens"


def test_penalties_change_what_greedy_repeats(ctx: wasillama.Context) -> None:
    plain = ctx.generate(PROMPT, max_tokens=48, temperature=0).tokens
    penalised = ctx.generate(PROMPT, max_tokens=48, temperature=0, repeat_penalty=1.5, repeat_last_n=64).tokens
    assert penalised != plain
    # a penalty sees the prompt: its tokens are less likely to come back than without it
    prompt = set(ctx.tokenize(PROMPT))
    assert sum(t in prompt for t in penalised) <= sum(t in prompt for t in plain)


def test_logit_bias_forbids_and_forces(ctx: wasillama.Context) -> None:
    ctx.eval(ctx.tokenize(PROMPT))
    order = np.argsort(ctx.logits())[::-1]
    best, second = int(order[0]), int(order[1])
    assert ctx.generate(PROMPT, max_tokens=1, temperature=0).tokens == [best]
    assert ctx.generate(PROMPT, max_tokens=1, temperature=0, logit_bias={best: -np.inf}).tokens == [second]
    forced = int(order[500])
    assert ctx.generate(PROMPT, max_tokens=1, temperature=0.7, seed=3, logit_bias={forced: 100.0}).tokens == [forced]


def test_ignore_eos(model: wasillama.Model, ctx: wasillama.Context) -> None:
    eos = model.info.token_eos
    assert eos in model.eog_tokens
    assert list(model.eog_tokens) == sorted(set(model.eog_tokens))
    assert model.info.token_eot < 0 or model.info.token_eot in model.eog_tokens
    ended = ctx.generate(PROMPT, max_tokens=8, temperature=0, logit_bias={eos: 100.0})
    assert ended.finish_reason == "eos" and ended.tokens == []
    ignored = ctx.generate(PROMPT, max_tokens=8, temperature=0, logit_bias={eos: 100.0}, ignore_eos=True)
    assert ignored.finish_reason == "length" and len(ignored.tokens) == 8
    assert not set(ignored.tokens) & set(model.eog_tokens)


GRAMMARS = [
    ('root ::= ("yes" | "no") "."', r"(yes|no)\."),
    ('root ::= [0-9]+ ("," [0-9]+)*', r"[0-9]+(,[0-9]+)*"),
    ('root ::= "{" ws "\\"n\\":" ws [1-9] [0-9]? ws "}"\nws ::= [ ]?', r'\{ ?"n": ?[1-9][0-9]? ?\}'),
]


@pytest.mark.parametrize(("grammar", "language"), GRAMMARS)
def test_grammar_output_is_in_its_language(ctx: wasillama.Context, grammar: str, language: str) -> None:
    for seed in (1, 2):
        # penalties feed the prompt to the chain as history; the grammar must not see it
        result = ctx.generate(PROMPT, max_tokens=24, seed=seed, grammar=grammar, repeat_penalty=1.1)
        if result.finish_reason == "eos":  # the grammar was complete
            assert re.fullmatch(language, result.text), result.text
        else:  # cut by max_tokens: a prefix of a sentence of the language
            assert result.finish_reason == "length"
            assert re.match(language.replace("+", "*"), result.text), result.text


def test_a_grammar_that_does_not_parse(ctx: wasillama.Context) -> None:
    with pytest.raises(InvalidArgumentError, match="grammar does not parse"):
        ctx.generate(PROMPT, max_tokens=4, grammar='root ::= "unclosed')
    assert len(ctx.generate(PROMPT, max_tokens=4, temperature=0).tokens) == 4  # the context is fine


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    out: np.ndarray = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
    return out


def test_logprobs_are_the_models(ctx: wasillama.Context) -> None:
    result = ctx.generate(PROMPT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5)
    assert result.logprobs is not None and len(result.logprobs) == len(result.tokens) == 6
    # the reference: log-softmax of the logits the backend reports after each prefix
    tokens = ctx.tokenize(PROMPT)
    for tok, lp in zip(result.tokens, result.logprobs, strict=True):
        ctx.eval(tokens)
        ref = _log_softmax(ctx.logits())
        assert lp.token == tok and lp.text == ctx.model.token_piece(tok).decode("utf-8", "replace")
        assert lp.logprob == pytest.approx(ref[tok], abs=1e-4)
        assert [t.token for t in lp.top] == [int(i) for i in np.argsort(-ref, kind="stable")[:5]]
        assert [t.logprob for t in lp.top] == pytest.approx(sorted(ref, reverse=True)[:5], abs=1e-4)
        assert lp.top[0].token == tok  # greedy takes the likeliest
        tokens.append(tok)
    # sampled at a temperature: the logprob is still the model's, not the tempered distribution's
    hot = ctx.generate(PROMPT, max_tokens=1, temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, seed=5, logprobs=True)
    assert hot.logprobs is not None and hot.logprobs[0].top == ()
    ctx.eval(ctx.tokenize(PROMPT))
    assert hot.logprobs[0].logprob == pytest.approx(_log_softmax(ctx.logits())[hot.tokens[0]], abs=1e-4)
    assert ctx.generate(PROMPT, max_tokens=2, temperature=0).logprobs is None
    with pytest.raises(InvalidArgumentError, match="top_logprobs"):
        ctx.generate(PROMPT, max_tokens=2, top_logprobs=21)


def test_logprobs_in_a_batch(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=512, n_seq_max=2) as ctx:
        prompts: list[str | dict[str, Any]] = [PROMPT, {"prompt": "The weather today", "logprobs": False}]
        results = ctx.generate_batch(prompts, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
        alone = ctx.generate(PROMPT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    assert results[1].logprobs is None
    assert results[0].logprobs is not None and alone.logprobs is not None
    assert [t.token for t in results[0].logprobs] == [t.token for t in alone.logprobs]
    assert [t.logprob for t in results[0].logprobs] == pytest.approx([t.logprob for t in alone.logprobs], abs=1e-4)


def test_a_stop_string_across_tokens_costs_no_call_per_token(ctx: wasillama.Context,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    full = ctx.generate(PROMPT, max_tokens=40, temperature=0)
    pieces = [ctx.model.token_piece(t).decode("utf-8", "replace") for t in full.tokens]
    assert "".join(pieces) == full.text
    # a stop string made of the end of token k-1 and the start of token k, first seen there
    k = next(k for k in range(30, 5, -1) if len(pieces[k - 1]) >= 2 and len(pieces[k]) >= 2
             and full.text.find(pieces[k - 1][-2:] + pieces[k][:2]) == len("".join(pieces[:k])) - 2)
    stop = pieces[k - 1][-2:] + pieces[k][:2]
    calls = []
    real = ctx._backend.generate_multi

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(ctx._backend, "generate_multi", counted)
    result = ctx.generate(PROMPT, max_tokens=40, temperature=0, stop=[stop])
    assert result.finish_reason == "stop" and result.stop_sequence == stop
    assert result.text == full.text[: len("".join(pieces[:k])) - 2]
    assert result.tokens == full.tokens[: k + 1]  # up to the token that completed the stop string
    assert len(calls) <= (k + 1) // 16 + 1, calls


def test_a_grammar_with_nothing_left_to_allow(ctx: wasillama.Context) -> None:
    """A finished grammar allows only an end token; ignore_eos bans those. llama.cpp would abort
    on the empty choice (the end of the process natively): it is a clear error instead."""
    with pytest.raises(InvalidArgumentError, match="no token the grammar allows is left"):
        ctx.generate(PROMPT, max_tokens=8, temperature=0, grammar='root ::= "yes"', ignore_eos=True)
    assert len(ctx.generate(PROMPT, max_tokens=3, temperature=0).tokens) == 3
