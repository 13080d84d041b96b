"""What generation returns: the text, token counts, why it stopped, and timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["eos", "stop", "length", "context_full"]


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
class GenerationResult:
    """The outcome of Context.generate / Context.chat (and of a finished stream)."""

    text: str
    tokens: list[int]
    prompt_tokens: int
    cached_prompt_tokens: int
    finish_reason: FinishReason
    timings: Timings
    stop_sequence: str | None = field(default=None)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)
