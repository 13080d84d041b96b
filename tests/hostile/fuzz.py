"""Structure-aware mutation fuzzing of real small GGUFs, inside the sandbox.

    python tests/hostile/fuzz.py --inputs 10000 [--seed 1] [--model PATH ...]

Each input is a good file changed where a GGUF parser is fragile: a count, a string or array
length, a value or element type, a tensor's dims, type or offset, a hyperparameter set to a
boundary value, bytes flipped in the header and metadata, a cut. It is loaded under a deadline,
and if it loads, tokenized and generated from. Every outcome must be a clean load or a
WasillamaError; anything else (another exception, a crash of this process, a call past the
deadline by more than the grace) is an escape, and the run exits 1. The test suite runs a short
run (test_fuzz.py); a long one is this command.

(Own mutator rather than atheris or hypothesis: the code under test runs in the wasm guest,
where atheris' coverage feedback cannot see, so it would mutate blindly; a mutator that knows
GGUF's layout reaches the loader's checks with most inputs instead of failing the magic.)
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import gguf_craft  # noqa: E402
import wasillama  # noqa: E402
from gguf_craft import ARRAY, SCALAR_FORMAT, STRING, Gguf, u32, u64  # noqa: E402

DEADLINE_S = 5.0
BOUNDARY = [0, 1, 2, 3, 7, 255, 256, 511, 512, 513, 2**15, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1]
TEXTS = ["hello", "\x00\x00", "\ud800 lone surrogate", "<s></s><unk>" * 3, "é" * 500, "\u202e\u0000\uffff"]


def _mutate_kv(g: Gguf, rng: random.Random) -> str:
    i = rng.randrange(len(g.kvs))
    item = g.kvs[i]
    if item.vtype in SCALAR_FORMAT:
        fmt = "<" + SCALAR_FORMAT[item.vtype]
        value: float | int | bool
        if fmt[1] in "fd":
            value = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e38, -1e-45])
        elif fmt[1] == "?":
            value = rng.random() < 0.5
        else:
            bits = 8 * len(item.payload)
            value = rng.choice(BOUNDARY) % (1 << bits)
            if fmt[1].islower():
                value = value - (1 << bits) if value >= 1 << (bits - 1) else value
        item.payload = struct.pack(fmt, value)
        return f"kv {item.key.decode(errors='replace')}={value}"
    if item.vtype == STRING:
        choice = rng.randrange(3)
        if choice == 0:
            item.payload = u64(rng.choice(BOUNDARY)) + item.payload[8:]
        elif choice == 1:
            item.payload = gguf_craft.string(bytes(rng.randrange(256) for _ in range(rng.randrange(64))))
        else:
            body = item.payload[8:]
            item.payload = gguf_craft.string(body * min(rng.choice([2, 100, 10000]), 2**20 // max(1, len(body))))
        return f"kv {item.key.decode(errors='replace')} string"
    if item.vtype == ARRAY:
        sub, n, body = gguf_craft.array_items(item)
        choice = rng.randrange(4)
        if choice == 0:
            item.payload = u32(sub) + u64(rng.choice([n + 1, n - 1, n * 2, *BOUNDARY])) + body
        elif choice == 1:
            item.payload = u32(rng.choice([sub, ARRAY, 13, 2**31, rng.randrange(13)])) + u64(n) + body
        elif choice == 2:
            cut = rng.randrange(len(body) + 1)
            item.payload = u32(sub) + u64(n) + body[:cut]
        else:
            b = bytearray(body)
            for _ in range(rng.randrange(1, 16)):
                if b:
                    b[rng.randrange(len(b))] = rng.randrange(256)
            item.payload = u32(sub) + u64(n) + bytes(b)
        return f"kv {item.key.decode(errors='replace')} array"
    return "kv untouched"


def _mutate_tensor(g: Gguf, rng: random.Random) -> str:
    t = rng.choice(g.tensors)
    choice = rng.randrange(5)
    if choice == 0 and t.dims:
        t.dims[rng.randrange(len(t.dims))] = rng.choice(BOUNDARY)
    elif choice == 1:
        t.ggml_type = rng.choice([*range(45), 2**31, 2**32 - 1])
    elif choice == 2:
        t.offset = rng.choice([t.offset + rng.choice([1, 31, 32, -32]), *BOUNDARY]) % 2**64
    elif choice == 3:
        t.n_dims = rng.choice([0, 1, 3, 4, 5, 2**31])
    else:
        t.name = rng.choice([b"", g.tensors[0].name, t.name + b"x" * 64, bytes([rng.randrange(256)]) * 8])
    return f"tensor {t.name[:32].decode(errors='replace')}"


def mutate(base: Gguf, raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One mutated file and what was done to it."""
    kind = rng.choices(["kv", "tensor", "counts", "flip", "cut", "splice"], weights=[5, 3, 1, 3, 1, 1])[0]
    if kind in ("kv", "tensor", "counts"):
        g = base.copy()
        done = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            if kind == "kv":
                done.append(_mutate_kv(g, rng))
            elif kind == "tensor":
                done.append(_mutate_tensor(g, rng))
            else:
                g.n_kv = rng.choice([len(g.kvs) + rng.choice([-1, 1]), *BOUNDARY])
                g.n_tensors = rng.choice([len(g.tensors) + rng.choice([-1, 1]), len(g.tensors), *BOUNDARY])
                done.append(f"counts n_kv={g.n_kv} n_tensors={g.n_tensors}")
        return g.encode(), "; ".join(done)
    data = bytearray(raw)
    meta_end = len(raw) - len(base.data)
    if kind == "flip":
        n = rng.randrange(1, 12)
        for _ in range(n):
            data[rng.randrange(min(4096, meta_end) if rng.random() < 0.5 else meta_end)] = rng.randrange(256)
        return bytes(data), f"flip {n}"
    if kind == "cut":
        at = rng.randrange(meta_end + 64)
        return bytes(data[:at]), f"cut at {at}"
    a, b = sorted(rng.randrange(meta_end) for _ in range(2))
    return bytes(data[:a] + data[b:]), f"splice {a}..{b}"


