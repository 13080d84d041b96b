"""Structured output: the answer is held to a JSON schema by a grammar while it is sampled, so
it always parses and validates.

    python examples/json_output.py [model.gguf | hf://owner/repo]
"""

from __future__ import annotations

import json
import sys

from wasillama import Model
from wasillama.default_model import default_model_path

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population_millions": {"type": "number", "minimum": 0, "maximum": 100},
    },
    "required": ["city", "country", "population_millions"],
}


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else default_model_path()
    with Model.load(source) as model, model.new_context(n_ctx=2048) as ctx:
        result = ctx.chat([{"role": "user", "content": "Describe Paris as JSON."}], json_schema=SCHEMA,
                          max_tokens=128, temperature=0)
        data = json.loads(result.text)
        print(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
