"""llama.cpp's own tokenizer test vectors (tests/test-tokenizer-0.cpp), run through wasillama.

Every ``models/ggml-vocab-*.gguf`` of the pinned llama.cpp tree that has ``.inp`` and ``.out``
files is one test. What test-tokenizer-0.cpp does, reproduced exactly:

- ``.inp`` is read as raw bytes and split on ``"\\n__ggml_vocab_test__\\n"`` (a trailing
  separator does not start another case); ``.out`` is read line by line (std::getline), each
  line stripped and split on spaces into token ids; the two counts must agree, and the
  cases go into a std::map, so a repeated input keeps its last expected output.
- The vocab is loaded with ``vocab_only = true``; each input is tokenized with
  ``common_tokenize(ctx, text, add_special = false, parse_special = false)``.
- Success is an exact match of the token ids. test-tokenizer-0 prints the detokenized text
  but does not check it, so neither does this test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import synthetic
from helpers import load_model

SEPARATOR = b"\n__ggml_vocab_test__\n"

# DESIGN.md §4: the pinned tree carries 15 vocabs with test vectors, 694 cases in all.
EXPECTED_VOCABS = 15
EXPECTED_CASES = 694


def read_tests(inp: Path, out: Path) -> dict[bytes, list[int]]:
    """read_tests() of test-tokenizer-0.cpp."""
    raw = inp.read_bytes()
    sinp: list[bytes] = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(SEPARATOR, pos)
        if nxt < 0:
            sinp.append(raw[pos:])
            break
        sinp.append(raw[pos:nxt])
        pos = nxt + len(SEPARATOR)

    sout = out.read_bytes().split(b"\n")
    if sout and sout[-1] == b"":  # std::getline yields no line after the final newline
        sout.pop()

    assert len(sinp) == len(sout), f"{inp.name}: {len(sinp)} inputs but {out.name} has {len(sout)} lines"
    tests: dict[bytes, list[int]] = {}
    for s, o in zip(sinp, sout, strict=True):
        o = o.strip(b" \t\n\v\f\r")  # string_strip: std::isspace in the C locale
        tests[s] = [int(t) for t in o.split(b" ")] if o else []
    return tests


def _vocabs() -> list[Path]:
    models = synthetic.pinned_llama_cpp_dir() / "models"
    return [p for p in sorted(models.glob("ggml-vocab-*.gguf"))
            if Path(f"{p}.inp").is_file() and Path(f"{p}.out").is_file()]


def _vocab_id(path: Path) -> str:
    return path.name.removeprefix("ggml-vocab-").removesuffix(".gguf")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "vocab_path" not in metafunc.fixturenames:
        return
    try:
        vocabs = _vocabs()
    except RuntimeError as e:  # the pinned tree could not be fetched: fail, do not skip
        metafunc.parametrize("vocab_path", [pytest.param(e, id="llama-cpp-source-unavailable")])
        return
    metafunc.parametrize("vocab_path", vocabs, ids=[_vocab_id(p) for p in vocabs])


def test_vocab_vectors(vocab_path: Path | RuntimeError, backend_name: str) -> None:
    if isinstance(vocab_path, RuntimeError):
        pytest.fail(str(vocab_path))
    tests = read_tests(Path(f"{vocab_path}.inp"), Path(f"{vocab_path}.out"))
    assert tests, f"no tests found for {vocab_path.name}"

    failures = []
    with load_model(vocab_path, backend_name, vocab_only=True) as model:
        for raw, expected in tests.items():
            text = raw.decode("utf-8")
            got = model.tokenize(text, add_special=False, parse_special=False)
            if got != expected:
                failures.append(f"{text!r}:\n    expected {expected}\n    got      {got}\n"
                                f"    (detokenized: {model.detokenize(got)!r})")
    assert not failures, f"{len(failures)} of {len(tests)} cases differ for {vocab_path.name}:\n" + "\n".join(failures)


def test_every_vocab_with_vectors_is_found(llama_cpp_dir: Path) -> None:
    """Guards the discovery and the parser: a broken split would silently test fewer cases."""
    vocabs = _vocabs()
    assert len(vocabs) == EXPECTED_VOCABS, [p.name for p in vocabs]
    n_cases = sum(len(read_tests(Path(f"{p}.inp"), Path(f"{p}.out"))) for p in vocabs)
    assert n_cases == EXPECTED_CASES
