"""The public Model / Context API on a synthetic llama model, on every installed backend."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import synthetic
import wasillama
from helpers import load_model
from wasillama import ClosedError, ConcurrentUseError, ContextFullError, GenerationResult

PROMPT = "Once upon a time, in a small village"
N_CTX = 256

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. 0123456789 !@#$%^&*()",
    "a\nb\tc  d   e\n\n",
    "Grüße, naïve café, Ærøskøbing — Привет, мир! Γειά σου κόσμε",  # noqa: RUF001
    "日本語のテキスト、中文文本，한국어 텍스트",  # noqa: RUF001
    "emoji 🦙🚀😀 family 👩\u200d👩\u200d👧 flag 🇫🇷 keycap 1\ufe0f\u20e3",
]


@pytest.fixture
def ctx(model: wasillama.Model) -> Iterator[wasillama.Context]:
    with model.new_context(n_ctx=N_CTX) as c:
        yield c


def greedy(ctx: wasillama.Context, prompt: str | list[int] = PROMPT, n: int = 16, **kw: object) -> GenerationResult:
    return ctx.generate(prompt, max_tokens=n, temperature=0, **kw)  # type: ignore[arg-type]


# ---- metadata ----------------------------------------------------------------------------------------


def test_metadata_matches_what_was_written(model: wasillama.Model, synthetic_shape: synthetic.LlamaShape,
                                           backend_name: str) -> None:
    assert model.backend_name == backend_name
    assert model.sandboxed == (backend_name == "wasm")
    assert model.architecture == "llama"
    assert model.name == "wasillama-synthetic-llama"
    assert model.n_vocab == synthetic_shape.n_vocab
    assert model.n_embd == synthetic_shape.n_embd
    assert model.n_layer == synthetic_shape.n_layer
    assert model.n_ctx_train == synthetic_shape.n_ctx_train
    assert model.info.n_head == synthetic_shape.n_head
    assert model.info.n_head_kv == synthetic_shape.n_head_kv
    assert model.metadata["llama.block_count"] == str(synthetic_shape.n_layer)
    assert model.metadata["llama.feed_forward_length"] == str(synthetic_shape.n_ff)
    assert model.metadata["general.architecture"] == "llama"
    assert model.n_params > 0 and model.size_bytes > 0
    assert "llama" in repr(model)


# ---- tokens ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS, ids=["ascii", "ascii-symbols", "whitespace", "latin-cyrillic-greek",
                                             "cjk", "emoji"])
def test_tokenize_detokenize_round_trip(model: wasillama.Model, text: str) -> None:
    tokens = model.tokenize(text, add_special=False)
    assert tokens and all(0 <= t < model.n_vocab for t in tokens)
    assert model.detokenize(tokens) == text
    # the pieces, concatenated, are the UTF-8 bytes (SentencePiece: the first piece has the
    # prefix space that detokenize removes)
    pieces = b"".join(model.token_piece(t) for t in tokens)
    assert pieces.decode("utf-8") in (text, " " + text)


def test_tokenize_special(model: wasillama.Model) -> None:
    bos = model.info.token_bos
    assert model.tokenize("Hello", add_special=True)[0] == bos
    assert bos not in model.tokenize("Hello", add_special=False)
    assert model.tokenize("", add_special=False) == []
    # control-token text is plain text unless parse_special
    assert bos not in model.tokenize("<s>", add_special=False, parse_special=False)
    assert model.tokenize("<s>", add_special=False, parse_special=True) == [bos]
    assert model.detokenize([bos], keep_special=True, render_special=True) == "<s>"
    assert model.detokenize([bos]) == ""


# ---- generation ----------------------------------------------------------------------------------------


def test_greedy_is_deterministic(model: wasillama.Model, ctx: wasillama.Context) -> None:
    first = greedy(ctx)
    again = greedy(ctx)
    with model.new_context(n_ctx=N_CTX) as other:
        fresh = greedy(other)
    assert len(first.tokens) == 16
    assert first.tokens == again.tokens == fresh.tokens
    assert first.text == again.text == fresh.text
    assert first.prompt_tokens == len(model.tokenize(PROMPT))
    assert first.completion_tokens == 16


def test_seeded_sampling(ctx: wasillama.Context) -> None:
    def sample(seed: int) -> list[int]:
        return ctx.generate(PROMPT, max_tokens=16, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                            seed=seed).tokens

    a = sample(1234)
    assert sample(1234) == a
    others = [sample(seed) for seed in (1, 2, 3)]
    assert any(o != a for o in others), "three other seeds all gave the same tokens as seed 1234"


def test_stream_concatenates_to_generate(ctx: wasillama.Context) -> None:
    full = greedy(ctx, n=32)
    stream = ctx.stream(PROMPT, max_tokens=32, temperature=0)
    pieces = list(stream)
    assert stream.result is not None
    assert stream.result.tokens == full.tokens
    assert "".join(pieces) == full.text == stream.result.text
    for piece in pieces:
        assert isinstance(piece, str) and piece
        piece.encode("utf-8")  # a whole string, no lone surrogate
        if "\ufffd" not in full.text:
            assert "\ufffd" not in piece


def test_stream_assembler_never_splits_a_character(model: wasillama.Model) -> None:
    """A stream may end a piece anywhere between tokens. Byte-fallback tokens (emoji, CJK) split
    characters across tokens; fed through the stream's assembler, no piece is a broken character."""
    from wasillama.text import TextAssembler

    text = TEXTS[-1] + TEXTS[-2]
    tokens = model.tokenize(text, add_special=False)
    pieces = [model.token_piece(t) for t in tokens]
    assert any(p and not _is_utf8(p) for p in pieces), "expected some tokens that are parts of a character"
    asm = TextAssembler()
    out = [asm.push(p) for p in pieces] + [asm.finish()]
    assert "".join(out).lstrip(" ") == text
    assert all("\ufffd" not in p for p in out)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_stop_string_cuts_the_text(ctx: wasillama.Context) -> None:
    full = greedy(ctx, n=32).text
    assert len(full) >= 12, full
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = full.find(stop)
    result = greedy(ctx, n=32, stop=[stop])
    assert result.finish_reason == "stop"
    assert result.stop_sequence == stop
    assert result.text == full[:cut]
    assert stop not in result.text
    # streamed, the same text
    stream = ctx.stream(PROMPT, max_tokens=32, temperature=0, stop=[stop])
    assert "".join(stream) == full[:cut]
    assert stream.result is not None and stream.result.text == full[:cut]
    # of several stop strings, the one that appears first cuts
    later = full[cut + len(stop):][-3:]
    if later and later not in full[: cut + len(stop)]:
        both = greedy(ctx, n=32, stop=[later, stop])
        assert both.text == full[:cut] and both.stop_sequence == stop