@dataclass
class Report:
    inputs: int = 0
    escapes: int = 0
    slowest_s: float = 0.0
    outcomes: Counter[str] | None = None


def run_one(data: bytes, rng: random.Random) -> str:
    """The outcome's name ("loaded", or the WasillamaError's class); raises on an escape."""
    try:
        with wasillama.Model.load(data, timeout=DEADLINE_S) as model:
            model.tokenize(rng.choice(TEXTS), parse_special=rng.random() < 0.5)
            with model.new_context(n_ctx=64) as ctx:
                ctx.generate("hello", max_tokens=2, temperature=0, timeout=DEADLINE_S)
        return "loaded"
    except wasillama.WasillamaError as e:
        if len(str(e)) < 20:
            raise AssertionError(f"uninformative message: {e!r}") from e
        return type(e).__name__


def fuzz(models: Sequence[Path], inputs: int, seed: int, log: Callable[[str], None] = print) -> Report:
    rng = random.Random(seed)
    bases = [(parse_checked(p.read_bytes()), p.read_bytes()) for p in models]
    report = Report(outcomes=Counter())
    assert report.outcomes is not None
    for i in range(inputs):
        base, raw = bases[i % len(bases)]
        data, what = mutate(base, raw, rng)
        start = time.monotonic()
        try:
            name = run_one(data, rng)
        except Exception as e:  # an escape: not a WasillamaError
            report.escapes += 1
            name = f"ESCAPE {type(e).__name__}"
            log(f"input {i} ({what}): {type(e).__name__}: {e}")
        elapsed = time.monotonic() - start
        if elapsed > 3 * DEADLINE_S + 5:
            report.escapes += 1
            log(f"input {i} ({what}): took {elapsed:.1f} s (a hang past the deadline)")
        report.slowest_s = max(report.slowest_s, elapsed)
        report.outcomes[name] += 1
        report.inputs += 1
    return report


def parse_checked(raw: bytes) -> Gguf:
    g = gguf_craft.parse(raw)
    if g.encode() != raw:
        raise ValueError("the crafting layer does not round-trip this file")
    return g


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", type=Path, action="append", help="GGUF files to mutate (default: synthetic ones)")
    args = ap.parse_args(argv)
    models = args.model or default_models()
    start = time.monotonic()
    report = fuzz(models, args.inputs, args.seed)
    print(f"{report.inputs} inputs in {time.monotonic() - start:.0f} s, slowest {report.slowest_s:.2f} s, "
          f"{report.escapes} escapes; outcomes: {dict(report.outcomes or {})}")
    return 1 if report.escapes else 0


def default_models() -> list[Path]:
    """Two synthetic llamas (SentencePiece and BPE vocabularies), written once into the cache."""
    import synthetic
    from wasillama.paths import cache_dir

    folder = cache_dir() / "fuzz"
    folder.mkdir(parents=True, exist_ok=True)
    vocabs = synthetic.pinned_llama_cpp_dir() / "models"
    out = []
    for name, vocab in (("spm", "ggml-vocab-llama-spm.gguf"), ("bpe", "ggml-vocab-gpt-2.gguf")):
        path = folder / f"fuzz-{name}.gguf"
        if not path.exists():
            synthetic.write_llama(path, vocab=vocabs / vocab, seed=5, n_layer=2, n_embd=64, qtype="q8_0")
        out.append(path)
    return out


if __name__ == "__main__":
    sys.exit(main())
