"""Embeddings of a Context made with ``embeddings=True``: one batched decode over sequences per
group of texts (not a loop of decodes), pooled as the model says (mean / cls / last; rank for
rerankers) or per token (pooling "none"), optionally L2-normalised."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .errors import ContextFullError, InvalidArgumentError, UnsupportedOptionError

if TYPE_CHECKING:
    from .context import Context

Vector = npt.NDArray[np.float32]
Text = str | Sequence[int]


def _normalized(v: Vector) -> Vector:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    out: Vector = (v / np.where(norm == 0, 1, norm)).astype(np.float32)
    return out


def _groups(lengths: list[int], max_seqs: int, max_tokens: int) -> list[list[int]]:
    """Consecutive texts packed into decodes of at most max_seqs sequences and max_tokens tokens."""
    groups: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(lengths):
        if groups[-1] and (len(groups[-1]) == max_seqs or used + n > max_tokens):
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    return groups


def embed_texts(ctx: Context, texts: Sequence[Text], *, normalize: bool, truncate: bool, add_special: bool,
                parse_special: bool) -> list[Vector]:
    """Context.embed / embed_batch: a vector per text (pooled), or a (tokens, n_embd) matrix."""
    info = ctx._info
    if not info.embeddings:
        raise UnsupportedOptionError("this context computes logits: create one with model.new_context(embeddings=True)")
    if isinstance(texts, str):
        raise InvalidArgumentError("embed_batch takes a list of texts (embed takes one)")
    limit = min(ctx.n_ctx_seq, ctx.n_batch)  # a sequence is decoded whole, in one batch
    tokenized = []
    for i, text in enumerate(texts):
        tokens = ctx.tokenize(text, add_special=add_special, parse_special=parse_special) if isinstance(text, str) \
            else [int(t) for t in text]
        if not tokens:
            raise InvalidArgumentError(f"text {i} is empty (no tokens)")
        if len(tokens) > limit:
            if not truncate:
                raise ContextFullError(
                    f"text {i} has {len(tokens)} tokens but this context embeds at most {limit} per text "
                    f"(n_ctx / n_seq_max = {ctx.n_ctx_seq}, n_batch = {ctx.n_batch}): pass truncate=True "
                    "to embed its first tokens, or create the context with larger n_ctx and n_batch")
            tokens = tokens[:limit]
        tokenized.append(tokens)
    pooled = info.pooling != "none"
    out: list[Any] = [None] * len(tokenized)
    ctx._acquire()
    be, handle = ctx._backend, ctx._handle  # after _acquire: a rebuilt sandbox's
    try:
        groups = _groups([len(t) for t in tokenized], ctx.n_seq_max, ctx.n_batch)
        for group in groups:
            be.memory_clear(handle)  # each text starts at position 0 of its own sequence
            ctx._forget_cache()
            batch = np.concatenate([np.asarray(tokenized[i], dtype=np.int32) for i in group])
            seq = np.concatenate([np.full(len(tokenized[i]), j, dtype=np.int32) for j, i in enumerate(group)])
            pos = np.concatenate([np.arange(len(tokenized[i]), dtype=np.int32) for i in group])
            be.decode(handle, batch, pos=pos, seq=seq, logits=np.ones(batch.size, dtype=np.int8),
                      background=len(groups) > 1)
            start = 0
            for j, i in enumerate(group):
                n = len(tokenized[i])
                if pooled:
                    out[i] = be.embeddings_seq(handle, j)
                else:
                    out[i] = np.stack([be.embeddings_token(handle, start + k) for k in range(n)])
                start += n
    finally:
        ctx._release()
    if normalize and info.pooling != "rank":  # rank pooling gives scores, not directions
        out = [_normalized(v) for v in out]
    return out
