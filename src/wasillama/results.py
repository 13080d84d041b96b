"""What generation returns: the text, token counts, why it stopped, and timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .chat import ChatMessage

# "tool_calls": a chat reply that ended (eos or a stop string) with calls to tools
FinishReason = Literal["eos", "stop", "length", "context_full", "cancelled", "tool_calls"]


@dataclass(frozen=True)
class Timings:
    """Wall-clock timings, counted as llama-bench counts them: prompt processing covers the
    prompt tokens actually evaluated (not those reused from the cache); generation covers
    sampling and evaluating each generated token."""

    prompt_tokens: int
    prompt_seconds: float
    generated_tokens: int
    generation_seconds: float

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0


@dataclass(frozen=True)
class TopLogprob:
    """One of the likeliest tokens at a step, under the model (before any sampler)."""

    token: int
    text: str  # the token's bytes as text (a partial UTF-8 character shows as U+FFFD)
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token with its log-probability under the model: the log-softmax of the raw
    logits, before temperature, truncation or penalties (what OpenAI's `logprobs` report)."""

    token: int
    text: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()  # the top_logprobs likeliest tokens, likeliest first


@dataclass(frozen=True)
class DraftStats:
    """Speculative decoding: how many tokens the draft proposed and how many the target kept."""

    proposed: int
    accepted: int
    rounds: int  # target decodes: each verifies one batch of drafts and yields 1 + accepted tokens

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@dataclass(frozen=True)
class GenerationResult:
    """The outcome of Context.generate / Context.chat (and of a finished stream)."""

    text: str
    tokens: list[int]
    prompt_tokens: int
    cached_prompt_tokens: int
    finish_reason: FinishReason
    timings: Timings
    stop_sequence: str | None = field(default=None)
    logprobs: list[TokenLogprob] | None = field(default=None)  # one per token, when asked for
    draft: DraftStats | None = field(default=None)  # with speculative decoding
    message: ChatMessage | None = field(default=None)  # Context.chat: the reply, tool calls parsed

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)
