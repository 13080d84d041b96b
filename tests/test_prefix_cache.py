"""Prefix caching of a chat on SmolLM2, on every installed backend: the second turn of a
conversation with a 1,000-token system prompt evaluates only the tokens that are new."""

from __future__ import annotations

from pathlib import Path

from helpers import load_model

SYSTEM = " ".join(f"Rule {i}: answer briefly, politely and truthfully, and never invent facts." for i in range(56))


def test_the_second_turn_evaluates_only_new_tokens(backend_name: str, smollm2_path: Path) -> None:
    with load_model(smollm2_path, backend_name) as model, model.new_context(n_ctx=4096) as ctx:
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": "What is the capital of France?"}]
        first = ctx.chat(messages, max_tokens=24, temperature=0)
        assert first.prompt_tokens >= 1000 and first.cached_prompt_tokens == 0
        assert first.timings.prompt_tokens == first.prompt_tokens
        messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And of Italy?"}]
        second = ctx.chat(messages, max_tokens=24, temperature=0)
        # everything up to the end of the first answer was in the cache
        assert second.cached_prompt_tokens >= first.prompt_tokens + len(first.tokens) - 8
        new = second.prompt_tokens - second.cached_prompt_tokens
        assert second.timings.prompt_tokens == new < 40
        # and the answer is what a fresh context says
        with model.new_context(n_ctx=4096) as fresh:
            assert fresh.chat(messages, max_tokens=24, temperature=0).tokens == second.tokens
