"""Streaming: text as it is generated, stopped early from a callback, and the timings.

    python examples/streaming.py [model.gguf | hf://owner/repo]
"""

from __future__ import annotations

import sys

from wasillama import Model
from wasillama.default_model import default_model_path


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else default_model_path()
    with Model.load(source) as model, model.new_context(n_ctx=2048) as ctx:
        stream = ctx.stream("The three primary colours are", max_tokens=48, temperature=0)
        for piece in stream:  # pieces never split a UTF-8 character
            print(piece, end="", flush=True)
        print()
        assert stream.result is not None
        t = stream.result.timings
        print(f"[{t.generated_tokens} tokens, {t.generation_tokens_per_second:.1f} tokens/s, "
              f"finish: {stream.result.finish_reason}]")

        # a callback that returns False stops the generation
        words: list[str] = []

        def five_pieces(piece: str) -> bool:
            words.append(piece)
            return len(words) < 5

        result = ctx.generate("Count: one, two, three,", max_tokens=64, ignore_eos=True, on_text=five_pieces)
        print(f"stopped after {len(words)} pieces: {result.text!r} ({result.finish_reason})")


if __name__ == "__main__":
    main()
