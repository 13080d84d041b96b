"""A multi-turn chat: each line on stdin is a user turn; the answers stream to stdout.

    python examples/chat.py                      # the default model (fetched once)
    python examples/chat.py model.gguf           # any GGUF with a chat template
    python examples/chat.py hf://owner/repo:Q4_K_M
"""

from __future__ import annotations

import sys

from wasillama import Model
from wasillama.default_model import default_model_path


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else default_model_path()
    messages = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
    with Model.load(source, progress=True) as model, model.new_context(n_ctx=4096) as ctx:
        for line in sys.stdin:
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line.strip()})
            stream = ctx.chat_stream(messages, max_tokens=128, temperature=0)
            for piece in stream:
                print(piece, end="", flush=True)
            print()
            assert stream.result is not None
            # the whole history goes back each turn; the context reuses the prefix it already holds
            messages.append({"role": "assistant", "content": stream.result.text})


if __name__ == "__main__":
    main()