def test_max_tokens(ctx: wasillama.Context) -> None:
    for n in (1, 5):
        result = greedy(ctx, n=n)
        assert len(result.tokens) == n
        assert result.finish_reason == "length"
    empty = greedy(ctx, n=0)
    assert empty.tokens == [] and empty.text == "" and empty.finish_reason == "length"
    with pytest.raises(ValueError):
        greedy(ctx, n=-1)


def test_prompt_longer_than_context(model: wasillama.Model, ctx: wasillama.Context) -> None:
    before = greedy(ctx, "short prompt", n=4)
    long_prompt = "word " * (ctx.n_ctx + 16)
    assert len(model.tokenize(long_prompt)) > ctx.n_ctx
    with pytest.raises(ContextFullError) as info:
        greedy(ctx, long_prompt, n=4)
    assert str(ctx.n_ctx) in str(info.value)
    with pytest.raises(ContextFullError):
        greedy(ctx, model.tokenize(long_prompt)[: ctx.n_ctx], n=4)  # no room for one more token
    # the context is still usable and gives what it gave before
    assert greedy(ctx, "short prompt", n=4).tokens == before.tokens


def test_generation_that_fills_the_context(model: wasillama.Model, ctx: wasillama.Context) -> None:
    prompt = model.tokenize("word " * (ctx.n_ctx + 16))[: ctx.n_ctx - 3]
    result = greedy(ctx, prompt, n=16)
    assert result.finish_reason == "context_full"
    assert 1 <= len(result.tokens) <= 4
    assert greedy(ctx, "short prompt", n=4).finish_reason == "length"


# ---- lifecycle -----------------------------------------------------------------------------------------


def test_closed_context_and_model(backend_name: str, synthetic_model: Path) -> None:
    model = load_model(synthetic_model, backend_name)
    ctx = model.new_context(n_ctx=N_CTX)
    other = model.new_context(n_ctx=N_CTX)
    greedy(ctx, n=2)

    ctx.close()
    ctx.close()  # idempotent
    assert ctx.closed
    with pytest.raises(ClosedError):
        greedy(ctx, n=2)
    with pytest.raises(ClosedError):
        ctx.clear()
    assert isinstance(ClosedError("x"), ValueError)
    greedy(other, n=2)  # the model and its other contexts are untouched

    model.close()
    model.close()  # idempotent
    assert model.closed and other.closed
    with pytest.raises(ClosedError):
        model.tokenize("hello")
    with pytest.raises(ClosedError):
        model.detokenize([1, 2])
    with pytest.raises(ClosedError):
        model.new_context()
    with pytest.raises(ClosedError):
        greedy(other, n=2)
    other.close()
    ctx.close()


