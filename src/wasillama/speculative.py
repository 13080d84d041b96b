"""Speculative decoding (greedy): a small draft model proposes tokens, the target verifies them
all in one batched decode and keeps the longest prefix it agrees with, plus its own next token.
The output is the target's greedy output; the gain is fewer target decodes per token.

Each round: the draft generates up to N tokens after the pending one (one wl_context_generate);
the target decodes [pending, d1 .. dN] with an output at every position and takes its own
greedy token at each (wl_sampler_sample): t0 .. tk, where d1 .. dk agreed. Both caches then drop
what was not kept, and tk is the next pending token.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import numpy as np

from .errors import InvalidArgumentError, UnsupportedOptionError, WasillamaError
from .results import DraftStats, FinishReason, GenerationResult, Timings
from .shim import abi
from .shim.abi import SamplerStep

if TYPE_CHECKING:
    from .context import Context, _Job

GREEDY = [SamplerStep(abi.SAMPLER_GREEDY)]


def check(target: Context, draft: Context, job: _Job, n_draft: int) -> None:
    if draft is target:
        raise InvalidArgumentError("the draft must be another context (of a smaller model)")
    if not 1 <= n_draft <= 64:
        raise InvalidArgumentError("draft_tokens must be between 1 and 64")
    s = job.sampling
    grammar = s.grammar or (job.chat is not None and job.chat.grammar is not None)
    if not s.greedy or s.penalised or grammar or s.logit_bias or s.ignore_eos or job.logprobs is not None:
        raise UnsupportedOptionError("speculative decoding is greedy only: temperature=0, without penalties, "
                                     "grammars, logit bias, ignore_eos or logprobs")
    if draft.model.n_vocab != target.model.n_vocab or draft.model.eog_tokens != target.model.eog_tokens:
        raise InvalidArgumentError("the draft model's vocabulary differs from the target's")


def generate(target: Context, draft: Context, job: _Job, n_draft: int) -> GenerationResult:
    check(target, draft, job, n_draft)
    if any(draft.model.token_piece(t) != target.model.token_piece(t) for t in set(job.tokens)):
        raise InvalidArgumentError("the draft model's tokens mean other text than the target's")
    target._acquire()
    try:
        draft._acquire()
        try:  # the backends after _acquire: a rebuilt sandbox's
            return _rounds(target, draft, job, n_draft,
                           target._backend.new_sampler(target.model._require_handle(), GREEDY),
                           draft._backend.new_sampler(draft.model._require_handle(), GREEDY))
        finally:
            draft._release()
    finally:
        target._release()


def _trim(ctx: Context, keep: int) -> None:
    """Sequence 0 of ctx keeps its first `keep` cached tokens."""
    ctx._backend.memory_seq_rm(ctx._handle, 0, keep, -1)
    del ctx._cached[0][keep:]


def _rounds(target: Context, draft: Context, job: _Job, n_draft: int, t_sampler: int,
            d_sampler: int) -> GenerationResult:
    tb, db = target._backend, draft._backend
    eog = set(target.model.eog_tokens)
    try:
        t0 = time.perf_counter()
        reused = target._ingest(0, job.tokens, with_last=False)
        draft._ingest(0, job.tokens, with_last=False)
        t1 = time.perf_counter()
        pending = job.tokens[-1]
        draft_missing: list[int] = []  # kept tokens the draft has not decoded yet
        proposed = accepted_total = rounds = 0
        finish: FinishReason | None = None
        while finish is None:
            room = job.max_tokens - len(job.out)
            if room <= 0:
                finish = "length"
                break
            if len(target._cached[0]) + n_draft + 1 >= target.n_ctx_seq:
                finish = "context_full"
                break
            if draft_missing:
                db.decode(draft._handle, np.asarray(draft_missing, dtype=np.int32))
                draft._cached[0].extend(draft_missing)
            d_start = len(draft._cached[0])
            step = db.generate_multi(draft._handle, [0], [d_sampler], [pending], [min(n_draft, room)])
            drafts = step.tokens[0].tolist()
            draft._record_step(0, pending, drafts, step.stops[0])
            # the target: pending and every draft in one batch, an output at each
            base = len(target._cached[0])
            batch = np.asarray([pending, *drafts], dtype=np.int32)
            tb.decode(target._handle, batch, pos=np.arange(base, base + batch.size, dtype=np.int32),
                      seq=np.zeros(batch.size, dtype=np.int32), logits=np.ones(batch.size, dtype=np.int8))
            target._cached[0].extend(batch.tolist())
            rounds += 1
            proposed += len(drafts)
            kept: list[int] = []
            for i in range(batch.size):
                tok = tb.sampler_sample(t_sampler, target._handle, i)
                kept.append(tok)
                if i >= len(drafts) or tok != drafts[i]:
                    break
            accepted = len(kept) - 1  # drafts the target agreed with
            accepted_total += accepted
            # both caches keep [pending, d1 .. d_accepted]; kept[-1] is the next pending token
            _trim(target, base + 1 + accepted)
            _trim(draft, min(len(draft._cached[0]), d_start + 1 + accepted))
            draft_missing = [pending, *drafts][len(draft._cached[0]) - d_start : 1 + accepted]
            for tok in kept:
                if tok in eog:
                    finish = "eos"
                    break
                job.out.append(tok)
                target._push(job, tok)
                if job.text.stopped is not None:
                    finish = "stop"
                    break
                if len(job.out) >= job.max_tokens:
                    finish = "length"
                    break
            pending = kept[-1]
        job.text.finish()
        t2 = time.perf_counter()
        return target._finished(job, GenerationResult(
            text=job.text.text, tokens=job.out, prompt_tokens=len(job.tokens), cached_prompt_tokens=reused,
            finish_reason=finish, stop_sequence=job.text.stopped,
            timings=Timings(len(job.tokens) - reused, t1 - t0, len(job.out), t2 - t1),
            draft=DraftStats(proposed, accepted_total, rounds)))
    except BaseException:
        for ctx in (target, draft):  # what the caches hold beyond the known tokens is unknown: drop it
            with contextlib.suppress(WasillamaError):
                ctx._backend.memory_seq_rm(ctx._handle, 0, len(ctx._cached[0]), -1)
        raise
    finally:
        for be, sampler in ((tb, t_sampler), (db, d_sampler)):
            with contextlib.suppress(WasillamaError):  # a sandbox may be gone already
                be.free_sampler(sampler)
