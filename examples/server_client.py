"""A client of `wasillama serve`, with the official openai package (pip install openai).

    wasillama serve --port 8080 &           # the default model, no API keys
    python examples/server_client.py        # or WASILLAMA_BASE_URL=http://host:port/v1
"""

from __future__ import annotations

import os

from openai import OpenAI


def main() -> None:
    client = OpenAI(base_url=os.environ.get("WASILLAMA_BASE_URL", "http://127.0.0.1:8080/v1"),
                    api_key=os.environ.get("WASILLAMA_API_KEY", "none"))
    model = client.models.list().data[0].id
    print("model:", model)

    reply = client.chat.completions.create(model=model, temperature=0, max_tokens=32,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    print("reply:", reply.choices[0].message.content)
    print("usage:", reply.usage.prompt_tokens if reply.usage else None, "prompt tokens")

    print("stream: ", end="")
    for chunk in client.chat.completions.create(model=model, temperature=0, max_tokens=32, stream=True,
                                                messages=[{"role": "user", "content": "Name three colours."}]):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
