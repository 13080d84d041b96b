"""asyncio: two contexts of one model stream at once, and a generation is cancelled with its task.

    python examples/async_streaming.py [model.gguf | hf://owner/repo]
"""

from __future__ import annotations

import asyncio
import sys

from wasillama import Context, Model
from wasillama.default_model import default_model_path


async def answer(ctx: Context, name: str, question: str) -> str:
    pieces = []
    async for piece in ctx.astream(question, max_tokens=32, temperature=0):
        pieces.append(piece)
    text = "".join(pieces)
    print(f"{name}: {text.strip()!r}")
    return text


async def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else default_model_path()
    with Model.load(source) as model, model.new_context(n_ctx=1024) as a, model.new_context(n_ctx=1024) as b:
        # a Model is shared; each Context serves one task at a time
        await asyncio.gather(answer(a, "a", "The capital of France is"), answer(b, "b", "Water boils at"))

        task = asyncio.create_task(a.agenerate("A very long story:", max_tokens=2000, ignore_eos=True))
        await asyncio.sleep(0.3)
        task.cancel()  # the generation stops promptly and the context is free again
        try:
            await task
        except asyncio.CancelledError:
            print("cancelled")
        result = await a.achat([{"role": "user", "content": "Say hi."}], max_tokens=16, temperature=0)
        print(f"a again: {result.text.strip()!r}")


if __name__ == "__main__":
    asyncio.run(main())