def test_context_managers_close(backend_name: str, synthetic_model: Path) -> None:
    with load_model(synthetic_model, backend_name) as model:
        with model.new_context(n_ctx=N_CTX) as ctx:
            greedy(ctx, n=2)
        assert ctx.closed and not model.closed
    assert model.closed


# ---- one thread at a time ------------------------------------------------------------------------------


def test_open_stream_blocks_other_calls(ctx: wasillama.Context) -> None:
    stream = ctx.stream(PROMPT, max_tokens=32, temperature=0)
    next(stream)
    with pytest.raises(ConcurrentUseError):
        greedy(ctx, n=2)
    with pytest.raises(ConcurrentUseError):
        ctx.clear()
    with pytest.raises(ConcurrentUseError):
        ctx.eval([1, 2, 3])
    stream.close()
    assert len(greedy(ctx, n=2).tokens) == 2  # usable again once the stream is closed


def test_two_threads_on_one_context(ctx: wasillama.Context) -> None:
    holding = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            stream = ctx.stream(PROMPT, max_tokens=32, temperature=0)
            next(stream)
            holding.set()
            release.wait(60)
            stream.close()
        except BaseException as e:  # reported below
            errors.append(e)
            holding.set()

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert holding.wait(60)
        assert not errors, errors
        with pytest.raises(ConcurrentUseError):
            greedy(ctx, n=2)
        assert isinstance(ConcurrentUseError("x"), RuntimeError)
    finally:
        release.set()
        t.join(60)
    assert not errors, errors
    assert len(greedy(ctx, n=2).tokens) == 2


def test_contexts_are_independent_across_threads(model: wasillama.Model) -> None:
    """Two contexts of one model, one per thread, at the same time: each gets the greedy tokens a
    context alone gets (the model is shareable, each context is not)."""
    with model.new_context(n_ctx=N_CTX) as alone:
        expected = greedy(alone, n=12).tokens
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with model.new_context(n_ctx=N_CTX) as c:
                results[i] = greedy(c, n=12).tokens
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == {0: expected, 1: expected}


# ---- prefix cache --------------------------------------------------------------------------------------


def test_prefix_cache(model: wasillama.Model, ctx: wasillama.Context) -> None:
    first = greedy(ctx, PROMPT, n=8)
    assert first.cached_prompt_tokens == 0

    extended = PROMPT + " there lived an old clockmaker who"
    second = greedy(ctx, extended, n=8)
    assert second.cached_prompt_tokens > 0
    assert second.cached_prompt_tokens < second.prompt_tokens
    assert second.timings.prompt_tokens == second.prompt_tokens - second.cached_prompt_tokens

    with model.new_context(n_ctx=N_CTX) as fresh:
        reference = greedy(fresh, extended, n=8)
    assert reference.cached_prompt_tokens == 0
    assert second.tokens == reference.tokens

    # the same prompt again reuses all but the last token (re-evaluated for its logits)
    again = greedy(ctx, extended, n=8)
    assert again.cached_prompt_tokens == again.prompt_tokens - 1
    assert again.tokens == reference.tokens

    # a prompt that diverges early reuses only the common prefix, and is still right
    other = "Once upon a midnight dreary"
    diverged = greedy(ctx, other, n=8)
    with model.new_context(n_ctx=N_CTX) as fresh:
        assert diverged.tokens == greedy(fresh, other, n=8).tokens
    assert diverged.cached_prompt_tokens < len(model.tokenize(other))


# ---- abort ---------------------------------------------------------------------------------------------


def test_abort_while_idle_does_not_stop_the_next_call(ctx: wasillama.Context) -> None:
    expected = greedy(ctx).tokens
    ctx.abort()
    assert greedy(ctx).tokens == expected


def test_abort_from_another_thread_stops_generation(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=2048) as ctx:
        timer = threading.Timer(0.3, ctx.abort)
        timer.start()
        try:
            with pytest.raises(wasillama.AbortedError):
                ctx.generate(PROMPT, max_tokens=100_000, temperature=0)  # would run until the context is full
        finally:
            timer.cancel()
        # the context is usable afterwards, with the same greedy output as a fresh one
        after = greedy(ctx).tokens
    with model.new_context(n_ctx=N_CTX) as fresh:
        assert after == greedy(fresh).tokens


def test_abort_during_a_long_prompt(model: wasillama.Model) -> None:
    with model.new_context(n_ctx=4096, n_batch=4096, n_ubatch=64) as ctx:
        prompt = list(range(1, 4000))
        timer = threading.Timer(0.05, ctx.abort)
        timer.start()
        try:
            with pytest.raises(wasillama.AbortedError):
                ctx.eval(prompt)
        finally:
            timer.cancel()
        ctx.eval([1, 2, 3])  # still usable
        assert ctx.logits().shape == (model.n_vocab,)
