"""Every script in examples/ runs as a user would run it (from the repository's root, on the
default model), and says what the library says for the same request."""

from __future__ import annotations

import ast
import json
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

import wasillama
from server_helpers import LiveServer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TESTED = {"chat.py", "streaming.py", "async_streaming.py", "semantic_search.py", "json_output.py",
          "server_client.py"}


def run(name: str, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> str:
    p = subprocess.run([sys.executable, str(EXAMPLES / name), *args], input=stdin, capture_output=True, text=True,
                       timeout=600, cwd=ROOT, env={**os.environ, **(env or {})})
    assert p.returncode == 0, p.stderr[-4000:]
    return p.stdout


@pytest.fixture(scope="module")
def ctx(smollm2_path: Path) -> Iterator[wasillama.Context]:
    with wasillama.Model.load(smollm2_path) as model, model.new_context(n_ctx=4096) as c:
        yield c


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == TESTED


def test_chat(ctx: wasillama.Context) -> None:
    out = run("chat.py", stdin="What is 2 + 2?\n\nAnd 3 + 3?\n")
    messages = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": "What is 2 + 2?"}]
    first = ctx.chat(messages, max_tokens=128, temperature=0).text
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And 3 + 3?"}]
    second = ctx.chat(messages, max_tokens=128, temperature=0).text
    assert out == f"{first}\n{second}\n"


def test_streaming(ctx: wasillama.Context) -> None:
    out = run("streaming.py")
    expected = ctx.generate("The three primary colours are", max_tokens=48, temperature=0)
    assert out.startswith(f"{expected.text}\n[{expected.completion_tokens} tokens, ")
    assert re.search(r"^stopped after 5 pieces: .* \(cancelled\)$", out, re.MULTILINE)


def test_async_streaming(ctx: wasillama.Context) -> None:
    lines = run("async_streaming.py").splitlines()
    answers = {line[:1]: ast.literal_eval(line[3:]) for line in lines if line[:3] in ("a: ", "b: ")}
    assert answers["a"] == ctx.generate("The capital of France is", max_tokens=32, temperature=0).text.strip()
    assert answers["b"] == ctx.generate("Water boils at", max_tokens=32, temperature=0).text.strip()
    assert "cancelled" in lines
    again = ast.literal_eval(lines[-1].removeprefix("a again: "))
    assert again == ctx.chat([{"role": "user", "content": "Say hi."}], max_tokens=16, temperature=0).text.strip()


@pytest.mark.parametrize(("query", "top"), [("how do I make bread?", "Knead the dough"),
                                             ("who won the football match", "The striker"),
                                             ("monetary policy", "The central bank")])
def test_semantic_search(query: str, top: str) -> None:
    lines = run("semantic_search.py", *query.split()).splitlines()
    assert len(lines) == 3 and top in lines[0]
    scores = [float(line.split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True)


def test_json_output() -> None:
    data = json.loads(run("json_output.py"))
    jsonschema.validate(data, runpy.run_path(str(EXAMPLES / "json_output.py"))["SCHEMA"])


def test_server_client(smollm2_path: Path, tmp_path: Path, ctx: wasillama.Context) -> None:
    config = {"models": [{"name": "smollm2", "path": str(smollm2_path), "parallel": 2, "n_ctx": 2048}]}
    server = LiveServer(config, tmp_path).start()
    try:
        out = run("server_client.py", env={"WASILLAMA_BASE_URL": server.url + "/v1"})
    finally:
        server.stop()
    lines = out.splitlines()
    assert lines[0] == "model: smollm2"
    expected = ctx.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=32,
                        temperature=0).text
    assert out.split("reply: ", 1)[1].startswith(expected + "\nusage: ")
    streamed = ctx.chat([{"role": "user", "content": "Name three colours."}], max_tokens=32, temperature=0).text
    assert out.split("stream: ", 1)[1] == streamed + "\n"
